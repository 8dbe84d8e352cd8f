"""Bad tokens and bad token files are clear errors naming the position, the file and the line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import build_model, byte_level_tokenizer, saved
from tl_universality.core.errors import InvalidArgumentError, InvalidTokensError, TokenFileError
from tl_universality.data.tokens import JsonlSource, ParquetSource, TextFileSource, resolve_tokens
from tl_universality.units.activations import collect_activations


@pytest.fixture(scope="module")
def model():
    return build_model()  # d_vocab 64, no tokenizer


def _rows(*rows):
    return torch.tensor(rows)


@pytest.mark.parametrize(
    "tokens, where",
    [
        (_rows([0, 5, -1], [0, 1, 2]), r"tokens\[0, 2\] = -1 "),  # wrapped to id 63 before
        (_rows([0, 5, 7], [0, 1, 64]), r"tokens\[1, 2\] = 64 "),  # raw IndexError before
        (_rows([0, 5, 7], [0, 1, 10**6]), r"tokens\[1, 2\] = 1000000 "),
        (torch.tensor([3, 4, 5, -2, 6, 7, 8]), r"tokens\[3\] = -2 "),  # a 1-D stream
    ],
)
def test_ids_outside_the_vocabulary_are_named(model, tokens, where):
    with pytest.raises(InvalidTokensError, match=where + r".*\[0, 64\)"):
        resolve_tokens(tokens, model, bos_token_id=0, seq_len=4)
    with pytest.raises(InvalidTokensError, match=where):
        collect_activations(model, tokens, bos_token_id=0, seq_len=4, progress=False)


def test_minus_one_suggests_padding(model):
    with pytest.raises(InvalidTokensError, match="padding"):
        resolve_tokens(_rows([0, -1]), model)


@pytest.mark.parametrize(
    "tokens, why",
    [
        (torch.tensor([[0.0, 2.7, 3.0]]), r"tokens\[0, 1\] = 2.7\d* is not a whole number"),
        (torch.tensor([[0.0, float("nan")]]), r"tokens\[0, 1\] = nan"),
        (torch.tensor([[0.0, 2.0, 3.0]]), r"float32 tensor.*tokens\.long\(\)"),
        (torch.tensor([[0.0, 2.0]], dtype=torch.float64), "float64 tensor"),
        (torch.tensor([[True, False, True]]), "bool tensor"),
        (torch.zeros(2, 3, 4, dtype=torch.long), r"shape \(2, 3, 4\)"),
    ],
    ids=["fractional", "nan", "whole-float", "float64", "bool", "3-d"],
)
def test_tensors_that_are_not_integer_ids_are_refused_not_cast(model, tokens, why):
    with pytest.raises(InvalidTokensError, match=why):
        resolve_tokens(tokens, model, bos_token_id=0)


def test_valid_ids_pass_and_every_integer_dtype_is_accepted(model):
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        source = resolve_tokens(torch.tensor([[0, 5, 63]], dtype=dtype), model)
        assert source.to_tensor().tolist() == [[0, 5, 63]]


def test_ids_from_a_tokenizer_larger_than_the_model_are_named(tmp_path):
    tok = saved(byte_level_tokenizer(["<|endoftext|>", "a", "b", "c", "d"]), tmp_path / "tok")
    small = build_model(tok, d_vocab=3)  # ids 3 ("c") and 4 ("d") do not exist in the model
    path = tmp_path / "docs.txt"
    path.write_text("abab\n\nabcd\n")
    # BOS + 3 ids a row: [a b a] [b EOS a] [b c d]: sequence 2, position 2 is "c".
    with pytest.raises(InvalidTokensError, match=r"text file .*docs\.txt: sequence\[2, 2\] = 3 "):
        resolve_tokens(path, small, seq_len=4).to_tensor()


def test_text_without_a_tokenizer_names_no_argument_the_caller_lacks(model, tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("hello\n")
    with pytest.raises(InvalidArgumentError, match="model has no tokenizer") as info:
        resolve_tokens(path, model)
    assert "tokenizer=model.tokenizer" not in str(info.value)  # correlate takes no tokenizer=


@pytest.mark.parametrize(
    "kwargs, why",
    [
        (dict(max_tokens=0), "max_tokens=0 is less than 1"),
        (dict(max_tokens=-100), "max_tokens=-100 is less than 1"),
        (dict(seq_len=1), "seq_len=1 is less than 2"),
        (dict(bos_token_id=-1), "bos_token_id=-1 is less than 0"),
        (dict(bos_token_id=64), r"bos_token_id=64 is not a token id.*d_vocab=64"),
    ],
)
def test_bad_numbers_at_resolve_tokens(model, kwargs, why):
    with pytest.raises(InvalidArgumentError, match=why):
        resolve_tokens(torch.zeros(2, 4, dtype=torch.long), model, **kwargs)


# -- token files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    letters = ["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz"]
    return saved(byte_level_tokenizer(letters), tmp_path_factory.mktemp("tok"))


def test_invalid_utf8_in_a_text_file_names_the_line(tmp_path, tok):
    path = tmp_path / "docs.txt"
    # Long enough that the text decoder reads the bad byte chunks after the line it is on.
    path.write_bytes(b"abc\n\n" * 5000 + b"ab\xffcd\n" + b"abc\n" * 10)
    with pytest.raises(TokenFileError, match=r"Line 10001 of .*docs\.txt is not valid UTF-8"):
        list(TextFileSource(path, tok).documents())


def test_invalid_utf8_in_jsonl_names_the_line(tmp_path, tok):
    path = tmp_path / "docs.jsonl"
    good = json.dumps({"text": "abc"}).encode() + b"\n"
    path.write_bytes(good * 3 + b'{"text": "a\xc3("}\n' + good)
    with pytest.raises(TokenFileError, match=r"Line 4 of .*docs\.jsonl is not valid UTF-8"):
        list(JsonlSource(path, tok).documents())


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"text": "abc"', "is not valid JSON"),
        ('["abc"]', "holds a JSON list"),
        ('{"text": 5}', "holds a int, not text"),
    ],
)
def test_a_malformed_jsonl_line_names_the_file_and_line(tmp_path, tok, line, why):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "abc"}) + "\n\n" + line + "\n")
    with pytest.raises(TokenFileError, match=rf"Line 3 of .*docs\.jsonl.*{why}"):
        list(JsonlSource(path, tok).documents())


def test_a_garbled_parquet_page_names_the_file_and_rows(tmp_path, tok):
    path = tmp_path / "docs.parquet"
    texts = [f"document{i:05d}" * 4 for i in range(3000)]
    pq.write_table(
        pa.table({"text": texts}),
        path,
        row_group_size=1000,
        compression="none",
        write_page_checksum=True,
    )
    assert list(ParquetSource(path, tok).documents()) == texts
    data = bytearray(path.read_bytes())
    inside = data.index(texts[1500].encode())  # a value in the second row group
    data[inside : inside + 8] = b"XXXXXXXX"  # same length: decodes to other text without a check
    path.write_bytes(bytes(data))
    with pytest.raises(TokenFileError, match=r"Rows 1000-1999 \(row group 1\) of .*docs\.parquet"):
        list(ParquetSource(path, tok).documents())


def test_a_file_that_is_not_parquet_names_the_file(tmp_path, tok):
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(TokenFileError, match=r"docs\.parquet is not a readable parquet file"):
        list(ParquetSource(path, tok).documents())

"""Token sources, each against a direct computation as the oracle."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.helpers import build_model
from tl_universality.core.errors import EmptyTokenSourceError, SequenceTooLongError
from tl_universality.data.corpus import build_corpus
from tl_universality.data.tokens import (
    DefaultCorpusSource,
    HFDatasetSource,
    JsonlSource,
    ParquetSource,
    TensorTokenSource,
    TextFileSource,
    TokenSource,
    as_token_source,
    check_fits,
)

SEQ = 16


def make_documents(n: int = 40, seed: int = 0) -> list[str]:
    """Documents of varied length with no blank lines inside (the .txt separator)."""
    rng = random.Random(seed)
    words = "parse token tree node value return list index module class import".split()
    return [
        f"Doc {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        for i in range(n)
    ]


def oracle(docs: list[str], tok, seq_len: int = SEQ) -> torch.Tensor:
    """Tokenize each document, follow it with EOS, concatenate, cut, prefix BOS."""
    stream: list[int] = []
    for doc in docs:
        stream += tok(doc, add_special_tokens=False).input_ids + [tok.eos_token_id]
    body = seq_len - 1
    n = len(stream) // body
    rows = torch.tensor(stream[: n * body], dtype=torch.long).reshape(n, body)
    return torch.cat([torch.full((n, 1), tok.bos_token_id), rows], dim=1)


def write_source(kind: str, docs: list[str], tmp_path):
    """Write ``docs`` in the format ``kind``; returns what as_token_source takes."""
    if kind == "txt":
        path = tmp_path / "docs.txt"
        path.write_text("\n\n\n".join(docs) + "\n")
        return path
    if kind == "jsonl":
        path = tmp_path / "docs.jsonl"
        path.write_text(
            "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
        )
        return path
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"text": docs}), path, row_group_size=7)  # several row groups
        return path
    if kind == "hf_files":  # a local folder of data files, read by datasets.load_dataset
        folder = tmp_path / "hf_files"
        folder.mkdir()
        write = (folder / "train.jsonl").write_text
        write("".join(json.dumps({"text": d}) + "\n" for d in docs))
        return str(folder)
    if kind == "hf_saved":  # a folder written by Dataset.save_to_disk
        import datasets

        folder = tmp_path / "hf_saved"
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(folder))
        return str(folder)
    raise AssertionError(kind)


SOURCE_CLASS = {
    "txt": TextFileSource,
    "jsonl": JsonlSource,
    "parquet": ParquetSource,
    "hf_files": HFDatasetSource,
    "hf_saved": HFDatasetSource,
}
TEXT_KINDS = list(SOURCE_CLASS)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_text_sources_match_the_oracle(kind, tmp_path, tiny_tokenizer):
    docs = make_documents()
    src = as_token_source(write_source(kind, docs, tmp_path), tiny_tokenizer, seq_len=SEQ)
    assert type(src) is SOURCE_CLASS[kind]
    expected = oracle(docs, tiny_tokenizer)
    got = src.to_tensor()
    assert got.dtype == torch.int64 and got.shape == expected.shape
    assert torch.equal(got, expected)
    assert torch.equal(torch.stack(list(src.sequences())), got)  # deterministic order
    # Counting: files are counted by reading; a dataset stream only once it is limited.
    if kind.startswith("hf"):
        assert src.n_tokens is None
        assert src.limit(10**9).n_tokens == expected.numel()
    else:
        assert src.n_sequences == expected.shape[0] and src.n_tokens == expected.numel()


def test_default_corpus_source_matches_the_oracle(tiny_tokenizer):
    src = as_token_source(None, tiny_tokenizer, seq_len=64)
    assert isinstance(src, DefaultCorpusSource)
    assert isinstance(as_token_source("default", tiny_tokenizer), DefaultCorpusSource)
    docs = build_corpus()[:300]
    expected = oracle(docs, tiny_tokenizer, seq_len=64)
    # The first sequences depend only on the first documents.
    first = src.limit(64 * (expected.shape[0] - 1)).to_tensor()
    assert torch.equal(first, expected[:-1])
    assert src.n_tokens == oracle(build_corpus(), tiny_tokenizer, seq_len=64).numel()


def test_2d_tensor_rows_are_used_as_is():
    toks = torch.randint(1, 50, (7, 9))
    toks[:, 0] = 0
    src = as_token_source(toks, bos_token_id=0, seq_len=128)  # width wins over seq_len
    assert src.seq_len == 9 and src.n_sequences == 7 and src.n_tokens == 63
    assert torch.equal(src.to_tensor(), toks)
    assert [b.shape[0] for b in src.batches(3)] == [3, 3, 1]
    assert torch.equal(torch.cat(list(src.batches(3))), toks)


def test_2d_tensor_without_bos_needs_prepend_bos():
    toks = torch.randint(1, 50, (4, 5))
    with pytest.raises(ValueError, match="prepend_bos=True"):
        as_token_source(toks, bos_token_id=0)
    src = as_token_source(toks, bos_token_id=0, prepend_bos=True)
    assert src.seq_len == 6
    assert torch.equal(src.to_tensor(), torch.cat([torch.zeros(4, 1, dtype=torch.long), toks], 1))


def test_1d_tensor_is_chunked():
    stream = torch.arange(1, 50)
    src = as_token_source(stream, bos_token_id=0, seq_len=8)
    expected = torch.cat([torch.zeros(7, 1, dtype=torch.long), stream[:49].reshape(7, 7)], 1)
    assert torch.equal(src.to_tensor(), expected)
    assert src.n_tokens == 56


def test_tensor_bos_comes_from_the_tokenizer(tiny_tokenizer):
    toks = torch.tensor([[tiny_tokenizer.bos_token_id, 5, 6]])
    assert as_token_source(toks, tiny_tokenizer).bos_token_id == tiny_tokenizer.bos_token_id
    with pytest.raises(ValueError, match="bos_token_id"):
        as_token_source(toks)


def test_split_is_reproducible_disjoint_and_complete():
    toks = torch.randint(1, 1000, (400, 6))
    toks[:, 0] = 0
    toks[:, 1] = torch.arange(400)  # a row id
    src = as_token_source(toks, bos_token_id=0)
    train, held = src.split(held_out=0.1, seed=3)
    train_ids = {int(s[1]) for s in train.sequences()}
    held_ids = {int(s[1]) for s in held.sequences()}
    assert not train_ids & held_ids and train_ids | held_ids == set(range(400))
    assert 15 < len(held_ids) < 70  # about 10 %
    again_train, again_held = src.split(held_out=0.1, seed=3)
    assert torch.equal(again_held.to_tensor(), held.to_tensor())
    assert torch.equal(again_train.to_tensor(), train.to_tensor())
    other = {int(s[1]) for s in src.split(held_out=0.1, seed=4)[1].sequences()}
    assert other != held_ids
    # Splitting a part again splits only that part.
    inner_train, inner_held = train.split(0.5, seed=9)
    assert inner_train.n_sequences + inner_held.n_sequences == train.n_sequences


@pytest.mark.parametrize("kind", ["jsonl", "hf_files"])
def test_text_split_is_per_document(kind, tmp_path, tiny_tokenizer):
    docs = make_documents(60)
    src = as_token_source(write_source(kind, docs, tmp_path), tiny_tokenizer, seq_len=SEQ)
    train, held = src.split(held_out=0.3, seed=1)
    held_docs = [d for i, d in enumerate(docs) if held._keep(i)]
    train_docs = [d for i, d in enumerate(docs) if train._keep(i)]
    assert len(held_docs) + len(train_docs) == len(docs) and 5 < len(held_docs) < 35
    assert torch.equal(held.to_tensor(), oracle(held_docs, tiny_tokenizer))
    assert torch.equal(train.to_tensor(), oracle(train_docs, tiny_tokenizer))


def test_limit(tiny_tokenizer, tmp_path):
    docs = make_documents()
    src = as_token_source(write_source("jsonl", docs, tmp_path), tiny_tokenizer, seq_len=SEQ)
    full = src.to_tensor()
    limited = src.limit(5 * SEQ + 3)  # whole sequences only
    assert limited.n_sequences == 5 and limited.n_tokens == 5 * SEQ
    assert torch.equal(limited.to_tensor(), full[:5])
    assert limited.limit(10**9).n_sequences == 5  # a looser limit does not extend it
    assert src.limit(10**9).n_sequences == full.shape[0]
    assert as_token_source(src, max_tokens=2 * SEQ).n_sequences == 2
    with pytest.raises(ValueError, match="at least"):
        src.limit(SEQ - 1)


def test_empty_sources_raise(tmp_path, tiny_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    src = as_token_source(empty, tiny_tokenizer, seq_len=SEQ)
    assert src.n_sequences == 0
    with pytest.raises(EmptyTokenSourceError, match="empty.txt.*Fix"):
        next(src.batches(4))
    short = as_token_source(torch.arange(1, 5), bos_token_id=0, seq_len=8)
    with pytest.raises(EmptyTokenSourceError, match="Fix"):
        list(short.sequences())
    with pytest.raises(EmptyTokenSourceError):
        list(as_token_source(torch.zeros(0, 4, dtype=torch.long), bos_token_id=0).sequences())


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet", "hf_files"])
def test_text_without_tokenizer_raises(kind, tmp_path):
    path = write_source(kind, make_documents(3), tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        as_token_source(path)


def test_missing_text_field_raises(tmp_path, tiny_tokenizer):
    for kind in ("jsonl", "parquet"):
        path = write_source(kind, make_documents(3), tmp_path)
        src = as_token_source(path, tiny_tokenizer, text_field="body", seq_len=SEQ)
        with pytest.raises(ValueError, match="text_field"):
            list(src.sequences())


def test_as_token_source_rejects_unknown_inputs(tmp_path):
    with pytest.raises(TypeError, match="Cannot make a token source"):
        as_token_source(3.5)
    with pytest.raises(FileNotFoundError):
        as_token_source(tmp_path / "missing.jsonl")
    src = TensorTokenSource(torch.zeros(2, 3, dtype=torch.long), 0)
    assert as_token_source(src) is src
    assert isinstance(src, TokenSource)


def test_check_fits():
    model = build_model(n_ctx=32)
    check_fits(TensorTokenSource(torch.zeros(2, 32, dtype=torch.long), 0), model)
    too_long = TensorTokenSource(torch.zeros(2, 64, dtype=torch.long), 0)
    with pytest.raises(SequenceTooLongError, match="n_ctx=32.*seq_len=32"):
        check_fits(too_long, model)


def test_bad_arguments():
    src = TensorTokenSource(torch.zeros(2, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="held_out"):
        src.split(held_out=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        next(src.batches(0))
    with pytest.raises(ValueError, match="seq_len"):
        TensorTokenSource(torch.arange(5), 0, seq_len=1)

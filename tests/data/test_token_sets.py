"""Token sets against hand-listed expectations on a small hand-made byte-level BPE vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.helpers import byte_level_tokenizer, saved
from tl_universality.data.token_sets import (
    BUILTIN_TOKEN_SETS,
    get_token_set,
    list_token_sets,
    register_token_set,
    token_set_frame,
    token_set_masks,
    unregister_token_set,
    vocab_strings,
)

# Stored as a byte-level BPE stores them: "Ġ" is the space byte, "Ċ" the newline, "Ã©" is "é".
VOCAB = [
    "<|endoftext|>",  # 0 special: in no set
    "Ġthe",  # 1
    "The",  # 2
    "ĠJanuary",  # 3
    "ĠMarch",  # 4
    "ĠMay",  # 5
    "may",  # 6 lower case: a verb, not a month
    "ĠMonday",  # 7
    "Friday",  # 8
    "Ġ1999",  # 9
    "2024",  # 10
    "Ġ1200",  # 11 too early for a year
    "7",  # 12
    "Ġ42",  # 13
    "(",  # 14
    "Ġ[",  # 15
    ")",  # 16
    "]",  # 17
    ".",  # 18
    "!",  # 19
    ",",  # 20
    "...",  # 21
    'Ġ"',  # 22
    "-",  # 23
    "I",  # 24
    "Ġshe",  # 25
    "ĠHer",  # 26
    "Ġthey",  # 27
    "ĠTHEY",  # 28 shouted: all caps, not a pronoun
    "ing",  # 29
    "Ġrunning",  # 30
    "Ġunhappy",  # 31
    "Ġredo",  # 32
    "ĠNASA",  # 33
    "Ċ",  # 34 newline
    "Ġ",  # 35 a lone space
    "Ã©t",  # 36 "ét"
    "Ġquick",  # 37
    "ly",  # 38
    "Ġin",  # 39 the word "in", not the prefix
    "Ġinside",  # 40
]

EXPECTED = {
    "leading_space": [1, 3, 4, 5, 7, 9, 11, 13, 15, 22, 25, 26, 27, 28, 30, 31, 32, 33, 37, 39, 40],
    "capitalised": [2, 3, 4, 5, 7, 8, 24, 26, 28, 33],
    "all_caps": [28, 33],
    "lowercase_word": [1, 6, 25, 27, 29, 30, 31, 32, 36, 37, 38, 39, 40],
    "numeric": [9, 10, 11, 12, 13],
    "year": [9, 10],
    "single_digit": [12],
    "punctuation": [14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
    "sentence_end": [18, 19, 21],
    "comma": [20],
    "quote": [22],
    "dash": [23],
    "open_bracket": [14, 15],
    "close_bracket": [16, 17],
    "whitespace": [34, 35],
    "newline": [34],
    "first_letter_m": [4, 5, 6, 7],
    "first_letter_e": [],  # "ét" starts with é, not e
    "first_letter_t": [1, 2, 27, 28],
    "prefix_un": [31],
    "prefix_re": [32],
    "prefix_in": [40],
    "suffix_ing": [29, 30],
    "suffix_ly": [38],
    "months": [3, 4, 5],
    "weekdays": [7, 8],
    "pronoun_first_singular": [24],
    "pronoun_third_feminine": [25, 26],
    "pronoun_third_plural": [27],
    "pronoun": [24, 25, 26, 27],
}


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return byte_level_tokenizer(VOCAB)


def test_vocab_strings_decode_byte_level(tok):
    strings = vocab_strings(tok)
    assert strings[1] == " the" and strings[34] == "\n" and strings[35] == " "
    assert strings[36] == "ét" and strings[0] == "<|endoftext|>"
    # the tokenizer's own decoding is the oracle
    assert strings[1:] == [tok.decode([i]) for i in range(1, len(VOCAB))]
    # a padded model vocabulary: unknown ids decode to ""
    assert vocab_strings(tok, d_vocab=len(VOCAB) + 3)[-3:] == ["", "", ""]
    assert len(vocab_strings(tok, d_vocab=5)) == 5


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_sets_match_hand_listed(tok, name):
    mask = token_set_masks(tok, [name])[name]
    assert mask.dtype == np.bool_ and mask.shape == (len(VOCAB),)
    assert mask.nonzero()[0].tolist() == EXPECTED[name]


def test_all_masks_exclude_special_tokens_and_padding(tok):
    masks = token_set_masks(tok, d_vocab=len(VOCAB) + 2)
    assert set(masks) == set(list_token_sets())
    for name, mask in masks.items():
        assert mask.shape == (len(VOCAB) + 2,), name
        assert not mask[0] and not mask[-2:].any(), name


def test_model_is_accepted_in_place_of_its_tokenizer(tok, tmp_path):
    from tests.helpers import build_model

    model = build_model(tokenizer=saved(tok, tmp_path), d_vocab=48)
    masks = token_set_masks(model, ["months"])
    assert masks["months"].shape == (48,)
    assert masks["months"].nonzero()[0].tolist() == [3, 4, 5]


def test_plain_string_list_and_decode_only_stub():
    strings = [" Monday", "x", " 2000"]
    assert token_set_masks(strings, ["weekdays", "year"])["year"].tolist() == [False, False, True]

    class DecodeOnly:  # no convert_ids_to_tokens: decoded one id at a time
        def __len__(self) -> int:
            return len(strings)

        def decode(self, ids: list[int]) -> str:
            return strings[ids[0]]

    assert vocab_strings(DecodeOnly()) == strings
    assert token_set_masks(DecodeOnly(), ["leading_space"])["leading_space"].tolist() == [
        True,
        False,
        True,
    ]


def test_metaspace_tokenizer_marks_leading_space():
    backend = Tokenizer(
        models.WordLevel(vocab={"<unk>": 0, "▁the": 1, "ing": 2}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert vocab_strings(tok) == ["<unk>", " the", "ing"]
    assert token_set_masks(tok, ["leading_space"])["leading_space"].tolist() == [False, True, False]


def test_register_custom_set_and_duplicates():
    register_token_set("test_has_x", lambda s: "x" in s, description="contains x")
    try:
        assert list_token_sets()["test_has_x"] == "contains x"
        assert token_set_masks(["x", "y", " xy"], ["test_has_x"])["test_has_x"].tolist() == [
            True,
            False,
            True,
        ]
        with pytest.raises(ValueError, match="already registered"):
            register_token_set("test_has_x", lambda s: False)
        with pytest.raises(ValueError, match="already registered"):
            register_token_set("months", lambda s: False)  # built-ins are protected too
    finally:
        unregister_token_set("test_has_x")
    assert "test_has_x" not in list_token_sets()

    @register_token_set("test_decorated")
    def _decorated(s: str) -> bool:
        return s.endswith("!")

    try:
        assert get_token_set("test_decorated").fn is _decorated
    finally:
        unregister_token_set("test_decorated")


def test_extra_sets_and_unknown_names():
    masks = token_set_masks(["a", "bb"], ["numeric"], extra={"long": lambda s: len(s) > 1})
    assert list(masks) == ["numeric", "long"] and masks["long"].tolist() == [False, True]
    with pytest.raises(KeyError, match="Did you mean 'months'"):
        token_set_masks(["a"], ["month"])
    with pytest.raises(KeyError):
        unregister_token_set("never_registered")
    with pytest.raises(ValueError):
        register_token_set("", lambda s: True)


def test_frame_view(tok):
    frame = token_set_frame(tok, ["year", "months"])
    assert list(frame.columns) == ["token", "year", "months"]
    assert frame.loc[9, "token"] == " 1999" and frame.loc[9, "year"]


def test_builtins_cover_the_issue_list():
    wanted = ["leading_space", "capitalised", "all_caps", "numeric", "year", "single_digit",
              "punctuation", "open_bracket", "close_bracket", "months", "weekdays"]  # fmt: skip
    assert set(wanted) <= set(BUILTIN_TOKEN_SETS)
    assert {f"first_letter_{c}" for c in "az"} <= set(BUILTIN_TOKEN_SETS)
    assert any(n.startswith("prefix_") for n in BUILTIN_TOKEN_SETS)
    assert any(n.startswith("suffix_") for n in BUILTIN_TOKEN_SETS)
    assert sum(n.startswith("pronoun_") for n in BUILTIN_TOKEN_SETS) >= 5


def test_trained_byte_level_tokenizer_round_trips(tmp_path):
    """On a trained BPE tokenizer (the project's recipe) strings equal ``decode([i])``."""
    from tl_universality.data.corpus import train_tokenizer

    text = "The café's naïve owner said: “Hello, World!” in January 1999 — 日本語 🙂 (ok).\n"
    tokenizer = train_tokenizer(400, folder=tmp_path / "tok", documents=[text] * 20)
    strings = vocab_strings(tokenizer)
    assert len(strings) == len(tokenizer)
    partial = 0
    for i in range(1, len(strings)):
        decoded = tokenizer.decode([i])
        if "\ufffd" in decoded:  # part of a multi-byte character: both show U+FFFD
            partial += 1
            assert "\ufffd" in strings[i], i
        else:
            assert strings[i] == decoded, i
    assert partial > 0  # the byte alphabet holds lone continuation bytes
    assert not any(s.startswith("Ġ") for s in strings)
    masks = token_set_masks(tokenizer, ["leading_space", "months", "year"])
    assert strings.index(" January") in masks["months"].nonzero()[0]
    assert masks["leading_space"][strings.index(" naïve")]

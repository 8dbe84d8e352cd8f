"""Feature tables and the family catalogue, checked against direct per-token computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import random_tokens
from tl_universality.analyses.features import (
    FeatureContext,
    FeatureSet,
    LabelFeatures,
    PositionFeatures,
    TokenSetFeatures,
    UnigramFeatures,
    UserFeature,
    default_features,
    family_thresholds,
    get_family,
    list_families,
    most_frequent_unigrams,
    normalise_token,
    register_family,
    token_frequencies,
    token_set_family,
    unregister_family,
)
from tl_universality.data.token_sets import (
    register_token_set,
    token_set_masks,
    unregister_token_set,
)
from tl_universality.data.tokens import as_token_source
from tl_universality.units.activations import ActivationBatch

VOCAB = ["<s>", " the", "The", "the", " cat", " Cat", " apple", " and", ",", ".", " 1999", "\n"]
BOS = 0


def tokens(n: int = 6, seq: int = 9, seed: int = 0) -> torch.Tensor:
    toks = random_tokens(n, seq, seed, vocab=len(VOCAB), bos=BOS)
    toks[2, 4] = BOS  # a BOS inside a sequence is dropped too
    return toks


def context(toks: torch.Tensor, first_sequence: int = 0) -> FeatureContext:
    return FeatureContext.from_tokens(
        toks, first_sequence=first_sequence, bos_token_id=BOS, vocab=VOCAB
    )


def per_token(toks: torch.Tensor, first_sequence: int = 0):
    """(sequence, position, token id, previous id or -1) of every kept token, row-major."""
    rows = []
    for s in range(toks.shape[0]):
        for p in range(toks.shape[1]):
            if toks[s, p] != BOS:
                prev = int(toks[s, p - 1]) if p > 0 else -1
                rows.append((first_sequence + s, p, int(toks[s, p]), prev))
    return rows


def test_context_matches_activation_batch():
    toks = tokens()
    keep = toks != BOS
    batch = ActivationBatch([torch.zeros(int(keep.sum()), 1)], toks, keep, first_sequence=7)
    ctx = FeatureContext.from_batch(batch, VOCAB)
    assert torch.equal(ctx.token_ids, batch.token_ids)
    assert torch.equal(ctx.prev_token_ids, batch.prev_token_ids)
    assert torch.equal(ctx.positions, batch.positions)
    expected = [(s, p, t, q) for s, p, t, q in per_token(toks, 7)]
    assert ctx.sequence_ids.tolist() == [r[0] for r in expected]
    assert list(ctx.strings) == [VOCAB[r[2]] for r in expected]
    assert list(ctx.prev_strings) == [VOCAB[r[3]] if r[3] >= 0 else "" for r in expected]


def test_normalise_token():
    assert [normalise_token(s) for s in [" The", "THE", "the", " ", "  x", ""]] == [
        "the",
        "the",
        "the",
        " ",
        " x",
        "",
    ]


def test_token_set_features_current_and_previous():
    toks = tokens()
    names = ["capitalised", "leading_space", "year", "punctuation"]
    masks = token_set_masks(VOCAB, names)
    cur = TokenSetFeatures.from_registry(VOCAB, names)
    prev = TokenSetFeatures.from_registry(VOCAB, names, previous=True)
    ctx = context(toks)
    got_cur, got_prev = cur.indicators(ctx).numpy(), prev.indicators(ctx).numpy()
    for i, (_, _, t, q) in enumerate(per_token(toks)):
        for j, name in enumerate(names):
            assert got_cur[i, j] == masks[name][t]
            assert got_prev[i, j] == (q >= 0 and masks[name][q])
    assert cur.names[0] == "token_set:capitalised" and prev.names[0] == "prev_token_set:capitalised"
    assert cur.families == ("case", "space", "number", "punctuation")
    assert set(prev.families) == {"previous-token"}


def test_token_set_features_reject_ids_outside_vocab():
    g = TokenSetFeatures({"x": np.array([True, False])})
    with pytest.raises(IndexError, match="outside the features' vocabulary"):
        g.indicators(FeatureContext.from_tokens(torch.tensor([[0, 2]])))


def test_unigram_features_group_case_and_leading_space():
    toks = tokens()
    cur = UnigramFeatures(VOCAB, ["the", "cat", ","])
    prev = UnigramFeatures(VOCAB, ["the", "cat", ","], previous=True)
    ctx = context(toks)
    cells, prev_cells = cur.cells(ctx).tolist(), prev.cells(ctx).tolist()
    key = {"the": 0, "cat": 1, ",": 2}
    for i, (_, _, t, q) in enumerate(per_token(toks)):
        assert cells[i] == key.get(normalise_token(VOCAB[t]), -1)
        assert prev_cells[i] == (key.get(normalise_token(VOCAB[q]), -1) if q >= 0 else -1)
    assert cur.names == ("token:'the'", "token:'cat'", "token:','")
    assert prev.names[0] == "prev_token:'the'" and set(prev.families) == {"previous-token"}
    with pytest.raises(ValueError, match="match no token"):
        UnigramFeatures(VOCAB, ["dog"])


def test_most_frequent_unigrams_sum_over_spellings():
    counts = np.zeros(len(VOCAB), dtype=np.int64)
    counts[[1, 2, 3]] = 2  # "the" in three spellings: 6
    counts[4] = 5  # " cat": 5, " Cat": 0
    counts[8] = 5  # ",": 5, ties with "cat" but has a later id
    assert most_frequent_unigrams(VOCAB, counts, 3) == ["the", "cat", ","]
    assert most_frequent_unigrams(VOCAB, counts, 10) == ["the", "cat", ","]  # only seen ones


def test_token_frequencies_count_the_stream():
    toks = tokens()
    counts = token_frequencies(
        as_token_source(toks, bos_token_id=BOS), len(VOCAB), exclude_token_ids=[BOS]
    )
    expected = np.bincount(toks.flatten().numpy(), minlength=len(VOCAB))
    expected[BOS] = 0
    assert counts.tolist() == expected.tolist()


def test_position_bins_and_thresholds():
    toks = tokens(seq=10)
    pos = PositionFeatures([1, 4, 7])
    assert pos.names == ("position:[1,4)", "position:[4,7)", "position:>=7", "position:>=4")
    table = FeatureSet([pos]).table(context(toks))
    positions = np.array([p for _, p, _, _ in per_token(toks)])
    assert table["position:[1,4)"].tolist() == ((positions >= 1) & (positions < 4)).tolist()
    assert table["position:[4,7)"].tolist() == ((positions >= 4) & (positions < 7)).tolist()
    assert table["position:>=7"].tolist() == (positions >= 7).tolist()
    assert table["position:>=4"].tolist() == (positions >= 4).tolist()
    assert PositionFeatures.uniform(512, 16).starts == tuple(range(0, 512, 32))
    with pytest.raises(ValueError, match="increasing"):
        PositionFeatures([0, 4, 4])


def test_user_feature_function_and_stream_aligned_array():
    toks = tokens()
    keep = toks != BOS
    # A "parser" label for every position of the stream, rows = sequences.
    labels = torch.rand(toks.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    from_array = UserFeature("syntax:x", labels.numpy())
    from_fn = UserFeature(
        "semantic:animal", lambda ctx: np.isin(ctx.strings, [" cat", " Cat"]), family="semantic"
    )
    fs = FeatureSet([from_array, from_fn], vocab=VOCAB)
    # Two batches of the same stream: the array is read at each batch's own sequences.
    for lo, hi in [(0, 4), (4, 6)]:
        batch = ActivationBatch(
            [torch.zeros(int(keep[lo:hi].sum()), 1)], toks[lo:hi], keep[lo:hi], lo
        )
        table = fs.table(batch)
        rows = per_token(toks[lo:hi], lo)
        assert table["syntax:x"].tolist() == [bool(labels[s, p]) for s, p, _, _ in rows]
        assert table["semantic:animal"].tolist() == [
            VOCAB[t] in (" cat", " Cat") for _, _, t, _ in rows
        ]
    assert fs.families == ("syntax", "semantic")


def test_user_feature_errors():
    ctx = context(tokens())
    with pytest.raises(ValueError, match="Align it with the token stream"):
        UserFeature("short", np.zeros((2, 9), dtype=bool)).indicators(ctx)
    with pytest.raises(ValueError, match="returned shape"):
        UserFeature("bad", lambda c: np.zeros(3, dtype=bool)).indicators(ctx)
    with pytest.raises(TypeError, match="boolean column"):
        UserFeature("ints", lambda c: np.zeros(c.n_tokens, dtype=int)).indicators(ctx)
    with pytest.raises(KeyError, match="No family named 'topic'"):
        UserFeature("x", lambda c: None, family="topic")
    with pytest.raises(ValueError, match="without a vocabulary"):
        _ = FeatureContext.from_tokens(torch.tensor([[0, 1]])).strings


def test_label_features_partition():
    toks = tokens()
    tags = np.random.default_rng(0).integers(-1, 3, size=toks.shape)
    pos = LabelFeatures("pos", ["NOUN", "VERB", "ADJ"], tags)
    table = FeatureSet([pos]).table(context(toks))
    rows = per_token(toks)
    for j, name in enumerate(["NOUN", "VERB", "ADJ"]):
        assert table[f"pos:{name}"].tolist() == [tags[s, p] == j for s, p, _, _ in rows]
    assert (table.sum(axis=1) <= 1).all()


def test_feature_set_checks_and_views():
    a = UnigramFeatures(VOCAB, ["the"])
    with pytest.raises(ValueError, match="unique"):
        FeatureSet([a, UnigramFeatures(VOCAB, ["the"])])
    with pytest.raises(TypeError):  # beartype's check during tests, ours otherwise
        FeatureSet([object()])  # type: ignore[list-item]
    fs = FeatureSet([a, PositionFeatures([0, 5])])
    assert fs.to_frame().to_dict("list") == {
        "feature": ["token:'the'", "position:[0,5)", "position:>=5"],
        "family": ["unigram", "position", "position"],
        "group": ["UnigramFeatures", "PositionFeatures", "PositionFeatures"],
    }
    assert isinstance(fs.position_group, PositionFeatures)
    assert fs.table(context(tokens())).shape == (int((tokens() != BOS).sum()), 3)


def test_catalogue_defaults_are_the_papers():
    thresholds = family_thresholds()
    assert thresholds["alphabet"] == 0.35
    assert all(
        thresholds[f] == 0.5
        for f in ("unigram", "previous-token", "position", "syntax", "semantic")
    )
    assert token_set_family("first_letter_z") == "alphabet"
    assert token_set_family("pronoun_second") == "word-list"
    assert {"unigram", "alphabet", "previous-token", "position", "syntax", "semantic"} <= set(
        list_families()["family"]
    )


def test_catalogue_is_extensible():
    register_token_set("test_currency", lambda s: "$" in s, description="test")
    try:
        assert token_set_family("test_currency") == "token-property"  # unclaimed set
        register_family("test_money", 0.4, token_sets=["test_curr*"], description="money")
        assert token_set_family("test_currency") == "test_money"
        assert TokenSetFeatures({"test_currency": np.ones(3, bool)}).families == ("test_money",)
        with pytest.raises(ValueError, match="already registered"):
            register_family("test_money")
        register_family("test_money", 0.3, replace=True)
        assert get_family("test_money").threshold == 0.3
        with pytest.raises(ValueError, match="label of unexplained"):
            register_family("none")
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            register_family("test_bad", 2.0)
        with pytest.raises(KeyError):
            family_thresholds({"test_nope": 0.1})
    finally:
        unregister_token_set("test_currency")
        if "test_money" in set(list_families()["family"]):
            unregister_family("test_money")
    with pytest.raises(KeyError):
        unregister_family("test_money")


def test_default_features_list_vocab():
    toks = tokens()
    fs = default_features(VOCAB, toks, bos_token_id=BOS, n_unigrams=3, position_bins=3)
    fam = dict(zip(fs.names, fs.families, strict=True))
    # unigrams are the 3 most frequent normalised tokens of the stream
    counts = np.bincount(toks[toks != BOS].numpy(), minlength=len(VOCAB))
    assert [n for n in fs.names if n.startswith("token:")] == [
        f"token:{u!r}" for u in most_frequent_unigrams(VOCAB, counts, 3)
    ]
    assert fam["token_set:first_letter_t"] == "alphabet"
    assert fam["prev_token_set:first_letter_t"] == "previous-token"
    assert fam["position:>=3"] == "position"
    assert "token_set:months" not in fam  # no month in this vocabulary: dropped
    with pytest.raises(ValueError, match="pass tokens="):
        default_features(VOCAB)


def test_default_features_real_tokenizer(tiny_tokenizer):
    text = "The cat sat on the mat. The dog ate the cat's dinner in 1999, said Tom."
    ids = torch.tensor(tiny_tokenizer(text)["input_ids"])
    fs = default_features(tiny_tokenizer, ids, seq_len=8, n_unigrams=4)
    names = set(fs.names)
    assert "token:'the'" in names and "prev_token:'the'" in names
    assert {"token_set:leading_space", "token_set:capitalised", "position:[0,1)"} <= names
    assert fs.vocab is not None and fs.vocab[tiny_tokenizer.bos_token_id] == "<|endoftext|>"

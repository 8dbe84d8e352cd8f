"""Roles on a synthetic model with planted token sets: prediction, suppression, partition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from transformers import PreTrainedTokenizerFast

from tests.helpers import build_model, byte_level_tokenizer, saved
from tl_universality.analyses.roles import (
    ROLES,
    TokenSetScores,
    prediction_neurons,
    role_counts,
    token_set_scores,
)
from tl_universality.data.token_sets import token_set_masks

# Byte-level BPE storage ("Ġ" = leading space). Months are ids 3, 4, 5; d_vocab is padded to 64.
VOCAB = ["<|endoftext|>", "Ġthe", "The", "ĠJanuary", "ĠMarch", "ĠMay", "may", "ĠMonday",
         "Friday", "Ġ1999", "2024", "7", "(", ")", ".", ",", "I", "Ġshe", "ĠHer", "Ġthey",
         "ing", "Ġrunning", "ĠNASA", "Ġquick", "ly", "Ġin", "Ġinside", "Ġa", "Ġof",
         "Ġto"]  # fmt: skip
MONTHS = [3, 4, 5]
D_VOCAB = 64
PREDICT, SUPPRESS, PARTITION = 5, 6, 7  # planted neurons of layer 1


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> PreTrainedTokenizerFast:
    folder = tmp_path_factory.mktemp("handmade_tokenizer")
    return saved(byte_level_tokenizer(VOCAB), folder)


@pytest.fixture(scope="module")
def planted(tokenizer):
    """A 2-layer model whose layer-1 neurons write planted unembedding directions.

    ``W_U`` gets a direction ``e`` carried only by the month tokens and a direction ``f`` that is
    +1 on leading-space tokens and -1 elsewhere; neuron 5 writes ``e``, neuron 6 writes ``-e``,
    neuron 7 writes ``f``.
    """
    model = build_model(tokenizer=tokenizer, d_vocab=D_VOCAB, n_ctx=16)
    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    e = torch.randn(d, generator=g)
    e /= e.norm()
    f = torch.randn(d, generator=g)
    f -= (f @ e) * e
    f /= f.norm()
    lead = torch.from_numpy(
        token_set_masks(tokenizer, ["leading_space"], d_vocab=D_VOCAB)["leading_space"]
    )
    with torch.no_grad():
        W_U = model.unembed.W_U
        scale = W_U.norm(dim=0).mean()
        W_U -= torch.outer(e, e @ W_U) + torch.outer(f, f @ W_U)  # nothing else reads e or f
        W_U[:, MONTHS] += 4 * scale * e[:, None]
        W_U += scale * torch.outer(f, torch.where(lead, 1.0, -1.0))
        W_out = model.blocks[1].mlp.W_out
        W_out[PREDICT] = 2 * e * W_out[PREDICT].norm()
        W_out[SUPPRESS] = -2 * e * W_out[SUPPRESS].norm()
        W_out[PARTITION] = f * W_out[PARTITION].norm()
    return model


def role_of(table: pd.DataFrame, layer: int, neuron: int) -> str:
    return table.set_index(["layer", "neuron"]).loc[(layer, neuron), "role"]


def test_planted_roles(planted):
    roles = prediction_neurons(planted)
    assert role_of(roles, 1, PREDICT) == "prediction"
    assert role_of(roles, 1, SUPPRESS) == "suppression"
    assert role_of(roles, 1, PARTITION) == "partition"
    assert list(roles["role"].cat.categories) == list(ROLES)
    # random neurons: a near-Gaussian composition, never heavy-tailed
    planted_rows = (roles["layer"] == 1) & roles["neuron"].isin([PREDICT, SUPPRESS, PARTITION])
    assert (roles.loc[~planted_rows, "vocab_kurt"] < 10).all()
    assert not roles.loc[~planted_rows, "role"].isin(["prediction", "suppression"]).any()
    counts = role_counts(roles)
    assert counts.loc[1, "prediction"] == 1 and counts.loc[1, "suppression"] == 1
    assert counts.loc[0, ["prediction", "suppression"]].sum() == 0


def test_roles_from_a_table_and_thresholds(planted):
    from tl_universality.analyses.vocab import vocab_moments

    table = vocab_moments(planted)
    assert prediction_neurons(table)["role"].equals(prediction_neurons(planted)["role"])
    # a threshold above the planted kurtosis labels nothing prediction
    high = prediction_neurons(table, kurt_threshold=table["vocab_kurt"].max() + 1)
    assert not high["role"].isin(["prediction", "suppression"]).any()
    # an absolute variance threshold replaces the z-score rule
    var7 = table.set_index(["layer", "neuron"]).loc[(1, PARTITION), "vocab_var"]
    absolute = prediction_neurons(table, partition_var=var7 * 0.99)
    assert role_of(absolute, 1, PARTITION) == "partition"
    wide = (table["vocab_var"] > var7 * 0.99) & (table["vocab_kurt"] <= 10)
    assert (absolute["role"] == "partition").sum() == wide.sum()
    with pytest.raises(KeyError, match="vocab_kurt"):
        prediction_neurons(table.drop(columns="vocab_kurt"))
    # the accessor passes the model first; a table comes as table=
    import tl_universality  # noqa: F401

    via_accessor = planted.universality.prediction_neurons(table=table)
    assert via_accessor["role"].equals(prediction_neurons(table)["role"])
    assert planted.universality.prediction_neurons()["role"].equals(via_accessor["role"])


def test_planted_set_is_best_with_signed_t(planted):
    result = token_set_scores(planted, layers=1)
    assert isinstance(result, TokenSetScores)
    best = result.best.set_index("neuron")
    assert best.loc[PREDICT, "best_set"] == "months" and best.loc[PREDICT, "t"] > 0
    assert best.loc[SUPPRESS, "best_set"] == "months" and best.loc[SUPPRESS, "t"] < 0
    assert best.loc[PREDICT, "var_reduction"] == pytest.approx(1.0, abs=1e-9)
    assert best.loc[PARTITION, "best_set"] == "leading_space"
    assert best.loc[PARTITION, "mean_diff"] > 0
    assert set(result.scores["layer"]) == {1} and len(result.best) == planted.cfg.d_mlp
    assert result.to_dataframe() is result.scores


def test_statistics_against_scipy_and_numpy(planted, tokenizer):
    """Welch t against scipy.stats.ttest_ind, variance reduction and means against numpy."""
    result = token_set_scores(planted, ["months", "leading_space", "capitalised"], layers=[0, 1])
    W_U = planted.W_U.detach().double().numpy()
    universe = np.arange(D_VOCAB) < len(VOCAB)  # padded ids are left out
    masks = token_set_masks(tokenizer, ["months", "leading_space", "capitalised"], d_vocab=D_VOCAB)
    for layer, neuron in [(0, 3), (1, PREDICT), (1, 11)]:
        x = (planted.W_out[layer, neuron].detach().double().numpy() @ W_U)[universe]
        for name, mask in masks.items():
            inside = mask[universe]
            row = result.scores[
                (result.scores.layer == layer)
                & (result.scores.neuron == neuron)
                & (result.scores.token_set == name)
            ].iloc[0]
            a, b = x[inside], x[~inside]
            assert row["n_in"] == inside.sum()
            assert row["mean_in"] == pytest.approx(a.mean(), rel=1e-9, abs=1e-12)
            assert row["mean_out"] == pytest.approx(b.mean(), rel=1e-9, abs=1e-12)
            assert row["mean_diff"] == pytest.approx(a.mean() - b.mean(), rel=1e-9, abs=1e-12)
            if layer == 1 and neuron == PREDICT and name == "months":
                continue  # perfect separation: t is huge, the oracle divides by ~0
            t_ref = scipy.stats.ttest_ind(a, b, equal_var=False).statistic
            assert row["t"] == pytest.approx(t_ref, rel=1e-7)
            within = (inside.sum() * a.var() + (~inside).sum() * b.var()) / len(x)
            assert row["var_reduction"] == pytest.approx(1 - within / x.var(), rel=1e-8)


def test_custom_sets_masks_and_predicates(planted):
    months_mask = np.zeros(D_VOCAB, dtype=bool)
    months_mask[MONTHS] = True
    result = token_set_scores(
        planted,
        {"planted": months_mask, "short": lambda s: len(s.strip()) <= 2, "empty": lambda s: False},
        layers=1,
    )
    assert result.best.set_index("neuron").loc[PREDICT, "best_set"] == "planted"
    assert result.skipped == ["empty"]
    assert list(result.scores["token_set"].cat.categories) == ["planted", "short"]
    with pytest.raises(ValueError, match="shape"):
        token_set_scores(planted, {"bad": np.ones(3, dtype=bool)})


def test_cosine_kind_and_errors(planted):
    cos = token_set_scores(planted, ["months"], layers=1, kind="cosine")
    assert cos.best.set_index("neuron").loc[PREDICT, "best_set"] == "months"
    # beartype's TypeCheckError (a TypeError) at test time; our ValueError for users
    with pytest.raises((ValueError, TypeError), match="kind"):
        token_set_scores(planted, ["months"], kind="dot")
    with pytest.raises(ValueError, match="No token set"):
        token_set_scores(planted, ["months"], min_set_size=10)


def test_model_without_tokenizer_needs_masks():
    model = build_model(d_vocab=10)
    with pytest.raises(ValueError, match="tokenizer"):
        token_set_scores(model)
    result = token_set_scores(model, {"low": np.arange(10) < 4})
    assert len(result.best) == 2 * model.cfg.d_mlp


def test_save_and_load(planted, tmp_path):
    from tl_universality.core.errors import CorruptCacheError

    result = token_set_scores(planted, ["months", "leading_space", "quote"], layers=1)
    loaded = TokenSetScores.load(result.save(tmp_path / "sets"))
    pd.testing.assert_frame_equal(loaded.scores, result.scores)
    pd.testing.assert_frame_equal(loaded.best, result.best)
    assert loaded.kind == result.kind and loaded.skipped == result.skipped == ["quote"]
    with pytest.raises(CorruptCacheError):
        TokenSetScores.load(tmp_path / "nothing")

"""The neuron table: weight statistics against numpy, activation moments against scipy on
``run_with_cache`` activations, streaming invariance, and the correlation join."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import tl_universality  # noqa: F401  (registers model.universality)
from tests.helpers import build_model
from tl_universality.analyses.neuron_stats import (
    activation_moments,
    compare_universal,
    join_correlation,
    neuron_stats,
    weight_cosines,
    weight_stats,
)
from tl_universality.data.tokens import as_token_source

BOS = 0
WEIGHT = ["w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty"]
VOCAB = ["vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt"]
ACTS = [
    "mean",
    "var",
    "skew",
    "kurt",
    "act_freq",
    "post_mean",
    "post_var",
    "post_skew",
    "post_kurt",
]


@pytest.fixture(scope="module")
def model():
    m = build_model(n_ctx=16)
    m.process_weights_()  # the conventions the weight statistics assume
    return m


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, 64, (12, 16), generator=g)
    toks[:, 0] = BOS
    return toks


def cached(model, tokens, hook: str) -> np.ndarray:
    """Oracle: every layer's activations from run_with_cache, BOS position dropped."""
    _, cache = model.run_with_cache(tokens)
    per_layer = [
        cache[f"blocks.{layer}.mlp.{hook}"][:, 1:].reshape(-1, model.cfg.d_mlp)
        for layer in range(model.cfg.n_layers)
    ]
    return torch.cat(per_layer, dim=1).double().numpy()


def test_columns_and_weight_stats_against_numpy(model, tokens):
    table = neuron_stats(model, tokens, bos_token_id=BOS, progress=False)
    assert list(table.columns) == ["layer", "neuron", *WEIGHT, *VOCAB, *ACTS]
    assert len(table) == 2 * 64 and table.attrs["n_tokens"] == 12 * 15
    assert table.attrs["weight_notes"] == []
    for layer in range(2):
        W_in = model.W_in[layer].detach().double().numpy()
        W_out = model.W_out[layer].detach().double().numpy()
        b_in = model.b_in[layer].detach().double().numpy()
        rows = table[table.layer == layer]
        for n in (0, 17, 63):
            r = rows[rows.neuron == n].iloc[0]
            a, b = W_in[:, n], W_out[n]
            assert r["w_in_norm"] == pytest.approx(np.linalg.norm(a), rel=1e-12)
            assert r["input_bias"] == pytest.approx(b_in[n], rel=1e-12)
            assert r["w_out_norm"] == pytest.approx(np.linalg.norm(b), rel=1e-12)
            cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            assert r["in_out_sim"] == pytest.approx(cos, rel=1e-10, abs=1e-14)
            assert r["l2_penalty"] == pytest.approx(a @ a + b @ b, rel=1e-12)


def test_activation_moments_against_scipy(model, tokens):
    table = neuron_stats(model, tokens, bos_token_id=BOS, progress=False, batch_size=5)
    pre = cached(model, tokens, "hook_pre")
    post = cached(model, tokens, "hook_post")
    np.testing.assert_allclose(table["mean"], pre.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(table["var"], pre.var(0), rtol=1e-5)
    np.testing.assert_allclose(table["skew"], scipy.stats.skew(pre, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        table["kurt"], scipy.stats.kurtosis(pre, axis=0, fisher=False), rtol=1e-4
    )
    np.testing.assert_allclose(table["act_freq"], (pre > 0).mean(0))
    np.testing.assert_allclose(table["post_mean"], post.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(table["post_var"], post.var(0), rtol=1e-5)
    np.testing.assert_allclose(
        table["post_skew"], scipy.stats.skew(post, axis=0), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        table["post_kurt"], scipy.stats.kurtosis(post, axis=0, fisher=False), rtol=1e-4
    )


def test_streaming_many_batches_equals_one(model, tokens):
    one = activation_moments(model, tokens, bos_token_id=BOS, batch_size=12, progress=False)
    many = activation_moments(model, tokens, bos_token_id=BOS, batch_size=2, progress=False)
    for a, b in zip(one, many, strict=True):
        assert a.n == b.n == 12 * 15
        for stat in ("mean", "var", "skew", "kurt", "freq"):
            torch.testing.assert_close(getattr(a, stat), getattr(b, stat), rtol=1e-10, atol=1e-12)


def test_token_source_layers_and_excluded_ids(model, tokens):
    source = as_token_source(tokens, bos_token_id=BOS)
    table = neuron_stats(model, source, layers=[1], progress=False, exclude_token_ids=[BOS, 5])
    assert set(table["layer"]) == {1} and len(table) == 64
    keep = (tokens != BOS) & (tokens != 5)
    _, cache = model.run_with_cache(tokens)
    pre = cache["blocks.1.mlp.hook_pre"][keep].double().numpy()
    assert table.attrs["n_tokens"] == int(keep.sum())
    np.testing.assert_allclose(table["mean"], pre.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(table["act_freq"], (pre > 0).mean(0))


def test_weights_only_and_accessor(model, tokens):
    table = neuron_stats(model)
    assert list(table.columns) == ["layer", "neuron", *WEIGHT, *VOCAB]
    via_accessor = model.universality.neuron_stats(tokens, bos_token_id=BOS, progress=False)
    direct = neuron_stats(model, tokens, bos_token_id=BOS, progress=False)
    pd.testing.assert_frame_equal(via_accessor, direct)
    pd.testing.assert_frame_equal(weight_stats(model), direct[["layer", "neuron", *WEIGHT]])


def test_unprocessed_model_warns():
    raw = build_model()
    with pytest.warns(UserWarning, match="processed weights"):
        table = neuron_stats(raw)
    assert len(table.attrs["weight_notes"]) == 3
    processed = build_model()
    processed.process_weights_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neuron_stats(processed)


class FakeCorrelationResult:
    """Duck-typed stand-in for tl_universality.analyses.correlation.CorrelationResult."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def to_dataframe(self) -> pd.DataFrame:
        return self._frame


def correlation_frame(n_layers: int = 2, d_mlp: int = 64) -> pd.DataFrame:
    g = np.random.default_rng(0)
    index = pd.MultiIndex.from_product([range(n_layers), range(d_mlp)], names=["layer", "neuron"])
    excess = g.uniform(0, 1, len(index))
    frame = index.to_frame(index=False)
    frame = frame.assign(excess_corr=excess, max_corr=excess + 0.1, is_universal=excess > 0.5)
    return frame.sample(frac=1.0, random_state=0)  # order must not matter


def test_correlation_join(model):
    frame = correlation_frame()
    for corr in (frame, FakeCorrelationResult(frame)):
        table = neuron_stats(model, correlation=corr)
        assert {"excess_corr", "max_corr", "is_universal"} <= set(table.columns)
        merged = table.merge(frame, on=["layer", "neuron"], suffixes=("", "_ref"))
        np.testing.assert_array_equal(merged["excess_corr"], merged["excess_corr_ref"])
        assert len(table) == 128 and table["is_universal"].notna().all()
    # a partial result (one layer) leaves the others empty
    partial = neuron_stats(model, correlation=frame[frame.layer == 1])
    assert partial.loc[partial.layer == 0, "excess_corr"].isna().all()
    # a name clash gets a suffix instead of overwriting the table's column
    clash = frame.assign(kurt=1.0)
    small = pd.DataFrame({"layer": [0], "neuron": [0], "kurt": [5.0]})
    assert "kurt_corr" in join_correlation(small, clash).columns


def test_correlation_join_errors(model):
    frame = correlation_frame()
    with pytest.raises(ValueError, match="shares no"):
        neuron_stats(model, correlation=frame.assign(layer=frame.layer + 10))
    with pytest.raises(ValueError, match="several rows"):
        neuron_stats(model, correlation=pd.concat([frame, frame]))
    with pytest.raises(ValueError, match="layer"):
        neuron_stats(model, correlation=frame.drop(columns="neuron").reset_index(drop=True))
    with pytest.raises(TypeError, match="CorrelationResult"):
        neuron_stats(model, correlation=42)


def test_compare_universal_and_plots(model, tokens):
    table = neuron_stats(model, tokens, bos_token_id=BOS, progress=False)
    table = join_correlation(table, correlation_frame())
    summary = compare_universal(table).set_index("property")
    mask = table["is_universal"].to_numpy()
    assert summary.loc["kurt", "universal_mean"] == pytest.approx(table["kurt"][mask].mean())
    assert summary.loc["act_freq", "other_mean"] == pytest.approx(table["act_freq"][~mask].mean())
    assert summary.loc["kurt", "n_universal"] == mask.sum()
    with pytest.raises(KeyError, match="is_universal"):
        compare_universal(table.drop(columns="is_universal"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tl_universality.analyses.roles import prediction_neurons
    from tl_universality.outputs.plots import (
        plot_property_distributions,
        plot_role_counts,
        plot_vocab_moments_by_layer,
    )

    fig = plot_property_distributions(
        table, ["w_out_norm", "vocab_kurt", "kurt", "act_freq", "skew"]
    )
    assert sum(ax.get_visible() for ax in fig.axes) == 5
    roles = prediction_neurons(table)
    for fig2 in (plot_vocab_moments_by_layer(roles), plot_role_counts(roles), fig):
        plt.close(fig2)


def test_weight_cosines_against_numpy(model):
    W_in = model.W_in.detach().double().numpy()
    W_out = model.W_out.detach().double().numpy()

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    vec = {"in": lambda layer: unit(W_in[layer].T), "out": lambda layer: unit(W_out[layer])}
    for kind in ("in_in", "in_out", "out_in", "out_out"):
        a, b = kind.split("_")
        got = weight_cosines(model, 0, 1, kind=kind).numpy()
        np.testing.assert_allclose(got, vec[a](0) @ vec[b](1).T, rtol=1e-10, atol=1e-12)
    same = weight_cosines(model, 1, kind="in_in")
    torch.testing.assert_close(same, same.T)
    with pytest.raises((ValueError, TypeError)):
        weight_cosines(model, 0, kind="up_down")

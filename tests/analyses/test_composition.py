"""Head composition scores against a direct matrix computation (a numpy loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import build_model
from tl_universality.analyses.composition import HeadComposition, head_composition


@pytest.fixture(scope="module")
def model():
    return build_model(n_layers=3, d_mlp=16, n_heads=3, d_head=8)


def direct_scores(model) -> dict[str, np.ndarray]:
    """‖w M‖ / (‖w‖ ‖M‖_F) with the full d_model × d_model circuit M of each head."""
    n_layers, d_mlp, n_heads = model.cfg.n_layers, model.cfg.d_mlp, model.cfg.n_heads
    W_out = model.W_out.detach().double().numpy()
    W_Q, W_K = model.W_Q.detach().double().numpy(), model.W_K.detach().double().numpy()
    W_V, W_O = model.W_V.detach().double().numpy(), model.W_O.detach().double().numpy()
    out = {k: np.full((n_layers, d_mlp, n_layers, n_heads), np.nan) for k in "qkv"}
    for lh in range(n_layers):
        for h in range(n_heads):
            circuits = {
                "q": W_Q[lh, h] @ W_K[lh, h].T,
                "k": W_K[lh, h] @ W_Q[lh, h].T,
                "v": W_V[lh, h] @ W_O[lh, h],
            }
            for ln in range(lh):
                for n in range(d_mlp):
                    w = W_out[ln, n]
                    for kind, M in circuits.items():
                        score = np.linalg.norm(w @ M) / (np.linalg.norm(w) * np.linalg.norm(M))
                        out[kind][ln, n, lh, h] = score
    return out


def test_matches_direct_computation(model):
    result = head_composition(model, dtype=torch.float64)
    expected = direct_scores(model)
    for kind in "qkv":
        got = result[kind].numpy()
        assert got.shape == (3, 16, 3, 3)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected[kind]))
        np.testing.assert_allclose(got, expected[kind], rtol=1e-9, equal_nan=True)
    # q and k differ (the QK circuit is not symmetric)
    assert not np.allclose(result["q"].nan_to_num(), result["k"].nan_to_num())


def test_long_table(model):
    result = head_composition(model)
    table = result.to_dataframe()
    # later heads only: layer 0 -> heads of 1, 2; layer 1 -> heads of 2
    assert len(table) == 16 * 3 * (2 + 1)
    assert (table["head_layer"] > table["layer"]).all()
    assert list(table.columns) == [
        "layer", "neuron", "head_layer", "head_index", "q_comp", "k_comp", "v_comp",
    ]  # fmt: skip
    row = table.iloc[5]
    ln, n, lh, h = (int(row[c]) for c in ("layer", "neuron", "head_layer", "head_index"))
    assert row["v_comp"] == pytest.approx(float(result["v"][ln, n, lh, h]))
    high = result.to_dataframe(min_score=0.3)
    assert len(high) < len(table)
    assert (high[["q_comp", "k_comp", "v_comp"]].max(axis=1) >= 0.3).all()


def test_baseline_is_random_direction_level(model):
    """The mean squared score of random directions is 1/d_model, as documented."""
    result = head_composition(model)
    assert result.baseline == pytest.approx(1 / np.sqrt(model.cfg.d_model))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in range(2):
            model.blocks[layer].mlp.W_out.copy_(torch.randn(16, 32, generator=g))
    scores = head_composition(model)["v"]
    mean_sq = float(torch.nanmean(scores.double() ** 2))
    assert mean_sq == pytest.approx(1 / model.cfg.d_model, rel=0.25)


def test_subsets_and_errors():
    model = build_model(n_layers=3, d_mlp=8)
    part = head_composition(model, kinds=["v"], layers=[0], head_layers=[2])
    assert set(part.scores) == {"v"} and isinstance(part, HeadComposition)
    v = part["v"]
    assert not torch.isnan(v[0, :, 2]).any()
    assert torch.isnan(v[1]).all() and torch.isnan(v[0, :, 1]).all()
    assert len(part.to_dataframe()) == 8 * model.cfg.n_heads
    with pytest.raises((ValueError, TypeError)):
        head_composition(model, kinds=["x"])
    zero = build_model(n_layers=2, d_mlp=8)
    with torch.no_grad():
        zero.blocks[0].mlp.W_out[2] = 0
    assert torch.isnan(head_composition(zero)["q"][0, 2, 1]).all()  # no direction, no score


def test_save_and_load(model, tmp_path):
    from tl_universality.core.errors import CorruptCacheError

    result = head_composition(model, kinds=["q", "v"])
    loaded = HeadComposition.load(result.save(tmp_path / "comp"))
    assert list(loaded.scores) == ["q", "v"] and loaded.baseline == result.baseline
    for kind in ("q", "v"):
        torch.testing.assert_close(loaded[kind], result[kind], equal_nan=True)
    assert loaded.neuron_layers == result.neuron_layers
    with pytest.raises(CorruptCacheError):
        HeadComposition.load(tmp_path / "nothing")

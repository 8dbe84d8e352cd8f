"""Baselines from statistics against explicitly mixed activations; the noise null law."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_universality.stats.baselines import (
    baseline_max_corr,
    check_kind,
    mixed_max_corr,
    mixing_matrix,
    noise_max_corr,
    null_corr_sf,
    null_max_corr,
)
from tl_universality.stats.cross_moments import CrossMoments


def layered_data(n: int = 2000, seed: int = 0):
    """A: 5 units; B: two "layers" of 4 and 3 units, correlated with A, one dead B unit."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g, dtype=torch.float64)
    a = torch.stack(
        [z[:, 0], z[:, 1] + z[:, 2], torch.relu(z[:, 3]), 1e3 + 1e-2 * z[:, 4], z[:, 5]], 1
    )
    noise = torch.randn(n, 7, generator=g, dtype=torch.float64)
    b = torch.stack(
        [
            z[:, 0] + 0.3 * noise[:, 0],
            z[:, 1] - z[:, 2] + noise[:, 1],
            torch.full((n,), 2.0, dtype=torch.float64),  # dead
            torch.relu(z[:, 3]) + noise[:, 3],
            z[:, 4] + noise[:, 4],
            z[:, 5] * 2 + noise[:, 5],
            noise[:, 6],
        ],
        1,
    )
    return a, b, [(0, 4), (4, 7)]


def explicit_max(a: torch.Tensor, b: torch.Tensor, blocks, kind, draw, keys) -> np.ndarray:
    """Max over mixed units of np.corrcoef on explicitly mixed activations."""
    mixed = []
    for (s, e), key in zip(blocks, keys, strict=True):
        mix = mixing_matrix(kind, e - s, seed=7, key=(*key, draw))
        mixed.append(b[:, s:e] @ mix.T)
    z = torch.cat(mixed, 1).numpy()
    corr = np.corrcoef(np.concatenate([a.numpy(), z], 1).T)[: a.shape[1], a.shape[1] :]
    return corr.max(1)


@pytest.mark.parametrize("kind", ["rotation", "gaussian_mix"])
@pytest.mark.parametrize("product_dtype", [torch.float32, torch.float64])
def test_mixing_baseline_from_statistics_equals_explicitly_mixed_activations(kind, product_dtype):
    a, b, blocks = layered_data()
    stats = CrossMoments(5, 7, b_blocks=blocks, product_dtype=product_dtype)
    for i in range(0, 2000, 250):
        stats.update(a[i : i + 250].float(), b[i : i + 250].float())
    a32, b32 = a.float().double(), b.float().double()  # the data the statistics saw
    keys = [("layer", 0), ("layer", 1)]
    ours = baseline_max_corr(stats, kind, n_draws=3, seed=7, block_keys=keys)
    assert ours.shape == (3, 5)
    for draw in range(3):
        ref = explicit_max(a32, b32, blocks, kind, draw, keys)
        assert np.abs(ours[draw].numpy() - ref).max() <= 1e-6
    # Draws differ from each other, and the same seed reproduces them.
    assert not torch.allclose(ours[0], ours[1])
    again = baseline_max_corr(stats, kind, n_draws=3, seed=7, block_keys=keys)
    assert torch.equal(ours, again)
    other = baseline_max_corr(stats, kind, n_draws=3, seed=8, block_keys=keys)
    assert not torch.equal(ours, other)


def test_rotation_keeps_the_layer_and_the_baseline_is_below_the_real_max():
    a, b, blocks = layered_data()
    stats = CrossMoments(5, 7, b_blocks=blocks).update(a, b)
    base = baseline_max_corr(stats, n_draws=4, seed=0).mean(0)
    real = stats.corr().nan_to_num(-1).amax(1)
    # A's unit 0 has a near-copy in B; a random rotation of B's layer smears it.
    assert real[0] > 0.9 and base[0] < real[0]
    q = mixing_matrix("rotation", 6, seed=3)
    torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=torch.float64))
    assert abs(torch.linalg.det(q).abs().item() - 1) < 1e-12


def test_dead_rows_and_fully_dead_layers_are_nan():
    a, b, _ = layered_data()
    a = a.clone()
    a[:, 4] = 1.5  # a dead reference unit
    b = b.clone()
    b[:, 4:7] = 0.0  # the whole second layer is dead
    stats = CrossMoments(5, 7, b_blocks=[(0, 4), (4, 7)]).update(a, b)
    base = baseline_max_corr(stats, "rotation", n_draws=2)
    assert base[:, 4].isnan().all() and not base[:, :4].isnan().any()
    only_dead = mixed_max_corr(
        stats.comoment(cols=slice(4, 7)), stats.m2_x, stats.within_b(1), "rotation"
    )
    assert only_dead.isnan().all()
    noise = baseline_max_corr(stats, "gaussian_noise", n_draws=2)
    assert noise[:, 4].isnan().all() and (noise[:, :4] > 0).all()


def test_mixing_baselines_need_blocks_and_kinds_are_checked():
    stats = CrossMoments(2, 3).update(torch.randn(50, 2), torch.randn(50, 3))
    with pytest.raises(ValueError, match="b_blocks"):
        baseline_max_corr(stats, "rotation")
    with pytest.raises(ValueError, match="Unknown baseline"):
        check_kind("permutation")
    with pytest.raises(ValueError, match="not a mixing"):
        mixing_matrix("gaussian_noise", 3)


def test_null_distribution_matches_the_beta_law():
    stats = pytest.importorskip("scipy.stats")
    for n in (4, 30, 1000, 10**6):
        sd = 1 / np.sqrt(n)
        rs = np.array([-0.4, 0.0, 0.05, 0.3]) if n < 100 else np.array([-sd, 0.0, 3 * sd, 8 * sd])
        ref = stats.beta((n - 2) / 2, (n - 2) / 2).sf((rs + 1) / 2)
        ours = null_corr_sf(torch.tensor(rs), n).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-6)
    # Inverting the law of the max: P(max <= r) = (1 - sf(r))^b at the returned r.
    u = torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64)
    for b in (1, 7, 5000):
        r = null_max_corr(u, 500, b)
        cdf = (1 - null_corr_sf(r, 500)) ** b
        torch.testing.assert_close(cdf, u, rtol=1e-5, atol=1e-7)


def test_noise_baseline_matches_simulated_noise_units():
    # 300 tokens, 40 noise units: the simulated max correlation against real Gaussian noise.
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300)
    sims = []
    for _ in range(300):
        z = rng.standard_normal((40, 300))
        sims.append(np.corrcoef(np.vstack([x, z]))[0, 1:].max())
    draws = noise_max_corr(300, 40, 3000, n_draws=1, seed=0).numpy().ravel()
    assert abs(draws.mean() - np.mean(sims)) < 0.01
    assert abs(draws.std() - np.std(sims)) < 0.01
    torch.testing.assert_close(
        noise_max_corr(300, 40, 5, n_draws=2, seed=1, key=(0, 1)),
        noise_max_corr(300, 40, 5, n_draws=2, seed=1, key=(0, 1)),
    )
    with pytest.raises(ValueError, match="at least 3 tokens"):
        null_corr_sf(0.1, 2)


def test_rotations_are_haar_distributed():
    """Against the Haar measure on O(6), with 4,000 draws of fixed seeds: E tr Q = 0,
    E (tr Q)² = E tr Q² = 1 (Diaconis & Shahshahani 1994), E det Q = 0 (both components alike),
    and Q₀₀² ~ Beta(1/2, 5/2) (a uniform unit vector's first coordinate), by a KS test; each
    mean within 5 standard errors."""
    from scipy import stats as sps

    from tl_universality.stats.baselines import haar_rotation

    draws = 4000
    gen = torch.Generator().manual_seed(0)
    qs = torch.stack([haar_rotation(6, gen) for _ in range(draws)])
    eye = torch.eye(6, dtype=torch.float64)
    assert (qs @ qs.transpose(1, 2) - eye).abs().max() < 1e-12
    tr = qs.diagonal(dim1=1, dim2=2).sum(1).numpy()
    tr_sq = (qs @ qs).diagonal(dim1=1, dim2=2).sum(1).numpy()
    det = torch.linalg.det(qs).numpy()
    for values, mean in ((tr, 0.0), (tr**2, 1.0), (tr_sq, 1.0), (det, 0.0)):
        se = values.std() / np.sqrt(draws)
        assert abs(values.mean() - mean) < 5 * se, (values.mean(), mean, se)
    q00 = qs[:, 0, 0].numpy()
    assert sps.kstest(q00**2, sps.beta(0.5, 2.5).cdf).pvalue > 1e-3
    assert sps.kstest(qs[:, 3, 1].numpy() ** 2, sps.beta(0.5, 2.5).cdf).pvalue > 1e-3

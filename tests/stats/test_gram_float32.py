"""Within-layer second moments (the grams the rotation and Gaussian-mix baselines read) keep the
cross product's float32 rules, against numpy float64 on the same float32 values.

Before, the grams were one float32 product over the whole batch: two ±1 units over a batch of
32,768 tokens were off by 3.4e-4 of their spread (the rotated units' variances by 2.7e-4), a
unit active on one token by 1e-4 at 4,096 tokens, dense GELU units by 8e-7 at 32,768."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.stats.test_float32_rule import few_valued_twins
from tl_universality.stats.baselines import mixed_correlation, mixing_matrix
from tl_universality.stats.cross_moments import CrossMoments

F64 = torch.float64


def gram_error(got: torch.Tensor, y: torch.Tensor) -> float:
    """Largest gram entry error over ``√(Σy_i'² Σy_j'²)``, against numpy float64."""
    yd = y.double().numpy()
    yc = yd - yd.mean(0)
    want = yc.T @ yc
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want)))
    return float((np.abs(got.numpy() - want) / scale).max())


def gram_of(y: torch.Tensor, batch: int, side: str = "b", x: torch.Tensor | None = None):
    """The float32 statistics' gram of ``y`` as one tracked block, on side A or B."""
    n, d = y.shape
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(9)) if x is None else x
    if side == "b":
        stats = CrossMoments(x.shape[1], d, b_blocks=[(0, d)], product_dtype="float32")
        for i in range(0, n, batch):
            stats.update(x[i : i + batch], y[i : i + batch])
        return stats, stats.within_b(0)
    stats = CrossMoments(d, x.shape[1], a_blocks=[(0, d)], product_dtype="float32")
    for i in range(0, n, batch):
        stats.update(y[i : i + batch], x[i : i + batch])
    return stats, stats.within_a(0)


@pytest.mark.parametrize("kind", ["±1", "three levels", "one inner value"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_units_that_take_few_values(kind: str, side: str):
    """Four few-valued units and their twins (r from 1 to ~0.6), one batch of 32,768 tokens."""
    few, twins = few_valued_twins(kind, 32768, seed=5)
    y = torch.cat([few, twins], 1).float()
    _, got = gram_of(y, 32768, side)
    assert gram_error(got, y) <= 1e-7


def test_units_active_on_one_token_and_sparse_units():
    g = torch.Generator().manual_seed(3)
    n = 32768
    y = torch.randn(n, 6, generator=g) * 1e-3
    y[123, 0] = 50.0  # one token
    y[4000, 1], y[4000, 2] = 30.0, -20.0  # one token, shared by two units
    y[:, 3] += torch.randn(n, generator=g)
    y[:, 4] = torch.relu(torch.randn(n, generator=g) - 2.5)  # active on ~0.6% of tokens
    for batch in (100, 4096, 32768):
        _, got = gram_of(y, batch)
        assert gram_error(got, y) <= 2e-7, batch


def test_dense_units_over_long_batches():
    """Sums over one batch of 32,768 tokens reached 8e-7; runs of 512 tokens keep ~1e-7."""
    g = torch.Generator().manual_seed(4)
    mix = torch.randn(64, 64, generator=g)
    y = torch.nn.functional.gelu(torch.randn(32768, 64, generator=g) @ mix + 0.5)
    _, got = gram_of(y, 32768)
    assert gram_error(got, y) <= 2e-7


def test_few_valued_and_spiky_units_in_a_layer_of_dense_ones():
    """All three kinds side by side in one block, over two layers: each entry within the bound,
    and the cross product unchanged bit for bit by tracking the grams (they restore what they
    take out of the shared float32 batch)."""
    g = torch.Generator().manual_seed(6)
    n = 8192
    few, twins = few_valued_twins("±1", n, seed=7)
    dense = torch.randn(n, 8, generator=g, dtype=F64)
    spiky = torch.randn(n, 2, generator=g, dtype=F64) * 1e-2
    spiky[77, 0], spiky[5000, 1] = 40.0, -25.0
    y = torch.cat([dense, few, twins[:, :2], spiky], 1).float()  # 16 units: two layers of 8
    x = torch.cat([few[:, :2], dense[:, :2]], 1).float()
    tracked = CrossMoments(4, 16, b_blocks=[(0, 8), (8, 16)], product_dtype="float32")
    plain = CrossMoments(4, 16, product_dtype="float32")
    for i in range(0, n, 4096):
        tracked.update(x[i : i + 4096], y[i : i + 4096])
        plain.update(x[i : i + 4096], y[i : i + 4096])
    full = torch.zeros(16, 16, dtype=F64)
    full[:8, :8], full[8:, 8:] = tracked.within_b(0), tracked.within_b(1)
    for lo in (0, 8):
        block = slice(lo, lo + 8)
        assert gram_error(full[block, block], y[:, block]) <= 2e-7
    assert torch.equal(tracked.corr(), plain.corr())


def test_rotation_baseline_of_few_valued_units():
    """The rotated units' correlations from the float32 statistics, against numpy float64 on
    the explicitly rotated float32 values: was 1.3e-4 off for ±1 units."""
    few, twins = few_valued_twins("±1", 32768, seed=8)
    y = torch.cat([few, twins], 1).float()
    noise = torch.randn(32768, 3, generator=torch.Generator().manual_seed(1))
    x = (few[:, :3] + 0.3 * noise).float()
    stats, gram = gram_of(y, 32768, "b", x)
    mix = mixing_matrix("rotation", 8, seed=0, key=("test",))
    got = mixed_correlation(stats.comoment(), stats.m2_x, gram, mix).numpy()
    z = y.double().numpy() @ mix.numpy().T
    want = np.corrcoef(np.concatenate([x.double().numpy(), z], 1).T)[:3, 3:]
    assert np.abs(got - want).max() <= 1e-7

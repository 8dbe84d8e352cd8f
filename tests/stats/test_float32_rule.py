"""One rule decides where float32 products of unit pairs are safe, for the exhaustive update
(CrossMoments) and the screened pairs (PairMoments) alike: a unit's sum of squares per token
above 1e8 x float32's smallest normal number (and its sum below 1e37). Both paths take the same
decision on the same batch, and both meet their bounds against numpy float64.

Before the rule was shared the two disagreed on units of spread ~1e-16 on a few hundred tokens:
the exhaustive update refused any unit with |x - c| < 1e-15 (sending the batch to float64),
the screened pairs accepted any chunk with sum of squares above 1e-28."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_universality.stats.cross_moments import CrossMoments
from tl_universality.stats.pair_moments import PairMoments, float32_safe, sequence_chunks

F64 = torch.float64
ROWS = 4000  # one batch, ten sequences of 400 tokens


def units(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A: two units uniform on [-scale, scale] (so |x - mean| < scale on every token); B: A's
    first unit plus a third of its spread in noise (r ≈ 0.95), and an independent unit."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(ROWS, 4, generator=g, dtype=F64) * 2 - 1
    a = u[:, :2] * scale
    b = torch.stack([(u[:, 0] + u[:, 2] / 3) * scale, u[:, 3] * scale], 1)
    return a, b


def numpy_corr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    full = np.corrcoef(np.concatenate([a.numpy(), b.numpy()], 1).T)
    return full[:2, 2:]


@pytest.mark.parametrize(
    ("scale", "fits"),
    [
        (5e-15, True),  # sum of squares per token ~8e-30: above the floor of 1.18e-30
        (8e-16, False),  # ~2.1e-31 per token: below it
        (3e-16, False),
        (1.0, True),
        (1e18, False),  # 4000 x 1e36 above the ceiling of 1e37
    ],
)
def test_both_paths_take_the_same_decision_and_keep_their_bound(scale: float, fits: bool):
    a, b = (v.float().double() for v in units(scale))  # what float32 activations hold
    want = numpy_corr(a, b)
    bound = 1e-6 if fits else 1e-12  # float32 products, or the float64 fallback

    stats = CrossMoments(2, 2).update(a.float(), b.float())
    assert stats.fallback_batches == (0 if fits else 1)
    assert np.abs(stats.corr().numpy() - want).max() <= bound

    lengths = [400] * 10
    shift = torch.zeros(2, dtype=F64)
    assert float32_safe(sequence_chunks(a, lengths, shift, dtype=torch.float32)) == fits
    cols = torch.tensor([[0, 1], [1, 0]])
    pm = PairMoments.fresh(cols, n_b=2).update(a, b, lengths=lengths, dtype=torch.float32)
    got = pm.corr().numpy()
    assert np.abs(got - np.take_along_axis(want, cols.numpy(), 1)).max() <= bound


def test_two_valued_units_are_the_documented_worst_case_and_float64_fixes_them():
    """Units that are ±1 on every token are the worst case of float32 products known to us
    (docs/correlation.md, "Numerics"): every product repeats one of a few values, so a float32
    sum rounds the same way at every step instead of at random. The documented figure is 2e-6 at
    batches of 32,768 tokens (continuous units: ~1e-7), and float64 products are exact."""
    n, batch = 65536, 32768
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 2, (n, 4), generator=g) * 2 - 1).to(F64)
    flips = torch.rand(n, 3, generator=g, dtype=F64) < torch.tensor([0.01, 0.1, 0.3], dtype=F64)
    y = torch.cat([x[:, :1], torch.where(flips, -x[:, 1:], x[:, 1:])], 1)  # r = 1 to 0.4
    want = np.corrcoef(x.T.numpy(), y.T.numpy())[:4, 4:]
    errors = {}
    for product in (torch.float32, torch.float64):
        stats = CrossMoments(4, 4, product_dtype=product)
        for i in range(0, n, batch):
            stats.update(x[i : i + batch].float(), y[i : i + batch].float())
        errors[product] = np.abs(stats.corr().numpy() - want).max()
    assert errors[torch.float32] <= 2.5e-6
    assert errors[torch.float64] <= 1e-12


@pytest.mark.parametrize("silent", [0.2, 0.4, 0.49])
def test_relu_twins_silent_on_part_of_the_batch_meet_1e6(silent: float):
    """ReLU units silent on 20-49% of tokens and their noisy twins, batches of 32,768 tokens
    (32 sequences of GPT-2's 1,024). Centred on their mean, every silent token entered the float32
    product as the same value −m, and the sums of such twins drifted to 1.2e-6 (40-49% silent);
    units silent on an eighth of the batch or more are now centred on exactly 0."""
    n, batch = 65536, 32768
    worst = 0.0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 4, generator=g, dtype=F64)
        w = torch.randn(n, 4, generator=g, dtype=F64)
        bias = -float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(silent)))
        x = torch.relu(z + bias).float()
        noise = torch.tensor([0.0, 0.05, 0.2, 0.5], dtype=F64)
        y = torch.relu(z + noise * w + bias).float()
        want = np.corrcoef(x.double().T.numpy(), y.double().T.numpy())[:4, 4:]
        stats = CrossMoments(4, 4)
        for i in range(0, n, batch):
            stats.update(x[i : i + batch], y[i : i + batch])
        worst = max(worst, float(np.abs(stats.corr().numpy() - want).max()))
    assert worst <= 1e-6

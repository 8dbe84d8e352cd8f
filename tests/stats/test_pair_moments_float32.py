"""PairMoments with float32 products (the screened mode's default) against numpy float64."""

from __future__ import annotations

import numpy as np
import torch

from tl_universality.stats.pair_moments import (
    FLOAT32_RUN,
    PairMoments,
    float32_safe,
    sequence_chunks,
)

F64 = torch.float64


def oracle(x, y, cols) -> np.ndarray:
    full = np.corrcoef(x.double().numpy().T, y.double().numpy().T)[: x.shape[1], x.shape[1] :]
    return np.take_along_axis(full, cols.numpy(), 1)


def adversarial(n_tok: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 activations that stress float32 products: huge means, drift, few-hot units,
    single-token spikes, magnitudes from 1e-3 to 1e3, near-duplicates (r close to 1)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_tok, dtype=F64)[:, None]
    base = torch.randn(n_tok, 4, generator=g, dtype=F64)
    x = torch.cat(
        [
            base * 1e-3 + 300.0,  # spread 1e-3 on a mean of 300
            base * 1e3 - 5e4,
            torch.relu(base) * 7.0,  # half silent
            (torch.rand(n_tok, 2, generator=g, dtype=F64) < 0.002) * 40.0,  # few-hot
            torch.where(t == n_tok // 3, 1e3, 0.0).expand(-1, 1),  # one token in the stream
            base[:, :2] + 1e-3 * t,  # drift
        ],
        1,
    )
    noise = torch.randn(n_tok, x.shape[1], generator=g, dtype=F64)
    y = torch.cat([x + 1e-4 * noise * x.std(0), 0.3 * x[:, :3].sum(1, keepdim=True) + noise], 1)
    return x.float(), y.float()


def test_float32_products_are_within_1e_6_of_numpy() -> None:
    n1, n_tok = 600, 6000
    x, y = adversarial(n_tok, seed=0)
    a, b = x.shape[1], y.shape[1]
    cols = torch.randint(0, b, (a, 5), generator=torch.Generator().manual_seed(1))
    cols[:, 0] = torch.arange(a)  # each unit's near-duplicate
    # seeded from the exact moments of the first n1 tokens, as the screened mode is
    x1, y1 = x[:n1].double(), y[:n1].double()
    xc, yc = x1 - x1.mean(0), y1 - y1.mean(0)
    pm = PairMoments.from_moments(
        cols, n1, x1.mean(0), (xc**2).sum(0), y1.mean(0), (yc**2).sum(0),
        (xc.T @ yc).gather(1, cols), shift_dtype=torch.float32,
    )  # fmt: skip
    assert torch.equal(pm.shift_x.float().double(), pm.shift_x)  # float32 numbers
    lengths = [FLOAT32_RUN + 188, 40, 1, 0, 171] * 6  # longer than one float32 run, too
    start = n1
    while start < n_tok:
        part = list(lengths)
        stop = start + sum(part)
        if stop > n_tok:
            part, stop = [n_tok - start], n_tok
        chunks = sequence_chunks(x[start:stop], part, pm.shift_x, b, dtype=torch.float32)
        assert chunks[0].data.dtype == torch.float32 and float32_safe(chunks)
        pm.update(x[start:stop], y[start:stop], lengths=part, dtype=torch.float32)
        start = stop
    want = oracle(x, y, cols)
    got = pm.corr().numpy()
    ok = ~np.isnan(want)
    assert np.isnan(got[~ok]).all()
    err = np.abs(got[ok] - want[ok]).max()
    assert err < 1e-6, err
    assert pm.n == n_tok


def test_moments_about_a_rounded_shift_are_exact() -> None:
    """from_moments re-expresses the earlier sums about the float32-rounded mean: with float64
    products the result is numpy's to 1e-12 (an error in the re-expression would show)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(800, 4, generator=g, dtype=F64) * 0.01 + 1234.5678
    y = x[:, :2].repeat(1, 3) + torch.randn(800, 6, generator=g, dtype=F64) * 0.02 - 77.7
    cols = torch.tensor([[0, 5], [1, 2], [3, 3], [4, 0]])
    n1 = 300
    x1, y1 = x[:n1], y[:n1]
    xc, yc = x1 - x1.mean(0), y1 - y1.mean(0)
    pm = PairMoments.from_moments(
        cols, n1, x1.mean(0), (xc**2).sum(0), y1.mean(0), (yc**2).sum(0),
        (xc.T @ yc).gather(1, cols), shift_dtype=torch.float32,
    )  # fmt: skip
    assert (pm.shift_x - x1.mean(0)).abs().max() > 0  # the shift did move
    pm.update(x[n1:], y[n1:], lengths=[50] * 10)  # float64 products
    assert np.abs(pm.corr().numpy() - oracle(x, y, cols)).max() < 1e-12
    np.testing.assert_allclose(pm.mean_x().numpy(), x.mean(0).numpy(), rtol=1e-14)


def test_values_float32_cannot_hold_fall_back_to_float64() -> None:
    """Spreads of 1e-21 (products sink below float32's normal range) and magnitudes of 1e19
    (squares overflow float32): float32_safe refuses them and update uses float64."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(400, 3, generator=g, dtype=F64)
    x = torch.cat([z[:, :1] * 1e-21, z[:, 1:2] * 1e19, z[:, 2:]], 1)
    y = x + 0.5 * torch.randn(400, 3, generator=g, dtype=F64) * x.std(0)
    cols = torch.tensor([[0, 1], [1, 2], [2, 0]])
    shift = torch.zeros(3, dtype=F64)
    chunks = sequence_chunks(x, [40] * 10, shift, dtype=torch.float32)
    assert not float32_safe(chunks)
    assert float32_safe(sequence_chunks(x[:, 2:], [40] * 10, shift[:1], dtype=torch.float32))
    want = oracle(x, y, cols)
    pm = PairMoments.fresh(cols, n_b=3).update(x, y, lengths=[40] * 10, dtype=torch.float32)
    assert np.abs(pm.corr().numpy() - want).max() < 1e-12
    # what the fallback avoids: forced float32 products of the 1e-21 unit are wrong
    forced = PairMoments.fresh(cols, n_b=3)
    xs = sequence_chunks(x, [40] * 10, shift, 3, dtype=torch.float32)
    ys = sequence_chunks(y, [40] * 10, shift, 3, dtype=torch.float32)
    for cx, cy in zip(xs, ys, strict=True):
        forced.add(cx, cy)
    assert not np.abs(forced.corr().numpy()[0, 0] - want[0, 0]) < 1e-6

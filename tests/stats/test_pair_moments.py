"""PairMoments against numpy float64, and its standard errors against repeated streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_universality.stats.pair_moments import PairMoments, Sequences, sequence_chunks

F64 = torch.float64


def data(n_tok: int, a: int, b: int, seed: int, mean: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tok, a, generator=g, dtype=F64) + mean
    y = 0.5 * x[:, :1].repeat(1, b) + torch.randn(n_tok, b, generator=g, dtype=F64) + mean
    return x, y


def oracle(x, y, cols) -> np.ndarray:
    full = np.corrcoef(x.numpy().T, y.numpy().T)[: x.shape[1], x.shape[1] :]
    return np.take_along_axis(full, cols.numpy(), 1)


def test_uneven_sequences_and_big_means_match_numpy() -> None:
    x, y = data(700, 6, 9, seed=1, mean=300.0)
    x = x.float().double()  # float32 activations, as models give them
    x[:, 2] = 4.0  # a dead row unit
    cols = torch.randint(0, 9, (6, 3), generator=torch.Generator().manual_seed(2))
    cols[0] = torch.tensor([5, 5, 1])  # a repeated column is fine
    pm = PairMoments.fresh(cols, n_b=9)
    lengths = [37, 1, 0, 62] * 7
    start = 0
    for part in (lengths[:10], lengths[10:]):
        stop = start + sum(part)
        pm.update(x[start:stop], y[start:stop], lengths=part)
        start = stop
    got = pm.corr().numpy()
    want = oracle(x, y, cols)
    assert np.isnan(got[2]).all()
    ok = ~np.isnan(want)
    assert np.abs(got[ok] - want[ok]).max() < 1e-9  # raw means of 300, shift 0
    assert pm.n == 700 and pm.blocks == 21  # the empty sequences are no block
    np.testing.assert_allclose(pm.mean_x().numpy(), x.mean(0).numpy(), rtol=1e-13)


def test_start_from_moments_then_stream_equals_all_at_once() -> None:
    x, y = data(900, 5, 7, seed=3, mean=2.0)
    cols = torch.tensor([[0, 6], [1, 2], [3, 3], [4, 0], [2, 5]])
    n1 = 300
    x1, y1 = x[:n1], y[:n1]
    xc, yc = x1 - x1.mean(0), y1 - y1.mean(0)
    comoment = (xc.T @ yc).gather(1, cols)
    pm = PairMoments.from_moments(
        cols, n1, x1.mean(0), (xc**2).sum(0), y1.mean(0), (yc**2).sum(0), comoment
    )
    pm.update(x[n1:], y[n1:], lengths=[50] * 12)
    assert np.abs(pm.corr().numpy() - oracle(x, y, cols)).max() < 1e-13


def test_gathered_products_equal_sampled_products() -> None:
    x, y = data(120, 4, 6, seed=4)
    cols = torch.tensor([[0, 1, 5], [2, 2, 3], [4, 0, 1], [5, 3, 2]])
    pm = PairMoments.fresh(cols, n_b=6)
    xs, ys = x.view(3, 40, 4), y.view(3, 40, 6)
    want = torch.einsum("sta,stb->sab", xs, ys).gather(2, cols.expand(3, -1, -1))
    lens = torch.full((3,), 40)
    got = pm._pair_products(Sequences.from_padded(xs, lens), Sequences.from_padded(ys, lens))
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(pm._gathered_products(xs, ys), want, atol=1e-12)
    # shared chunks (one float64 copy per model) give what update gives
    shared = PairMoments.fresh(cols, n_b=6)
    for cx, cy in zip(
        sequence_chunks(x, [40] * 3, shared.shift_x),
        sequence_chunks(y, [40] * 3, shared.shift_y),
        strict=True,
    ):
        shared.add(cx, cy)
    pm.update(x, y, lengths=[40] * 3)
    assert torch.equal(shared.corr(), pm.corr())


def test_reduce_across_two_parts_equals_one_stream() -> None:
    x, y = data(400, 3, 4, seed=5, mean=1.0)
    cols = torch.tensor([[0, 1], [2, 3], [1, 1]])
    shift_x, shift_y = torch.full((3,), 1.0, dtype=F64), torch.full((4,), 1.0, dtype=F64)
    ones3, ones4, pilot = torch.ones(3, dtype=F64), torch.ones(4, dtype=F64), torch.zeros(3, 2)
    parts = [PairMoments(cols, shift_x, shift_y, ones3, ones4, pilot) for _ in range(2)]
    parts[0].update(x[:100], y[:100], lengths=[25] * 4)
    parts[1].update(x[100:], y[100:], lengths=[30] * 10)
    merged = PairMoments.from_state_dict(parts[0].state_dict())

    sums = parts[1].state_dict()
    order = iter([*("sx", "sxx", "sy", "syy", "sxy", "psi", "psi_sq", "psi_n"), "counts"])

    def reduce(t, op):  # what an all-reduce over two ranks gives: add rank 1's tensor
        assert op == "sum"
        return t + sums[next(order)].to(t.dtype)

    merged.reduce_across(reduce)
    assert merged.n == 400 and merged.blocks == 14
    assert np.abs(merged.corr().numpy() - oracle(x, y, cols)).max() < 1e-13


def ar1(n_seq: int, length: int, rho: float, g: torch.Generator) -> torch.Tensor:
    """``[n_seq * length]`` AR(1) within each sequence, independent across sequences."""
    e = torch.randn(n_seq, length, generator=g, dtype=F64)
    out = torch.empty_like(e)
    out[:, 0] = e[:, 0]
    for t in range(1, length):
        out[:, t] = rho * out[:, t - 1] + (1 - rho**2) ** 0.5 * e[:, t]
    return out.reshape(-1)


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_standard_errors_match_spread_of_independent_streams(rho: float) -> None:
    """With autocorrelated tokens (rho = 0.9 inside each sequence) the i.i.d. error would be
    ~4x too small; the batch-means standard error must match the spread of 200 streams."""
    g = torch.Generator().manual_seed(11)
    n_seq, length, reps = 40, 50, 200
    cols = torch.tensor([[0, 1]])
    estimates, errors = [], []
    for _ in range(reps):
        z = ar1(n_seq, length, rho, g)
        w = ar1(n_seq, length, rho, g)
        v = ar1(n_seq, length, rho, g)
        x = z[:, None]
        y = torch.stack([0.6 * z + 0.8 * w, v], 1)  # true correlations 0.6 and 0
        # pilot from the first 10 sequences (as a screened run's stage 1), then the rest
        n1 = 10 * length
        x1, y1 = x[:n1], y[:n1]
        xc, yc = x1 - x1.mean(0), y1 - y1.mean(0)
        pm = PairMoments.from_moments(
            cols, n1, x1.mean(0), (xc**2).sum(0), y1.mean(0), (yc**2).sum(0),
            (xc.T @ yc).gather(1, cols),
        )  # fmt: skip
        pm.update(x[n1:], y[n1:], lengths=[length] * (n_seq - 10))
        estimates.append(pm.corr()[0])
        errors.append(pm.standard_error()[0])
    spread = torch.stack(estimates).std(0)
    mean_se = torch.stack(errors).mean(0)
    ratio = (mean_se / spread).numpy()
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio
    if rho:  # the i.i.d. formula (1 - r^2)/sqrt(n) is far off here
        iid = (1 - torch.tensor([0.36, 0.0], dtype=F64)) / (n_seq * length) ** 0.5
        assert np.all((spread / iid).numpy() > 2.5)

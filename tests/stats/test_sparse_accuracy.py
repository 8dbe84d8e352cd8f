"""The 1e-6 bound of float32 products on the units that break it: sparse, constant, huge-mean and
tiny-spread, huge-magnitude; for every batch size, against float64 numpy.corrcoef."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tl_universality.stats.cross_moments import CrossMoments


def oracle(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        full = np.corrcoef(np.concatenate([a.double().numpy(), b.double().numpy()], 1).T)
    return full[: a.shape[1], a.shape[1] :]


def sparse_units(n: int = 6000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A: a unit active on one token only (late, not in the first batch), one active on three,
    a dense Gaussian; B: an exact copy of the one-token unit (r = 1), a scaled copy of the
    three-token unit, and noise."""
    g = torch.Generator().manual_seed(seed)
    spike = torch.zeros(n)
    spike[4321] = 2.75
    few = torch.zeros(n)
    few[[100, 2500, 5999]] = torch.tensor([1.5, 0.25, 3.0])
    dense = torch.randn(n, generator=g)
    a = torch.stack([spike, few, dense], 1)
    b = torch.stack([spike.clone(), 0.37 * few, torch.randn(n, generator=g)], 1)
    return a, b


def accumulate(a: torch.Tensor, b: torch.Tensor, batch: int, **kw) -> CrossMoments:
    stats = CrossMoments(a.shape[1], b.shape[1], **kw)
    for start in range(0, a.shape[0], batch):
        stats.update(a[start : start + batch], b[start : start + batch])
    return stats


@pytest.mark.parametrize("batch", [1, 7, 64, 512, 6000])
def test_sparse_units_meet_1e6_with_float32_products(batch):
    a, b = sparse_units()
    ours = accumulate(a, b, batch).corr().numpy()
    ref = oracle(a, b)
    assert np.nanmax(np.abs(ours - ref)) <= 1e-6
    assert ours[0, 0] == pytest.approx(1.0, abs=1e-7)  # an exact r = 1 comes back as 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_activations_meet_1e6(dtype):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4000, 3, generator=g)
    a = torch.stack([z[:, 0], torch.relu(z[:, 1] - 1.5), z[:, 2]], 1).to(dtype)
    b = torch.stack([z[:, 0] * 0.5 + 0.1 * z[:, 2], torch.relu(z[:, 1] - 1.5)], 1).to(dtype)
    ours = accumulate(a, b, 256).corr().numpy()
    assert np.nanmax(np.abs(ours - oracle(a, b))) <= 1e-6


def test_huge_units_fall_back_instead_of_overflowing_to_nan():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    a = (1e19 * z).float()  # squares overflow float32's 3.4e38
    b = (1e19 * (0.6 * z[:, :1] + 0.8 * z[:, 1:])).float()
    stats = accumulate(a, b, 500)
    ours = stats.corr().numpy()
    assert np.isfinite(ours).all()
    assert np.abs(ours - oracle(a, b)).max() <= 1e-6
    assert stats.fallback_batches == 4


def test_tiny_spread_units_fall_back_instead_of_underflowing():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    a = 1e-21 * z[:, :1]
    b = 1e-21 * (0.6 * z[:, :1] + 0.8 * z[:, 1:])
    stats = accumulate(a, b, 500)
    assert abs(stats.corr().item() - oracle(a, b).item()) <= 1e-6
    assert stats.fallback_batches == 4


def test_constant_and_huge_mean_units_for_every_batch_size():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    a = torch.stack([torch.full((3000,), 3.5, dtype=torch.float64), 1e4 + 1e-3 * z[:, 0]], 1)
    b = (1e4 + 1e-3 * (0.8 * z[:, :1] + 0.6 * z[:, 1:])).float().double()
    a = a.float().double()
    for batch in (1, 33, 3000):
        ours = accumulate(a.float(), b.float(), batch).corr().numpy()
        ref = oracle(a, b)
        assert np.isnan(ours[0]).all() and np.isnan(ref[0]).all()
        assert abs(ours[1, 0] - ref[1, 0]) <= 1e-6


def test_inputs_are_never_modified():
    g = torch.Generator().manual_seed(8)
    a = 1e-21 * torch.randn(600, 2, generator=g, dtype=torch.float64)  # takes the float64 path
    b = torch.zeros(600, 3, dtype=torch.float64)
    b[5, 0] = 1.0  # and a spiky unit
    b[:, 1:] = torch.randn(600, 2, generator=g, dtype=torch.float64)
    before = (a.clone(), b.clone())
    accumulate(a, b, 200)
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


@pytest.mark.parametrize("sparse_product", [True, False])
def test_add_sparse_rows_matches_a_direct_loop(monkeypatch, sparse_product: bool) -> None:
    """The float64 sparse rows of the split product (and its per-entry fallback, for devices
    without a CSR product) against a direct float64 loop, with repeated tokens and units and a
    column chunk smaller than the dense side."""
    from tl_universality.stats.cross_moments import products

    g = torch.Generator().manual_seed(3)
    dense = torch.randn(50, 7, generator=g)
    tokens = torch.tensor([0, 3, 3, 49, 10, 0])
    units = torch.tensor([2, 2, 4, 0, 2, 5])
    values = torch.randn(6, generator=g, dtype=torch.float64)
    want = np.zeros((6, 7))
    for t, u, v in zip(tokens.tolist(), units.tolist(), values.tolist(), strict=True):
        want[u] += v * dense[t].double().numpy()
    if not sparse_product:

        def no_sparse(*args, **kwargs):
            raise NotImplementedError("no sparse tensors here")

        monkeypatch.setattr(products.torch, "sparse_coo_tensor", no_sparse)
    out = torch.zeros(6, 7, dtype=torch.float64)
    products.add_sparse_rows(out, units, tokens, values, dense, chunk=9)
    assert np.abs(out.numpy() - want).max() < 1e-14
    # into a transposed view, as the split product adds columns
    out_t = torch.zeros(7, 6, dtype=torch.float64)
    products.add_sparse_rows(out_t.T, units, tokens, values, dense, chunk=9)
    assert np.abs(out_t.T.numpy() - want).max() < 1e-14


def test_accumulate_in_row_blocks_equals_one_float64_add() -> None:
    from tl_universality.stats.cross_moments.products import CENTRE_BLOCK_CPU, accumulate

    g = torch.Generator().manual_seed(0)
    cols = 4096
    rows = 2 * CENTRE_BLOCK_CPU // cols + 3  # three blocks, the last one short
    acc = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    part = torch.randn(rows, cols, generator=g)
    want = acc + part.to(torch.float64)
    accumulate(acc, part)
    assert torch.equal(acc, want)

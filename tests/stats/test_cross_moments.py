"""CrossMoments against float64 numpy.corrcoef on adversarial synthetic units, merges, state."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from tl_universality.core.errors import EmptyTokenSourceError
from tl_universality.stats.cross_moments import CrossMoments, resolve_product_dtype


def adversarial(n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A: 6 units, B: 5 units, with the cases that break naive sums.

    A: a Gaussian, a unit with mean 1e3 and std 1e-2, a constant (dead) unit, a unit active on one
    token only (late in the stream, not in the first batch), a ReLU unit, and one whose mean drifts.
    B: noisy mixes of A (strong correlations), its own huge-mean unit, and a constant.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    one_hot = torch.zeros(n, dtype=torch.float64)
    one_hot[2017] = 3.0
    a = torch.stack(
        [
            z[:, 0],
            1e3 + 1e-2 * z[:, 1],
            torch.full((n,), 7.25, dtype=torch.float64),
            one_hot,
            torch.relu(z[:, 2] + 0.3),
            z[:, 3] + torch.linspace(0, 20, n, dtype=torch.float64),
        ],
        1,
    )
    noise = torch.randn(n, 5, generator=g, dtype=torch.float64)
    b = torch.stack(
        [
            a[:, 0] + 0.1 * noise[:, 0],
            -5e2 + 1e-2 * (z[:, 1] + 0.5 * noise[:, 1]),  # correlated with A's huge-mean unit
            torch.full((n,), -3.0, dtype=torch.float64),
            torch.nn.functional.gelu(z[:, 2]) + 0.2 * noise[:, 3],
            a[:, 5] * 0.5 + noise[:, 4],
        ],
        1,
    )
    return a, b


def oracle(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant units: NaN, as we want
        full = np.corrcoef(np.concatenate([a.numpy(), b.numpy()], 1).T)
    return full[: a.shape[1], a.shape[1] :]


def accumulate(a, b, sizes, **kw) -> CrossMoments:
    stats = CrossMoments(a.shape[1], b.shape[1], **kw)
    start = 0
    for size in sizes:
        stats.update(a[start : start + size], b[start : start + size])
        start += size
    assert start == a.shape[0]
    return stats


def batch_sizes(n: int, seed: int = 1) -> list[int]:
    """Irregular batches, including empty and one-token ones."""
    rng = np.random.default_rng(seed)
    sizes = [97, 0, 1]
    while sum(sizes) < n:
        sizes.append(int(min(rng.integers(1, 200), n - sum(sizes))))
    return sizes


@pytest.mark.parametrize(("product_dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("input_dtype", [torch.float64, torch.float32])
def test_matches_corrcoef_on_adversarial_units(product_dtype, tol, input_dtype):
    a, b = adversarial()
    a, b = a.to(input_dtype), b.to(input_dtype)
    ref = oracle(a.double(), b.double())
    stats = accumulate(a, b, batch_sizes(a.shape[0]), product_dtype=product_dtype)
    ours = stats.corr().numpy()
    assert stats.n == a.shape[0]
    # NaN exactly where a unit is constant, never 0 or 1.
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    assert stats.dead_x.tolist() == [False, False, True, False, False, False]
    assert stats.dead_y.tolist() == [False, False, True, False, False]
    assert np.nanmax(np.abs(ours - ref)) <= tol
    # The huge-mean units really are strongly correlated: precision was not lost.
    assert ref[1, 1] > 0.8 and abs(ours[1, 1] - ref[1, 1]) <= tol


def test_many_batches_huge_mean_small_std():
    # 200 batches of mean 1e3 / std 1e-2 data: raw sums would lose every significant digit.
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    a = 1e3 + 1e-2 * z[:, :1]
    b = 1e3 + 1e-2 * (0.6 * z[:, :1] + 0.8 * z[:, 1:])
    stats = accumulate(a, b, [100] * 200)
    assert abs(stats.corr().item() - oracle(a, b).item()) <= 1e-6
    torch.testing.assert_close(stats.var_x, a.var(0, unbiased=False), rtol=1e-9, atol=0)


def test_merge_of_halves_equals_whole_even_with_different_shifts():
    a, b = adversarial()
    blocks = dict(a_blocks=[(0, 3), (3, 6)], b_blocks=[(0, 2), (2, 5)])
    whole = accumulate(a, b, [500] * 6, product_dtype=torch.float64, **blocks)
    # The second half starts where the drifting unit has moved: its shift differs.
    first = accumulate(a[:1300], b[:1300], [300, 1000], product_dtype=torch.float64, **blocks)
    second = accumulate(a[1300:], b[1300:], [1700], product_dtype=torch.float64, **blocks)
    merged = first.merge(second)
    assert merged.n == whole.n
    torch.testing.assert_close(merged.corr(), whole.corr(), atol=1e-10, rtol=0, equal_nan=True)
    for i in range(2):
        torch.testing.assert_close(merged.within_a(i), whole.within_a(i), rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(merged.within_b(i), whole.within_b(i), rtol=1e-10, atol=1e-9)
    assert torch.equal(merged.dead_x, whole.dead_x)
    # The operands are untouched, and merging with empty statistics changes nothing.
    assert first.n == 1300
    empty = CrossMoments(6, 5, product_dtype=torch.float64, **blocks)
    torch.testing.assert_close(empty.merge(whole).corr(), whole.corr(), equal_nan=True)
    torch.testing.assert_close(whole.merge(empty).corr(), whole.corr(), equal_nan=True)
    # Accumulation continues after a merge (the shift is now the mean).
    more = merged.update(a[:100], b[:100])
    again = accumulate(
        torch.cat([a, a[:100]]), torch.cat([b, b[:100]]), [3100], product_dtype=torch.float64
    )
    torch.testing.assert_close(more.corr(), again.corr(), atol=1e-10, rtol=0, equal_nan=True)


def test_float32_batches_round_alike_whoever_reads_them():
    # Batches dealt to two readers (as data-parallel ranks get them) then merged = one reader,
    # to float64 rounding, with float32 products: each batch is centred about a value of its
    # own, not about the reader's shift, which follows the batches it has read.
    a, b = adversarial()
    a, b = a.float(), b.float()
    size = 250
    whole = accumulate(a, b, [size] * 12)
    parts = [CrossMoments(6, 5), CrossMoments(6, 5)]
    for k, start in enumerate(range(0, a.shape[0], size)):
        parts[k % 2].update(a[start : start + size], b[start : start + size])
    merged = parts[0].merge(parts[1])
    diff = (merged.corr() - whole.corr()).nan_to_num(0).abs().max().item()
    assert diff <= 1e-12, diff


def test_merge_rejects_different_unit_sets():
    with pytest.raises(ValueError, match="unit sets"):
        CrossMoments(2, 3).merge(CrossMoments(2, 4))


def test_state_dict_round_trip_through_safetensors_and_resume_is_bitwise():
    a, b = adversarial()
    stats = CrossMoments(6, 5, b_blocks=[(0, 5)])
    stats.update(a[:1000], b[:1000])
    restored = CrossMoments.from_state_dict(load(save(stats.state_dict())))
    for s in (stats, restored):
        s.update(a[1000:], b[1000:])
    for key, value in stats.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    with pytest.raises(KeyError, match="CrossMoments state"):
        CrossMoments.from_state_dict({"n": torch.tensor([1])})
    assert isinstance(io.BytesIO(save(stats.state_dict())).read(), bytes)


def test_within_block_moments_and_transpose():
    a, b = adversarial()
    blocks = dict(b_blocks=[(0, 2), (3, 5)], a_blocks=[(4, 6)])
    exact = accumulate(a, b, [1000] * 3, product_dtype=torch.float64, **blocks)
    fast = accumulate(a, b, [1000] * 3, **blocks)
    yc = b[:, 3:5] - b[:, 3:5].mean(0)
    xc = a[:, 4:6] - a[:, 4:6].mean(0)
    # float32 products: ~1e-6 relative here, because unit 5's mean drifts 3 sd past the shift of
    # the first batch before the shift can follow it (see CrossMoments._recentre).
    for stats, rtol in ((exact, 1e-10), (fast, 1e-5)):
        for ours, ref in ((stats.within_b(1), yc.T @ yc), (stats.within_a(0), xc.T @ xc)):
            assert (ours - ref).abs().max() <= rtol * ref.abs().max()
    stats = fast
    torch.testing.assert_close(stats.T.corr(), stats.corr().T, equal_nan=True)
    assert stats.T.n_a == 5 and stats.T.b_blocks == stats.a_blocks


def test_dead_units_are_zero_in_moments_and_nan_in_correlation():
    a, b = adversarial()
    stats = accumulate(a, b, [3000], b_blocks=[(1, 4)])
    assert stats.comoment()[2].abs().max() == 0 and stats.comoment()[:, 2].abs().max() == 0
    assert stats.within_b(0)[1].abs().max() == 0  # B unit 2 is block-local unit 1
    assert stats.corr()[2].isnan().all() and stats.corr()[:, 2].isnan().all()
    assert stats.m2_x[2] == 0


def test_column_blocks_equal_concatenation_and_inputs_untouched():
    a, b = adversarial()
    whole = accumulate(a, b, [3000])
    parts = CrossMoments(6, 5)
    b_copy = b.clone()
    parts.update([a[:, :2], a[:, 2:]], [b[:, :1], b[:, 1:4], b[:, 4:]])
    assert torch.equal(b, b_copy)
    torch.testing.assert_close(parts.corr(), whole.corr(), equal_nan=True)


def test_bad_inputs():
    stats = CrossMoments(2, 2)
    with pytest.raises(EmptyTokenSourceError):
        stats.corr()
    with pytest.raises(ValueError, match="expected 2"):
        stats.update(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="CUDA-only"):
        CrossMoments(2, 2, product_dtype="tf32")
    with pytest.raises(ValueError, match="Unknown product_dtype"):
        resolve_product_dtype(torch.float16, "cpu")
    with pytest.raises(ValueError, match="range"):
        CrossMoments(2, 2, b_blocks=[(1, 5)])
    assert CrossMoments.state_bytes(10, 20, b_blocks=[4]) == 8 * (200 + 150 + 16)


def test_matmul_precision_is_restored():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        a, b = adversarial()
        stats = accumulate(a.float(), b.float(), [3000])
        assert torch.get_float32_matmul_precision() == "medium"
        assert (
            np.nanmax(np.abs(stats.corr().numpy() - oracle(a.float().double(), b.float().double())))
            < 1e-6
        )
    finally:
        torch.set_float32_matmul_precision(before)


def test_shift_follows_a_drifting_mean():
    # A unit whose mean walks 40 standard deviations over the stream: the shift follows it and
    # float32 products stay within the bound.
    g = torch.Generator().manual_seed(5)
    n = 8000
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    drift = torch.linspace(0, 40, n, dtype=torch.float64)
    a = torch.stack([z[:, 0] + drift, z[:, 1]], 1).float()
    b = torch.stack([z[:, 0] + 0.5 * z[:, 2] + drift, z[:, 2]], 1).float()
    stats = accumulate(a, b, [200] * 40, b_blocks=[(0, 2)])
    assert stats._a.shift[0].item() > 5  # moved from ~0 (first batch) towards the mean
    ref = oracle(a.double(), b.double())
    assert np.abs(stats.corr().numpy() - ref).max() <= 1e-6
    yc = b.double() - b.double().mean(0)
    assert (stats.within_b(0) - yc.T @ yc).abs().max() <= 1e-6 * (yc.T @ yc).abs().max()

"""Property tests: random adversarial columns through the streaming statistics, against numpy
float64 on the same (float32) activations.

Columns are drawn from the shapes that break naive sums: Gaussians with a mean far above their
spread, units active on a single token, constants, ReLU-like sparse units, heavy tails, columns
that drift, in random batch splits. The oracle is numpy in float64, two-pass, on the exact values
fed to the statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tl_universality.stats.cross_moments import CrossMoments  # noqa: E402
from tl_universality.stats.moments import Moments  # noqa: E402

KINDS = ("gauss", "offset", "one_hot", "few_hot", "constant", "relu", "heavy", "drift")


def _column(kind: str, n: int, rng: np.random.Generator, magnitude: float) -> np.ndarray:
    z = rng.standard_normal(n)
    if kind == "gauss":
        col = magnitude * z
    elif kind == "offset":  # huge mean, tiny spread
        col = magnitude * 1e3 + 1e-3 * magnitude * z
    elif kind == "one_hot":
        col = np.zeros(n)
        col[rng.integers(n)] = magnitude
    elif kind == "few_hot":
        col = np.zeros(n)
        col[rng.choice(n, size=min(n, 3), replace=False)] = (
            magnitude * rng.uniform(0.5, 2, 3)[: min(n, 3)]
        )
    elif kind == "constant":
        col = np.full(n, magnitude * rng.uniform(-3, 3))
    elif kind == "relu":
        col = magnitude * np.maximum(z - 1.5, 0)
    elif kind == "heavy":
        col = magnitude * rng.standard_cauchy(n).clip(-1e4, 1e4)
    else:  # drift: the mean moves by many standard deviations along the stream
        col = magnitude * (z + np.linspace(0, 50, n))
    return col


@st.composite
def activations(draw, max_units: int = 4, magnitudes=(1e-3, 1.0, 1e3), n=None):
    """``(x, splits)``: a float32 ``[n, units]`` block and the batch boundaries."""
    n = draw(st.integers(2, 300)) if n is None else n
    units = draw(st.integers(1, max_units))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cols = [
        _column(draw(st.sampled_from(KINDS)), n, rng, draw(st.sampled_from(magnitudes)))
        for _ in range(units)
    ]
    x = np.stack(cols, 1).astype(np.float32)
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True)))
    return x, [0, *cuts, n]


def _moments(x: np.ndarray, splits: list[int]) -> Moments:
    m = Moments.zeros(x.shape[1])
    for a, b in zip(splits[:-1], splits[1:], strict=True):
        m.update(torch.from_numpy(x[a:b]))
    return m


def _relative(got: np.ndarray, want: np.ndarray, scale: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(scale, np.finfo(np.float64).tiny)))


@settings(max_examples=150, deadline=None)
@given(activations())
def test_moments_match_numpy_float64(data):
    x, splits = data
    m = _moments(x, splits)
    x64 = x.astype(np.float64)
    mean = x64.mean(0)
    centred = x64 - mean
    var = (centred**2).mean(0)
    spread = np.abs(x64).max(0)
    assert _relative(m.mean.numpy(), mean, spread) < 1e-12
    assert _relative(m.var.numpy(), var, spread**2) < 1e-12
    assert m.n == len(x) and np.array_equal(m.n_active.numpy(), (x > 0).sum(0))
    live = var > 1e-20 * spread**2  # skew and kurtosis are only defined with a spread
    skew = (centred**3).mean(0)[live] / var[live] ** 1.5
    kurt = (centred**4).mean(0)[live] / var[live] ** 2
    assert np.allclose(m.skew.numpy()[live], skew, rtol=1e-7, atol=1e-7)
    assert np.allclose(m.kurt.numpy()[live], kurt, rtol=1e-7, atol=1e-7)


@settings(max_examples=150, deadline=None)
@given(activations(), st.data())
def test_moments_merge_of_two_halves_is_the_whole(data, draw):
    x, splits = data
    cut = draw.draw(st.integers(0, len(x)))
    whole = _moments(x, [0, len(x)])
    merged = Moments.of(torch.from_numpy(x[:cut])).merge_(Moments.of(torch.from_numpy(x[cut:])))
    spread = torch.from_numpy(np.abs(x.astype(np.float64)).max(0))
    assert torch.all((merged.mean - whole.mean).abs() <= 1e-12 * spread)
    assert torch.all((merged.m2 - whole.m2).abs() <= 1e-12 * spread**2 * len(x))


def _cross(x: np.ndarray, y: np.ndarray, splits: list[int], product_dtype=None) -> CrossMoments:
    stats = CrossMoments(x.shape[1], y.shape[1], product_dtype=product_dtype)
    for a, b in zip(splits[:-1], splits[1:], strict=True):
        stats.update(torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b]))
    return stats


def _corr_oracle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(x.astype(np.float64).T, y.astype(np.float64).T)
    return full[: x.shape[1], x.shape[1] :]


def _corr_error(x: np.ndarray, y: np.ndarray, splits: list[int], product_dtype=None) -> float:
    got = _cross(x, y, splits, product_dtype).corr().numpy()
    want = _corr_oracle(x, y)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    # numpy's float64 is the oracle only where float64 resolves the spread: drop units whose
    # spread is below ~1e-12 of their magnitude (there numpy itself is off).
    ok_x = x64.std(0) > 1e-12 * np.abs(x64).max(0)
    ok_y = y64.std(0) > 1e-12 * np.abs(y64).max(0)
    assert np.array_equal(np.isnan(got[ok_x][:, ok_y]), np.isnan(want[ok_x][:, ok_y]))
    diff = np.abs(got - want)[ok_x][:, ok_y]
    diff = diff[~np.isnan(diff)]
    return float(diff.max()) if diff.size else 0.0


def _with_mixes(draw, x: np.ndarray) -> np.ndarray:
    """B: its own adversarial columns plus noisy copies of A (strong correlations)."""
    rng = np.random.default_rng(draw.draw(st.integers(0, 2**32 - 1)))
    noisy = x + 1e-2 * np.abs(x).max(0) * rng.standard_normal(x.shape)
    return noisy.astype(np.float32)


@settings(max_examples=150, deadline=None)
@given(activations(), st.data())
def test_correlations_match_numpy_in_float64_products(data, draw):
    x, splits = data
    y = np.concatenate([_with_mixes(draw, x), draw.draw(activations(n=len(x)))[0]], 1)
    assert _corr_error(x, y, splits, torch.float64) < 1e-9


@settings(max_examples=150, deadline=None)
@given(activations(magnitudes=(1e-3, 1.0, 1e3)), st.data())
def test_correlations_match_numpy_in_default_float32_products(data, draw):
    x, splits = data
    y = _with_mixes(draw, x)
    # The promise: 1e-6 on every entry (docs/concepts.md, "Numerical guarantees").
    assert _corr_error(x, y, splits) < 1e-6


def _drawn_case(trial: int, n: int, kinds: list[str], magnitudes: list[float]):
    rng = np.random.default_rng(trial)
    x = np.stack([_column(k, n, rng, m) for k, m in zip(kinds, magnitudes, strict=True)], 1)
    x = x.astype(np.float32)
    y = (x + 1e-2 * np.abs(x).max(0) * rng.standard_normal(x.shape)).astype(np.float32)
    return x, y


# Draws that missed 1e-6 before per-batch centring (their error then is in the id).
@pytest.mark.parametrize(
    "trial, n, kinds, magnitudes, splits",
    [
        (1195, 184, ["constant", "few_hot"], [1.0, 1e-3], [0, 1, 184]),
        (1345, 215, ["drift"], [1e-3], [0, 11, 215]),
        (1907, 175, ["gauss", "constant", "drift"], [1e-3] * 3, [0, 44, 175]),
    ],
    ids=["few-hot-1.31e-6", "drift-1.16e-6", "drift-1.17e-6"],
)
def test_drawn_cases_meet_1e_6_in_default_float32_products(trial, n, kinds, magnitudes, splits):
    x, y = _drawn_case(trial, n, kinds, magnitudes)
    assert _corr_error(x, y, splits) < 1e-6


def _sparse_unit_case(n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """A unit active on one token only, against a copy of it with noise (the issue's case)."""
    rng = np.random.default_rng(0)
    x = np.zeros((n, 1))
    x[n // 2 + 17, 0] = 3.0
    y = np.concatenate([x + 1e-3 * rng.standard_normal((n, 1)), x], 1)
    return x.astype(np.float32), y.astype(np.float32)


def test_single_token_unit_meets_1e_6_with_float32_products():
    # The issue measured 2.2e-6 to 7.8e-6 here (and r = 1 read as 0.9999943) on older code.
    x, y = _sparse_unit_case()
    assert _corr_error(x, y, list(range(0, len(x), 64)) + [len(x)]) < 1e-6


def test_single_token_unit_meets_1e_9_with_float64_products():
    x, y = _sparse_unit_case()
    assert _corr_error(x, y, list(range(0, len(x), 64)) + [len(x)], torch.float64) < 1e-9


def test_huge_units_do_not_overflow_the_float32_product():
    # Before the float64 fallback: r = 1.0 and NaN where numpy float64 gives 0.9945 and -0.050.
    rng = np.random.default_rng(1)
    x = (1e19 * rng.standard_normal((500, 2))).astype(np.float32)
    y = (x + 1e18 * rng.standard_normal((500, 2))).astype(np.float32)
    got = _cross(x, y, [0, 250, 500]).corr().numpy()
    assert np.all(np.isfinite(got)) and np.abs(got - _corr_oracle(x, y)).max() < 1e-6

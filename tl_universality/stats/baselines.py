"""Chance baselines for max-correlation, derived from statistics: no extra forward pass.

How large would a neuron's best correlation with another model be if the other model's neurons
were not privileged directions at all? docs/concepts.md, "Universality" answers with a random
per-layer mix ``R`` of
the other model's units: the "neurons" ``z = R y`` span the same space as ``y`` but are arbitrary
directions in it. A linear mix needs no new activations:

    Cov(x, R y) = Cov(x, y) Rᵀ        Var((R y)_k) = (R Cov(y, y) Rᵀ)_kk

so the baseline follows from the cross co-moments and the other model's *within-layer* second
moments, both accumulated by :class:`~tl_universality.stats.cross_moments.CrossMoments` in the same
pass.

Kinds (``kind=``):

- ``"rotation"`` (default): ``R`` is a Haar-random orthogonal matrix per layer
  (:func:`haar_rotation`: the orthogonal factor of a Gaussian matrix's QR with the signs of
  ``diag(R)`` fixed, built from its Householder vectors), the clean choice: the mixed units keep
  the layer's total variance and are as decorrelated as the originals.
- ``"gaussian_mix"``: the paper's choice, Gaussian rows normalised to unit length (not orthogonal).
- ``"gaussian_noise"``: ``b`` independent Gaussian noise units instead of the other model. Needs no
  data at all: given ``n`` tokens, the sample correlation of any non-constant unit with independent
  Gaussian noise has the exact null density ``f(r) ∝ (1 − r²)^((n−4)/2)`` on ``[−1, 1]``, i.e.
  ``(r + 1)/2 ~ Beta((n−2)/2, (n−2)/2)`` (Fisher 1915), whatever the unit's own distribution. The
  maximum over ``b`` independent units has CDF ``F(r)^b``; one draw of it is ``F⁻¹(U^(1/b))`` with
  ``U`` uniform. :func:`null_corr_sf` evaluates the tail exactly by quadrature (substituting
  ``r = sin θ``, density ``∝ cos^(n−3) θ``), so no scipy is needed.

All draws are seeded: ``(seed, key, draw)`` fixes each random matrix or noise draw, independent of
tiling, device and the order in which layers are visited, so results are reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.stats.cross_moments import CrossMoments

BaselineKind = Literal["rotation", "gaussian_mix", "gaussian_noise"]
BASELINE_KINDS: tuple[str, ...] = ("rotation", "gaussian_mix", "gaussian_noise")
#: Kinds that mix the other model's units, and so need its within-layer second moments.
MIXING_KINDS: tuple[str, ...] = ("rotation", "gaussian_mix")


def check_kind(kind: str | None) -> str | None:
    """Validate a baseline kind (``None`` means no baseline)."""
    if kind is not None and kind not in BASELINE_KINDS:
        raise ValueError(f"Unknown baseline {kind!r}: choose one of {BASELINE_KINDS} or None.")
    return kind


def generator(seed: int, key: Sequence[Hashable] = ()) -> torch.Generator:
    """A CPU generator fixed by ``(seed, *key)``, the same on every machine.

    Examples:
        >>> a = torch.randn(2, generator=generator(0, (1, 2)))
        >>> torch.equal(a, torch.randn(2, generator=generator(0, (1, 2))))
        True
    """
    text = json.dumps([int(seed), *key], default=str)
    digest = hashlib.sha256(text.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def mixing_matrix(
    kind: str,
    d: int,
    *,
    seed: int = 0,
    key: Sequence[Hashable] = (),
    device: torch.device | str | None = None,
) -> Float[Tensor, "d d"]:
    """The ``d × d`` float64 mixing matrix of ``kind`` for ``(seed, key)``; row ``k`` mixes unit k.

    The random numbers come from a CPU generator (:func:`generator`), so a matrix is the same on
    every machine; on ``device`` (default the CPU) it is made there (for ``"rotation"`` the
    product of reflections, ``O(d³)``), equal across devices to float64 rounding.

    Examples:
        >>> q = mixing_matrix("rotation", 4, seed=0, key=("layer", 1))
        >>> torch.allclose(q @ q.T, torch.eye(4, dtype=torch.float64))
        True
        >>> g = mixing_matrix("gaussian_mix", 4, seed=0)
        >>> torch.allclose(g.norm(dim=1), torch.ones(4, dtype=torch.float64))
        True
    """
    if kind == "rotation":
        return haar_rotation(d, generator(seed, key), device=device)
    if kind == "gaussian_mix":
        gauss = torch.randn(d, d, dtype=torch.float64, generator=generator(seed, key))
        return (gauss / gauss.norm(dim=1, keepdim=True)).to(device)
    raise ValueError(f"{kind!r} is not a mixing baseline; use one of {MIXING_KINDS}.")


def haar_rotation(
    d: int, gen: torch.Generator, device: torch.device | str | None = None
) -> Float[Tensor, "d d"]:
    """A Haar-random ``d × d`` orthogonal matrix (float64), drawn from ``gen`` (a CPU generator)
    and multiplied out on ``device`` (default the CPU).

    The Householder QR of a ``d × d`` Gaussian matrix ``G`` reflects its first column onto
    ``e₁``; the reflection is orthogonal and independent of the other columns, which so stay
    independent Gaussians, and the same holds at every step. The ``k``-th Householder vector is
    therefore that of a fresh Gaussian vector of length ``d − k`` (Stewart 1980), and
    ``Q · diag(sign R_kk)`` (the sign fix without which QR's output is not Haar, Mezzadri 2007)
    follows from ``d(d+1)/2`` Gaussian numbers and one product of reflections, without
    factorising ``G``: about 0.6 of the time of ``torch.linalg.qr`` at ``d = 512``.

    Examples:
        >>> q = haar_rotation(5, torch.Generator().manual_seed(0))
        >>> torch.allclose(q @ q.T, torch.eye(5, dtype=torch.float64))
        True
    """
    f64 = torch.float64
    rows, cols = torch.tril_indices(d, d)
    a = torch.zeros(d, d, dtype=f64)
    a[rows, cols] = torch.randn(rows.numel(), generator=gen, dtype=f64)  # column k: length d − k
    alpha = a.diagonal().clone()
    norm = a.norm(dim=0)
    zero = norm == 0  # a zero column (probability 0): no reflection
    beta = torch.where(zero, 1.0, -torch.copysign(norm, alpha))  # H_k maps column k to beta·e_k
    tau = torch.where(zero, 0.0, (beta - alpha) / beta)
    v = a.div_(torch.where(zero, 1.0, alpha - beta))  # the unit first entries are implied
    v, tau, sign = v.to(device), tau.to(device), torch.sign(beta).to(device)
    return torch.linalg.householder_product(v, tau).mul_(sign)


def mixed_variance(cov_yy: Float[Tensor, "d d"], mix: Float[Tensor, "k d"]) -> Float[Tensor, " k"]:
    """Variance of each mixed unit ``z = mix @ y``: ``diag(mix · cov_yy · mixᵀ)``, in the scaling of
    ``cov_yy`` (a ``k × d × d`` product: compute it once per matrix and pass it on as ``var_z``).

    Examples:
        >>> y = torch.randn(100, 3, dtype=torch.float64)
        >>> yc, mix = y - y.mean(0), mixing_matrix("rotation", 3, seed=2)
        >>> torch.allclose(mixed_variance(yc.T @ yc, mix), ((yc @ mix.T) ** 2).sum(0))
        True
    """
    mix = mix.to(cov_yy)
    return ((mix @ cov_yy) * mix).sum(1)


def mixed_correlation(
    cov_xy: Float[Tensor, "a d"],
    var_x: Float[Tensor, " a"],
    cov_yy: Float[Tensor, "d d"] | None,
    mix: Float[Tensor, "k d"],
    *,
    var_z: Float[Tensor, " k"] | None = None,
) -> Float[Tensor, "a k"]:
    """Correlation of each unit x with the mixed units ``z = mix @ y``, from second moments only.

    ``cov_xy``, ``var_x`` and ``cov_yy`` may be sums about the mean or covariances, as long as all
    three use the same scaling. ``var_z`` (:func:`mixed_variance` of ``cov_yy`` and ``mix``), when
    given, spares its ``k × d × d`` product, and ``cov_yy`` may then be None: row chunks of one
    layer share it. NaN where ``x`` or a mixed unit has zero variance.

    Examples:
        >>> f64 = torch.float64
        >>> x, y = torch.randn(300, 2, dtype=f64), torch.randn(300, 3, dtype=f64)
        >>> mix = mixing_matrix("rotation", 3, seed=1)
        >>> xc, yc = x - x.mean(0), y - y.mean(0)
        >>> r = mixed_correlation(xc.T @ yc, (xc**2).sum(0), yc.T @ yc, mix)
        >>> z = y @ mix.T
        >>> oracle = torch.corrcoef(torch.cat([x, z], 1).T)[:2, 2:]
        >>> torch.allclose(r, oracle)
        True
    """
    mix = mix.to(cov_xy)
    if var_z is None:
        if cov_yy is None:
            raise ValueError("mixed_correlation needs cov_yy, or var_z = mixed_variance(...).")
        var_z = mixed_variance(cov_yy, mix)
    cov_xz = cov_xy @ mix.T
    # In place: a row chunk of the baseline holds no more temporaries than it must.
    scale = (var_x[:, None] * var_z[None, :]).sqrt_()
    r = cov_xz.div_(scale).clamp_(-1.0, 1.0)
    del scale
    undefined = (var_x <= 0)[:, None] | (var_z <= 0)[None, :]
    return r.masked_fill_(undefined, torch.nan)


def nanmax(x: Float[Tensor, "*batch k"], dim: int = -1) -> Float[Tensor, "*batch"]:
    """Maximum ignoring NaN; NaN where every entry is NaN."""
    m = x.nan_to_num(nan=-torch.inf).amax(dim)
    return m.masked_fill(m == -torch.inf, torch.nan)


def mixed_max_corr(
    cov_xy: Float[Tensor, "a d"],
    var_x: Float[Tensor, " a"],
    cov_yy: Float[Tensor, "d d"],
    kind: str = "rotation",
    *,
    n_draws: int = 1,
    seed: int = 0,
    key: Sequence[Hashable] = (),
) -> Float[Tensor, "draws a"]:
    """Per row, the largest correlation with the mixed units of one layer, for each draw.

    Draw ``i`` uses :func:`mixing_matrix` with key ``(*key, i)``.
    """
    d = cov_yy.shape[0]
    out = []
    for draw in range(n_draws):
        mix = mixing_matrix(kind, d, seed=seed, key=(*key, draw), device=cov_xy.device)
        out.append(nanmax(mixed_correlation(cov_xy, var_x, cov_yy, mix)))
    return torch.stack(out)


# -- Gaussian noise: the null distribution of the sample correlation -------------------------


def _null_tail_grid(n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """``(θ, log Q(θ))`` on a grid, ``Q(θ) = P(R > sin θ)`` for R the null sample correlation."""
    k = n_tokens - 3  # density of θ = asin(r) is ∝ cos(θ)^k
    # Beyond 14 standard deviations (sd ≈ 1/sqrt(n)) the tail is below 1e-40: negligible.
    top = min(math.pi / 2, 14.0 / math.sqrt(max(n_tokens - 2, 1)))
    fine = np.linspace(0.0, top, 2 * 20000 + 1)  # grid points and the midpoints between them
    # log cos θ = log1p(−2 sin²(θ/2)): accurate for tiny θ, where k may be 1e8.
    log_f = k * np.log1p(-2.0 * np.sin(fine / 2) ** 2) if k else np.zeros_like(fine)
    f = np.exp(log_f)
    theta = fine[::2]
    # Simpson's rule per interval: the far tail decays fast, where the trapezoid rule is ~1e-6 off.
    pieces = (f[:-2:2] + 4.0 * f[1::2] + f[2::2]) * (fine[2] - fine[0]) / 6.0
    tail = np.concatenate([np.cumsum(pieces[::-1])[::-1], [0.0]])  # ∫_θ^top
    half = tail[0]  # ∫_0^top = half of the total mass (the density is symmetric)
    with np.errstate(divide="ignore"):
        return theta, np.log(tail / (2.0 * half))


def null_corr_sf(r: Float[Tensor, "*shape"] | float, n_tokens: int) -> Float[Tensor, "*shape"]:
    """``P(R > r)`` for the sample correlation R of a unit with independent Gaussian noise.

    Exact null distribution over ``n_tokens`` tokens (see the module docstring), by quadrature.

    Examples:
        >>> float(null_corr_sf(0.0, 1000))
        0.5
        >>> round(float(null_corr_sf(3 / 999**0.5, 1000)), 4)  # about the normal tail at 3 sd
        0.0013
    """
    if n_tokens < 3:
        raise ValueError(f"A correlation needs at least 3 tokens, got n_tokens={n_tokens}.")
    r_t = torch.as_tensor(r, dtype=torch.float64)
    theta, log_q = _null_tail_grid(n_tokens)
    t = np.arcsin(np.clip(np.abs(r_t.numpy()), 0.0, 1.0))
    upper = np.exp(np.interp(t, theta, log_q, right=-np.inf))
    sf = np.where(r_t.numpy() >= 0, upper, 1.0 - upper)
    return torch.as_tensor(sf, dtype=torch.float64)


def null_max_corr(
    u: Float[Tensor, "*shape"], n_tokens: int, n_units: int
) -> Float[Tensor, "*shape"]:
    """The ``u``-quantile of the max correlation with ``n_units`` independent noise units.

    ``P(max ≤ r) = (1 − Q(r))^n_units``; so ``Q = −expm1(log(u) / n_units)`` and r = Q⁻¹.

    Examples:
        >>> r = null_max_corr(torch.tensor([0.5]), 10_000, 100)
        >>> q = torch.tensor([1 - 0.5 ** (1 / 100)], dtype=torch.float64)
        >>> bool(torch.isclose(null_corr_sf(r, 10_000), q, rtol=1e-4).all())
        True
    """
    if n_tokens < 3:
        raise ValueError(f"A correlation needs at least 3 tokens, got n_tokens={n_tokens}.")
    u64 = u.to(torch.float64).clamp(1e-300, 1.0).cpu().numpy()
    q = -np.expm1(np.log(u64) / n_units)  # upper-tail probability of the max
    theta, log_q = _null_tail_grid(n_tokens)
    ok = np.isfinite(log_q)
    # log Q decreases along θ: interpolate θ as a function of −log Q (increasing).
    with np.errstate(divide="ignore"):
        target = -np.log(np.clip(q, 1e-320, 1.0))
    upper_half = q <= 0.5
    t = np.interp(target, -log_q[ok], theta[ok])
    r = np.where(upper_half, np.sin(t), 0.0)
    if not upper_half.all():  # rare: n_units small; use the symmetry Q(−r) = 1 − Q(r)
        lower = np.interp(-np.log(np.clip(1.0 - q, 1e-320, 1.0)), -log_q[ok], theta[ok])
        r = np.where(upper_half, r, -np.sin(lower))
    return torch.as_tensor(r, dtype=torch.float64)


def noise_max_corr(
    n_tokens: int,
    n_units: int,
    n_rows: int,
    *,
    n_draws: int = 1,
    seed: int = 0,
    key: Sequence[Hashable] = (),
) -> Float[Tensor, "draws rows"]:
    """One draw per row and draw of the max correlation with ``n_units`` Gaussian noise units.

    Examples:
        >>> draws = noise_max_corr(100_000, 3072, 5, n_draws=2, seed=0)
        >>> draws.shape, bool(((draws > 0.005) & (draws < 0.03)).all())
        (torch.Size([2, 5]), True)
    """
    g = generator(seed, ("gaussian_noise", *key))
    u = torch.rand(n_draws, n_rows, dtype=torch.float64, generator=g)
    return null_max_corr(u, n_tokens, n_units)


# -- from statistics ---------------------------------------------------------------------------


def baseline_max_corr(
    stats: CrossMoments,
    kind: str = "rotation",
    *,
    n_draws: int = 1,
    seed: int = 0,
    block_keys: Sequence[Sequence[Hashable]] | None = None,
) -> Float[Tensor, "draws a"]:
    """Baseline max-correlation of every A unit against B, per draw, from ``stats`` alone.

    For the mixing kinds, B's units are mixed block by block (``stats.b_blocks``, which must cover
    the B units to mix, typically one block per layer) and each row's maximum is taken over all
    mixed units; block ``i`` draws its matrices with key ``block_keys[i]`` (default ``(i,)``).
    For ``"gaussian_noise"`` only ``stats.n`` and ``stats.n_b`` matter. Dead A units get NaN.

    Examples:
        >>> x, y = torch.randn(400, 3), torch.randn(400, 4)
        >>> stats = CrossMoments(3, 4, b_blocks=[(0, 2), (2, 4)]).update(x, y)
        >>> baseline_max_corr(stats, "rotation", n_draws=2).shape
        torch.Size([2, 3])
    """
    check_kind(kind)
    if kind == "gaussian_noise":
        out = noise_max_corr(stats.n, stats.n_b, stats.n_a, n_draws=n_draws, seed=seed).to(
            stats.device
        )
        return out.masked_fill(stats.dead_x[None, :], torch.nan)
    if not stats.b_blocks:
        raise ValueError(
            f"The {kind!r} baseline mixes B's units within blocks, but these statistics track no"
            " B block. Build CrossMoments with b_blocks=[(start, stop), ...] (one per layer)."
        )
    keys = block_keys if block_keys is not None else [(i,) for i in range(len(stats.b_blocks))]
    m2_x = stats.m2_x
    best = torch.full((n_draws, stats.n_a), torch.nan, dtype=torch.float64, device=stats.device)
    for i, (s, e) in enumerate(stats.b_blocks):
        per_block = mixed_max_corr(
            stats.comoment(cols=slice(s, e)),
            m2_x,
            stats.within_b(i),
            kind,
            n_draws=n_draws,
            seed=seed,
            key=tuple(keys[i]),
        )
        best = torch.fmax(best, per_block)
    return best

"""Exact moments of chosen unit pairs, with batch-means standard errors
(docs/concepts.md, "Screened exact correlation").

A screened correlation run keeps, for every row unit ``i`` of side A, a few columns
``cols[i, :]`` of side B (its candidates). :class:`PairMoments` accumulates, over a token stream,
exactly what the correlation of each such pair needs: per-unit sums about a fixed shift and the
pair sums ``Σ x'_i y'_j`` (``x' = x - shift``), in float64. The pair sums are one sampled
matrix product per batch (only the ``a · k`` wanted entries of ``X'ᵀ Y'``, as dot products), so a
batch costs ``a · k · tokens`` instead of the ``a · b · tokens`` of the full cross moments.

Precision. Each centred value ``x'`` is rounded once, to the dtype of its chunk
(:func:`sequence_chunks`): float64 (products exact to ~1e-15), or float32, where each
product is a float32 dot product over at most :data:`FLOAT32_RUN` tokens of one sequence before it
is added to the float64 sums (the rule of the exhaustive engine's float32 products, and about the
same error). Every other sum is float64. :func:`float32_safe` says when a chunk's values are too
large or too small for float32 products (the caller then uses float64 for that batch).

Standard errors (batch means). Tokens of one sequence are correlated, so the i.i.d. formula
understates the error. Each sequence is a block ``b``; with the influence function of Pearson's
r evaluated at the pilot estimates (shift, scale and r from the statistics the run started from),
``Ψ_b = Σ_{t∈b} x̃ỹ - r₀/2 (x̃² + ỹ²)``, the long-run variance per token is
``λ = m/(m-1) · Σ_b (Ψ_b - n_b μ)² / Σ_b n_b`` (``μ = ΣΨ_b / Σn_b``) and the standard error of the
correlation over all ``n`` tokens is ``sqrt(λ / n)``. Blocks are whole sequences, so correlation
between tokens of one sequence is accounted for; sequences are taken as independent.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_universality.stats.cross_moments.products import TOKEN_CHUNK, float32_fits

#: Elements (tokens x units) of the copy of one chunk of sequences.
CHUNK_ELEMENTS = 1 << 25
#: Tokens of one float32 dot product before it reaches the float64 sums (the exhaustive
#: engine's rule for its float32 products).
FLOAT32_RUN = TOKEN_CHUNK

_STATE = ("cols", "shift_x", "shift_y", "scale_x", "scale_y", "pilot")
_SUMS = ("sx", "sxx", "sy", "syy", "sxy", "psi", "psi_sq", "psi_n")


class PairMoments:
    """Streaming float64 moments of the pairs ``(i, cols[i, k])`` of sides A and B.

    Args:
        cols: ``[a, k]`` the column units (indices into B) kept for each row unit.
        shift_x, shift_y: Per-unit values subtracted before any product (e.g. pilot means).
        scale_x, scale_y: Pilot standard deviations (used only for the standard errors).
        pilot: ``[a, k]`` pilot correlations of the pairs (used only for the standard errors).
        device: Where the accumulators live.

    Examples:
        >>> import numpy as np
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(400, 3, generator=g, dtype=torch.float64)
        >>> y = torch.randn(400, 5, generator=g, dtype=torch.float64)
        >>> cols = torch.tensor([[0, 4], [1, 2], [3, 3]])
        >>> pm = PairMoments.fresh(cols, n_b=5)
        >>> for k in range(0, 400, 100):  # four batches of 10 sequences x 10 tokens
        ...     _ = pm.update(x[k : k + 100], y[k : k + 100], lengths=[10] * 10)
        >>> oracle = np.corrcoef(x.numpy().T, y.numpy().T)[:3, 3:]
        >>> want = np.take_along_axis(oracle, cols.numpy(), 1)
        >>> bool(np.abs(pm.corr().numpy() - want).max() < 1e-12)
        True
    """

    def __init__(
        self,
        cols: Int[Tensor, "a k"],
        shift_x: Float[Tensor, " a"],
        shift_y: Float[Tensor, " b"],
        scale_x: Float[Tensor, " a"],
        scale_y: Float[Tensor, " b"],
        pilot: Float[Tensor, "a k"],
        device: torch.device | str | None = None,
    ) -> None:
        dev = torch.device(device if device is not None else "cpu")
        f64 = dict(dtype=torch.float64, device=dev)
        self.device = dev
        self.cols = cols.to(dev, torch.int64)
        a, k = self.cols.shape
        self.shift_x, self.shift_y = shift_x.to(**f64), shift_y.to(**f64)  # type: ignore[arg-type]
        self.scale_x, self.scale_y = scale_x.to(**f64), scale_y.to(**f64)  # type: ignore[arg-type]
        self.pilot = pilot.to(**f64)  # type: ignore[arg-type]
        if tuple(self.pilot.shape) != (a, k) or self.shift_x.shape[0] != a:
            raise ValueError(f"pilot {tuple(self.pilot.shape)} / shift_x do not match cols {a}x{k}")
        if bool((self.cols < 0).any()) or bool((self.cols >= self.shift_y.shape[0]).any()):
            raise ValueError(f"cols must index the {self.shift_y.shape[0]} units of side B")
        b = self.shift_y.shape[0]
        self.n = 0
        self.sx, self.sxx = torch.zeros(a, **f64), torch.zeros(a, **f64)  # type: ignore[arg-type]
        self.sy, self.syy = torch.zeros(b, **f64), torch.zeros(b, **f64)  # type: ignore[arg-type]
        self.sxy = torch.zeros(a, k, **f64)  # type: ignore[arg-type]
        # batch means: Σ Ψ_b, Σ Ψ_b², Σ n_b Ψ_b; and the block counts
        self.psi = torch.zeros(a, k, **f64)  # type: ignore[arg-type]
        self.psi_sq = torch.zeros(a, k, **f64)  # type: ignore[arg-type]
        self.psi_n = torch.zeros(a, k, **f64)  # type: ignore[arg-type]
        self.blocks = 0
        self.block_n_sq = 0  # Σ n_b²
        self.blocked_tokens = 0  # Σ n_b
        self._patterns: dict[tuple[int, torch.dtype], Tensor] = {}
        self._pair_scale: Tensor | None = None
        self._half_pilot: Tensor | None = None
        self._sorted, order = self.cols.sort(1)
        self._inverse = order.argsort(1)

    @classmethod
    def fresh(cls, cols: Int[Tensor, "a k"], n_b: int, device: torch.device | str | None = None):
        """Moments about zero with no pilot (standard errors then use unit scale and r₀ = 0)."""
        a, k = cols.shape
        zeros, ones = torch.zeros, torch.ones
        f64 = torch.float64
        return cls(
            cols, zeros(a, dtype=f64), zeros(n_b, dtype=f64), ones(a, dtype=f64),
            ones(n_b, dtype=f64), zeros(a, k, dtype=f64), device,
        )  # fmt: skip

    @classmethod
    def from_moments(
        cls,
        cols: Int[Tensor, "a k"],
        n: int,
        mean_x: Float[Tensor, " a"],
        m2_x: Float[Tensor, " a"],
        mean_y: Float[Tensor, " b"],
        m2_y: Float[Tensor, " b"],
        comoment: Float[Tensor, "a k"],
        device: torch.device | str | None = None,
        keep_sums: bool = True,
        shift_dtype: torch.dtype = torch.float64,
        shift_y: Float[Tensor, " b"] | None = None,
    ) -> PairMoments:
        """Start from the exact moments of ``n`` earlier tokens (sums about their means).

        The earlier means, rounded to ``shift_dtype`` (float32 lets :func:`sequence_chunks`
        centre float32 activations in float32, each value rounded once), become the shift; with
        the earlier variances and correlations they are the pilot of the standard errors. The
        earlier sums are re-expressed about the shift; the earlier tokens add no blocks. With
        ``keep_sums=False`` only the shift and pilot are taken (the other ranks of a process
        group, whose sums are added to rank 0's). ``shift_y``, when given, is side B's shift
        as it is (for values the caller centres itself).
        """
        f64 = torch.float64
        m2_x, m2_y, comoment = m2_x.to(f64), m2_y.to(f64), comoment.to(f64)
        mean_x, mean_y = mean_x.to(f64), mean_y.to(f64)
        scale_x = (m2_x.clamp_min(0) / max(n, 1)).sqrt()
        scale_y = (m2_y.clamp_min(0) / max(n, 1)).sqrt()
        cols = cols.to(comoment.device)
        pilot = comoment / (m2_x[:, None] * m2_y[cols]).sqrt()
        shift_x = mean_x.to(shift_dtype).to(f64)
        shift_y = mean_y.to(shift_dtype).to(f64) if shift_y is None else shift_y.to(f64)
        out = cls(cols, shift_x, shift_y, scale_x, scale_y, pilot.nan_to_num(0.0), device)
        if not keep_sums:
            return out
        # sums about the shift s from sums about the mean μ: Σ(x-s) = n(μ-s),
        # Σ(x-s)² = m2 + n(μ-s)², Σ(x-s)(y-t) = comoment + n(μx-s)(μy-t)
        dx, dy = mean_x - shift_x, mean_y - shift_y
        dev = out.device
        out.n = int(n)
        out.sx, out.sy = (n * dx).to(dev), (n * dy).to(dev)
        out.sxx = (m2_x + n * dx * dx).to(dev)
        out.syy = (m2_y + n * dy * dy).to(dev)
        out.sxy = (comoment + n * dx[:, None] * dy[cols]).to(dev)
        return out

    # -- accumulation --------------------------------------------------------------------------

    def update(
        self,
        x: Float[Tensor, "tok a"],
        y: Float[Tensor, "tok b"],
        lengths: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> PairMoments:
        """Add one batch (in place); ``lengths`` are the tokens of each sequence in ``x``'s rows
        (default: one sequence), each a block of the standard errors; ``dtype`` that of the
        products (float32 falls back to float64 for a batch :func:`float32_safe` refuses).
        Returns ``self``.

        With several :class:`PairMoments` on the same activations, :func:`sequence_chunks` and
        :meth:`add` share the centred copies instead.
        """
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        chunks, _ = centred_chunks({0: x, 1: y}, {0: self.shift_x, 1: self.shift_y}, lengths, dtype)
        for cx, cy in zip(chunks[0], chunks[1], strict=True):
            self.add(cx, cy)
        return self

    def add(self, x: Sequences, y: Sequences) -> PairMoments:
        """Add one chunk of sequences: ``x`` centred about ``shift_x``, ``y`` about ``shift_y``."""
        if x.n_units != self.cols.shape[0] or y.n_units != self.shift_y.shape[0]:
            raise ValueError(
                f"x has {x.n_units} units (want {self.cols.shape[0]}), y {y.n_units}"
                f" (want {self.shift_y.shape[0]})"
            )
        if not torch.equal(x.lengths, y.lengths):
            raise ValueError("x and y must hold the same sequences")
        f64 = torch.float64
        lens = x.lengths.to(self.device)
        p_b = self._pair_products(x, y)  # [s, a, k]
        self.n += int(lens.sum())
        self.sx += x.sums
        self.sy += y.sums
        self.sxx += x.squares.sum(0)
        self.syy += y.squares.sum(0)
        self.sxy += p_b.sum(0)
        # Ψ_b of each pair at the pilot: Σ x̃ỹ - r₀/2 (Σ x̃² + Σ ỹ²), x̃ = x'/scale.
        ix, iy = 1.0 / self.scale_x, 1.0 / self.scale_y
        if self._pair_scale is None:  # the scales are fixed: 1/(σx σy) of every pair, once
            self._pair_scale = ix[:, None] * iy[self.cols]
            self._half_pilot = 0.5 * self.pilot
        psi = p_b.mul_(self._pair_scale).sub_(
            self._half_pilot
            * ((x.squares * ix * ix)[:, :, None] + (y.squares * iy * iy)[:, self.cols])
        )
        self.psi += psi.sum(0)
        self.psi_sq += torch.einsum("sak,sak->ak", psi, psi)
        self.psi_n += torch.einsum("s,sak->ak", lens.to(f64), psi)
        self.blocks += int(lens.shape[0])
        self.blocked_tokens += int(lens.sum())
        self.block_n_sq += int((lens * lens).sum())
        return self

    def _pair_products(self, x: Sequences, y: Sequences) -> Float[Tensor, "s a k"]:
        """Per sequence, ``Σ_t x'_{t,i} y'_{t,cols[i,k]}`` in float64: dot products in the chunks'
        dtype, float32 ones over runs of at most :data:`FLOAT32_RUN` tokens."""
        if x.data.dtype != y.data.dtype:
            raise ValueError(f"x is {x.data.dtype} but y is {y.data.dtype}")
        width = x.data.shape[2]
        run = width if x.data.dtype == torch.float64 else FLOAT32_RUN
        out = None
        for lo in range(0, width, run):
            part = self._products(x.data[:, :, lo : lo + run], y.data[:, :, lo : lo + run])
            out = part.double() if out is None else out.add_(part)
        assert out is not None
        return out

    def _products(self, xs: Tensor, ys: Tensor) -> Tensor:
        """The products of ``[s, a, w]`` and ``[s, b, w]`` values, in their dtype."""
        s = xs.shape[0]
        a, k = self.cols.shape
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sparse CSR "beta" notices
                pattern = self._pattern(s, xs.dtype)
                out = torch.sparse.sampled_addmm(pattern, xs, ys.transpose(1, 2), beta=0.0)
            return out.values().view(s, a, k).gather(2, self._inverse.expand(s, -1, -1))
        except (RuntimeError, NotImplementedError):  # no sampled product on this device
            return self._gathered_products(xs.transpose(1, 2), ys.transpose(1, 2))

    def _gathered_products(self, xs: Tensor, ys: Tensor) -> Float[Tensor, "s a k"]:
        """The same products by gathering the wanted columns (more memory traffic)."""
        a, k = self.cols.shape
        out = torch.empty(xs.shape[0], a, k, dtype=xs.dtype, device=xs.device)
        flat = self.cols.reshape(-1)
        for j in range(xs.shape[0]):
            yc = ys[j][:, flat].view(-1, a, k)  # [t, a, k]
            out[j] = torch.einsum("ta,tak->ak", xs[j], yc)
        return out

    def _pattern(self, s: int, dtype: torch.dtype) -> Tensor:
        """The batched CSR pattern of the pairs (columns sorted within each row)."""
        if (s, dtype) not in self._patterns:
            a, k = self.cols.shape
            crow = torch.arange(0, a * k + 1, k, device=self.device)
            col = self._sorted.reshape(-1)
            values = torch.zeros(s, a * k, dtype=dtype, device=self.device)
            self._patterns = {  # one size cached: batches are usually all alike
                (s, dtype): torch.sparse_csr_tensor(
                    crow.expand(s, -1).contiguous(),
                    col.expand(s, -1).contiguous(),
                    values,
                    size=(s, a, self.shift_y.shape[0]),
                )  # fmt: skip
            }
        return self._patterns[(s, dtype)]

    # -- merging -------------------------------------------------------------------------------

    def reduce_across(self, reduce: Callable[[Tensor, str], Tensor]) -> PairMoments:
        """Sum the accumulators over the ranks of a process group (same shift everywhere), in
        place; ``reduce(tensor, "sum")`` returns the reduced tensor (a new one). Returns
        ``self``."""
        for name in _SUMS:
            setattr(self, name, reduce(getattr(self, name), "sum"))
        counts = torch.tensor(self._counts(), dtype=torch.float64, device=self.device)
        self._set_counts(reduce(counts, "sum").cpu().round().long().tolist())
        return self

    def summed(self, reduce: Callable[[Tensor, str], Tensor]) -> PairMoments:
        """A copy whose accumulators are summed over the ranks (see :meth:`reduce_across`);
        ``self`` keeps its own. The copy shares the pairs, shifts and scales."""
        return copy.copy(self).reduce_across(reduce)

    # -- statistics ----------------------------------------------------------------------------

    @property
    def n_a(self) -> int:
        return int(self.cols.shape[0])

    def mean_x(self) -> Float[Tensor, " a"]:
        return self.shift_x + self.sx / self.n

    def mean_y(self) -> Float[Tensor, " b"]:
        return self.shift_y + self.sy / self.n

    def m2_x(self) -> Float[Tensor, " a"]:
        """Sum of squares about the mean."""
        return (self.sxx - self.sx * self.sx / self.n).clamp_min(0.0)

    def m2_y(self) -> Float[Tensor, " b"]:
        return (self.syy - self.sy * self.sy / self.n).clamp_min(0.0)

    def dead_x(self) -> Bool[Tensor, " a"]:
        return self.m2_x() <= 0

    def dead_y(self) -> Bool[Tensor, " b"]:
        return self.m2_y() <= 0

    def comoment(self) -> Float[Tensor, "a k"]:
        """``Σ (x - x̄)(y - ȳ)`` of every pair."""
        return self.sxy - self.sx[:, None] * self.sy[self.cols] / self.n

    def corr(self) -> Float[Tensor, "a k"]:
        """Pearson correlation of every pair; NaN where either unit has zero variance."""
        if self.n == 0:
            return torch.full(tuple(self.cols.shape), torch.nan, dtype=torch.float64)
        m2x, m2y = self.m2_x(), self.m2_y()[self.cols]
        r = (self.comoment() / (m2x[:, None] * m2y).sqrt()).clamp_(-1.0, 1.0)
        return r.masked_fill_((m2x <= 0)[:, None] | (m2y <= 0), torch.nan)

    def standard_error(self) -> Float[Tensor, "a k"]:
        """Batch-means standard error of every pair's correlation (NaN with < 2 blocks)."""
        m = self.blocks
        if m < 2 or self.n == 0:
            return torch.full(tuple(self.cols.shape), torch.nan, dtype=torch.float64)
        total = float(self.blocked_tokens)
        mu = self.psi / total
        ss = self.psi_sq - 2 * mu * self.psi_n + mu * mu * self.block_n_sq
        lam = ss.clamp_min(0.0) / total * (m / (m - 1))
        se = (lam / self.n).sqrt()
        return se.masked_fill_(self.corr().isnan(), torch.nan)

    def certify(
        self, value: Float[Tensor, " a"], rival: Float[Tensor, " a"], se: Float[Tensor, "a m"],
        n_screen: int, sigmas: float,
    ) -> tuple[Bool[Tensor, " a"], Float[Tensor, " a"]]:  # fmt: skip
        """``(certified, ceiling)``: whether each row's ``value`` (exact over all tokens, a
        maximum over some units: a lower bound) beats ``rival``, a value over the first
        ``n_screen`` tokens, by a margin; and the upper bound of the row's maximum over all units
        at it (``value`` where certified, else ``rival`` plus the margin, at most 1; 1 without a
        standard error; NaN where ``value`` is). The margin is ``sigmas`` deviations of the
        rival's error, of variance ``σ²(1/n_screen - 1/n)`` with ``σ/√n`` the row's largest
        standard error in ``se``, and at least the largest change of the row's pairs from their
        pilot (screening) value (a prefix unlike the rest moves them by more than the noise).
        With no token after the screen every live value is exact: certified.

        Examples:
            >>> pm = PairMoments(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2),
            ...                  torch.zeros(1), torch.ones(2), torch.ones(1), torch.zeros(2, 1))
            >>> pm.n, pm.blocked_tokens = 400, 300  # 100 screening tokens, 300 after them
            >>> value, rival = torch.tensor([0.9, 0.5]), torch.tensor([0.3, 0.45])
            >>> se = torch.full((2, 1), 0.01)  # σ/√n: σ·sqrt(1/100 - 1/400) = 0.01·sqrt(3)
            >>> certified, ceiling = pm.certify(value, rival, se, 100, 4.0)
            >>> certified.tolist(), [round(v, 4) for v in ceiling.tolist()]
            ([True, False], [0.9, 0.5193])
        """
        live = ~value.isnan()
        if self.blocked_tokens == 0:
            return live, value.clone()
        spread = se.nan_to_num(-1.0).amax(1)
        noise = sigmas * spread * math.sqrt(max(0.0, self.n / max(1, n_screen) - 1.0))
        margin = noise.maximum((self.corr() - self.pilot).abs().nan_to_num(0.0).amax(1).cpu())
        certified = live & ((value - rival) > margin) & (spread >= 0)
        ceiling = torch.maximum(value, rival + margin).clamp_max(1.0)
        return certified, ceiling.masked_fill(spread < 0, 1.0).masked_fill(~live, torch.nan)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        out = {name: getattr(self, name) for name in (*_STATE, *_SUMS)}
        out["counts"] = torch.tensor(self._counts(), dtype=torch.int64)
        return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Tensor], device: torch.device | str | None = None
    ) -> PairMoments:
        out = cls(*(state[name] for name in _STATE), device=device)
        for name in _SUMS:
            setattr(out, name, state[name].to(out.device, torch.float64).clone())
        out._set_counts(state["counts"].tolist())
        return out

    def _counts(self) -> list[int]:
        return [self.n, self.blocks, self.blocked_tokens, self.block_n_sq]

    def _set_counts(self, counts: Sequence[int]) -> None:
        self.n, self.blocks, self.blocked_tokens, self.block_n_sq = (int(v) for v in counts)


class Sequences:
    """A chunk of whole sequences as one ``[s, units, width]`` tensor (float64 or float32),
    centred about a shift, each sequence zero-padded to ``width`` (padding adds nothing), with the
    float64 per-unit sums and per-sequence sums of squares the moments need.

    The one layout serves both sides of the sampled product: :attr:`rows` is the tensor itself,
    :attr:`columns` its ``[s, width, units]`` transposed view (column-major), so a model taking
    part in several directions is converted once per batch.
    """

    def __init__(self, data: Float[Tensor, "s u w"], lengths: Int[Tensor, " s"]) -> None:
        self.data, self.lengths = data, lengths
        f64 = torch.float64
        s, u, w = data.shape
        run = w if data.dtype == f64 else FLOAT32_RUN
        sums, squares = None, None
        for lo in range(0, w, run):  # float32 sums over at most FLOAT32_RUN tokens
            part = data[:, :, lo : lo + run]
            flat = part.reshape(s * u, 1, part.shape[2])  # a view unless the width was cut
            sq = torch.bmm(flat, flat.transpose(1, 2)).view(s, u).to(f64)  # no squared copy
            total = part.sum(2).to(f64)  # [s, u]: padding is zero
            sums = total if sums is None else sums.add_(total)
            squares = sq if squares is None else squares.add_(sq)
        if sums is None or squares is None:  # no tokens
            sums = squares = torch.zeros(s, u, dtype=f64, device=data.device)
        self.sums = sums.sum(0)
        self.squares = squares

    @property
    def n_sequences(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.data.shape[1])

    @property
    def rows(self) -> Float[Tensor, "s u w"]:
        """``[s, units, width]`` contiguous: the row side of the sampled product."""
        return self.data

    @property
    def columns(self) -> Float[Tensor, "s w u"]:
        """``[s, width, units]`` column-major: the column side of the sampled product."""
        return self.data.transpose(1, 2)

    @property
    def padded(self) -> Float[Tensor, "s w u"]:
        """``[s, width, units]`` (a view)."""
        return self.data.transpose(1, 2)

    @classmethod
    def from_padded(cls, padded: Float[Tensor, "s w u"], lengths: Int[Tensor, " s"]) -> Sequences:
        """From ``[s, width, units]`` values (already centred, zero-padded)."""
        return cls(padded.transpose(1, 2).contiguous(), lengths)


def float32_safe(chunks: Sequence[Sequences]) -> bool:
    """Whether float32 products of these chunks keep their bound: the exhaustive engine's rule
    (:func:`~tl_universality.stats.cross_moments.products.float32_fits`) on every unit's ``Σx'²``
    over each chunk, about the chunk's shift, where a sum of 0 must come from values that are
    all 0. float64 chunks always are.

    Examples:
        >>> x = torch.ones(4, 2) * torch.tensor([1.0, 1e-20])
        >>> x[0] = 0  # unit 1 varies by ~1e-20 only: its products would underflow
        >>> shift = torch.zeros(2, dtype=torch.float64)
        >>> float32_safe(sequence_chunks(x[:, :1], None, shift[:1], dtype=torch.float32))
        True
        >>> float32_safe(sequence_chunks(x, None, shift, dtype=torch.float32))
        False
    """
    for c in chunks:
        if c.data.dtype == torch.float64:
            continue
        energy = c.squares.sum(0)
        if not float32_fits(energy, int(c.lengths.sum())):
            return False
        # the squares are float32 sums: values below ~1e-23 square to exactly 0 there
        zero = energy == 0
        if bool(zero.any()) and bool(c.data[:, zero, :].ne(0).any()):
            return False
    return True


def centred_chunks(
    acts: Mapping[int, Tensor],
    shifts: Mapping[int, Tensor],
    lengths: Sequence[int] | None,
    dtype: torch.dtype,
    buffers: dict[tuple[int, torch.dtype], list[Tensor]] | None = None,
) -> tuple[dict[int, list[Sequences]], torch.dtype]:
    """:func:`sequence_chunks` of every ``acts[m]`` about ``shifts[m]`` (the same sequences, cut
    alike), in ``dtype``, or all in float64 when :func:`float32_safe` refuses any of them (the
    two sides of a product need one dtype). Returns the chunks and the dtype used; ``buffers``
    holds reusable storage per ``(m, dtype)``."""
    other = max(acts[m].shape[1] for m in shifts)

    def make(dt: torch.dtype) -> dict[int, list[Sequences]]:
        out = {}
        for m, shift in shifts.items():
            store = None if buffers is None else buffers.setdefault((m, dt), [])
            out[m] = sequence_chunks(acts[m], lengths, shift, other, store, dtype=dt)
        return out

    chunks = make(dtype)
    if dtype != torch.float64 and not all(float32_safe(c) for c in chunks.values()):
        return make(torch.float64), torch.float64
    return chunks, dtype


def sequence_chunks(
    x: Float[Tensor, "tok u"],
    lengths: Sequence[int] | None,
    shift: Float[Tensor, " u"],
    other_units: int = 0,
    buffers: list[Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
) -> list[Sequences]:
    """``x`` (rows = the tokens of consecutive sequences of ``lengths``) centred about ``shift``
    (held in ``dtype``, float64 or float32, each value rounded once: in float32 when ``x`` and
    ``shift`` are float32 numbers, else subtracted in float64), cut into chunks of whole
    sequences that keep the copies of ``x`` and of a partner with ``other_units`` units under
    :data:`CHUNK_ELEMENTS` each. Empty sequences are dropped. Each chunk is one strided pass over
    ``x`` into the ``[s, units, width]`` layout.

    ``buffers``: storage to reuse, one per chunk (grown and appended to as needed), so a stream
    of batches does not pay a fresh allocation's page faults each time; the chunks are then views
    of it, valid until the next call with the same list.
    """
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32, not {dtype}")
    n_tok = x.shape[0]
    lengths = [n_tok] if lengths is None else [int(v) for v in lengths]
    if sum(lengths) != n_tok:
        raise ValueError(f"lengths sum to {sum(lengths)} but x has {n_tok} rows")
    dev = shift.device
    units = x.shape[1]
    starts = [0]
    for v in lengths:
        starts.append(starts[-1] + v)
    kept = [(s0, v) for s0, v in zip(starts, lengths, strict=False) if v > 0]
    if not kept:
        return []
    width = max(v for _, v in kept)
    per = max(1, CHUNK_ELEMENTS // max(1, width * max(units, other_units)))
    column = shift.to(torch.float64)[:, None]
    narrow = column.to(dtype)
    # float32 values and a float32-representable shift (PairMoments.from_moments(...,
    # shift_dtype=torch.float32)): subtract in float32, exactly rounded, at memory speed
    fast = (
        dtype == torch.float32
        and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and torch.equal(narrow.to(torch.float64), column)
    )
    out = []
    for c in range(0, len(kept), per):
        part = kept[c : c + per]
        lens = torch.tensor([v for _, v in part], device=dev)
        w = max(v for _, v in part)
        flat = storage(buffers, c // per, len(part) * units * w, dev, dtype)
        data = flat.view(len(part), units, w)
        if fast:  # x and shift float32: x - shift is rounded once, in one pass
            sub = lambda src, dst: torch.sub(src, narrow, out=dst)  # noqa: E731
        else:  # formed in float64 (the subtraction's type promotion), rounded as it is written
            sub = lambda src, dst: torch.sub(src, column, out=dst)  # noqa: E731
        if all(v == w for _, v in part):  # equal lengths (the usual case): one pass
            lo = part[0][0]
            sub(x[lo : lo + len(part) * w].view(len(part), w, units).transpose(1, 2), data)
        else:
            data.zero_()
            for j, (s0, v) in enumerate(part):
                sub(x[s0 : s0 + v].T, data[j, :, :v])
        out.append(Sequences(data, lens))
    return out


def storage(
    buffers: list[Tensor] | None, k: int, numel: int, dev: torch.device, dtype: torch.dtype
) -> Tensor:
    """``numel`` elements of ``dtype``: the start of ``buffers[k]`` when it is large enough."""
    if buffers is None:
        return torch.empty(numel, dtype=dtype, device=dev)
    while len(buffers) <= k:
        buffers.append(torch.empty(0, dtype=dtype, device=dev))
    have = buffers[k]
    if have.numel() < numel or have.device != dev or have.dtype != dtype:
        buffers[k] = torch.empty(numel, dtype=dtype, device=dev)
    return buffers[k][:numel]

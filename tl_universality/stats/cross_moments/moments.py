"""Streaming cross moments of two unit sets (docs/concepts.md, "Universality")."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_universality.core.errors import EmptyTokenSourceError
from tl_universality.stats.cross_moments.products import (
    PRODUCT_CHUNK,
    TOKEN_CHUNK,
    Block,
    ProductDtype,
    Side,
    accumulate,
    add_sparse_rows,
    as_parts,
    big_entries,
    float32_fits,
    matmul_precision,
    mm,
    resolve_product_dtype,
    with_whole_columns,
)


class CrossMoments:
    """Streaming co-moments of units A (``n_a``) and B (``n_b``) over tokens, in float64.

    Args:
        n_a: Units on side A (rows of the correlation matrix).
        n_b: Units on side B (columns).
        a_blocks: Ranges ``(start, stop)`` of A whose within-range second moments to track
            (e.g. each layer of a model used as the "other" side by an all-pairs run).
        b_blocks: Ranges of B whose within-range second moments to track: per-layer
            ``[d_l × d_l]`` matrices, what the rotation and Gaussian-mix baselines need.
        product_dtype: Precision of the per-batch product (see :data:`ProductDtype`).
        device: Where the accumulators live (default CPU); batches are moved there.

    Examples:
        >>> import numpy as np
        >>> f64 = torch.float64
        >>> x, y = torch.randn(500, 3, dtype=f64), torch.randn(500, 2, dtype=f64)
        >>> stats = CrossMoments(3, 2)
        >>> for xs, ys in zip(x.split(128), y.split(128)):
        ...     _ = stats.update(xs, ys)
        >>> oracle = np.corrcoef(x.numpy().T, y.numpy().T)[:3, 3:]
        >>> bool(np.abs(stats.corr().numpy() - oracle).max() < 1e-6)
        True
    """

    def __init__(
        self,
        n_a: int,
        n_b: int,
        *,
        a_blocks: Sequence[Block] = (),
        b_blocks: Sequence[Block] = (),
        product_dtype: ProductDtype = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.device = torch.device(device if device is not None else "cpu")
        self.product_dtype, self._precision = resolve_product_dtype(product_dtype, self.device)
        self.n = 0
        self._a = Side(int(n_a), a_blocks, self.device)
        self._b = Side(int(n_b), b_blocks, self.device)
        self.sum_xy = torch.zeros(int(n_a), int(n_b), dtype=torch.float64, device=self.device)
        self._buffer: Tensor | None = None  # the float32 product, reused across batches
        self._centred: tuple[Tensor, Tensor] | None = None
        #: Batches whose product ran in float64 because float32 would overflow or underflow.
        self.fallback_batches = 0
        #: Batches in which spiky units' rows and columns, or the rows of A units that take few
        #: values, were multiplied in float64.
        self.split_batches = 0

    # -- shape -------------------------------------------------------------------------------

    @property
    def n_a(self) -> int:
        return self._a.n_units

    @property
    def n_b(self) -> int:
        return self._b.n_units

    @property
    def a_blocks(self) -> tuple[Block, ...]:
        return self._a.blocks

    @property
    def b_blocks(self) -> tuple[Block, ...]:
        return self._b.blocks

    def __repr__(self) -> str:
        return (
            f"CrossMoments(n_a={self.n_a}, n_b={self.n_b}, n={self.n},"
            f" a_blocks={len(self.a_blocks)}, b_blocks={len(self.b_blocks)},"
            f" product_dtype={self.product_dtype})"
        )

    @staticmethod
    def state_bytes(
        n_a: int, n_b: int, a_blocks: Sequence[int] = (), b_blocks: Sequence[int] = ()
    ) -> int:
        """Bytes of the float64 state for these sizes (block arguments are the block widths).

        Examples:
            >>> CrossMoments.state_bytes(1000, 1000)  # the a x b matrix dominates
            8080000
        """
        grams = sum(w * w for w in a_blocks) + sum(w * w for w in b_blocks)
        return 8 * (n_a * n_b + 5 * (n_a + n_b) + grams)

    # -- accumulation --------------------------------------------------------------------------

    def update(
        self,
        x: Float[Tensor, "tok a"] | Sequence[Float[Tensor, "tok _"]],
        y: Float[Tensor, "tok b"] | Sequence[Float[Tensor, "tok _"]],
    ) -> CrossMoments:
        """Add one batch of tokens (in place); returns ``self``.

        ``x`` and ``y`` are ``[tokens, units]`` activations of A and B on the same tokens, or
        lists of column blocks that concatenate to them (saves a copy when B gathers several
        models' units). Any float dtype and device; the inputs are never modified.
        """
        xs, ys = as_parts(x), as_parts(y)
        rows = xs[0].shape[0] if xs else ys[0].shape[0]
        if rows == 0:
            return self
        first = self.n == 0
        xc, yc = self._scratch(rows)
        dx, ax, ex, tx, fx = self._a.centre(xs, first, xc, self.device)
        dy, ay, ey, ty, fy = self._b.centre(ys, first, yc, self.device)
        product = self.product_dtype
        if product != torch.float64 and not (float32_fits(ex, rows) and float32_fits(ey, rows)):
            # Values this large (or spreads this small) would overflow (or underflow) a float32
            # product: this batch is multiplied in float64 instead, never emitted as NaN.
            product = torch.float64
            self.fallback_batches += 1
            xc = torch.empty(rows, self.n_a, dtype=torch.float64, device=self.device)
            yc = torch.empty(rows, self.n_b, dtype=torch.float64, device=self.device)
            self._a.write_centred(xs, dx, xc)
            self._b.write_centred(ys, dy, yc)
        big_x = big_y = None  # the dominant entries of each side (float32 products only)
        if product == torch.float32:
            big_x, big_y = big_entries(xc, ax, ex), big_entries(yc, ay, ey)
        with matmul_precision(self._precision):
            self._a.add_grams(xc, product, dx, tx, rows, fx, big_x)
            self._b.add_grams(yc, product, dy, ty, rows, fy, big_y)
            if product == torch.float32 and self.n_a and self.n_b:
                self._add_split_product(xc, yc, big_x, big_y, fx)
            else:
                self._add_product(xc, yc, product)
            if self.n_a and self.n_b:
                # the exact rank-one parts, with δ = c − K and T = Σ(x − K) of this batch:
                # Σ(x−K)(y−L)ᵀ = Σ(x−c)(y−c')ᵀ + δx·T_yᵀ + (T_x − n·δx)·δyᵀ
                self.sum_xy.addr_(dx, ty)
                self.sum_xy.addr_(tx - rows * dx, dy)
        self.n += rows
        self._recentre()
        return self

    def _scratch(self, rows: int) -> tuple[Tensor, Tensor]:
        """Buffers for the centred batch, kept between batches (fresh ones cost page faults)."""
        if self._centred is None or self._centred[0].shape[0] < rows:
            kw = dict(dtype=self.product_dtype, device=self.device)
            self._centred = (
                torch.empty(rows, self.n_a, **kw),  # type: ignore[arg-type]
                torch.empty(rows, self.n_b, **kw),  # type: ignore[arg-type]
            )
        return self._centred[0][:rows], self._centred[1][:rows]

    def _recentre(self) -> None:
        """Move the shift of units whose mean drifted more than one standard deviation from it.

        The float32 product's rounding grows with ``(mean − shift)² / variance``; data whose mean
        drifts (e.g. a stream sorted by topic) would otherwise lose accuracy. The move is exact
        algebra on the float64 accumulators, and rare: an ``a × b`` update only when it happens.
        """
        n = float(self.n)
        targets = []
        for side in (self._a, self._b):
            offset = side.sum / n
            var = (side.sumsq / n - offset**2).clamp_min(0)
            drifted = offset**2 > var
            targets.append(
                torch.where(drifted, side.shift + offset, side.shift)
                if bool(drifted.any())
                else None
            )
        self._shift_to(*targets)

    def _shift_to(self, new_x: Tensor | None, new_y: Tensor | None) -> None:
        """Re-express the accumulators about new shifts (None: keep that side's shift)."""
        n = float(self.n)
        deltas = []
        for side, new in ((self._a, new_x), (self._b, new_y)):
            delta = None if new is None else new - side.shift
            deltas.append(delta if delta is not None and bool((delta != 0).any()) else None)
        dx, dy = deltas
        if dx is None and dy is None:
            return
        sx, sy = self._a.sum.clone(), self._b.sum.clone()
        # Σ(x−K−δx)(y−L−δy)ᵀ = Σ(x−K)(y−L)ᵀ − δx Σ(y−L)ᵀ − Σ(x−K) δyᵀ + n δx δyᵀ
        if dx is not None:
            self.sum_xy -= torch.outer(dx, sy)
        if dy is not None:
            self.sum_xy -= torch.outer(sx - (n * dx if dx is not None else 0.0), dy)
        for side, delta in ((self._a, dx), (self._b, dy)):
            if delta is None:
                continue
            old_sum = side.sum.clone()
            for (s, e), gram in zip(side.blocks, side.gram, strict=True):
                d, o = delta[s:e], old_sum[s:e]
                gram -= torch.outer(d, o) + torch.outer(o, d) - n * torch.outer(d, d)
            side.sumsq -= 2 * delta * old_sum - n * delta**2
            side.sum -= n * delta
            side.shift += delta

    def _add_product(self, xc: Tensor, yc: Tensor, product: torch.dtype) -> None:
        if self.n_a == 0 or self.n_b == 0:
            return
        if product == torch.float64:
            self.sum_xy.addmm_(xc.T.to(torch.float64), yc.to(torch.float64))
            return
        step = max(1, PRODUCT_CHUNK // self.n_b)
        for r0 in range(0, self.n_a, step):
            r1 = min(self.n_a, r0 + step)
            if product == torch.bfloat16:
                accumulate(self.sum_xy[r0:r1], mm(xc[:, r0:r1].T, yc, product))
                continue
            if self._buffer is None:  # allocated once: a fresh one per batch costs page faults
                rows = min(step, self.n_a)
                self._buffer = torch.empty(rows, self.n_b, dtype=xc.dtype, device=xc.device)
            out = self._buffer[: r1 - r0]
            # float32 sums run over at most TOKEN_CHUNK tokens before they reach the float64
            # accumulator: a float32 dot product's rounding grows with its length (~sqrt(n)·eps)
            for t0 in range(0, xc.shape[0], TOKEN_CHUNK):
                t1 = min(xc.shape[0], t0 + TOKEN_CHUNK)
                torch.mm(xc[t0:t1, r0:r1].T, yc[t0:t1], out=out)
                accumulate(self.sum_xy[r0:r1], out)

    def _add_split_product(
        self,
        xc: Tensor,
        yc: Tensor,
        big_x: tuple[Tensor, Tensor] | None,
        big_y: tuple[Tensor, Tensor] | None,
        few_x: Tensor,
    ) -> None:
        """``Σ(x − m)(y − m')ᵀ`` with a float32 product, except the few dominant entries.

        A float32 sum drops small terms added to a partial sum dominated by one large term: a unit
        active on one token would lose its background's share of the co-moment. So the entries
        that hold more than :data:`SPIKY_SHARE` of their unit's batch energy (at most 16 per unit,
        none for ordinary units) are taken out of the float32 inputs and multiplied in float64:
        ``xᵀy = x_restᵀ y_rest + x_bigᵀ y + x_restᵀ y_big``, the last two sparse and exact
        (``big_x``, ``big_y``: each side's
        :func:`~tl_universality.stats.cross_moments.products.big_entries`).

        Every entry of an A unit that takes few values (``few_x``, see
        :func:`~tl_universality.stats.cross_moments.products.atoms`) is taken out the same way, so
        its whole row is float64: with another such unit its float32 sums would repeat a few
        terms and drift past the bound. The choice depends on the A unit alone, not on which B
        units share its tile, so every tiling and process makes the same choice for each pair.
        """
        if bool(few_x.any()):
            big_x = with_whole_columns(big_x, few_x.nonzero()[:, 0], xc.shape[0])
        if big_x is None and big_y is None:
            self._add_product(xc, yc, torch.float32)
            return
        self.split_batches += 1
        # x_bigᵀ y with y whole (rows of sum_xy), then x_restᵀ y_big (columns of sum_xy, rows of
        # its transpose): each side's big entries are taken out of its float32 copy first.
        for big, own, other, out in ((big_x, xc, yc, self.sum_xy), (big_y, yc, xc, self.sum_xy.T)):
            if big is None:
                continue
            tokens, units = big
            values = own[tokens, units].to(torch.float64)
            own[tokens, units] = 0
            add_sparse_rows(out, units, tokens, values, other, PRODUCT_CHUNK)
        self._add_product(xc, yc, torch.float32)

    def reduce_across(self, reduce: Callable[[Tensor, str], Tensor]) -> CrossMoments:
        """Replace these statistics, in place, by the merge of those of every process.

        ``reduce(tensor, op)`` returns ``tensor`` reduced over the processes with ``op`` in
        ``"sum" | "min" | "max"`` (e.g. a ``torch.distributed.all_reduce``); every process calls
        this with statistics of the same shapes. Each first moves its shift to the global mean
        (exact algebra); about a common shift every accumulator is a plain sum over processes.
        """
        total = int(reduce(torch.tensor([self.n], dtype=torch.int64, device=self.device), "sum"))
        if total == 0:
            return self
        means = [
            reduce(side.shift * float(self.n) + side.sum, "sum") / total
            for side in (self._a, self._b)
        ]
        if self.n:
            self._shift_to(means[0], means[1])
        else:  # nothing here: only the shift to take
            self._a.shift, self._b.shift = means[0].clone(), means[1].clone()
        for side in (self._a, self._b):
            side.sum = reduce(side.sum, "sum")
            side.sumsq = reduce(side.sumsq, "sum")
            side.min = reduce(side.min, "min")
            side.max = reduce(side.max, "max")
            for *_, stacked in side.groups:
                stacked.copy_(reduce(stacked, "sum"))
        self.sum_xy = reduce(self.sum_xy, "sum")
        self.n = total
        return self

    def merge(self, other: CrossMoments) -> CrossMoments:
        """Statistics of the union of two disjoint token sets, as a new object.

        Both operands are first centred on their own means; the pairwise update of Chan, Golub &
        LeVeque then combines them exactly, whatever their shifts. The result is stored with its
        shift at the combined mean. Blocks tracked by both operands must be the same.

        Examples:
            >>> f64 = torch.float64
            >>> _ = torch.manual_seed(0)
            >>> x, y = torch.randn(300, 4, dtype=f64), torch.randn(300, 2, dtype=f64)
            >>> half = CrossMoments(4, 2).update(x[:100], y[:100])
            >>> rest = CrossMoments(4, 2).update(x[100:] + 5, y[100:]).update(-x[100:], y[100:])
            >>> whole = CrossMoments(4, 2).update(x[:100], y[:100]).update(x[100:] + 5, y[100:])
            >>> _ = whole.update(-x[100:], y[100:])
            >>> torch.allclose(half.merge(rest).corr(), whole.corr(), atol=1e-6)  # float32 products
            True
        """
        if (self.n_a, self.n_b, self.a_blocks, self.b_blocks) != (
            other.n_a,
            other.n_b,
            other.a_blocks,
            other.b_blocks,
        ):
            raise ValueError(
                f"Cannot merge {self!r} with {other!r}: the unit sets or tracked blocks differ."
            )
        if other.n == 0:
            return self._copy()
        if self.n == 0:
            return other._copy().to(self.device)
        o = other.to(self.device)
        n1, n2 = float(self.n), float(o.n)
        n = n1 + n2
        out = CrossMoments(
            self.n_a,
            self.n_b,
            a_blocks=self.a_blocks,
            b_blocks=self.b_blocks,
            product_dtype=self.product_dtype,
            device=self.device,
        )
        out.n = self.n + o.n
        deltas = []
        for new, s1, s2 in ((out._a, self._a, o._a), (out._b, self._b, o._b)):
            mean1, mean2 = s1.shift + s1.sum / n1, s2.shift + s2.sum / n2
            delta = mean2 - mean1
            deltas.append(delta)
            new.shift = mean1 + delta * (n2 / n)
            # Σ(x − mean)² and within-block co-moments, then combined (Chan et al.).
            new.sumsq = (
                (s1.sumsq - s1.sum**2 / n1) + (s2.sumsq - s2.sum**2 / n2) + delta**2 * (n1 * n2 / n)
            )
            new.sum = torch.zeros_like(new.shift)  # the shift is now the mean
            new.min = torch.minimum(s1.min, s2.min)
            new.max = torch.maximum(s1.max, s2.max)
            for i, (s, e) in enumerate(new.blocks):
                d = delta[s:e]
                new.gram[i].copy_(
                    _centred(s1.gram[i], s1.sum[s:e], s1.sum[s:e], n1)
                    + _centred(s2.gram[i], s2.sum[s:e], s2.sum[s:e], n2)
                    + torch.outer(d, d) * (n1 * n2 / n)
                )
        out.sum_xy = (
            _centred(self.sum_xy, self._a.sum, self._b.sum, n1)
            + _centred(o.sum_xy, o._a.sum, o._b.sum, n2)
            + torch.outer(deltas[0], deltas[1]) * (n1 * n2 / n)
        )
        return out

    # -- results -------------------------------------------------------------------------------

    def _require_data(self) -> None:
        if self.n == 0:
            raise EmptyTokenSourceError(
                "No token was accumulated, so correlations are undefined. Check that the token"
                " source is not empty and that not every position was excluded."
            )

    @property
    def mean_x(self) -> Float[Tensor, " a"]:
        self._require_data()
        return self._a.shift + self._a.sum / self.n

    @property
    def mean_y(self) -> Float[Tensor, " b"]:
        self._require_data()
        return self._b.shift + self._b.sum / self.n

    @property
    def dead_x(self) -> Bool[Tensor, " a"]:
        """A units that took one value on every token (zero variance)."""
        self._require_data()
        return self._a.min == self._a.max

    @property
    def dead_y(self) -> Bool[Tensor, " b"]:
        """B units that took one value on every token (zero variance)."""
        self._require_data()
        return self._b.min == self._b.max

    @property
    def m2_x(self) -> Float[Tensor, " a"]:
        """``Σ(x − x̄)²`` per A unit (exactly 0 for dead units)."""
        self._require_data()
        m2 = (self._a.sumsq - self._a.sum**2 / self.n).clamp_min(0)
        return m2.masked_fill(self.dead_x, 0.0)

    @property
    def m2_y(self) -> Float[Tensor, " b"]:
        """``Σ(y − ȳ)²`` per B unit (exactly 0 for dead units)."""
        self._require_data()
        m2 = (self._b.sumsq - self._b.sum**2 / self.n).clamp_min(0)
        return m2.masked_fill(self.dead_y, 0.0)

    @property
    def var_x(self) -> Float[Tensor, " a"]:
        """Population variance of each A unit."""
        return self.m2_x / self.n

    @property
    def var_y(self) -> Float[Tensor, " b"]:
        """Population variance of each B unit."""
        return self.m2_y / self.n

    def comoment(
        self, rows: slice | None = None, cols: slice | None = None
    ) -> Float[Tensor, "rows cols"]:
        """``Σ(x − x̄)(y − ȳ)ᵀ`` for A units ``rows`` and B units ``cols`` (float64).

        Rows and columns of dead units are exactly 0, so linear mixes of units ignore them.
        """
        self._require_data()
        rows = rows if rows is not None else slice(None)
        cols = cols if cols is not None else slice(None)
        out = _centred(self.sum_xy[rows, cols], self._a.sum[rows], self._b.sum[cols], float(self.n))
        dead_x, dead_y = self.dead_x[rows], self.dead_y[cols]
        if bool(dead_x.any()):
            out.masked_fill_(dead_x[:, None], 0.0)
        if bool(dead_y.any()):
            out.masked_fill_(dead_y[None, :], 0.0)
        return out

    def cov(
        self, rows: slice | None = None, cols: slice | None = None
    ) -> Float[Tensor, "rows cols"]:
        """Population covariance of A units ``rows`` with B units ``cols``."""
        return self.comoment(rows, cols) / self.n

    def corr(
        self, rows: slice | None = None, cols: slice | None = None
    ) -> Float[Tensor, "rows cols"]:
        """Pearson correlation of A units ``rows`` with B units ``cols`` (float64).

        NaN wherever either unit is dead; values are clipped to [-1, 1] (as numpy's corrcoef),
        since float32 products can overshoot 1 by ~1e-7 for identical units.
        """
        self._require_data()
        rows = rows if rows is not None else slice(None)
        cols = cols if cols is not None else slice(None)
        # 1/sqrt(Σ(x−x̄)²), NaN for dead units: multiplying spreads the NaN over their row/column
        # without a full-size mask (this runs on a × b entries).
        inv_x, inv_y = _inv_sqrt(self.m2_x[rows]), _inv_sqrt(self.m2_y[cols])
        r = _centred(self.sum_xy[rows, cols], self._a.sum[rows], self._b.sum[cols], float(self.n))
        return r.mul_(inv_x[:, None]).mul_(inv_y[None, :]).clamp_(-1.0, 1.0)

    def within_a(self, block: int) -> Float[Tensor, "d d"]:
        """``Σ(x − x̄)(x − x̄)ᵀ`` within tracked A block number ``block`` (dead units zeroed)."""
        return self._within(self._a, self.dead_x, block)

    def within_b(self, block: int) -> Float[Tensor, "d d"]:
        """``Σ(y − ȳ)(y − ȳ)ᵀ`` within tracked B block number ``block`` (dead units zeroed).

        Examples:
            >>> y = torch.randn(200, 4, dtype=torch.float64)
            >>> stats = CrossMoments(1, 4, b_blocks=[(0, 2), (2, 4)])
            >>> _ = stats.update(torch.randn(200, 1), y)
            >>> yc = y[:, 2:] - y[:, 2:].mean(0)
            >>> torch.allclose(stats.within_b(1), yc.T @ yc)
            True
        """
        return self._within(self._b, self.dead_y, block)

    def _within(self, side: Side, dead: Tensor, block: int) -> Tensor:
        self._require_data()
        s, e = side.blocks[block]
        out = _centred(side.gram[block], side.sum[s:e], side.sum[s:e], float(self.n))
        d = dead[s:e]
        out.masked_fill_(d[:, None] | d[None, :], 0.0)
        return out

    # -- conversions ---------------------------------------------------------------------------

    @property
    def T(self) -> CrossMoments:  # noqa: N802 - mirrors Tensor.T
        """The same statistics with A and B swapped (shares memory; for reading results)."""
        out = CrossMoments.__new__(CrossMoments)
        out.device, out.product_dtype, out._precision = (
            self.device,
            self.product_dtype,
            self._precision,
        )
        out.n, out._a, out._b, out.sum_xy = self.n, self._b, self._a, self.sum_xy.T
        out._buffer, out._centred = None, None
        out.fallback_batches = out.split_batches = 0
        return out

    def to(self, device: torch.device | str) -> CrossMoments:
        """A copy on ``device`` (or ``self`` when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return CrossMoments.from_state_dict(
            self.state_dict(), product_dtype=self._product_spec(), device=device
        )

    def _product_spec(self) -> ProductDtype:
        return "tf32" if self._precision == "high" else self.product_dtype

    def _copy(self) -> CrossMoments:
        return CrossMoments.from_state_dict(
            {k: v.clone() for k, v in self.state_dict().items()},
            product_dtype=self._product_spec(),
            device=self.device,
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Contiguous tensors for ``safetensors.torch.save_file`` (see :meth:`from_state_dict`).

        Examples:
            >>> stats = CrossMoments(2, 3, b_blocks=[(0, 3)])
            >>> _ = stats.update(torch.randn(9, 2), torch.randn(9, 3))
            >>> again = CrossMoments.from_state_dict(stats.state_dict())
            >>> torch.equal(again.corr(), stats.corr()) and again.n == 9
            True
        """
        out = {"n": torch.tensor([self.n], dtype=torch.int64), "sum_xy": self.sum_xy}
        out.update(self._a.tensors("a."))
        out.update(self._b.tensors("b."))
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Tensor],
        *,
        product_dtype: ProductDtype = None,
        device: torch.device | str | None = None,
    ) -> CrossMoments:
        """Rebuild statistics saved by :meth:`state_dict` (on ``device``, default CPU)."""
        missing = [
            k
            for k in ("n", "sum_xy", "a.shift", "b.shift", "a.blocks", "b.blocks")
            if k not in state
        ]
        if missing:
            raise KeyError(f"Not a CrossMoments state: missing {missing}.")
        out = cls.__new__(cls)
        out.device = torch.device(device if device is not None else "cpu")
        out.product_dtype, out._precision = resolve_product_dtype(product_dtype, out.device)
        out.n = int(state["n"][0])
        out._a = Side.from_tensors(state, "a.", out.device)
        out._b = Side.from_tensors(state, "b.", out.device)
        out._buffer, out._centred = None, None
        out.fallback_batches = out.split_batches = 0
        out.sum_xy = state["sum_xy"].to(out.device, torch.float64).clone()
        if tuple(out.sum_xy.shape) != (out.n_a, out.n_b):
            raise ValueError(
                f"Inconsistent CrossMoments state: sum_xy is {tuple(out.sum_xy.shape)} but the"
                f" sides have {out.n_a} and {out.n_b} units."
            )
        return out


def _centred(
    raw: Float[Tensor, "r c"], sum_r: Float[Tensor, " r"], sum_c: Float[Tensor, " c"], n: float
) -> Float[Tensor, "r c"]:
    """``Σ(x−K)(y−L)ᵀ − Σ(x−K)Σ(y−L)ᵀ/n``: the co-moment about the means, from shifted sums."""
    return torch.addr(raw, sum_r, sum_c, alpha=-1.0 / n)


def _inv_sqrt(m2: Float[Tensor, " u"]) -> Float[Tensor, " u"]:
    return torch.where(m2 > 0, m2.rsqrt(), torch.nan)

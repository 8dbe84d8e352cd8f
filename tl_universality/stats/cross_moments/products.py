"""The per-batch product of a cross-moment update: precision, centring and chunking."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

Block = tuple[int, int]
"""A half-open range ``(start, stop)`` of units on one side, e.g. one layer's neurons."""

ProductDtype = torch.dtype | str | None
"""Precision of the per-batch product: ``None``/``torch.float32``/``"float32"`` (strict IEEE
float32, the default), ``torch.float64``/``"float64"``, or on CUDA only ``"tf32"`` or
``torch.bfloat16``/``"bfloat16"`` (products accumulated in float32)."""

# Centring works on row blocks of at most this many elements: a 16 MB float64 buffer on CPU, which
# stays in the last-level cache, with few enough blocks that per-op threading overhead stays small.
CENTRE_BLOCK_CPU = 1 << 21
_CENTRE_BLOCK_CUDA = 1 << 24
# The per-batch product is computed in row chunks whose output has at most this many elements, so
# the float32 temporary stays bounded (256 MB) whatever a x b is.
PRODUCT_CHUNK = 1 << 26
# Tokens per float32 product before it is added to the float64 accumulator (see _add_product).
TOKEN_CHUNK = 512
#: Largest sum of squares of a unit whose float32 products are safe (:func:`float32_fits`).
FLOAT32_CEILING = 1e37
#: Smallest sum of squares per token of a unit whose float32 products are safe: 1e8 times
#: float32's smallest normal number (:func:`float32_fits`).
FLOAT32_FLOOR = 1e8 * torch.finfo(torch.float32).tiny
#: A unit that is exactly 0 on at least ``1 / ZERO_CENTRE`` of a batch's sample tokens
#: (:func:`atoms`) is centred on 0.
ZERO_CENTRE = 8
#: A unit "takes few values" when one value other than 0 holds at least ``1 / FEW_VALUED`` of
#: ``FEW_VALUED_SAMPLE`` evenly spaced tokens of its batch (:func:`atoms`).
FEW_VALUED = 4
FEW_VALUED_SAMPLE = 128


def resolve_product_dtype(
    spec: ProductDtype, device: torch.device | str
) -> tuple[torch.dtype, str]:
    """``(tensor dtype, float32 matmul precision)`` for a :data:`ProductDtype` on ``device``.

    The precision is ``"highest"`` (true float32) unless TF32 was asked for, so a user's global
    ``torch.set_float32_matmul_precision("high")`` cannot silently loosen the accuracy bound.

    Examples:
        >>> resolve_product_dtype(None, "cpu")
        (torch.float32, 'highest')
        >>> resolve_product_dtype("float64", "cpu")
        (torch.float64, 'highest')
    """
    device = torch.device(device)
    name = {None: "float32", torch.float32: "float32", torch.float64: "float64"}.get(spec, spec)  # type: ignore[call-overload]
    if name == torch.bfloat16:
        name = "bfloat16"
    if name in ("float32", "float64"):
        return (torch.float32 if name == "float32" else torch.float64), "highest"
    if name in ("tf32", "bfloat16"):
        if device.type != "cuda":
            raise ValueError(
                f"product_dtype={spec!r} is a CUDA-only speed option (its correlations are only"
                " good to ~1e-3). On this device use torch.float32 (default) or torch.float64."
            )
        return (torch.float32, "high") if name == "tf32" else (torch.bfloat16, "highest")
    raise ValueError(
        f"Unknown product_dtype {spec!r}: use torch.float32 (default), torch.float64, or on CUDA"
        " 'tf32' or torch.bfloat16."
    )


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    old = torch.get_float32_matmul_precision()
    if old == precision:
        yield
        return
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def accumulate(acc: Tensor, part: Tensor) -> None:
    """``acc += part`` for a float64 ``acc`` and a lower-precision ``part`` of the same shape, in
    row blocks of at most :data:`CENTRE_BLOCK_CPU` elements on CPU (the same values).

    A whole-matrix mixed-dtype add converts ``part`` into one float64 temporary as large as
    ``acc``; on CPU that is a fresh mapping whose page faults make the add about 4 times slower
    (`benchmarks/accumulate.py`). Row blocks keep the temporary small and reused.

    Examples:
        >>> acc = torch.zeros(5, 3, dtype=torch.float64)
        >>> accumulate(acc, torch.ones(5, 3))
        >>> float(acc.sum())
        15.0
    """
    if acc.dtype == part.dtype or acc.dim() < 2 or acc.device.type != "cpu":
        acc.add_(part)
        return
    rows = max(1, CENTRE_BLOCK_CPU // max(1, acc[0].numel()))
    for r0 in range(0, acc.shape[0], rows):
        acc[r0 : r0 + rows].add_(part[r0 : r0 + rows])


def as_parts(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


class Side:
    """Per-unit accumulators of one side (A or B), all float64 on the statistics' device."""

    def __init__(self, n_units: int, blocks: Sequence[Block], device: torch.device) -> None:
        z = torch.zeros(n_units, dtype=torch.float64, device=device)
        self.shift = z.clone()
        self.sum = z.clone()
        self.sumsq = z.clone()
        self.min = torch.full_like(z, torch.inf)
        self.max = torch.full_like(z, -torch.inf)
        self.blocks: tuple[Block, ...] = tuple((int(s), int(e)) for s, e in blocks)
        for s, e in self.blocks:
            if not 0 <= s < e <= n_units:
                raise ValueError(f"Block {(s, e)} is not a non-empty range of {n_units} units.")
        # Σ(y−L)(y−L)ᵀ within each block (e.g. each layer): what a per-layer mix of units needs.
        # Adjacent blocks of one width share a stacked [count, d, d] tensor, so one batched
        # product updates them all (a loop of small products runs at a fraction of the GEMM rate);
        # ``gram[i]`` is a view into it.
        self.groups: list[tuple[int, int, int, Tensor]] = []  # (start, count, width, stacked)
        self.gram: list[Tensor] = []
        for s, e in self.blocks:
            g = self.groups[-1] if self.groups else None
            if g is not None and e - s == g[2] and s == g[0] + g[1] * g[2]:
                self.groups[-1] = (g[0], g[1] + 1, g[2], g[3])
            else:
                self.groups.append((s, 1, e - s, torch.empty(0)))
        for i, (start, count, width, _) in enumerate(self.groups):
            stacked = torch.zeros(count, width, width, dtype=torch.float64, device=device)
            self.groups[i] = (start, count, width, stacked)
            self.gram.extend(stacked.unbind(0))
        self._gram_buffers: dict[tuple[int, int], Tensor] = {}  # float32 products, reused

    @property
    def n_units(self) -> int:
        return self.shift.shape[0]

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        out = {
            f"{prefix}shift": self.shift,
            f"{prefix}sum": self.sum,
            f"{prefix}sumsq": self.sumsq,
            f"{prefix}min": self.min,
            f"{prefix}max": self.max,
            f"{prefix}blocks": torch.tensor(self.blocks, dtype=torch.int64).reshape(-1, 2),
        }
        # clones: the blocks are views of one stacked tensor, and safetensors wants no sharing
        out.update({f"{prefix}gram.{i}": g.clone() for i, g in enumerate(self.gram)})
        return out

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor], prefix: str, device: torch.device) -> Side:
        blocks = [tuple(int(v) for v in row) for row in state[f"{prefix}blocks"].tolist()]
        side = cls(state[f"{prefix}shift"].shape[0], blocks, device)  # type: ignore[arg-type]
        for name in ("shift", "sum", "sumsq", "min", "max"):
            setattr(side, name, state[f"{prefix}{name}"].to(device, torch.float64).clone())
        for i, gram in enumerate(side.gram):
            gram.copy_(state[f"{prefix}gram.{i}"])
        return side

    def _check_parts(self, parts: list[Tensor], rows: int) -> None:
        width = sum(p.shape[-1] for p in parts)
        if width != self.n_units:
            raise ValueError(
                f"Got {width} units, expected {self.n_units}: the statistics were made for a"
                " different unit set."
            )
        for part in parts:
            if part.ndim != 2 or part.shape[0] != rows:
                raise ValueError(
                    f"Activation block of shape {tuple(part.shape)} does not match {rows}"
                    " tokens; pass [tokens, units] tensors with the same tokens on both sides."
                )

    def centre(
        self, parts: list[Tensor], first: bool, out: Tensor, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Add the batch to the float64 sums and write it, centred on a per-batch centre ``c``,
        into ``out``.

        The sums hold ``Σ(x − shift)`` and ``Σ(x − shift)²`` (float64). The product sees
        ``x − c``, with ``c`` the batch's own float64 mean, or exactly 0 for units silent on at
        least an eighth of its sample tokens (:func:`atoms`), so its rounding is relative to the
        batch's spread whatever the unit's long-run mean, and silent tokens are exact zeros; the
        caller adds the exact rank-one terms of ``Σ(x − shift)(y − shift')ᵀ`` in float64 (see
        :meth:`CrossMoments.update`). ``x − c`` is rounded to the product dtype once, from
        float64, and depends on the batch alone, not on the shift (which follows the stream
        read so far): processes that split a stream round each batch exactly as one process
        does. Work runs in row blocks of bounded size: full-size float64 temporaries cost more
        than the arithmetic on a CPU.

        Returns:
            ``(c − shift, max |x − c|, Σ(x − c)², Σ(x − shift))`` per unit, all float64, and
            per unit whether it takes few values (see :data:`FEW_VALUED`).
        """
        n = out.shape[0]
        self._check_parts(parts, n)
        block = _CENTRE_BLOCK_CUDA if device.type == "cuda" else CENTRE_BLOCK_CPU
        delta = torch.zeros_like(self.shift)
        absmax = torch.zeros_like(self.shift)
        few = torch.zeros_like(self.shift, dtype=torch.bool)  # takes few values (atoms)
        energy = torch.zeros_like(self.shift)  # Σ(x − c)² of this batch
        batch_sum = torch.zeros_like(self.shift)  # Σ(x − shift) of this batch
        col = 0
        for part in parts:
            part = part.to(device)
            w = part.shape[1]
            sl = slice(col, col + w)
            col += w
            if n == 0 or w == 0:
                continue
            shift = self.shift[sl]
            low, high = part.amin(0).double(), part.amax(0).double()
            torch.minimum(self.min[sl], low, out=self.min[sl])
            torch.maximum(self.max[sl], high, out=self.max[sl])
            rows = max(1, block // w)
            buf = torch.empty(min(rows, n), w, dtype=torch.float64, device=device)
            mean = torch.zeros_like(shift)  # float64 sums of the exact float64 inputs
            for r0 in range(0, n, rows):
                mean += buf[: min(n, r0 + rows) - r0].copy_(part[r0 : r0 + rows]).sum(0)
            mean /= n
            if first:  # the first batch's mean (exactly c for a constant unit)
                shift.copy_(mean)
            # The centre c: the batch mean, or exactly 0 for a unit that is 0 on at least an
            # eighth of the batch's sample tokens (ReLU-like or sparse units): its silent tokens
            # then enter the product as exact zeros, instead of as one value −m repeated on many
            # tokens, which a float32 sum rounds the same way at every step (ReLU twins silent on
            # 40% of 32,768 tokens reached 1.2e-6 so) or, for sparse units, drops next to the
            # active ones.
            on_zero, few[sl] = atoms(part)
            centre = torch.where(on_zero, 0.0, on_grid(mean, low, high, part.dtype))
            total, squares = torch.zeros_like(shift), torch.zeros_like(shift)  # of x − c
            for r0 in range(0, n, rows):
                r1 = min(n, r0 + rows)
                centred = buf[: r1 - r0]
                centred.copy_(part[r0:r1]).sub_(centre)
                total += centred.sum(0)
                out[r0:r1, sl] = centred
                squares += centred.square_().sum(0)
            # About the shift, by exact algebra: with d = c − shift, Σ(x − shift) = Σ(x − c) + n·d
            # and Σ(x − shift)² = Σ(x − c)² + 2d·Σ(x − c) + n·d². The shift stays within a
            # standard deviation of the mean (see _recentre), so n·d² is no larger than Σ(x − c)².
            d = centre - shift
            absmax[sl] = torch.maximum((low - centre).abs(), (high - centre).abs())
            energy[sl] = squares
            batch_sum[sl] = total + n * d
            self.sum[sl] += batch_sum[sl]
            self.sumsq[sl] += squares + 2 * d * total + n * d * d
            delta[sl] = d
        return delta, absmax, energy, batch_sum, few

    def write_centred(
        self, parts: list[Tensor], delta: Tensor, out: Tensor, units: Tensor | None = None
    ) -> None:
        """Write ``x − m`` again (``m = shift + delta``) into ``out``, e.g. a float64 buffer; with
        ``units`` (sorted indices) only those columns, side by side."""
        col, written = 0, 0
        for part in parts:
            w = part.shape[1]
            lo, hi = col, col + w
            col += w
            if units is None:
                idx = torch.arange(lo, hi, device=self.shift.device)
                local = slice(None)
            else:
                idx = units[(units >= lo) & (units < hi)]
                local = (idx - lo).to(part.device)
            if idx.numel() == 0:
                continue
            # a float64 input is never modified: .to() may return the input itself
            values = part[:, local].to(out.device, torch.float64) - self.shift[idx]
            out[:, written : written + idx.numel()] = values.sub_(delta[idx])
            written += idx.numel()

    def add_grams(
        self,
        centred: Tensor,
        product: torch.dtype,
        delta: Tensor,
        batch_sum: Tensor,
        n: int,
        few: Tensor | None = None,
        big: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """Add ``Σ(x − c)(x − c)ᵀ + δTᵀ + (T − nδ)δᵀ`` (``δ = c − shift``, ``T = Σ(x − shift)``),
        which is ``Σ(x − shift)(x − shift)ᵀ``, to every tracked block.

        float32 products keep the cross product's rules (:meth:`_float32_grams`): ``few`` marks
        the units that take few values (:func:`atoms`), ``big`` the dominant entries
        (:func:`big_entries`); ``centred`` is left as it was."""
        for start, count, width, stacked in self.groups:
            # [tokens, count * width] -> [count, tokens, width], a view
            v = (
                centred[:, start : start + count * width]
                .unflatten(1, (count, width))
                .transpose(0, 1)
            )
            sl = slice(start, start + count * width)
            if product == torch.float64:
                stacked.baddbmm_(v.transpose(1, 2), v)
            elif product == torch.bfloat16:  # float32 accumulation (CUDA); no batched form needed
                for k in range(count):
                    stacked[k].add_(mm(v[k].T, v[k], product))
            else:
                mask = None if few is None else few[sl].reshape(count, width)
                mask = mask if mask is not None and bool(mask.any()) else None
                entries = None
                if big is not None:
                    inside = (big[1] >= start) & (big[1] < sl.stop)
                    tok, unit = big[0][inside], big[1][inside] - start
                    if mask is not None:  # a few-valued unit's row is float64 already
                        kept = ~mask.reshape(-1)[unit]
                        tok, unit = tok[kept], unit[kept]
                    if unit.numel():
                        entries = (tok, unit)
                self._float32_grams(v, stacked, mask, entries)
            d = delta[sl].reshape(count, width, 1)
            t = batch_sum[sl].reshape(count, width, 1)
            stacked.baddbmm_(d, t.transpose(1, 2))
            stacked.baddbmm_(t - n * d, d.transpose(1, 2))

    def _float32_grams(
        self,
        v: Float[Tensor, "c n w"],
        stacked: Float[Tensor, "c w w"],
        few: Bool[Tensor, "c w"] | None,
        big: tuple[Tensor, Tensor] | None,
    ) -> None:
        """``stacked += vᵀv`` from float32 ``v`` within the bound of the cross product:

        - float32 sums over at most :data:`TOKEN_CHUNK` tokens before they reach the float64
          accumulator;
        - the rows and columns of ``few`` units in float64 (two ±1 units' float32 gram over one
          batch of 32,768 tokens was off by 3e-4 of their spread);
        - the dominant entries ``big`` (``(tokens, units)``, units counted from the group's
          start; none of a ``few`` unit) in float64: with ``B`` those entries and ``R = v − B``,
          ``vᵀv = RᵀR + Bᵀv + RᵀB``, the last two sparse (a unit active on one token lost 1e-4
          of its gram entries otherwise).

        ``v`` is modified while this runs and restored, bit for bit, before it returns.
        """
        count, n, width = v.shape
        f64 = torch.float64
        key = (count, width)
        buf = self._gram_buffers.get(key)
        if buf is None or buf.dtype != v.dtype or buf.device != v.device:
            buf = torch.empty(count, width, width, dtype=v.dtype, device=v.device)
            self._gram_buffers[key] = buf  # reused: a fresh one per batch costs page faults
        if big is not None:
            tok, unit = big
            layer, j = unit // width, unit % width
            kept = v[layer, tok, j].clone()
            v[layer, tok, j] = 0  # R = v − B
        cut = None if few is None else few[:, :, None] | few[:, None, :]
        for t0 in range(0, n, TOKEN_CHUNK):
            part = v[:, t0 : t0 + TOKEN_CHUNK]
            torch.bmm(part.transpose(1, 2), part, out=buf)
            if cut is not None:
                buf.masked_fill_(cut, 0.0)
            accumulate(stacked, buf)
        if big is not None:
            values = kept.to(f64)
            keep = None if few is None else ~few[layer]  # [entries, width]
            every = torch.arange(width, device=v.device)
            step = max(1, CENTRE_BLOCK_CPU // max(1, width))
            for restored in (False, True):
                if restored:
                    v[layer, tok, j] = kept
                for e0 in range(0, tok.numel(), step):
                    e = slice(e0, e0 + step)
                    # Rᵀ·B (columns j) before the restore, then Bᵀ·v (rows j) after it
                    other = v[layer[e], tok[e]].to(f64).mul_(values[e, None])
                    if keep is not None:
                        other.mul_(keep[e])
                    lay, jj = layer[e, None].expand_as(other), j[e, None].expand_as(other)
                    at = every.expand_as(other)
                    where = (lay, jj, at) if restored else (lay, at, jj)  # rows j, or columns j
                    stacked.index_put_(where, other, accumulate=True)
        if few is None:
            return
        rows = max(1, CENTRE_BLOCK_CPU // max(1, width))
        for k in few.any(1).nonzero()[:, 0].tolist():
            f = few[k].nonzero()[:, 0]
            r = torch.zeros(f.numel(), width, dtype=f64, device=stacked.device)
            for t0 in range(0, n, rows):
                block = v[k, t0 : t0 + rows].to(f64)  # exact: float32 values in float64
                r.addmm_(block[:, f].T, block)
            stacked[k][f, :] += r  # rows of the few units, with their own block
            r[:, f] = 0
            stacked[k][:, f] += r.T  # columns against the other units


#: A unit whose largest batch-centred value holds more than this share of the batch's Σ(x − m)²
#: is "spiky": a float32 sum would add its small terms to a partial sum dominated by one token and
#: drop them (a unit active on one token loses up to ~1e-5 of its co-moment that way). Twins
#: whose top entry holds up to 1/12 keep ~1e-7 in float32 (3.3e-7 at 512 tokens); at 1/64, the
#: earlier share, 60% of a random model's units were spiky on 1,524 tokens (~5 entries each),
#: at 1/16 5% (``benchmarks/cross_moment_accuracy.py``: 2.43 times a bare GEMM, was 2.61).
SPIKY_SHARE = 1 / 16


def big_entries(centred: Tensor, absmax: Tensor, energy: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(tokens, units)`` of the batch-centred entries whose square exceeds
    :data:`SPIKY_SHARE` of their unit's batch energy (at most ``1 / SPIKY_SHARE`` per unit), or
    None when no unit has one."""
    spiky = ((absmax * absmax > SPIKY_SHARE * energy) & (energy > 0)).nonzero()[:, 0]
    if spiky.numel() == 0:
        return None
    cols = centred[:, spiky].to(torch.float64)
    hit = cols.square_() > SPIKY_SHARE * energy[spiky]
    tokens, k = hit.nonzero(as_tuple=True)
    return tokens, spiky[k]


def with_whole_columns(
    big: tuple[Tensor, Tensor] | None, units: Int[Tensor, " k"], rows: int
) -> tuple[Tensor, Tensor]:
    """:func:`big_entries`' ``(tokens, units)`` plus every one of ``rows`` tokens of ``units``
    (each entry once)."""
    tokens = torch.arange(rows, device=units.device).repeat(units.numel())
    cols = units.repeat_interleave(rows)
    if big is not None:
        keep = ~torch.isin(big[1], units)
        tokens, cols = torch.cat([big[0][keep], tokens]), torch.cat([big[1][keep], cols])
    return tokens, cols


def add_sparse_rows(
    out: Tensor, units: Tensor, tokens: Tensor, values: Tensor, dense: Tensor, chunk: int
) -> None:
    """``out[u] += Σ values·dense[t]`` over the entries ``(t, u)``: ``out += Sᵀ·dense`` in
    float64, with ``S`` the sparse ``[tokens, units]`` matrix of the entries.

    One sparse-dense product per column chunk of ``dense`` (at most ``chunk`` elements of its
    touched rows in float64 at a time). Devices without a CSR product fall back to per-entry
    row additions (exact, slower).
    """
    f64 = torch.float64
    rows, inverse = torch.unique(tokens, return_inverse=True)
    step = max(1, chunk // max(1, rows.numel()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sparse CSR "beta" notices
            sparse = torch.sparse_coo_tensor(
                torch.stack([units, inverse]), values.to(f64), (out.shape[0], rows.numel())
            ).coalesce().to_sparse_csr()  # fmt: skip
            for c0 in range(0, dense.shape[1], step):
                c1 = min(dense.shape[1], c0 + step)
                out[:, c0:c1].addmm_(sparse, dense[rows, c0:c1].to(f64))
    except (RuntimeError, NotImplementedError):  # no sparse product on this device
        per = max(1, chunk // max(1, dense.shape[1]))
        for k0 in range(0, tokens.numel(), per):
            k1 = k0 + per
            part = dense[tokens[k0:k1]].to(f64).mul_(values[k0:k1, None].to(f64))
            out.index_add_(0, units[k0:k1], part)


def on_grid(
    mean: Float[Tensor, " u"],
    low: Float[Tensor, " u"],
    high: Float[Tensor, " u"],
    dtype: torch.dtype,
) -> Float[Tensor, " u"]:
    """``mean`` rounded to the float32 grid that every value of the unit lies on: a unit whose
    values keep one sign lies on multiples of the float32 spacing ``g`` at its smallest
    magnitude, and a centre on that grid makes every ``x − c`` an exact multiple of ``g``.

    Why. Centred about an arbitrary mean, the values of a unit with a large mean and a small
    spread (``1000 + 0.01 z`` in float32: ~1,000 distinct values) all carry the same fraction of
    ``g``, so their float32 products round the same way on every token and a float32 sum
    drifts (2.7e-6 per 512-token run, 1.2e-6 on the correlation, over a batch of 32,768
    tokens). On the grid they are small integers times ``g``: products and partial sums are
    exact. float64 values, and units that change sign or touch 0, keep their mean.

    Examples:
        >>> f64 = torch.float64
        >>> x = torch.tensor([1000.0, 1000.0 + 2**-14, 1000.0 + 3 * 2**-14])  # float32 spacing
        >>> mean = x.double().mean(0, keepdim=True)
        >>> c = on_grid(mean, x.min().double()[None], x.max().double()[None], x.dtype)
        >>> bool(((x.double() - c) / 2**-14 % 1 == 0).all()), bool(abs(c - mean) <= 2**-15)
        (True, True)
    """
    if dtype == torch.float64:
        return mean
    smallest = torch.where(low > 0, low, torch.where(high < 0, -high, torch.zeros_like(low)))
    # float32 spacing at |x|: 2^(e - 24) for |x| = m · 2^e, m in [0.5, 1); at least 2^-149
    spacing = torch.ldexp(torch.ones_like(smallest), torch.frexp(smallest).exponent - 24)
    spacing = spacing.clamp_min(2.0**-149)
    rounded = torch.round(mean / spacing) * spacing
    return torch.where(smallest > 0, rounded, mean)


def atoms(part: Float[Tensor, "n u"]) -> tuple[Bool[Tensor, " u"], Bool[Tensor, " u"]]:
    """Per unit, from ``FEW_VALUED_SAMPLE`` evenly spaced tokens of the batch, sorted: whether it
    is silent (exactly 0) on at least ``1 / ZERO_CENTRE`` of them, and whether a value other than
    0 holds at least ``1 / FEW_VALUED`` of them (it *takes few values*: ±1 features, clipped
    units, units resting on one value).

    The first decides the unit's centre (0 or its mean, see :meth:`Side.centre`). The second
    marks units whose float32 products with another such unit repeat a few terms, so that a
    float32 sum rounds the same way at every step instead of at random (±1 twins drifted to 2e-6
    over batches of 32,768 tokens, continuous units stay near 1e-7); :meth:`CrossMoments.update`
    multiplies the rows of such A units in float64. A zero atom needs no mark: a unit silent on
    a quarter of the sample is centred on 0, where its silent tokens are exact zeros. Both depend
    on the batch alone, so every process that reads a batch decides alike.

    Examples:
        >>> x = torch.stack([torch.arange(8.0), torch.tensor([1.0, -1] * 4), torch.zeros(8)], 1)
        >>> [t.tolist() for t in atoms(x)]
        [[True, False, True], [False, True, False]]
    """
    n = part.shape[0]
    take = min(n, FEW_VALUED_SAMPLE)
    rows = torch.arange(take, device=part.device) * (n - 1) // max(take - 1, 1)
    sample = part[rows].T.contiguous().sort(1).values  # [units, take]: sorts fastest
    on_zero = (sample == 0).sum(1) * ZERO_CENTRE >= take
    if take < 2 * FEW_VALUED:  # too few terms for a float32 sum to drift
        return on_zero, torch.zeros_like(on_zero)
    width = take // FEW_VALUED  # a run of `width` equal sorted values: first == last
    first, last = sample[:, : take - width + 1], sample[:, width - 1 :]
    return on_zero, ((first == last) & (first != 0)).any(1)


def float32_fits(energy: Float[Tensor, " u"], rows: int) -> bool:
    """Whether float32 products of units with these sums of squares about their centres keep
    their bound: every ``Σ(x − c)²`` (float64, over the ``rows`` tokens of a batch or chunk) is 0
    or within ``[rows · FLOAT32_FLOOR, FLOAT32_CEILING]``. The one rule of every float32 product
    of unit pairs (the exhaustive update's and the screened pairs'); the caller multiplies in
    float64 where it fails.

    Why it suffices. By Cauchy–Schwarz every product, and every partial sum of ``Σ x'y'`` (or of
    ``Σ x'²``), is at most ``√(Σx'² · Σy'²)``, so the ceiling, ten times below float32's largest
    number, rules out overflow. A product that sinks below float32's smallest normal number
    (1.18e-38) loses at most that much, even on hardware that flushes subnormals to zero, so a
    pair's sum over ``rows`` tokens loses at most ``rows · 1.18e-38``; the floor keeps that loss
    below 1e-8 of ``√(Σx'² · Σy'²)``. That is typically at most 8 times the correlation's
    denominator: a unit centred on exactly 0 is silent on an eighth of its batch's sample
    tokens (about as many of its rows), and a unit silent on a share ``s`` of the rows has
    ``Σx'²`` at most ``1/s`` times its sum of squares about its mean.

    Examples:
        >>> ok = torch.tensor([0.0, 1.0, 1e30], dtype=torch.float64)
        >>> float32_fits(ok, rows=100), float32_fits(ok * 1e10, rows=100)  # overflow
        (True, False)
        >>> float32_fits(torch.tensor([1e-29], dtype=torch.float64), rows=100)  # underflow
        False
    """
    lo = max(rows, 1) * FLOAT32_FLOOR
    return bool(((energy == 0) | ((energy >= lo) & (energy <= FLOAT32_CEILING))).all())


def mm(a: Tensor, b: Tensor, product: torch.dtype) -> Tensor:
    if product == torch.bfloat16:  # bf16 inputs, float32 accumulation and output (CUDA)
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)

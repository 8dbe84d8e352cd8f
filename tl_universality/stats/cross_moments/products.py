"""The per-batch product of a cross-moment update: precision, centring and chunking."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
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

    def centre(self, parts: list[Tensor], first: bool, out: Tensor, device: torch.device) -> None:
        """Write ``x − shift`` into ``out`` (product dtype) and add to the float64 sums.

        Centring is exact float64 arithmetic, done in row blocks of bounded size: full-size float64
        temporaries cost more than the arithmetic on a CPU.
        """
        width = sum(p.shape[-1] for p in parts)
        if width != self.n_units:
            raise ValueError(
                f"Got {width} units, expected {self.n_units}: the statistics were made for a"
                " different unit set."
            )
        col = 0
        block = _CENTRE_BLOCK_CUDA if device.type == "cuda" else CENTRE_BLOCK_CPU
        for part in parts:
            if part.ndim != 2 or part.shape[0] != out.shape[0]:
                raise ValueError(
                    f"Activation block of shape {tuple(part.shape)} does not match {out.shape[0]}"
                    " tokens; pass [tokens, units] tensors with the same tokens on both sides."
                )
            part = part.to(device)
            n, w = part.shape
            sl = slice(col, col + w)
            col += w
            if n == 0 or w == 0:
                continue
            shift = self.shift[sl]
            torch.minimum(self.min[sl], part.amin(0).double(), out=self.min[sl])
            torch.maximum(self.max[sl], part.amax(0).double(), out=self.max[sl])
            rows = max(1, block // w)
            buf = torch.empty(min(rows, n), w, dtype=torch.float64, device=device)
            if first:  # the first batch's float64 mean (exactly c for a constant unit)
                total = torch.zeros_like(shift)
                for r0 in range(0, n, rows):
                    total += buf[: min(n, r0 + rows) - r0].copy_(part[r0 : r0 + rows]).sum(0)
                shift.copy_(total / n)
            total, squares = torch.zeros_like(shift), torch.zeros_like(shift)
            for r0 in range(0, n, rows):
                r1 = min(n, r0 + rows)
                centred = buf[: r1 - r0]
                centred.copy_(part[r0:r1]).sub_(shift)  # float64: exact for float32 data
                total += centred.sum(0)
                out[r0:r1, sl] = centred
                squares += centred.square_().sum(0)
            self.sum[sl] += total
            self.sumsq[sl] += squares

    def add_grams(self, centred: Tensor, product: torch.dtype) -> None:
        for start, count, width, stacked in self.groups:
            # [tokens, count * width] -> [count, tokens, width], a view
            v = (
                centred[:, start : start + count * width]
                .unflatten(1, (count, width))
                .transpose(0, 1)
            )
            if product == torch.float64:
                stacked.baddbmm_(v.transpose(1, 2), v)
            elif product == torch.bfloat16:  # float32 accumulation (CUDA); no batched form needed
                for k in range(count):
                    stacked[k].add_(mm(v[k].T, v[k], product))
            else:
                stacked.add_(torch.bmm(v.transpose(1, 2), v))


def mm(a: Tensor, b: Tensor, product: torch.dtype) -> Tensor:
    if product == torch.bfloat16:  # bf16 inputs, float32 accumulation and output (CUDA)
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)

"""Correlate every neuron of a reference model with every neuron of other seeds (METHOD.md §1.1).

:func:`correlate` runs all models over one token stream, once: each batch's activations feed
:class:`~tl_universality.stats.cross_moments.CrossMoments` (the reference's units against the other
models' units, gathered into one matrix product per batch), together with the other models'
within-layer second moments, from which the chance baselines follow without a second pass
(:mod:`tl_universality.stats.baselines`). The result is a :class:`CorrelationResult`: per reference
unit
and other model the max/min correlation and where it is, the top-k, the baseline max, and the
paper's ``excess_corr``, with a table view, save/load and plots.

Memory. The float64 cross moments are ``8 · a · b`` bytes per model pair (11 GB for GPT-2 small,
77 GB for medium). With ``memory_budget`` the units are split into tiles of whole layers that fit,
and the tiles are processed in successive passes over the tokens (recomputing forward passes is
cheaper than the cross products); the result is the same as one pass. :func:`plan_correlation`
shows the plan without running anything.

Checkpoints. With ``checkpoint_dir`` the statistics are written atomically every
``checkpoint_every`` tokens and after every pass; calling :func:`correlate` again with the same
arguments continues from the last checkpoint and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_universality.core.errors import (
    CheckpointMismatchError,
    CorruptCacheError,
    EmptyTokenSourceError,
)
from tl_universality.core.protocol import HookedModel, check_same_tokenizer, model_name
from tl_universality.core.saving import atomic_dir
from tl_universality.stats.baselines import (
    MIXING_KINDS,
    check_kind,
    mixed_correlation,
    mixing_matrix,
    nanmax,
    noise_max_corr,
)
from tl_universality.stats.cross_moments import (
    _CENTRE_BLOCK_CPU,
    _PRODUCT_CHUNK,
    CrossMoments,
    ProductDtype,
    resolve_product_dtype,
)
from tl_universality.units.activations import (
    UnitIndex,
    UnitsSpec,
    is_per_model,
    model_device,
    stream_activations,
    unit_index,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointMismatchError",
    "CorrelationPlan",
    "CorrelationProgress",
    "CorrelationResult",
    "Tile",
    "correlate",
    "parse_bytes",
    "plan_correlation",
]

#: Results are reduced in row chunks whose float64 correlation block has at most this many entries.
_FINAL_CHUNK = 1 << 24
#: Baseline mixing matrices are cached up to this many bytes per run (regenerated beyond).
_MIX_CACHE_BYTES = 1 << 28
_CHECKPOINT = "correlation_state.safetensors"
_FORMAT = "tl_universality.analyses.correlation"
_VERSION = 1


# -- sizes ----------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_bytes(size: int | float | str | None) -> int | None:
    """Bytes from ``2_000_000_000``, ``"2GB"`` (10⁹), ``"1.5 GiB"`` (2³⁰) or ``None``.

    Examples:
        >>> parse_bytes("2GB"), parse_bytes("512 MiB"), parse_bytes(1e6), parse_bytes(None)
        (2000000000, 536870912, 1000000, None)
    """
    if size is None:
        return None
    if isinstance(size, (int, float)):
        if size <= 0:
            raise ValueError(f"A memory size must be positive, got {size}.")
        return int(size)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", size)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(
            f"Cannot read {size!r} as a size: use e.g. 2_000_000_000, '2GB' or '512MiB'."
        )
    return parse_bytes(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _fmt_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One block of the cross-moment matrix: some layers of a model (A) x some layers of others (B).

    Attributes:
        reference: Index (in ``[model, *others]``) of the model on side A.
        a_hooks: Half-open range of that model's hooks (layers) on side A.
        b_parts: ``(model, first hook, stop hook)`` ranges on side B, in order.
        a_grams: Hooks of side A whose within-layer second moments this tile tracks.
        b_grams: ``(model, hook)`` on side B whose within-layer second moments it tracks.
        n_a: Units on side A.
        n_b: Units on side B.
    """

    reference: int
    a_hooks: tuple[int, int]
    b_parts: tuple[tuple[int, int, int], ...]
    a_grams: tuple[int, ...] = ()
    b_grams: tuple[tuple[int, int], ...] = ()
    n_a: int = 0
    n_b: int = 0

    def describe(self) -> str:
        parts = ", ".join(f"m{m} L{h0}-{h1 - 1}" for m, h0, h1 in self.b_parts)
        a0, a1 = self.a_hooks
        return f"m{self.reference} L{a0}-{a1 - 1} ({self.n_a}) x [{parts}] ({self.n_b})"


@dataclass(frozen=True)
class CorrelationPlan:
    """How a correlation run is split into tiles and passes, and what it costs in memory.

    Attributes:
        n_units: Units of each model (``[model, *others]``).
        pairs: Model pairs ``(i, j)``, ``i < j``, whose cross moments are accumulated.
        tiles: The tiles; each pass accumulates some of them over the whole token stream.
        passes: Tile indices of each pass, in order.
        pass_bytes: Estimated peak bytes of each pass (statistics, buffers and kept results).
        state_bytes: Bytes of the float64 statistics of each pass (what a checkpoint holds).
        fixed_bytes: Bytes held for the whole run (kept matrices and per-unit summaries).
        budget: The memory budget in bytes, or ``None``.
        tokens_per_batch: Tokens per forward batch the estimate assumes.
    """

    n_units: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    tiles: tuple[Tile, ...]
    passes: tuple[tuple[int, ...], ...]
    pass_bytes: tuple[int, ...]
    state_bytes: tuple[int, ...]
    fixed_bytes: int
    budget: int | None
    tokens_per_batch: int

    @property
    def n_passes(self) -> int:
        return len(self.passes)

    @property
    def peak_bytes(self) -> int:
        return max(self.pass_bytes)

    def layout(self) -> dict[str, Any]:
        """The tiling, as JSON-friendly data (part of a checkpoint's fingerprint)."""
        return {
            "tiles": [dataclasses.asdict(t) for t in self.tiles],
            "passes": [list(p) for p in self.passes],
        }

    def __str__(self) -> str:
        lines = [
            f"Correlation plan: {len(self.n_units)} models ({', '.join(map(str, self.n_units))}"
            f" units), {len(self.pairs)} model pair(s), {len(self.tiles)} tile(s) in"
            f" {self.n_passes} pass(es) over the tokens; peak ~{_fmt_bytes(self.peak_bytes)}"
            + (f" of a {_fmt_bytes(self.budget)} budget" if self.budget else " (no budget set)")
            + f"; results kept {_fmt_bytes(self.fixed_bytes)}."
        ]
        for p, (tiles, nbytes, state) in enumerate(
            zip(self.passes, self.pass_bytes, self.state_bytes, strict=True)
        ):
            desc = "; ".join(self.tiles[t].describe() for t in tiles[:3])
            more = f" and {len(tiles) - 3} more" if len(tiles) > 3 else ""
            lines.append(
                f"  pass {p}: {len(tiles)} tile(s), statistics {_fmt_bytes(state)},"
                f" peak ~{_fmt_bytes(nbytes)}: {desc}{more}"
            )
        return "\n".join(lines)


def _pairs(k: int, all_pairs: bool) -> tuple[tuple[int, int], ...]:
    if all_pairs:
        return tuple((i, j) for i in range(k) for j in range(i + 1, k))
    return tuple((0, j) for j in range(1, k))


def _widths(index: UnitIndex, h0: int, h1: int) -> int:
    return int(sum(index.widths[h0:h1]))


def _groups(widths: Sequence[int], cap: int) -> list[tuple[int, int]]:
    """Contiguous groups of hooks whose widths sum to at most ``cap`` (wider hooks stand alone)."""
    groups, start, total = [], 0, 0
    for h, w in enumerate(widths):
        if h > start and total + w > cap:
            groups.append((start, h))
            start, total = h, 0
        total += w
    groups.append((start, len(widths)))
    return groups


class _Sizer:
    """Byte estimates shared by the planner and its report."""

    def __init__(
        self,
        indices: Sequence[UnitIndex],
        baseline: str | None,
        all_pairs: bool,
        product: torch.dtype,
        tokens_per_batch: int,
    ) -> None:
        self.indices = indices
        self.mixing = baseline in MIXING_KINDS
        self.all_pairs = all_pairs
        self.itemsize = torch.empty((), dtype=product).element_size()
        self.product = product
        self.tokens = tokens_per_batch

    def tile(self, ref: int, a_hooks: tuple[int, int], b: Sequence[tuple[int, int, int]]) -> Tile:
        idx = self.indices
        b_grams = tuple((m, h) for m, h0, h1 in b for h in range(h0, h1)) if self.mixing else ()
        a_grams = tuple(range(*a_hooks)) if (self.mixing and self.all_pairs) else ()
        return Tile(
            ref,
            a_hooks,
            tuple(b),
            a_grams,
            b_grams,
            _widths(idx[ref], *a_hooks),
            sum(_widths(idx[m], h0, h1) for m, h0, h1 in b),
        )

    def state(self, t: Tile) -> int:
        a_w = [self.indices[t.reference].widths[h] for h in t.a_grams]
        b_w = [self.indices[m].widths[h] for m, h in t.b_grams]
        return CrossMoments.state_bytes(t.n_a, t.n_b, a_w, b_w)

    def work(self, t: Tile) -> int:
        """Transient bytes while updating and reducing ``t``."""
        product_tmp = 0 if self.product == torch.float64 else 4 * min(t.n_a * t.n_b, _PRODUCT_CHUNK)
        centred = self.tokens * (t.n_a + t.n_b) * self.itemsize
        centring = 8 * min(_CENTRE_BLOCK_CPU, self.tokens * max(t.n_a, t.n_b)) + 16 * t.n_b
        reduce = 4 * 8 * min(_FINAL_CHUNK, t.n_a * t.n_b)
        return product_tmp + centred + max(centring, reduce)

    def activations(self) -> int:
        return 4 * self.tokens * sum(i.n_units for i in self.indices)

    def pass_bytes(self, tiles: Sequence[Tile]) -> int:
        return (
            sum(self.state(t) for t in tiles)
            + max(self.work(t) for t in tiles)
            + self.activations()
        )


def _make_plan(
    indices: Sequence[UnitIndex],
    *,
    all_pairs: bool,
    baseline: str | None,
    memory_budget: int | None,
    tokens_per_batch: int,
    product: torch.dtype,
    matrix_itemsize: int,
    top_k: int,
    n_draws: int,
) -> CorrelationPlan:
    k = len(indices)
    pairs = _pairs(k, all_pairs)
    sizer = _Sizer(indices, baseline, all_pairs, product, tokens_per_batch)
    n_units = tuple(i.n_units for i in indices)
    directions = [(i, j) for i, j in pairs] + ([(j, i) for i, j in pairs] if all_pairs else [])
    fixed = sum(n_units[i] * n_units[j] * matrix_itemsize for i, j in pairs)
    fixed += sum(n_units[r] * (2 * top_k + 6 + n_draws) * 8 for r, _ in directions)

    refs = sorted({i for i, _ in pairs})
    b_lists = {
        i: [(j, h) for ii, j in pairs if ii == i for h in range(len(indices[j].widths))]
        for i in refs
    }

    def parts_of(items: Sequence[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
        out: list[list[int]] = []
        for m, h in items:
            if out and out[-1][0] == m and out[-1][2] == h:
                out[-1][2] = h + 1
            else:
                out.append([m, h, h + 1])
        return tuple((m, h0, h1) for m, h0, h1 in out)

    untiled = [sizer.tile(i, (0, len(indices[i].widths)), parts_of(b_lists[i])) for i in refs]
    if memory_budget is None or sizer.pass_bytes(untiled) + fixed <= memory_budget:
        tiles = untiled
        passes = [list(range(len(tiles)))]
    else:
        avail = memory_budget - fixed - sizer.activations()
        b_widths_of = {i: [indices[m].widths[h] for m, h in b_lists[i]] for i in refs}
        tiles = []
        for i in refs:

            def fits(a_groups: list[tuple[int, int]], cap_b: int, i: int = i) -> bool:
                # Bytes grow with both widths: checking the widest A x widest B tile suffices.
                a_big = max(a_groups, key=lambda grp: _widths(indices[i], *grp))
                b0, b1 = max(
                    _groups(b_widths_of[i], cap_b),
                    key=lambda grp: sum(b_widths_of[i][grp[0] : grp[1]]),
                )
                tile = sizer.tile(i, a_big, parts_of(b_lists[i][b0:b1]))
                return sizer.state(tile) + sizer.work(tile) <= avail

            def tiles_for(a_groups: list[tuple[int, int]], cap_b: int, i: int = i) -> list[Tile]:
                return [
                    sizer.tile(i, ag, parts_of(b_lists[i][b0:b1]))
                    for ag in a_groups
                    for b0, b1 in _groups(b_widths_of[i], cap_b)
                ]

            best: tuple[int, list[Tile]] | None = None
            groupings = {
                tuple(_groups(indices[i].widths, math.ceil(n_units[i] / g)))
                for g in range(1, len(indices[i].widths) + 1)
            }
            for a_groups in sorted(groupings, key=len):
                lo, hi = max(b_widths_of[i]), sum(b_widths_of[i])
                if not fits(list(a_groups), lo):
                    continue
                while lo < hi:  # the widest B groups that fit next to these A groups
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if fits(list(a_groups), mid) else (lo, mid - 1)
                cand = tiles_for(list(a_groups), lo)
                score = len(_pack(cand, sizer, avail))
                if best is None or (score, len(cand)) < (best[0], len(best[1])):
                    best = (score, cand)
            if best is None:
                smallest = min(
                    sizer.pass_bytes([sizer.tile(i, (h, h + 1), [(m, hb, hb + 1)])]) + fixed
                    for h in range(len(indices[i].widths))
                    for m, hb in b_lists[i]
                )
                raise ValueError(
                    f"memory_budget={_fmt_bytes(memory_budget)} is too small: even one layer"
                    f" against one layer needs ~{_fmt_bytes(smallest)} (statistics, one batch of"
                    " activations of every model, buffers and kept results). Raise the budget,"
                    " lower batch_size, or drop keep_matrix."
                )
            tiles.extend(best[1])
        passes = _pack(tiles, sizer, avail)
    tiles, passes = _dedup_grams(tiles, passes)
    pass_tiles = [[tiles[t] for t in p] for p in passes]
    return CorrelationPlan(
        n_units=n_units,
        pairs=pairs,
        tiles=tuple(tiles),
        passes=tuple(tuple(p) for p in passes),
        pass_bytes=tuple(sizer.pass_bytes(ts) + fixed for ts in pass_tiles),
        state_bytes=tuple(sum(sizer.state(t) for t in ts) for ts in pass_tiles),
        fixed_bytes=fixed,
        budget=memory_budget,
        tokens_per_batch=tokens_per_batch,
    )


def _pack(tiles: Sequence[Tile], sizer: _Sizer, avail: int) -> list[list[int]]:
    """Tiles in order into passes whose statistics and buffers fit ``avail`` (next fit)."""
    passes: list[list[int]] = []
    used, work = 0, 0
    for t, tile in enumerate(tiles):
        s, w = sizer.state(tile), sizer.work(tile)
        if passes and used + s + max(work, w) <= avail:
            passes[-1].append(t)
            used, work = used + s, max(work, w)
        else:
            passes.append([t])
            used, work = s, w
    return passes


def _dedup_grams(
    tiles: Sequence[Tile], passes: Sequence[Sequence[int]]
) -> tuple[list[Tile], list[list[int]]]:
    """Track each layer's within-layer moments in one tile per pass (the first that needs it)."""
    tiles = list(tiles)
    for p in passes:
        seen: set[tuple[int, int]] = set()
        for t in p:
            tile = tiles[t]
            a_keep = tuple(h for h in tile.a_grams if (tile.reference, h) not in seen)
            seen.update((tile.reference, h) for h in a_keep)
            b_keep = tuple(mh for mh in tile.b_grams if mh not in seen)
            seen.update(b_keep)
            tiles[t] = dataclasses.replace(tile, a_grams=a_keep, b_grams=b_keep)
    return tiles, [list(p) for p in passes]


def _matrix_dtype(keep_matrix: bool | str | torch.dtype) -> torch.dtype | None:
    if keep_matrix is False or keep_matrix is None:
        return None
    if keep_matrix is True:
        return torch.float32
    table = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
    dtype = table.get(keep_matrix, keep_matrix) if isinstance(keep_matrix, str) else keep_matrix
    if dtype not in (torch.float16, torch.float32, torch.float64):
        raise ValueError(
            f"keep_matrix={keep_matrix!r}: pass True (float32), 'float16' or torch.float16, or"
            " 'float32'."
        )
    return dtype


def _per_model_units(units: Any, k: int) -> list[Any]:
    return list(units) if is_per_model(units, k) else [units] * k


def _default_seq_len(models: Sequence[HookedModel]) -> int:
    # As stream_activations: the paper's 512, or the smallest context of the models.
    return min(512, *(int(m.cfg.n_ctx) for m in models))


def plan_correlation(
    model: HookedModel,
    others: HookedModel | Sequence[HookedModel],
    *,
    units: UnitsSpec | Sequence[UnitsSpec] = None,
    all_pairs: bool = False,
    baseline: str | None = "rotation",
    n_draws: int = 5,
    top_k: int = 10,
    keep_matrix: bool | str | torch.dtype = False,
    memory_budget: int | float | str | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    product_dtype: ProductDtype = None,
    device: str | torch.device | None = None,
) -> CorrelationPlan:
    """The tiles, passes and memory :func:`correlate` would use with these arguments.

    Runs no forward pass over data (non-MLP units are measured with a one-token probe).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_mlp=64,
        ...                               d_vocab=20, act_fn="relu")
        >>> a, b = HookedTransformer(cfg), HookedTransformer(cfg)
        >>> plan_correlation(a, b).n_passes
        1
        >>> tight = plan_correlation(a, b, memory_budget="400KB", batch_size=1)
        >>> len(tight.tiles), tight.n_passes, tight.peak_bytes <= 400_000
        (4, 2, True)
    """
    models = [model, *_as_list(others)]
    indices = [
        unit_index(m, u) for m, u in zip(models, _per_model_units(units, len(models)), strict=True)
    ]
    dev = torch.device(device) if device is not None else model_device(models[0])
    product, _ = resolve_product_dtype(product_dtype, dev)
    matrix = _matrix_dtype(keep_matrix)
    return _make_plan(
        indices,
        all_pairs=all_pairs,
        baseline=check_kind(baseline),
        memory_budget=parse_bytes(memory_budget),
        tokens_per_batch=batch_size * (seq_len or _default_seq_len(models)),
        product=product,
        matrix_itemsize=0 if matrix is None else torch.empty((), dtype=matrix).element_size(),
        top_k=top_k,
        n_draws=n_draws if baseline else 0,
    )


def _as_list(others: HookedModel | Sequence[HookedModel]) -> list[HookedModel]:
    return list(others) if isinstance(others, (list, tuple)) else [others]  # type: ignore[list-item]


# -- running reductions ---------------------------------------------------------------------------


class _Summary:
    """Running per-row reductions of the correlation of reference ``r`` with model ``c``."""

    FIELDS = ("max_val", "max_idx", "min_val", "min_idx", "top_val", "top_idx", "base")

    def __init__(self, n_rows: int, top_k: int, n_draws: int, device: torch.device) -> None:
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        self.max_val = torch.full((n_rows,), -torch.inf, **f64)  # type: ignore[arg-type]
        self.max_idx = torch.full((n_rows,), -1, **i64)  # type: ignore[arg-type]
        self.min_val = torch.full((n_rows,), torch.inf, **f64)  # type: ignore[arg-type]
        self.min_idx = torch.full((n_rows,), -1, **i64)  # type: ignore[arg-type]
        self.top_val = torch.full((n_rows, top_k), -torch.inf, **f64)  # type: ignore[arg-type]
        self.top_idx = torch.full((n_rows, top_k), -1, **i64)  # type: ignore[arg-type]
        self.base = torch.full((n_draws, n_rows), torch.nan, **f64)  # type: ignore[arg-type]

    def update(self, rows: slice, corr: Tensor, col_offset: int) -> None:
        nan = corr.isnan()
        has_nan = bool(nan.any())
        # NaN (dead) never wins a max or a min; copies only when there is one.
        high = corr.masked_fill(nan, -torch.inf) if has_nan else corr
        val, idx = high.max(1)
        better = val > self.max_val[rows]
        self.max_val[rows] = torch.where(better, val, self.max_val[rows])
        self.max_idx[rows] = torch.where(better, idx + col_offset, self.max_idx[rows])
        val, idx = (corr.masked_fill(nan, torch.inf) if has_nan else corr).min(1)
        better = val < self.min_val[rows]
        self.min_val[rows] = torch.where(better, val, self.min_val[rows])
        self.min_idx[rows] = torch.where(better, idx + col_offset, self.min_idx[rows])
        k = self.top_val.shape[1]
        if k:
            tv, ti = high.topk(min(k, high.shape[1]), dim=1)
            vals = torch.cat([self.top_val[rows], tv], 1)
            idxs = torch.cat([self.top_idx[rows], ti + col_offset], 1)
            best, order = vals.topk(k, dim=1)
            self.top_val[rows] = best
            self.top_idx[rows] = idxs.gather(1, order)

    def add_baseline(self, draw: int, rows: slice, best: Tensor) -> None:
        self.base[draw, rows] = torch.fmax(self.base[draw, rows], best)

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}{f}": getattr(self, f) for f in self.FIELDS}

    def load(self, state: dict[str, Tensor], prefix: str) -> None:
        for f in self.FIELDS:
            setattr(self, f, state[f"{prefix}{f}"].to(getattr(self, f).device).clone())

    def finished(self) -> dict[str, Tensor]:
        """Values with "nothing seen" (every entry NaN) turned into NaN and index -1."""
        out = {}
        for v, i in (("max_val", "max_idx"), ("min_val", "min_idx"), ("top_val", "top_idx")):
            val, idx = getattr(self, v), getattr(self, i)
            missing = torch.isinf(val)
            out[v] = val.masked_fill(missing, torch.nan).cpu()
            out[i] = idx.masked_fill(missing, -1).cpu()
        out["base"] = self.base.cpu()
        return out


# -- the result -----------------------------------------------------------------------------------


@dataclass
class CorrelationResult:
    """Max-correlation of every reference unit with each other model, and its chance baseline.

    Per reference unit (flat index over ``units``) and other model ``m`` (in ``others`` order):

    Attributes:
        units: The reference model's units.
        other_units: Each other model's units.
        names: Labels of the reference and the other models.
        n_tokens: Tokens the statistics were accumulated over (BOS/padding excluded).
        max_corr: ``[models, units]`` largest correlation with any unit of model m (NaN if none).
        argmax: Flat index (in ``other_units[m]``) of that unit, -1 where undefined.
        min_corr: Smallest (most negative) correlation with model m, and ``argmin`` its unit.
        top_corr: ``[models, units, k]`` the k largest correlations, descending; ``top_index``
            their units.
        baseline_draws: ``[models, draws, units]`` the baseline max-correlation of each draw.
        dead: Reference units with zero variance; their correlations are NaN.
        other_dead: Dead units of each other model.
        baseline: The baseline kind (or None); ``config`` the run's other settings.
        matrices: With ``keep_matrix``, the full ``[units, other units]`` correlation per model.

    The table view (:meth:`to_dataframe`) uses the paper's names: ``max_corr``, ``mean_corr`` and
    ``min_corr`` are the max, mean and min *over models* of the per-model max correlation (likewise
    ``*_baseline``), and ``excess_corr = mean_corr - mean_baseline``.
    """

    units: UnitIndex
    other_units: tuple[UnitIndex, ...]
    names: tuple[str, ...]
    n_tokens: int
    max_corr: Float[Tensor, "models units"]
    argmax: Int[Tensor, "models units"]
    min_corr: Float[Tensor, "models units"]
    argmin: Int[Tensor, "models units"]
    top_corr: Float[Tensor, "models units k"]
    top_index: Int[Tensor, "models units k"]
    baseline_draws: Float[Tensor, "models draws units"]
    dead: Bool[Tensor, " units"]
    other_dead: tuple[Bool[Tensor, " _"], ...]
    baseline: str | None = "rotation"
    config: dict[str, Any] = field(default_factory=dict)
    matrices: tuple[Float[Tensor, "units _"], ...] | None = None

    # -- per unit ------------------------------------------------------------------------------

    @property
    def n_models(self) -> int:
        """Number of other models."""
        return len(self.other_units)

    @property
    def baseline_max(self) -> Float[Tensor, "models units"]:
        """Baseline max-correlation per model, averaged over draws (NaN without a baseline)."""
        if self.baseline_draws.shape[1] == 0:
            return torch.full_like(self.max_corr, torch.nan)
        return self.baseline_draws.nanmean(1)

    def _valid_baseline(self) -> Tensor:
        # A model whose max-correlation is undefined (all its units dead) counts on neither side.
        return self.baseline_max.masked_fill(self.max_corr.isnan(), torch.nan)

    @property
    def mean_corr(self) -> Float[Tensor, " units"]:
        """Mean over models of ``max_corr``."""
        return self.max_corr.nanmean(0)

    @property
    def mean_baseline(self) -> Float[Tensor, " units"]:
        """Mean over models of the baseline max-correlation."""
        return self._valid_baseline().nanmean(0)

    @property
    def excess_correlation(self) -> Float[Tensor, " units"]:
        """``mean_corr - mean_baseline``: the paper's excess correlation (NaN for dead units)."""
        return self.mean_corr - self.mean_baseline

    excess_corr = excess_correlation

    def is_universal(self, threshold: float = 0.5) -> Bool[Tensor, " units"]:
        """Units whose excess correlation exceeds ``threshold`` (the paper's 0.5)."""
        if self.baseline is None:
            raise ValueError(
                "This result has no baseline (baseline=None), so excess correlation is undefined."
                " Run correlate(..., baseline='rotation')."
            )
        return self.excess_correlation > threshold

    # -- tables --------------------------------------------------------------------------------

    def _labels(self) -> list[str]:
        return list(self.names[1:])

    def _locate(self, m: int, flat: Tensor) -> tuple[np.ndarray, np.ndarray]:
        idx = self.other_units[m]
        f = flat.numpy()
        ok = f >= 0
        layer = np.full(f.shape, -1, dtype=np.int64)
        neuron = np.full(f.shape, -1, dtype=np.int64)
        layer[ok] = idx.layer_of_unit[f[ok]]
        neuron[ok] = idx.neuron_of_unit[f[ok]]
        return layer, neuron

    def to_dataframe(self, threshold: float = 0.5) -> pd.DataFrame:
        """One row per reference unit, in unit order.

        Columns: ``layer, neuron, excess_corr, mean_corr, min_corr, max_corr, mean_baseline,
        min_baseline, max_baseline, is_dead, is_universal``, then per other model ``<label>``:
        ``max_corr_<label>, max_sim_layer_<label>, max_sim_neuron_<label>, min_corr_<label>,
        min_sim_layer_<label>, min_sim_neuron_<label>, baseline_<label>`` (here ``min_corr_`` is
        that model's most negative correlation, as in the paper's per-pair summaries).
        """
        df = self.units.to_frame()
        base = self._valid_baseline()
        with np.errstate(all="ignore"):
            df["excess_corr"] = self.excess_correlation.numpy()
            df["mean_corr"] = self.mean_corr.numpy()
            df["min_corr"] = _nan_reduce(self.max_corr, "min")
            df["max_corr"] = _nan_reduce(self.max_corr, "max")
            df["mean_baseline"] = self.mean_baseline.numpy()
            df["min_baseline"] = _nan_reduce(base, "min")
            df["max_baseline"] = _nan_reduce(base, "max")
        df["is_dead"] = self.dead.numpy()
        df["is_universal"] = (
            (self.excess_correlation > threshold).numpy() if self.baseline else False
        )
        for m, label in enumerate(self._labels()):
            df[f"max_corr_{label}"] = self.max_corr[m].numpy()
            df[f"max_sim_layer_{label}"], df[f"max_sim_neuron_{label}"] = self._locate(
                m, self.argmax[m]
            )
            df[f"min_corr_{label}"] = self.min_corr[m].numpy()
            df[f"min_sim_layer_{label}"], df[f"min_sim_neuron_{label}"] = self._locate(
                m, self.argmin[m]
            )
            df[f"baseline_{label}"] = self.baseline_max[m].numpy()
        return df

    def universal_neurons(self, threshold: float = 0.5) -> pd.DataFrame:
        """The universal units (``excess_corr > threshold``), same columns as
        :meth:`to_dataframe` without ``is_universal``, in unit order."""
        universal = self.is_universal(threshold).numpy()
        df = self.to_dataframe(threshold)
        return df[universal].drop(columns="is_universal").reset_index(drop=True)

    def universal_share(self, threshold: float = 0.5) -> pd.DataFrame:
        """Per layer: units, dead units, universal units and their share, median max-corr and
        median baseline (means over models)."""
        df = self.to_dataframe(threshold)
        grouped = df.groupby("layer", sort=True)
        out = pd.DataFrame(
            {
                "n_units": grouped.size(),
                "n_dead": grouped["is_dead"].sum(),
                "n_universal": grouped["is_universal"].sum(),
                "median_corr": grouped["mean_corr"].median(),
                "median_baseline": grouped["mean_baseline"].median(),
            }
        )
        out["universal_share"] = out["n_universal"] / out["n_units"]
        return out.reset_index()

    def dead_units(self) -> pd.DataFrame:
        """Every dead unit, reference and others: columns ``model, layer, neuron``."""
        frames = []
        for name, idx, dead in zip(
            self.names, (self.units, *self.other_units), (self.dead, *self.other_dead), strict=True
        ):
            frame = idx.to_frame()[dead.numpy()]
            frame.insert(0, "model", name)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def argmax_units(self, other: int | str = 0) -> pd.DataFrame:
        """``layer, neuron`` of each reference unit's best match in model ``other`` (-1 if none)."""
        m = self._model(other)
        layer, neuron = self._locate(m, self.argmax[m])
        return pd.DataFrame({"layer": layer, "neuron": neuron})

    def matrix(self, other: int | str = 0) -> Float[Tensor, "units _"]:
        """The full correlation matrix with model ``other`` (only with ``keep_matrix``)."""
        if self.matrices is None:
            raise ValueError("The full matrix was not kept: run correlate(..., keep_matrix=True).")
        return self.matrices[self._model(other)]

    def _model(self, other: int | str) -> int:
        if isinstance(other, str):
            if other not in self._labels():
                raise KeyError(f"No other model named {other!r}; models: {self._labels()}.")
            return self._labels().index(other)
        return int(other)

    def __repr__(self) -> str:
        head = f"CorrelationResult({self.names[0]} vs {', '.join(self._labels())}"
        head += f": {self.units.n_units} units, {self.n_tokens} tokens, baseline={self.baseline!r}"
        if self.baseline:
            head += f", {int(self.is_universal().sum())} universal"
        return head + ")"

    # -- persistence ---------------------------------------------------------------------------

    _ARRAYS = (
        "max_corr",
        "argmax",
        "min_corr",
        "argmin",
        "top_corr",
        "top_index",
        "baseline_draws",
    )

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``arrays.safetensors``, ``result.json`` and ``neurons.parquet`` (the table) to
        the folder ``path``, atomically (a crash leaves the old folder or none)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {name: getattr(self, name).contiguous() for name in self._ARRAYS}
        tensors["dead"] = self.dead.to(torch.uint8)
        for m, dead in enumerate(self.other_dead):
            tensors[f"other_dead.{m}"] = dead.to(torch.uint8)
        for m, mat in enumerate(self.matrices or ()):
            tensors[f"matrix.{m}"] = mat.contiguous()
        meta = {
            "format": _FORMAT + ".result",
            "version": _VERSION,
            "units": self.units.to_dict(),
            "other_units": [u.to_dict() for u in self.other_units],
            "names": list(self.names),
            "n_tokens": self.n_tokens,
            "baseline": self.baseline,
            "config": self.config,
            "has_matrices": self.matrices is not None,
        }
        with atomic_dir(path) as tmp:
            save_file(tensors, tmp / "arrays.safetensors")
            (tmp / "result.json").write_text(json.dumps(meta, indent=2, default=str))
            self.to_dataframe().to_parquet(tmp / "neurons.parquet")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CorrelationResult:
        """Read a folder written by :meth:`save`.

        Raises:
            CorruptCacheError: A file is missing or unreadable; the message names it.
        """
        from safetensors.torch import load_file

        path = Path(path)
        fix = "Fix: run correlate(...) again and save the result, or point to the right folder."
        meta_file, array_file = path / "result.json", path / "arrays.safetensors"
        for f in (meta_file, array_file):
            if not f.is_file():
                raise CorruptCacheError(
                    f"{f} is missing: {path} is not a saved CorrelationResult. {fix}"
                )
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("format") != _FORMAT + ".result":
                raise ValueError(f"format is {meta.get('format')!r}")
            units = UnitIndex.from_dict(meta["units"])
            others = tuple(UnitIndex.from_dict(u) for u in meta["other_units"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptCacheError(f"{meta_file} is corrupt ({err}). {fix}") from err
        try:
            t = load_file(array_file)
            arrays = {name: t[name] for name in cls._ARRAYS}
            result = cls(
                units=units,
                other_units=others,
                names=tuple(meta["names"]),
                n_tokens=int(meta["n_tokens"]),
                dead=t["dead"].bool(),
                other_dead=tuple(t[f"other_dead.{m}"].bool() for m in range(len(others))),
                baseline=meta["baseline"],
                config=meta.get("config", {}),
                matrices=(
                    tuple(t[f"matrix.{m}"] for m in range(len(others)))
                    if meta.get("has_matrices")
                    else None
                ),
                **arrays,
            )
        except Exception as err:  # safetensors raises its own error types
            raise CorruptCacheError(
                f"{array_file} is corrupt or incomplete ({err}). {fix}"
            ) from err
        return result

    # -- plots ---------------------------------------------------------------------------------

    def plot(self, threshold: float = 0.5) -> Any:
        """The paper's views: per layer, the distribution of max-correlation (mean over models)
        against the baseline's, and the share of universal units. Returns a matplotlib Figure."""
        from matplotlib.figure import Figure

        df = self.to_dataframe(threshold)
        share = self.universal_share(threshold) if self.baseline else None
        layers = sorted(df["layer"].unique())
        pos = np.arange(len(layers), dtype=float)
        fig = Figure(figsize=(max(6.0, 0.5 * len(layers) + 3), 7), layout="constrained")
        ax_dist, ax_share = fig.subplots(2, 1, sharex=True)
        for column, offset, color, label in (
            ("mean_corr", -0.2, "tab:blue", "max correlation (mean over models)"),
            ("mean_baseline", 0.2, "tab:gray", f"baseline ({self.baseline})"),
        ):
            data = [df.loc[df["layer"] == layer, column].dropna().to_numpy() for layer in layers]
            where = [i for i, d in enumerate(data) if len(d)]
            if where:
                parts = ax_dist.violinplot(
                    [data[i] for i in where], positions=pos[where] + offset, widths=0.35,
                    showmedians=True,
                )  # fmt: skip
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_alpha(0.6)
                ax_dist.plot([], [], color=color, lw=6, alpha=0.6, label=label)
        ax_dist.axhline(0, color="black", lw=0.5)
        ax_dist.set_ylabel("correlation")
        ax_dist.set_title(
            f"{self.names[0]} vs {', '.join(self._labels())} ({self.n_tokens} tokens)"
        )
        ax_dist.legend(loc="lower right", fontsize="small")
        if share is not None:
            percent = 100 * share["universal_share"].to_numpy()
            bars = ax_share.bar(pos, percent, color="tab:green")
            ax_share.bar_label(bars, labels=[f"{p:.1f}%" for p in percent], fontsize="small")
            # A share of zero everywhere is a result, not an empty plot: keep the axis from 0.
            ax_share.set_ylim(0, max(1.0, 1.2 * float(percent.max())))
            ax_share.set_ylabel(f"universal (excess > {threshold}) %")
        ax_share.set_xticks(pos, [str(layer) for layer in layers])
        ax_share.set_xlabel("layer")
        return fig


def _nan_reduce(x: Tensor, how: str) -> np.ndarray:
    a = x.numpy()
    if a.shape[0] == 0:
        return np.full(a.shape[1:], np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (dead units)
            return np.nanmin(a, 0) if how == "min" else np.nanmax(a, 0)


# -- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelationProgress:
    """What ``callback`` receives after every batch.

    Attributes:
        pass_index: The current pass (0-based) and ``n_passes`` the total.
        sequences: Sequences consumed in this pass so far; ``tokens`` the same in tokens.
        checkpointed: Whether a checkpoint was written after this batch.
    """

    pass_index: int
    n_passes: int
    sequences: int
    tokens: int
    checkpointed: bool


@dataclass
class _Segment:
    """A run of consecutive units of one model inside a tile side."""

    model: int
    start: int  # on the tile side
    stop: int
    offset: int  # of ``start`` in the model's flat units
    hooks: tuple[tuple[int, int, int], ...]  # (hook, start, stop) on the tile side


class _Run:
    """The state of one correlation run: per-pass statistics and the running reductions."""

    def __init__(
        self,
        plan: CorrelationPlan,
        indices: Sequence[UnitIndex],
        *,
        baseline: str | None,
        n_draws: int,
        seed: int,
        top_k: int,
        matrix_dtype: torch.dtype | None,
        product_dtype: ProductDtype,
        device: torch.device,
        all_pairs: bool,
    ) -> None:
        self.plan, self.indices = plan, list(indices)
        self.baseline, self.n_draws, self.seed = baseline, n_draws, seed
        self.product_dtype, self.device = product_dtype, device
        # With all_pairs the statistics of pair (i, j) also serve reference j (transposed).
        self.directions = [(i, j) for i, j in plan.pairs]
        if all_pairs:
            self.directions += [(j, i) for i, j in plan.pairs]
        draws = n_draws if baseline else 0
        self.summaries = {
            (r, c): _Summary(indices[r].n_units, top_k, draws, device) for r, c in self.directions
        }
        self.matrices = (
            {
                (i, j): torch.full(
                    (indices[i].n_units, indices[j].n_units), torch.nan, dtype=matrix_dtype
                )
                for i, j in plan.pairs
            }
            if matrix_dtype is not None
            else None
        )
        self.dead = [torch.zeros(i.n_units, dtype=torch.bool) for i in indices]
        self.n_tokens = 0
        self.next_pass = 0
        self.sequences = 0
        self.stats: list[CrossMoments] | None = None
        self._mix_cache: dict[tuple[int, int, int], Tensor] = {}
        self._mix_bytes = 0

    def _mixing(self, model: int, hook: int, draw: int, d: int) -> Tensor:
        """The mixing matrix of (model, layer, draw): the same whatever the tiling or order.

        Kept while they fit in ``_MIX_CACHE_BYTES``: tiles and the all-pairs reverse direction
        reuse each one, and a QR per use would dominate small runs.
        """
        key = (model, hook, draw)
        if key in self._mix_cache:
            return self._mix_cache[key]
        assert self.baseline is not None
        mix = mixing_matrix(self.baseline, d, seed=self.seed, key=key).to(self.device)
        if self._mix_bytes + 8 * d * d <= _MIX_CACHE_BYTES:
            self._mix_cache[key] = mix
            self._mix_bytes += 8 * d * d
        return mix

    # -- tiles ---------------------------------------------------------------------------------

    def _segments(self, tile: Tile) -> tuple[_Segment, list[_Segment]]:
        idx = self.indices
        a0, a1 = tile.a_hooks
        ref = idx[tile.reference]
        base = ref.offsets[a0]
        a_seg = _Segment(
            tile.reference,
            0,
            tile.n_a,
            base,
            tuple((h, ref.offsets[h] - base, ref.offsets[h + 1] - base) for h in range(a0, a1)),
        )
        b_segs, col = [], 0
        for m, h0, h1 in tile.b_parts:
            off = idx[m].offsets
            width = off[h1] - off[h0]
            hooks = tuple(
                (h, col + off[h] - off[h0], col + off[h + 1] - off[h0]) for h in range(h0, h1)
            )
            b_segs.append(_Segment(m, col, col + width, off[h0], hooks))
            col += width
        return a_seg, b_segs

    def new_stats(self, tile: Tile) -> CrossMoments:
        a_seg, b_segs = self._segments(tile)
        a_blocks = [(s, e) for h, s, e in a_seg.hooks if h in tile.a_grams]
        b_blocks = [
            (s, e) for seg in b_segs for h, s, e in seg.hooks if (seg.model, h) in tile.b_grams
        ]
        return CrossMoments(
            tile.n_a,
            tile.n_b,
            a_blocks=a_blocks,
            b_blocks=b_blocks,
            product_dtype=self.product_dtype,
            device=self.device,
        )

    def update(self, acts: Sequence[Tensor]) -> None:
        assert self.stats is not None
        for tile, stats in zip(self.pass_tiles(), self.stats, strict=True):
            a_seg, b_segs = self._segments(tile)
            x = acts[a_seg.model][:, a_seg.offset : a_seg.offset + tile.n_a]
            ys = [acts[s.model][:, s.offset : s.offset + s.stop - s.start] for s in b_segs]
            stats.update(x, ys)

    def pass_tiles(self) -> list[Tile]:
        return [self.plan.tiles[t] for t in self.plan.passes[self.next_pass]]

    # -- reduction at the end of a pass --------------------------------------------------------

    def finish_pass(self) -> None:
        assert self.stats is not None
        tiles = self.pass_tiles()
        grams: dict[tuple[int, int], tuple[CrossMoments, str, int]] = {}
        for tile, stats in zip(tiles, self.stats, strict=True):
            for k, h in enumerate(tile.a_grams):
                grams[(tile.reference, h)] = (stats, "a", k)
            for k, mh in enumerate(tile.b_grams):
                grams[mh] = (stats, "b", k)

        def gram(m: int, h: int) -> Tensor:
            stats, side, k = grams[(m, h)]
            return stats.within_a(k) if side == "a" else stats.within_b(k)

        for tile, stats in zip(tiles, self.stats, strict=True):
            if stats.n == 0:
                continue
            self.n_tokens = stats.n
            a_seg, b_segs = self._segments(tile)
            ref_rows = slice(a_seg.offset, a_seg.offset + tile.n_a)
            self.dead[a_seg.model][ref_rows] = stats.dead_x.cpu()
            for seg in b_segs:
                self.dead[seg.model][seg.offset : seg.offset + seg.stop - seg.start] = stats.dead_y[
                    seg.start : seg.stop
                ].cpu()
            for seg in b_segs:
                self._reduce(stats, a_seg, seg, gram, keep=True)
                if (seg.model, a_seg.model) in self.summaries:
                    self._reduce(stats.T, seg, a_seg, gram, keep=False)
        self.stats = None

    def _reduce(
        self,
        stats: CrossMoments,
        rows: _Segment,
        cols: _Segment,
        gram: Callable[[int, int], Tensor],
        keep: bool,
    ) -> None:
        summary = self.summaries[(rows.model, cols.model)]
        n_cols = cols.stop - cols.start
        step = max(1, _FINAL_CHUNK // max(1, n_cols))
        col_slice = slice(cols.start, cols.stop)
        chunks = [(r, min(rows.stop, r + step)) for r in range(rows.start, rows.stop, step)]
        matrix = self.matrices[(rows.model, cols.model)] if (keep and self.matrices) else None
        for r0, r1 in chunks:
            global_rows = slice(rows.offset + r0 - rows.start, rows.offset + r1 - rows.start)
            corr = stats.corr(slice(r0, r1), col_slice)
            summary.update(global_rows, corr, cols.offset)
            if matrix is not None:
                matrix[global_rows, cols.offset : cols.offset + n_cols] = corr.to(
                    "cpu", matrix.dtype
                )
        if self.baseline not in MIXING_KINDS:
            return
        m2_x = stats.m2_x
        for h, s, e in cols.hooks:
            cov_yy = gram(cols.model, h)
            for draw in range(self.n_draws):
                # Keyed by (model, layer, draw): the same matrix whatever the tiling or order.
                mix = self._mixing(cols.model, h, draw, e - s)
                for r0, r1 in chunks:
                    global_rows = slice(
                        rows.offset + r0 - rows.start, rows.offset + r1 - rows.start
                    )
                    r = mixed_correlation(
                        stats.comoment(slice(r0, r1), slice(s, e)), m2_x[r0:r1], cov_yy, mix
                    )
                    summary.add_baseline(draw, global_rows, nanmax(r))

    # -- checkpoints ---------------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for (r, c), s in self.summaries.items():
            out.update(s.tensors(f"summary.{r}.{c}."))
        for m, dead in enumerate(self.dead):
            out[f"dead.{m}"] = dead.to(torch.uint8)
        for (i, j), mat in (self.matrices or {}).items():
            out[f"matrix.{i}.{j}"] = mat
        for t, stats in enumerate(self.stats or ()):
            out.update({f"stats.{t}.{k}": v for k, v in stats.state_dict().items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def load(self, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
        for (r, c), s in self.summaries.items():
            s.load(state, f"summary.{r}.{c}.")
        self.dead = [state[f"dead.{m}"].bool() for m in range(len(self.indices))]
        if self.matrices is not None:
            for key in self.matrices:
                self.matrices[key] = state[f"matrix.{key[0]}.{key[1]}"].clone()
        self.next_pass, self.sequences = int(meta["next_pass"]), int(meta["sequences"])
        self.n_tokens = int(meta["n_tokens"])
        if self.sequences and self.next_pass < self.plan.n_passes:
            self.stats = []
            for t in range(len(self.plan.passes[self.next_pass])):
                prefix = f"stats.{t}."
                sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                self.stats.append(
                    CrossMoments.from_state_dict(
                        sub, product_dtype=self.product_dtype, device=self.device
                    )
                )

    # -- results -------------------------------------------------------------------------------

    def add_noise_baseline(self) -> None:
        if self.baseline != "gaussian_noise":
            return
        for (r, c), s in self.summaries.items():
            draws = noise_max_corr(
                self.n_tokens,
                self.indices[c].n_units,
                self.indices[r].n_units,
                n_draws=self.n_draws,
                seed=self.seed,
                key=(r, c),
            ).to(s.base.device)
            s.base = draws.masked_fill(self.dead[r].to(s.base.device)[None, :], torch.nan)

    def results(self, names: Sequence[str], config: dict[str, Any]) -> list[CorrelationResult]:
        out = []
        for r in range(len(self.indices)):
            others = sorted(c for rr, c in self.directions if rr == r)
            if not others:
                continue
            done = [self.summaries[(r, c)].finished() for c in others]
            matrices = None
            if self.matrices is not None:
                matrices = tuple(
                    self.matrices[(r, c)] if (r, c) in self.matrices else self.matrices[(c, r)].T
                    for c in others
                )
            out.append(
                CorrelationResult(
                    units=self.indices[r],
                    other_units=tuple(self.indices[c] for c in others),
                    names=(names[r], *(names[c] for c in others)),
                    n_tokens=self.n_tokens,
                    max_corr=torch.stack([d["max_val"] for d in done]),
                    argmax=torch.stack([d["max_idx"] for d in done]),
                    min_corr=torch.stack([d["min_val"] for d in done]),
                    argmin=torch.stack([d["min_idx"] for d in done]),
                    top_corr=torch.stack([d["top_val"] for d in done]),
                    top_index=torch.stack([d["top_idx"] for d in done]),
                    baseline_draws=torch.stack([d["base"] for d in done]),
                    dead=self.dead[r].clone(),
                    other_dead=tuple(self.dead[c].clone() for c in others),
                    baseline=self.baseline,
                    config={**config, "reference": names[r]},
                    matrices=matrices,
                )
            )
        return out


def _save_checkpoint(folder: Path, run: _Run, meta: dict[str, Any]) -> None:
    """Write the run's state as one safetensors file (metadata in its header), atomically."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / _CHECKPOINT
    fd, tmp = tempfile.mkstemp(prefix=f".{_CHECKPOINT}.", dir=folder)
    os.close(fd)
    try:
        save_file(run.tensors(), tmp, metadata={"meta": json.dumps(meta, default=str)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)  # the old checkpoint stays valid until this instant
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # A readable copy for humans; the safetensors header is what resuming trusts.
    (folder / "correlation_state.json").write_text(json.dumps(meta, indent=2, default=str))


def _load_checkpoint(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / _CHECKPOINT
    if not path.exists():
        return None
    fix = f"Fix: delete {folder} (or pass another checkpoint_dir) to start the run over."
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
        if meta.get("format") != _FORMAT + ".checkpoint":
            raise ValueError(f"format is {meta.get('format')!r}")
        return load_file(path), meta
    except Exception as err:  # safetensors and json raise their own error types
        raise CorruptCacheError(f"The checkpoint {path} is unreadable ({err}). {fix}") from err


def _params_digest(model: Any) -> str:
    """A checksum of a model's weights: resuming with other weights must fail."""
    h = hashlib.sha256()
    named = getattr(model, "named_parameters", None)
    if named is None:  # pragma: no cover - every TransformerLens model has parameters
        return "unknown"
    with torch.no_grad():
        for name, p in sorted(named(), key=lambda kv: kv[0]):
            p64 = p.detach().to(torch.float64)
            h.update(
                f"{name}:{tuple(p.shape)}:{p64.sum().item():.17g}:{p64.square().sum().item():.17g}".encode()
            )
    return h.hexdigest()[:16]


def _source_digest(source: Any) -> dict[str, Any]:
    head = next(iter(source.batches(4)))
    return {
        "name": source.name,
        "seq_len": source.seq_len,
        "n_sequences": source.n_sequences,
        "head": hashlib.sha256(head.numpy().tobytes()).hexdigest()[:16],
    }


def _labels(models: Sequence[HookedModel], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(models) or len(set(names)) != len(names):
            raise ValueError(f"names must be {len(models)} distinct labels, got {names}.")
        return names
    found = [model_name(m) for m in models]
    if len(set(found)) == len(found):
        return found
    return [f"m{i}" for i in range(len(models))]


def correlate(
    model: HookedModel,
    others: HookedModel | Sequence[HookedModel],
    tokens: Any = None,
    *,
    units: UnitsSpec | Sequence[UnitsSpec] = None,
    all_pairs: bool = False,
    baseline: str | None = "rotation",
    n_draws: int = 5,
    seed: int = 0,
    top_k: int = 10,
    keep_matrix: bool | str | torch.dtype = False,
    memory_budget: int | float | str | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    product_dtype: ProductDtype = None,
    exclude_token_ids: Sequence[int] | None = None,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 10_000_000,
    names: Sequence[str] | None = None,
    progress: bool = True,
    callback: Callable[[CorrelationProgress], None] | None = None,
) -> CorrelationResult | list[CorrelationResult]:
    """Correlate every unit of ``model`` with every unit of each of ``others`` (METHOD.md §1.1).

    One pass over ``tokens`` runs each model once per batch and accumulates exact streaming
    statistics (:class:`~tl_universality.stats.cross_moments.CrossMoments`); the baseline comes
    from the
    same statistics (:mod:`tl_universality.stats.baselines`), with no second pass.

    Args:
        model: The reference model (the paper's seed ``a``).
        others: The other seeds.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` accepts (a ``[n,
        seq]``
            tensor of ids whose rows start with BOS, a token source, a file, ``None`` for the
            default corpus).
        units: Which units (default every layer's ``mlp.hook_post``); one spec or one per model.
        all_pairs: Also correlate every pair of ``others``; returns one result per model, each
            with that model as the reference (statistics are accumulated once per pair).
        baseline: ``"rotation"`` (default), ``"gaussian_mix"``, ``"gaussian_noise"`` or None.
        n_draws: Independent baseline draws, averaged.
        seed: Seed of the baseline draws.
        top_k: How many best matches to keep per unit and model.
        keep_matrix: Also keep the full correlation matrices (True = float32, or a dtype such as
            ``torch.float16``).
        memory_budget: Bytes (or ``"16GB"``) for statistics and buffers; the units are tiled into
            several passes when one does not fit. Default: one pass, whatever it needs.
        batch_size: Sequences per forward pass.
        device: Where the statistics are accumulated (default: the reference model's device).
        product_dtype: Precision of the per-batch product (float32 default; see
            :data:`~tl_universality.stats.cross_moments.ProductDtype`).
        exclude_token_ids: Token ids whose positions are left out (default BOS and padding).
        seq_len: Sequence length for text sources (default: min(512, smallest n_ctx)).
        max_tokens: Stop after this many tokens.
        bos_token_id: The BOS id of a token tensor when the models have no tokenizer.
        checkpoint_dir: Folder for checkpoints; a rerun with the same arguments resumes there.
        checkpoint_every: Tokens between checkpoints (each pass's end is always one).
        names: Labels of ``[model, *others]`` in tables (default their ``cfg.model_name``).
        progress: Show progress bars and print the plan; False is quiet.
        callback: Called with a :class:`CorrelationProgress` after every batch.

    Returns:
        A :class:`CorrelationResult`, or with ``all_pairs`` a list with one per model.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_mlp=16,
        ...                               d_vocab=20, act_fn="relu", seed=0)
        >>> a, b = HookedTransformer(cfg), HookedTransformer(cfg)  # same seed: identical neurons
        >>> toks = torch.randint(1, 20, (16, 8), generator=torch.Generator().manual_seed(0))
        >>> toks[:, 0] = 0
        >>> result = correlate(a, b, toks, bos_token_id=0, n_draws=1, progress=False)
        >>> bool((result.max_corr.nan_to_num(1.0) > 0.999).all())
        True
        >>> list(result.to_dataframe().columns[:5])
        ['layer', 'neuron', 'excess_corr', 'mean_corr', 'min_corr']
    """
    from tl_universality.data.tokens import as_token_source

    models = [model, *_as_list(others)]
    if len(models) < 2:
        raise ValueError("correlate needs at least one other model to compare with.")
    check_kind(baseline)
    if n_draws < 1 and baseline:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    check_same_tokenizer(models)  # before any compute: a mismatch makes every number meaningless
    labels = _labels(models, names)
    specs = _per_model_units(units, len(models))
    indices = [unit_index(m, s) for m, s in zip(models, specs, strict=True)]
    dev = torch.device(device) if device is not None else model_device(models[0])
    product, _ = resolve_product_dtype(product_dtype, dev)
    matrix_dtype = _matrix_dtype(keep_matrix)
    source = as_token_source(
        tokens,
        getattr(models[0], "tokenizer", None),
        seq_len=seq_len or _default_seq_len(models),
        max_tokens=max_tokens,
        bos_token_id=bos_token_id,
    )
    plan = _make_plan(
        indices,
        all_pairs=all_pairs,
        baseline=baseline,
        memory_budget=parse_bytes(memory_budget),
        tokens_per_batch=batch_size * source.seq_len,
        product=product,
        matrix_itemsize=0
        if matrix_dtype is None
        else torch.empty((), dtype=matrix_dtype).element_size(),
        top_k=top_k,
        n_draws=n_draws if baseline else 0,
    )
    if progress:  # the plan before the work starts; quiet runs still log it
        print(plan, file=sys.stderr)
    else:
        logger.info("%s", plan)

    run = _Run(
        plan,
        indices,
        baseline=baseline,
        n_draws=n_draws,
        seed=seed,
        top_k=top_k,
        matrix_dtype=matrix_dtype,
        product_dtype=product_dtype,
        device=dev,
        all_pairs=all_pairs,
    )
    settings = {
        "all_pairs": all_pairs,
        "baseline": baseline,
        "n_draws": n_draws if baseline else 0,
        "seed": seed,
        "top_k": top_k,
        "keep_matrix": str(matrix_dtype) if matrix_dtype else None,
        "product_dtype": str(product_dtype) if product_dtype is not None else "float32",
        "exclude_token_ids": sorted(int(t) for t in exclude_token_ids)
        if exclude_token_ids is not None
        else None,
    }
    config = {
        **settings,
        "names": labels,
        "tokens": source.name,
        "seq_len": source.seq_len,
        "batch_size": batch_size,
        "n_passes": plan.n_passes,
        "version": _VERSION,
    }

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint: dict[str, Any] = {}
    resumed_complete = False
    if folder is not None:
        fingerprint = {
            **settings,
            "models": [{"name": model_name(m), "params": _params_digest(m)} for m in models],
            "units": [i.to_dict() for i in indices],
            "tokens": _source_digest(source),
            "plan": plan.layout(),
        }
        fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as stored: lists, str
        loaded = _load_checkpoint(folder)
        if loaded is not None:
            state, meta = loaded
            old = meta.get("fingerprint") or {}
            if old != fingerprint:
                differ = sorted(
                    k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k)
                )
                raise CheckpointMismatchError(
                    f"The checkpoint in {folder} was made with different arguments (they differ in:"
                    f" {', '.join(differ)}). Fix: call correlate with the same models, tokens and"
                    " settings to resume, or pass an empty checkpoint_dir to start a new run."
                )
            run.load(state, meta)
            resumed_complete = bool(meta.get("complete"))
            if progress:
                print(
                    f"Resuming from {folder / _CHECKPOINT}: pass {run.next_pass} of"
                    f" {plan.n_passes}, {run.sequences} sequences in.",
                    file=sys.stderr,
                )

    def checkpoint(complete: bool = False) -> None:
        if folder is None:
            return
        meta = {
            "format": _FORMAT + ".checkpoint",
            "version": _VERSION,
            "fingerprint": fingerprint,
            "next_pass": run.next_pass,
            "sequences": run.sequences,
            "n_tokens": run.n_tokens,
            "complete": complete,
        }
        _save_checkpoint(folder, run, meta)

    while run.next_pass < plan.n_passes:
        if run.stats is None:
            run.stats = [run.new_stats(t) for t in run.pass_tiles()]
        since = 0
        batches = stream_activations(
            models,
            source,
            units=units,
            batch_size=batch_size,
            device=dev,
            exclude_token_ids=exclude_token_ids,
            start_sequence=run.sequences,
            progress=progress,
        )
        try:
            for batch in batches:
                run.update(batch.acts)
                run.sequences += batch.tokens.shape[0]
                since += batch.tokens.numel()
                saved = folder is not None and since >= checkpoint_every
                if saved:
                    checkpoint()
                    since = 0
                if callback is not None:
                    callback(
                        CorrelationProgress(
                            run.next_pass,
                            plan.n_passes,
                            run.sequences,
                            run.sequences * source.seq_len,
                            saved,
                        )
                    )
                del batch  # let this batch's activations go before the next forward pass
        finally:
            batches.close()  # ends the progress bar even when a callback raises
        run.finish_pass()
        run.next_pass += 1
        run.sequences = 0
        if run.next_pass < plan.n_passes:
            checkpoint()
    if run.n_tokens == 0:
        raise EmptyTokenSourceError(
            f"No token of {source.name} was left after excluding BOS/padding positions, so no"
            " correlation is defined. Pass longer sequences or more data."
        )
    run.add_noise_baseline()
    if not resumed_complete:
        checkpoint(complete=True)
    results = run.results(labels, config)
    return results if all_pairs else results[0]

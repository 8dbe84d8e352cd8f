"""The plan of a correlation run: which units go into which tile and pass under a memory budget
(see docs/concepts.md, "Scaling"). :func:`plan_correlation` shows it without running anything.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tl_universality.core.protocol import HookedModel
from tl_universality.data.tokens.resolve import default_seq_len
from tl_universality.stats.baselines import (
    MIXING_KINDS,
    check_kind,
)
from tl_universality.stats.cross_moments import (
    CENTRE_BLOCK_CPU,
    PRODUCT_CHUNK,
    CrossMoments,
    ProductDtype,
    resolve_product_dtype,
)
from tl_universality.units.activations import (
    UnitIndex,
    UnitsSpec,
    model_device,
    unit_index,
)
from tl_universality.units.specs import per_model

logger = logging.getLogger(__name__)


#: Results are reduced in row chunks whose float64 correlation block has at most this many entries.
FINAL_CHUNK = 1 << 24
CHECKPOINT_FILE = "correlation_state.safetensors"
FORMAT_VERSION = 1


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


def format_bytes(n: int | float) -> str:
    """``"1.2 GB"``: decimal units, as :func:`parse_bytes` reads them back."""
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
        pass_bytes: Estimated peak bytes of each pass (statistics, buffers and kept results), on
            the rank that needs the most.
        state_bytes: Bytes of the float64 statistics of each pass (what a checkpoint holds), on
            the rank that holds the most.
        fixed_bytes: Bytes held for the whole run (kept matrices and per-unit summaries).
        budget: The memory budget in bytes (per process), or ``None``.
        tokens_per_batch: Tokens per forward batch the estimate assumes.
        tile_ranks: Ranks that share each pass's tiles: the world size of a tile-parallel run
            (``parallel="tiles"``), else 1 (every rank holds every tile of the pass).
        owners: The rank that holds each tile (all 0 when ``tile_ranks`` is 1).
        tile_bytes: Bytes of the float64 statistics of each tile.
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
    tile_ranks: int = 1
    owners: tuple[int, ...] = ()
    tile_bytes: tuple[int, ...] = ()

    @property
    def n_passes(self) -> int:
        return len(self.passes)

    @property
    def peak_bytes(self) -> int:
        return max(self.pass_bytes)

    def rank_tiles(self, pass_index: int, rank: int) -> tuple[int, ...]:
        """The tiles of pass ``pass_index`` that ``rank`` accumulates (all when ``tile_ranks``
        is 1)."""
        tiles = self.passes[pass_index]
        if self.tile_ranks == 1:
            return tiles
        return tuple(t for t in tiles if self.owners[t] == rank)

    def layout(self) -> dict[str, Any]:
        """The tiling, as JSON-friendly data (part of a checkpoint's fingerprint)."""
        out: dict[str, Any] = {
            "tiles": [dataclasses.asdict(t) for t in self.tiles],
            "passes": [list(p) for p in self.passes],
        }
        if self.tile_ranks > 1:
            out["owners"] = list(self.owners)
        return out

    def __str__(self) -> str:
        shared = f", each pass shared by {self.tile_ranks} ranks" if self.tile_ranks > 1 else ""
        lines = [
            f"Correlation plan: {len(self.n_units)} models ({', '.join(map(str, self.n_units))}"
            f" units), {len(self.pairs)} model pair(s), {len(self.tiles)} tile(s) in"
            f" {self.n_passes} pass(es) over the tokens{shared}; peak"
            f" ~{format_bytes(self.peak_bytes)}"
            + (" per rank" if self.tile_ranks > 1 else "")
            + (f" of a {format_bytes(self.budget)} budget" if self.budget else " (no budget set)")
            + f"; results kept {format_bytes(self.fixed_bytes)}."
        ]
        for p, (nbytes, state) in enumerate(zip(self.pass_bytes, self.state_bytes, strict=True)):
            for rank in range(self.tile_ranks):
                tiles = self.rank_tiles(p, rank)
                where = f"pass {p}" + (f", rank {rank}" if self.tile_ranks > 1 else "")
                if not tiles:
                    lines.append(f"  {where}: no tiles")
                    continue
                desc = "; ".join(self.tiles[t].describe() for t in tiles[:3])
                more = f" and {len(tiles) - 3} more" if len(tiles) > 3 else ""
                if self.tile_ranks > 1:
                    state = sum(self.tile_bytes[t] for t in tiles)
                lines.append(
                    f"  {where}: {len(tiles)} tile(s), statistics {format_bytes(state)}"
                    + (f", peak ~{format_bytes(nbytes)}" if self.tile_ranks == 1 else "")
                    + f": {desc}{more}"
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
        product_tmp = 0 if self.product == torch.float64 else 4 * min(t.n_a * t.n_b, PRODUCT_CHUNK)
        centred = self.tokens * (t.n_a + t.n_b) * self.itemsize
        centring = 8 * min(CENTRE_BLOCK_CPU, self.tokens * max(t.n_a, t.n_b)) + 16 * t.n_b
        chunk = min(FINAL_CHUNK, t.n_a * t.n_b)  # float64 entries of one row chunk's block
        reduce = 4 * 8 * chunk
        if self.mixing:  # three blocks next to a d x d mixing matrix, or two d x d at once
            mixed = [self.indices[m].widths[h] for m, h0, h1 in t.b_parts for h in range(h0, h1)]
            if self.all_pairs:
                mixed += self.indices[t.reference].widths[t.a_hooks[0] : t.a_hooks[1]]
            d2 = max(mixed) ** 2
            reduce = max(reduce, 8 * (3 * chunk + d2), 8 * 2 * d2)
        return product_tmp + centred + max(centring, reduce)

    def activations(self) -> int:
        return 4 * self.tokens * sum(i.n_units for i in self.indices)

    def pass_bytes(self, tiles: Sequence[Tile]) -> int:
        return (
            sum(self.state(t) for t in tiles)
            + max(self.work(t) for t in tiles)
            + self.activations()
        )


def make_plan(
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
    tile_ranks: int = 1,
) -> CorrelationPlan:
    """The plan; ``memory_budget`` is per process. With ``tile_ranks > 1`` (tile-parallel runs)
    each pass holds one bin of tiles per rank, and the tiles are made as small as the fewest
    passes allow, so the ranks share the work (and the memory) evenly."""
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
    untiled = [sizer.tile(i, (0, len(indices[i].widths)), _parts_of(b_lists[i])) for i in refs]

    def layout(avail: float) -> tuple[list[Tile], list[list[int]]] | None:
        tiles = _tiles_within(indices, b_lists, sizer, avail)
        return None if tiles is None else (tiles, _pack(tiles, sizer, avail))

    whole = (untiled, [list(range(len(untiled)))])
    cap = math.inf if memory_budget is None else float(memory_budget - fixed - sizer.activations())
    if memory_budget is None or sizer.pass_bytes(untiled) + fixed <= memory_budget:
        found: tuple[list[Tile], list[list[int]]] | None = whole
    else:
        found = layout(cap)
    if found is None:
        assert memory_budget is not None
        smallest = min(
            sizer.pass_bytes([sizer.tile(i, (h, h + 1), [(m, hb, hb + 1)])]) + fixed
            for i in refs
            for h in range(len(indices[i].widths))
            for m, hb in b_lists[i]
        )
        raise ValueError(
            f"memory_budget={format_bytes(memory_budget)} is too small: even one layer"
            f" against one layer needs ~{format_bytes(smallest)} (statistics, one batch of"
            " activations of every model, buffers and kept results). Raise the budget,"
            " lower batch_size, or drop keep_matrix."
        )
    if tile_ranks > 1:
        found = _spread(
            layout, found, sizer, min(cap, float(sizer.pass_bytes(untiled))), tile_ranks
        )
    tiles, bins = found
    tiles = _dedup_grams(tiles, bins)  # per bin: a rank reduces its tiles with its own grams
    chunks = [bins[p : p + tile_ranks] for p in range(0, len(bins), tile_ranks)]
    owners = [0] * len(tiles)
    for chunk in chunks:
        for rank, tile_ids in enumerate(chunk):
            for t in tile_ids:
                owners[t] = rank
    per_rank = [[[tiles[t] for t in b] for b in chunk] for chunk in chunks]
    return CorrelationPlan(
        n_units=n_units,
        pairs=pairs,
        tiles=tuple(tiles),
        passes=tuple(tuple(t for b in chunk for t in b) for chunk in chunks),
        pass_bytes=tuple(max(sizer.pass_bytes(ts) for ts in p) + fixed for p in per_rank),
        state_bytes=tuple(max(sum(sizer.state(t) for t in ts) for ts in p) for p in per_rank),
        fixed_bytes=fixed,
        budget=memory_budget,
        tokens_per_batch=tokens_per_batch,
        tile_ranks=tile_ranks,
        owners=tuple(owners),
        tile_bytes=tuple(sizer.state(t) for t in tiles),
    )


def _parts_of(items: Sequence[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """``(model, hook)`` items as ``(model, first hook, stop hook)`` runs."""
    out: list[list[int]] = []
    for m, h in items:
        if out and out[-1][0] == m and out[-1][2] == h:
            out[-1][2] = h + 1
        else:
            out.append([m, h, h + 1])
    return tuple((m, h0, h1) for m, h0, h1 in out)


def _tiles_within(
    indices: Sequence[UnitIndex],
    b_lists: dict[int, list[tuple[int, int]]],
    sizer: _Sizer,
    avail: float,
) -> list[Tile] | None:
    """Tiles whose statistics and buffers fit ``avail`` bytes each, in the fewest bins (per
    reference); None when even one layer against one layer does not fit."""
    tiles = []
    for i, b_list in b_lists.items():
        found = _reference_tiles(indices, i, b_list, sizer, avail)
        if found is None:
            return None
        tiles.extend(found)
    return tiles


def _reference_tiles(
    indices: Sequence[UnitIndex],
    i: int,
    b_list: list[tuple[int, int]],
    sizer: _Sizer,
    avail: float,
) -> list[Tile] | None:
    b_widths = [indices[m].widths[h] for m, h in b_list]

    def fits(a_groups: list[tuple[int, int]], cap_b: int) -> bool:
        # Bytes grow with both widths: checking the widest A x widest B tile suffices.
        a_big = max(a_groups, key=lambda grp: _widths(indices[i], *grp))
        b0, b1 = max(_groups(b_widths, cap_b), key=lambda grp: sum(b_widths[grp[0] : grp[1]]))
        tile = sizer.tile(i, a_big, _parts_of(b_list[b0:b1]))
        return sizer.state(tile) + sizer.work(tile) <= avail

    best: tuple[int, list[Tile]] | None = None
    n_units = indices[i].n_units
    groupings = {
        tuple(_groups(indices[i].widths, math.ceil(n_units / g)))
        for g in range(1, len(indices[i].widths) + 1)
    }
    for a_groups in sorted(groupings, key=len):
        lo, hi = max(b_widths), sum(b_widths)
        if not fits(list(a_groups), lo):
            continue
        while lo < hi:  # the widest B groups that fit next to these A groups
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(list(a_groups), mid) else (lo, mid - 1)
        cand = [
            sizer.tile(i, ag, _parts_of(b_list[b0:b1]))
            # B group by B group: the tiles that share B layers (which the mixing baselines
            # rotate, one matrix per layer) fall into as few consecutive passes as they can.
            for b0, b1 in _groups(b_widths, lo)
            for ag in a_groups
        ]
        score = len(_pack(cand, sizer, avail))
        if best is None or (score, len(cand)) < (best[0], len(best[1])):
            best = (score, cand)
    return None if best is None else best[1]


def _spread(
    layout: Callable[[float], tuple[list[Tile], list[list[int]]] | None],
    found: tuple[list[Tile], list[list[int]]],
    sizer: _Sizer,
    high: float,
    ranks: int,
) -> tuple[list[Tile], list[list[int]]]:
    """The layout with the smallest bins (bytes per rank) that needs no more passes of ``ranks``
    bins than ``found``: bisection on the bin size, to within 5%."""

    def n_passes(bins: list[list[int]]) -> int:
        return -(-len(bins) // ranks)

    target = n_passes(found[1])
    total = sum(sizer.state(t) for t in found[0]) + max(sizer.work(t) for t in found[0])
    low = total / (target * ranks) / 2
    while high > 1.05 * low:
        mid = math.sqrt(low * high)
        got = layout(mid)
        if got is not None and n_passes(got[1]) <= target:
            found, high = got, mid
        else:
            low = mid
    return found


def _pack(tiles: Sequence[Tile], sizer: _Sizer, avail: float) -> list[list[int]]:
    """Tiles in order into bins whose statistics and buffers fit ``avail`` (next fit)."""
    bins: list[list[int]] = []
    used, work = 0, 0
    for t, tile in enumerate(tiles):
        s, w = sizer.state(tile), sizer.work(tile)
        if bins and used + s + max(work, w) <= avail:
            bins[-1].append(t)
            used, work = used + s, max(work, w)
        else:
            bins.append([t])
            used, work = s, w
    return bins


def _dedup_grams(tiles: Sequence[Tile], bins: Sequence[Sequence[int]]) -> list[Tile]:
    """Track each layer's within-layer moments in one tile per bin (the first that needs it)."""
    tiles = list(tiles)
    for b in bins:
        seen: set[tuple[int, int]] = set()
        for t in b:
            tile = tiles[t]
            a_keep = tuple(h for h in tile.a_grams if (tile.reference, h) not in seen)
            seen.update((tile.reference, h) for h in a_keep)
            b_keep = tuple(mh for mh in tile.b_grams if mh not in seen)
            seen.update(b_keep)
            tiles[t] = dataclasses.replace(tile, a_grams=a_keep, b_grams=b_keep)
    return tiles


def resolve_matrix_dtype(keep_matrix: bool | str | torch.dtype | None) -> torch.dtype | None:
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


def per_model_units(units: Any, k: int) -> list[Any]:
    """One unit spec per model (``PerModel`` unpacked, a plain spec repeated)."""
    return per_model(units, k)


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
    parallel: str = "tokens",
    world_size: int | None = None,
) -> CorrelationPlan:
    """The tiles, passes and memory :func:`correlate` would use with these arguments.

    Runs no forward pass over data (non-MLP units are measured with a one-token probe).
    ``world_size`` (default: the current process group's, else 1) matters with
    ``parallel="tiles"``: each pass then holds one bin of tiles per rank.

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
        >>> spread = plan_correlation(a, b, parallel="tiles", world_size=2)  # one pass, 2 ranks
        >>> spread.n_passes, sorted(set(spread.owners))
        (1, [0, 1])
    """
    from tl_universality.analyses.correlation.config import PARALLEL_MODES
    from tl_universality.analyses.correlation.distributed import current_shard

    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel={parallel!r}: use one of {PARALLEL_MODES}.")
    world = current_shard().world_size if world_size is None else int(world_size)
    models = [model, *as_model_list(others)]
    indices = [
        unit_index(m, u) for m, u in zip(models, per_model_units(units, len(models)), strict=True)
    ]
    dev = torch.device(device) if device is not None else model_device(models[0])
    product, _ = resolve_product_dtype(product_dtype, dev)
    matrix = resolve_matrix_dtype(keep_matrix)
    return make_plan(
        indices,
        all_pairs=all_pairs,
        baseline=check_kind(baseline),
        memory_budget=parse_bytes(memory_budget),
        tokens_per_batch=batch_size * (seq_len or default_seq_len(models)),
        product=product,
        matrix_itemsize=0 if matrix is None else torch.empty((), dtype=matrix).element_size(),
        top_k=top_k,
        n_draws=n_draws if baseline else 0,
        tile_ranks=world if parallel == "tiles" else 1,
    )


def as_model_list(others: HookedModel | Sequence[HookedModel]) -> list[HookedModel]:
    return list(others) if isinstance(others, (list, tuple)) else [others]  # type: ignore[list-item]

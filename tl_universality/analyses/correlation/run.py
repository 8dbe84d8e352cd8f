"""The state of one correlation run: per-pass statistics, the running reductions, checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_universality.analyses.correlation.plan import (
    CHECKPOINT_FILE,
    FINAL_CHUNK,
    CorrelationPlan,
    Tile,
)
from tl_universality.analyses.correlation.result import CorrelationResult
from tl_universality.core.errors import (
    CorruptCacheError,
)
from tl_universality.core.protocol import HookedModel, model_name
from tl_universality.core.saving import open_saved, remove_leftovers, save_folder
from tl_universality.stats.baselines import (
    MIXING_KINDS,
    mixed_correlation,
    mixed_variance,
    mixing_matrix,
    nanmax,
    noise_max_corr,
)
from tl_universality.stats.cross_moments import (
    CrossMoments,
    ProductDtype,
)
from tl_universality.units.activations import (
    UnitIndex,
)

logger = logging.getLogger(__name__)

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


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


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


#: A layer's columns in one block of a pass: statistics, row and column segments, column range.
_Use = tuple[CrossMoments, _Segment, _Segment, int, int]


class CorrelationRun:
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
        # The mixing baselines, per (model, layer, draw): a layer's mixed variances (d numbers,
        # computed once per run) and the passes whose reduction mixes the layer.
        self._var_z: dict[tuple[int, int, int], Tensor] = {}
        self._mix_passes = self._mixed_layer_passes() if baseline in MIXING_KINDS else {}
        # Mixing matrices kept for a later pass, in the room the budget leaves next to the
        # plan's peak (a run without a budget has one pass: nothing to keep).
        self._mix_cache: dict[tuple[int, int, int], tuple[Tensor, int]] = {}  # (matrix, next pass)
        self._mix_room = None if plan.budget is None else max(0, plan.budget - plan.peak_bytes)

    def _mixed_layer_passes(self) -> dict[tuple[int, int], list[int]]:
        """The passes whose reduction mixes each (model, layer), in order."""
        out: dict[tuple[int, int], list[int]] = {}
        for p, tiles in enumerate(self.plan.passes):
            for t in tiles:
                tile = self.plan.tiles[t]
                layers = [(m, h) for m, h0, h1 in tile.b_parts for h in range(h0, h1)]
                if any((m, tile.reference) in self.summaries for m, _, _ in tile.b_parts):
                    layers += [(tile.reference, h) for h in range(*tile.a_hooks)]
                for key in layers:
                    seen = out.setdefault(key, [])
                    if not seen or seen[-1] != p:
                        seen.append(p)
        return out

    def _mixing(self, model: int, hook: int, draw: int, d: int) -> Tensor:
        """The mixing matrix of (model, layer, draw): the same whatever the tiling or order."""
        key = (model, hook, draw)
        if key in self._mix_cache:
            return self._mix_cache[key][0]
        assert self.baseline is not None
        return mixing_matrix(self.baseline, d, seed=self.seed, key=key).to(self.device)

    def _keep_mixing(self, key: tuple[int, int, int], mix: Tensor) -> bool:
        """After this pass used ``mix``: keep it for the next pass that mixes its layer if the
        budget leaves room, making room by dropping kept matrices needed later than this one.

        Returns False when it could not be kept: that later pass makes it again (the same
        matrix, since it is seeded by its key).
        """
        self._mix_cache.pop(key, None)
        later = [p for p in self._mix_passes[key[:2]] if p > self.next_pass]
        if not later:
            return True
        if self._mix_room is not None:
            free = self._mix_room - sum(_nbytes(m) for m, _ in self._mix_cache.values())
            latest_first = sorted(
                (k for k, (_, p) in self._mix_cache.items() if p > later[0]),
                key=lambda k: -self._mix_cache[k][1],
            )
            drop = []
            while free < _nbytes(mix) and latest_first:
                drop.append(latest_first.pop(0))
                free += _nbytes(self._mix_cache[drop[-1]][0])
            if free < _nbytes(mix):
                return False
            for k in drop:
                del self._mix_cache[k]
        self._mix_cache[key] = (mix, later[0])
        return True

    def _mixed_var(
        self, key: tuple[int, int, int], mix: Tensor, gram: Callable[[int, int], Tensor]
    ) -> Tensor:
        """The variances of the mixed units of (model, layer, draw), computed once per run."""
        if key not in self._var_z:
            self._var_z[key] = mixed_variance(gram(key[0], key[1]), mix)
        return self._var_z[key]

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

        mixed: list[tuple[CrossMoments, _Segment, _Segment]] = []

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
                self._reduce(stats, a_seg, seg, keep=True)
                mixed.append((stats, a_seg, seg))
                if (seg.model, a_seg.model) in self.summaries:
                    self._reduce(stats.T, seg, a_seg, keep=False)
                    mixed.append((stats.T, seg, a_seg))
        if self.baseline in MIXING_KINDS:
            self._mixing_baselines(mixed, gram)
        self.stats = None

    @staticmethod
    def _chunks(rows: _Segment, cols: _Segment) -> list[tuple[int, int, slice]]:
        """Row chunks ``(start, stop, rows of the model)`` whose block against ``cols`` has at
        most ``FINAL_CHUNK`` entries (what the plan budgets for the reduction)."""
        step = max(1, FINAL_CHUNK // max(1, cols.stop - cols.start))
        out = []
        for r0 in range(rows.start, rows.stop, step):
            r1 = min(rows.stop, r0 + step)
            out.append(
                (r0, r1, slice(rows.offset + r0 - rows.start, rows.offset + r1 - rows.start))
            )
        return out

    def _reduce(self, stats: CrossMoments, rows: _Segment, cols: _Segment, keep: bool) -> None:
        summary = self.summaries[(rows.model, cols.model)]
        n_cols = cols.stop - cols.start
        col_slice = slice(cols.start, cols.stop)
        matrix = self.matrices[(rows.model, cols.model)] if (keep and self.matrices) else None
        for r0, r1, global_rows in self._chunks(rows, cols):
            corr = stats.corr(slice(r0, r1), col_slice)
            summary.update(global_rows, corr, cols.offset)
            if matrix is not None:
                matrix[global_rows, cols.offset : cols.offset + n_cols] = corr.to(
                    "cpu", matrix.dtype
                )

    def _mixing_baselines(
        self,
        blocks: Sequence[tuple[CrossMoments, _Segment, _Segment]],
        gram: Callable[[int, int], Tensor],
    ) -> None:
        """The mixing baseline of every (rows, columns) block of this pass, layer by layer.

        Each (model, layer, draw) of the columns gets its mixing matrix once for the whole pass,
        whichever tiles and directions mix that layer, and its mixed variances (a ``d³``
        product) once for the whole run; the row chunks then cost one ``rows × d × d`` product.
        """
        by_layer: dict[tuple[int, int], list[_Use]] = {}
        for stats, rows, cols in blocks:
            for h, s, e in cols.hooks:
                by_layer.setdefault((cols.model, h), []).append((stats, rows, cols, s, e))
        again = 0
        for (model, hook), uses in by_layer.items():
            m2 = [stats.m2_x for stats, *_ in uses]
            width = uses[0][4] - uses[0][3]
            for draw in range(self.n_draws):
                key = (model, hook, draw)
                # Keyed by (model, layer, draw): the same matrix whatever the tiling or order.
                mix = self._mixing(model, hook, draw, width)
                var_z = self._mixed_var(key, mix, gram)
                for (stats, rows, cols, s, e), m2_x in zip(uses, m2, strict=True):
                    summary = self.summaries[(rows.model, model)]
                    for r0, r1, global_rows in self._chunks(rows, cols):
                        cov_xy = stats.comoment(slice(r0, r1), slice(s, e))
                        r = mixed_correlation(cov_xy, m2_x[r0:r1], None, mix, var_z=var_z)
                        summary.add_baseline(draw, global_rows, nanmax(r))
                again += not self._keep_mixing(key, mix)
        if again:
            logger.info(
                "The %s baseline will make %d mixing matrices again in later passes: the memory"
                " budget leaves %d bytes next to the plan's peak, too few to keep them.",
                self.baseline, again, self._mix_room,
            )  # fmt: skip

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


CHECKPOINT_FORMAT = "tl_universality.correlation_checkpoint"
CHECKPOINT_VERSION = 2


def save_checkpoint(folder: Path, run: CorrelationRun, meta: dict[str, Any]) -> None:
    """Write the run's state to ``folder/state`` (a checksummed saved folder), atomically: the
    previous checkpoint stays whole until the new one is complete."""
    with save_folder(folder / "state", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, meta) as out:
        out.write_tensors(CHECKPOINT_FILE.removesuffix(".safetensors"), run.tensors())


def load_checkpoint(folder: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The state and metadata of ``folder``'s checkpoint, verified; None when there is none."""
    fix = f"delete {folder} (or pass another checkpoint_dir) to start the run over."
    if (folder / CHECKPOINT_FILE).exists():
        raise CorruptCacheError(
            f"{folder / CHECKPOINT_FILE} is a checkpoint of an older version, without checksums."
            f" Fix: {fix}"
        )
    state_dir = folder / "state"
    if not state_dir.exists():
        remove_leftovers(state_dir)  # restores a checkpoint whose swap was killed half-way
        if not state_dir.exists():
            return None
    with open_saved(
        state_dir, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, what="correlation checkpoint", fix=fix
    ) as saved:
        return saved.tensors(CHECKPOINT_FILE.removesuffix(".safetensors")), dict(saved.meta)


def model_labels(models: Sequence[HookedModel], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(models) or len(set(names)) != len(names):
            raise ValueError(f"names must be {len(models)} distinct labels, got {names}.")
        return names
    found = [model_name(m) for m in models]
    if len(set(found)) == len(found):
        return found
    return [f"m{i}" for i in range(len(models))]

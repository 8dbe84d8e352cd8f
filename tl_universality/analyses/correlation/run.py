"""The state of one correlation run: per-pass statistics, the running reductions, checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_universality.analyses.correlation.plan import (
    CHECKPOINT_FILE,
    FINAL_CHUNK,
    MIX_CACHE_BYTES,
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

# -- running reductions ---------------------------------------------------------------------------


class _Summary:
    """Running per-row reductions of the correlation of reference ``r`` with model ``c``."""

    FIELDS = ("max_val", "max_idx", "min_val", "min_idx", "top_val", "top_idx", "base")
    # with ``screen``: the K most anti-correlated units too, and the co-moments of both lists
    SCREEN_FIELDS = ("low_val", "low_idx", "top_com", "low_com")

    def __init__(
        self, n_rows: int, top_k: int, n_draws: int, device: torch.device, screen: int = 0
    ) -> None:
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        self.screen = screen
        if screen:
            self.low_val = torch.full((n_rows, screen), torch.inf, **f64)  # type: ignore[arg-type]
            self.low_idx = torch.full((n_rows, screen), -1, **i64)  # type: ignore[arg-type]
            self.top_com = torch.full((n_rows, top_k), torch.nan, **f64)  # type: ignore[arg-type]
            self.low_com = torch.full((n_rows, screen), torch.nan, **f64)  # type: ignore[arg-type]
        self.max_val = torch.full((n_rows,), -torch.inf, **f64)  # type: ignore[arg-type]
        self.max_idx = torch.full((n_rows,), -1, **i64)  # type: ignore[arg-type]
        self.min_val = torch.full((n_rows,), torch.inf, **f64)  # type: ignore[arg-type]
        self.min_idx = torch.full((n_rows,), -1, **i64)  # type: ignore[arg-type]
        self.top_val = torch.full((n_rows, top_k), -torch.inf, **f64)  # type: ignore[arg-type]
        self.top_idx = torch.full((n_rows, top_k), -1, **i64)  # type: ignore[arg-type]
        self.base = torch.full((n_draws, n_rows), torch.nan, **f64)  # type: ignore[arg-type]

    def update(
        self, rows: slice, corr: Tensor, col_offset: int, comoment: Tensor | None = None
    ) -> None:
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
            if self.screen and comoment is not None:
                coms = torch.cat([self.top_com[rows], comoment.gather(1, ti)], 1)
                self.top_com[rows] = coms.gather(1, order)
        if self.screen and comoment is not None:
            low = corr.masked_fill(nan, torch.inf) if has_nan else corr
            lv, li = low.topk(min(self.screen, low.shape[1]), dim=1, largest=False)
            vals = torch.cat([self.low_val[rows], lv], 1)
            order = vals.topk(self.screen, dim=1, largest=False).indices
            self.low_val[rows] = vals.gather(1, order)
            idxs = torch.cat([self.low_idx[rows], li + col_offset], 1)
            self.low_idx[rows] = idxs.gather(1, order)
            coms = torch.cat([self.low_com[rows], comoment.gather(1, li)], 1)
            self.low_com[rows] = coms.gather(1, order)

    def add_baseline(self, draw: int, rows: slice, best: Tensor) -> None:
        self.base[draw, rows] = torch.fmax(self.base[draw, rows], best)

    def fields(self) -> tuple[str, ...]:
        return self.FIELDS + (self.SCREEN_FIELDS if self.screen else ())

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}{f}": getattr(self, f) for f in self.fields()}

    def merge(self, gathered: dict[str, Sequence[Tensor]]) -> None:
        """Combine every rank's reductions (``gathered[field]``, one tensor per rank) exactly.

        Ties go to the lower column index, whatever the rank order, so every rank gets the same
        result, and the one process gets when it meets the columns in order. Columns met by two
        ranks (a repeated merge) count once, so merging merged reductions changes nothing.
        """
        for val, idx, sign in (("max_val", "max_idx", 1.0), ("min_val", "min_idx", -1.0)):
            vals, idxs = _ranked(sign * torch.stack(list(gathered[val]), 1), gathered[idx])
            setattr(self, val, sign * vals[:, 0])
            setattr(self, idx, idxs[:, 0])
        k = self.top_val.shape[1]
        if k:
            vals, idxs = _ranked(torch.cat(list(gathered["top_val"]), 1), gathered["top_idx"])
            self.top_val, self.top_idx = vals[:, :k].contiguous(), idxs[:, :k].contiguous()
        base = gathered["base"][0]
        for other in gathered["base"][1:]:
            base = torch.fmax(base, other)  # NaN (nothing seen by that rank) never wins
        self.base = base.clone()

    def load(self, state: dict[str, Tensor], prefix: str) -> None:
        for f in self.fields():
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


def _ranked(vals: Tensor, idx_parts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Each row's entries in order of value (descending) then column index (ascending, -1 last),
    a column index that occurs twice in a row kept once."""
    idxs = torch.cat([i.reshape(vals.shape[0], -1) for i in idx_parts], 1)
    key = idxs.masked_fill(idxs < 0, torch.iinfo(torch.int64).max)
    key, order = torch.sort(key, dim=1, stable=True)
    vals, idxs = vals.gather(1, order), idxs.gather(1, order)
    repeat = torch.zeros_like(idxs, dtype=torch.bool)
    repeat[:, 1:] = (key[:, 1:] == key[:, :-1]) & (idxs[:, 1:] >= 0)
    vals, idxs = vals.masked_fill(repeat, -torch.inf), idxs.masked_fill(repeat, -1)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, idxs.gather(1, order)


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


class CorrelationRun:
    """The state of one correlation run: per-pass statistics and the running reductions.

    ``rank`` picks this process's tiles of a tile-parallel plan (``plan.tile_ranks > 1``); it is
    ignored otherwise.
    """

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
        screen: int = 0,
        rank: int = 0,
    ) -> None:
        self.plan, self.indices, self.rank = plan, list(indices), rank
        # A screening run (stage 1 of ``candidates=K``) also keeps the K most anti-correlated
        # units, the co-moments of both lists, and every unit's mean and sum of squares.
        self.screen = screen
        self.baseline, self.n_draws, self.seed = baseline, n_draws, seed
        self.product_dtype, self.device = product_dtype, device
        # With all_pairs the statistics of pair (i, j) also serve reference j (transposed).
        self.directions = [(i, j) for i, j in plan.pairs]
        if all_pairs:
            self.directions += [(j, i) for i, j in plan.pairs]
        draws = n_draws if baseline else 0
        self.summaries = {
            (r, c): _Summary(indices[r].n_units, top_k, draws, device, screen)
            for r, c in self.directions
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
        self.means = [torch.zeros(i.n_units, dtype=torch.float64) for i in indices]
        self.m2s = [torch.zeros(i.n_units, dtype=torch.float64) for i in indices]
        self.n_tokens = 0
        self.next_pass = 0
        self.sequences = 0
        self.stats: list[CrossMoments] | None = None
        self._mix_cache: dict[tuple[int, int, int], Tensor] = {}
        self._mix_bytes = 0

    def _mixing(self, model: int, hook: int, draw: int, d: int) -> Tensor:
        """The mixing matrix of (model, layer, draw): the same whatever the tiling or order.

        Kept while they fit in ``MIX_CACHE_BYTES``: tiles and the all-pairs reverse direction
        reuse each one, and a QR per use would dominate small runs.
        """
        key = (model, hook, draw)
        if key in self._mix_cache:
            return self._mix_cache[key]
        assert self.baseline is not None
        mix = mixing_matrix(self.baseline, d, seed=self.seed, key=key).to(self.device)
        if self._mix_bytes + 8 * d * d <= MIX_CACHE_BYTES:
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
        """This rank's tiles of the current pass."""
        return [self.plan.tiles[t] for t in self.plan.rank_tiles(self.next_pass, self.rank)]

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
            self.means[a_seg.model][ref_rows] = stats.mean_x.cpu()
            self.m2s[a_seg.model][ref_rows] = stats.m2_x.cpu()
            for seg in b_segs:
                cols = slice(seg.offset, seg.offset + seg.stop - seg.start)
                self.dead[seg.model][cols] = stats.dead_y[seg.start : seg.stop].cpu()
                self.means[seg.model][cols] = stats.mean_y[seg.start : seg.stop].cpu()
                self.m2s[seg.model][cols] = stats.m2_y[seg.start : seg.stop].cpu()
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
        step = max(1, FINAL_CHUNK // max(1, n_cols))
        col_slice = slice(cols.start, cols.stop)
        chunks = [(r, min(rows.stop, r + step)) for r in range(rows.start, rows.stop, step)]
        matrix = self.matrices[(rows.model, cols.model)] if (keep and self.matrices) else None
        for r0, r1 in chunks:
            global_rows = slice(rows.offset + r0 - rows.start, rows.offset + r1 - rows.start)
            corr = stats.corr(slice(r0, r1), col_slice)
            com = stats.comoment(slice(r0, r1), col_slice) if self.screen else None
            summary.update(global_rows, corr, cols.offset, com)
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

    def reductions(self) -> dict[str, Tensor]:
        """The running reductions (of the passes done), by name: the same names and shapes on
        every rank (see :meth:`load_reductions`)."""
        out: dict[str, Tensor] = {}
        for (r, c), s in self.summaries.items():
            out.update(s.tensors(f"summary.{r}.{c}."))
        for m, dead in enumerate(self.dead):
            out[f"dead.{m}"] = dead.to(torch.uint8)
            out[f"mean.{m}"], out[f"m2.{m}"] = self.means[m], self.m2s[m]
        for (i, j), mat in (self.matrices or {}).items():
            out[f"matrix.{i}.{j}"] = mat
        return out

    def load_reductions(self, state: dict[str, Tensor]) -> None:
        for (r, c), s in self.summaries.items():
            s.load(state, f"summary.{r}.{c}.")
        self.dead = [state[f"dead.{m}"].bool() for m in range(len(self.indices))]
        self.means = [state[f"mean.{m}"].clone() for m in range(len(self.indices))]
        self.m2s = [state[f"m2.{m}"].clone() for m in range(len(self.indices))]
        if self.matrices is not None:
            for key in self.matrices:
                self.matrices[key] = state[f"matrix.{key[0]}.{key[1]}"].clone()

    def tensors(self) -> dict[str, Tensor]:
        out = self.reductions()
        for t, stats in enumerate(self.stats or ()):
            out.update({f"stats.{t}.{k}": v for k, v in stats.state_dict().items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def load(self, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self.load_reductions(state)
        self.next_pass, self.sequences = int(meta["next_pass"]), int(meta["sequences"])
        self.n_tokens = int(meta["n_tokens"])
        if self.sequences and self.next_pass < self.plan.n_passes:
            self.stats = []
            for t in range(len(self.pass_tiles())):
                prefix = f"stats.{t}."
                sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                self.stats.append(
                    CrossMoments.from_state_dict(
                        sub, product_dtype=self.product_dtype, device=self.device
                    )
                )

    # -- tile-parallel runs --------------------------------------------------------------------

    def merge_ranks(
        self,
        gather: Callable[[Tensor], list[Tensor]],
        broadcast: Callable[[Tensor, int], Tensor],
    ) -> None:
        """Combine the reductions of ranks that each reduced their own tiles, exactly.

        ``gather(t)`` returns every rank's ``t`` (in rank order) and ``broadcast(t, src)`` rank
        ``src``'s; every rank calls this, with the same plan, and ends with the same reductions.
        Maxima, minima and top-k keep the lower column on ties, baselines the larger draw, dead
        flags any rank's; each kept matrix block comes from the rank that holds its tile.
        """
        for s in self.summaries.values():
            s.merge({f: gather(getattr(s, f)) for f in s.FIELDS})
        for m, dead in enumerate(self.dead):
            self.dead[m] = torch.stack(gather(dead.to(torch.uint8))).amax(0).bool()
        self.n_tokens = max(int(n) for n in gather(torch.tensor([self.n_tokens])))
        for t, tile in enumerate(self.plan.tiles if self.matrices is not None else ()):
            a_seg, b_segs = self._segments(tile)
            for seg in b_segs:
                matrix = self.matrices[(a_seg.model, seg.model)]  # type: ignore[index]
                cols = slice(seg.offset, seg.offset + seg.stop - seg.start)
                step = max(1, FINAL_CHUNK // max(1, seg.stop - seg.start))
                for r0 in range(a_seg.offset, a_seg.offset + tile.n_a, step):
                    rows = slice(r0, min(a_seg.offset + tile.n_a, r0 + step))
                    block = matrix[rows, cols].contiguous()
                    matrix[rows, cols] = broadcast(block, self.plan.owners[t])

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
CHECKPOINT_VERSION = 3


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

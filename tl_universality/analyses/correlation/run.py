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
    CorrelationPlan,
    Tile,
)
from tl_universality.analyses.correlation.result import CorrelationResult
from tl_universality.analyses.correlation.rows import deal_rows, row_chunks
from tl_universality.analyses.correlation.summary import Summary
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
Broadcast = Callable[[Tensor, int], Tensor]  # broadcast(t, src): rank src's t, on every rank


class CorrelationRun:
    """The state of one correlation run: per-pass statistics and the running reductions.

    ``rank`` picks this process's tiles of a tile-parallel plan (``plan.tile_ranks > 1``). In a
    data-parallel run of ``row_ranks`` processes, where every rank holds the merged statistics,
    it picks the rows this rank reduces (:meth:`owned_rows`); :meth:`share_rows` then gives
    every rank all of them.
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
        follow: int = 0,
        rank: int = 0,
        row_ranks: int = 1,
    ) -> None:
        self.plan, self.indices, self.rank = plan, list(indices), rank
        self.row_ranks = row_ranks
        self._dealt: dict[int, list[tuple[int, int]]] = {}  # this pass's rows of each rank
        # A screening run (stage 1 of ``candidates=K``) also keeps the K most anti-correlated
        # units, the co-moments of both lists, and every unit's mean and sum of squares; with
        # ``follow=B`` each row's B + 1 best mixed units of every draw too.
        self.screen = screen
        self.baseline, self.n_draws, self.seed = baseline, n_draws, seed
        self.product_dtype, self.device = product_dtype, device
        # With all_pairs the statistics of pair (i, j) also serve reference j (transposed).
        self.directions = [(i, j) for i, j in plan.pairs]
        if all_pairs:
            self.directions += [(j, i) for i, j in plan.pairs]
        draws = n_draws if baseline else 0
        self.summaries = {
            (r, c): Summary(indices[r].n_units, top_k, draws, device, screen, follow)
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
        # The mixing baselines, per (model, layer, draw): a layer's mixed variances (d numbers,
        # computed once per run) and the passes whose reduction mixes the layer.
        self._var_z: dict[tuple[int, int, int], Tensor] = {}
        self._mix_passes = self._mixed_layer_passes() if baseline in MIXING_KINDS else {}
        # Mixing matrices kept for a later pass, in the room the budget leaves next to the
        # plan's peak (a run without a budget has one pass: nothing to keep).
        self._mix_cache: dict[tuple[int, int, int], tuple[Tensor, int]] = {}  # (matrix, next pass)
        self._mix_room = None if plan.budget is None else max(0, plan.budget - plan.peak_bytes)
        #: with ``follow``: every mixing matrix used, on the CPU, for stage 2 to take its rows
        #: from (instead of making them again)
        self.mixing_used: dict[tuple[int, int, int], Tensor] | None = {} if follow else None

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
        return mixing_matrix(self.baseline, d, seed=self.seed, key=key, device=self.device)

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
        """This rank's tiles of the current pass."""
        return [self.plan.tiles[t] for t in self.plan.rank_tiles(self.next_pass, self.rank)]

    # -- reduction at the end of a pass --------------------------------------------------------

    def finish_pass(self) -> None:
        assert self.stats is not None
        tiles = self.pass_tiles()
        if self.row_ranks > 1:
            self._deal(tiles)
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
            self.means[a_seg.model][ref_rows] = stats.mean_x.cpu()
            self.m2s[a_seg.model][ref_rows] = stats.m2_x.cpu()
            for seg in b_segs:
                cols = slice(seg.offset, seg.offset + seg.stop - seg.start)
                self.dead[seg.model][cols] = stats.dead_y[seg.start : seg.stop].cpu()
                self.means[seg.model][cols] = stats.mean_y[seg.start : seg.stop].cpu()
                self.m2s[seg.model][cols] = stats.m2_y[seg.start : seg.stop].cpu()
            for seg in b_segs:
                self._reduce(stats, a_seg, seg, keep=True)
                mixed.append((stats, a_seg, seg))
                if (seg.model, a_seg.model) in self.summaries:
                    self._reduce(stats.T, seg, a_seg, keep=False)
                    mixed.append((stats.T, seg, a_seg))
        if self.baseline in MIXING_KINDS:
            self._mixing_baselines(mixed, gram)
        self.stats = None

    def _deal(self, tiles: Sequence[Tile]) -> None:
        """Deal the rows of every model that this pass reduces (both directions of its blocks)
        to the ranks (:func:`deal_rows`)."""
        spans: dict[int, list[tuple[int, int]]] = {}
        for tile in tiles:
            a_seg, b_segs = self._segments(tile)
            spans.setdefault(a_seg.model, []).append((a_seg.offset, a_seg.offset + tile.n_a))
            for seg in b_segs:
                if (seg.model, a_seg.model) in self.summaries:
                    span = (seg.offset, seg.offset + seg.stop - seg.start)
                    spans.setdefault(seg.model, []).append(span)
        self._dealt = {m: deal_rows(s, self.row_ranks) for m, s in spans.items()}

    def owned_rows(self, model: int, rank: int | None = None) -> tuple[int, int]:
        """The rows ``[lo, hi)`` of ``model`` that ``rank`` (default this one) reduces in this
        pass: all of them unless the rows are split (a tile-parallel rank reduces whole tiles)."""
        if self.row_ranks == 1:
            return 0, self.indices[model].n_units
        return self._dealt.get(model, [(0, 0)] * self.row_ranks)[
            self.rank if rank is None else rank
        ]

    def _chunks(self, rows: _Segment, cols: _Segment) -> list[tuple[int, int, slice]]:
        """This rank's row chunks of the block ``rows × cols`` (see :func:`row_chunks`)."""
        owned = self.owned_rows(rows.model)
        return row_chunks(rows.start, rows.stop, rows.offset, cols.stop - cols.start, owned)

    def _reduce(self, stats: CrossMoments, rows: _Segment, cols: _Segment, keep: bool) -> None:
        summary = self.summaries[(rows.model, cols.model)]
        n_cols = cols.stop - cols.start
        col_slice = slice(cols.start, cols.stop)
        matrix = self.matrices[(rows.model, cols.model)] if (keep and self.matrices) else None
        for r0, r1, global_rows in self._chunks(rows, cols):
            corr = stats.corr(slice(r0, r1), col_slice)
            com = stats.comoment(slice(r0, r1), col_slice) if self.screen else None
            summary.update(global_rows, corr, cols.offset, com)
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
                if self.mixing_used is not None:
                    self.mixing_used[key] = mix.cpu()
                for (stats, rows, cols, s, e), m2_x in zip(uses, m2, strict=True):
                    summary = self.summaries[(rows.model, model)]
                    for r0, r1, global_rows in self._chunks(rows, cols):
                        cov_xy = stats.comoment(slice(r0, r1), slice(s, e))
                        r = mixed_correlation(cov_xy, m2_x[r0:r1], None, mix, var_z=var_z)
                        summary.add_baseline(draw, global_rows, nanmax(r))
                        if summary.follow:
                            first = self.indices[model].offsets[hook]
                            summary.add_mixed_top(draw, global_rows, r, first, m2_x[r0:r1], var_z)
                again += not self._keep_mixing(key, mix)
        if again:
            logger.info(
                "The %s baseline will make %d mixing matrices again in later passes: the memory"
                " budget leaves %d bytes next to the plan's peak, too few to keep them.",
                self.baseline, again, self._mix_room,
            )  # fmt: skip

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

    # -- runs over several ranks ---------------------------------------------------------------

    def share_rows(self, broadcast: Broadcast) -> None:
        """After a data-parallel pass whose ranks each reduced their own rows: the rows of every
        reduction from the rank that reduced them (``broadcast(t, src)`` returns rank ``src``'s
        ``t``; every rank calls this), so every rank ends with the same reductions, those of one
        process to float64 rounding (copied, not combined; the row chunks differ). Kept
        matrices go block by block in the reduction's row chunks, as in :meth:`merge_ranks`."""
        if self.row_ranks == 1:
            return
        for (r, _), summary in self.summaries.items():
            for name in summary.fields():
                full, dim = getattr(summary, name), Summary.row_dim(name)
                for k in range(self.row_ranks):
                    lo, hi = self.owned_rows(r, k)
                    part = full.narrow(dim, lo, hi - lo)
                    part.copy_(broadcast(part.contiguous(), k))
        for tile in self.pass_tiles() if self.matrices is not None else ():
            held = [(k, self.owned_rows(tile.reference, k)) for k in range(self.row_ranks)]
            self._send_kept(tile, held, broadcast)

    def _send_kept(
        self, tile: Tile, held: Sequence[tuple[int, tuple[int, int]]], broadcast: Broadcast
    ) -> None:
        """The kept matrix blocks of ``tile`` on every rank, each rank ``src`` of ``held``
        sending its rows ``(lo, hi)`` of the reference, in the reduction's row chunks."""
        a_seg, b_segs = self._segments(tile)
        for seg in b_segs:
            matrix = self.matrices[(a_seg.model, seg.model)]  # type: ignore[index]
            width = seg.stop - seg.start
            cols = slice(seg.offset, seg.offset + width)
            for src, owned in held:
                for *_, rows in row_chunks(0, tile.n_a, a_seg.offset, width, owned):
                    matrix[rows, cols] = broadcast(matrix[rows, cols].contiguous(), src)

    def merge_ranks(
        self,
        gather: Callable[[Tensor], list[Tensor]],
        broadcast: Broadcast,
    ) -> None:
        """Combine the reductions of ranks that each reduced their own tiles, exactly.

        ``gather(t)`` returns every rank's ``t`` (in rank order) and ``broadcast(t, src)`` rank
        ``src``'s; every rank calls this, with the same plan, and ends with the same reductions.
        Maxima, minima and top-k keep the lower column on ties, baselines the larger draw, dead
        flags any rank's, a unit's mean and m2 the rank's with the larger m2; each kept matrix
        block comes from the rank that holds its tile.
        """
        for s in self.summaries.values():
            s.merge({f: gather(getattr(s, f)) for f in s.FIELDS})
        for m, dead in enumerate(self.dead):
            self.dead[m] = torch.stack(gather(dead.to(torch.uint8))).amax(0).bool()
            # a unit's moments from a rank whose tiles hold it (the largest m2; the first on
            # ties), so every rank has the same means (the shift of a later pass over the pairs)
            m2s = torch.stack(gather(self.m2s[m]))
            pick = m2s.argmax(0, keepdim=True)
            self.m2s[m] = m2s.gather(0, pick)[0]
            self.means[m] = torch.stack(gather(self.means[m])).gather(0, pick)[0]
        self.n_tokens = max(int(n) for n in gather(torch.tensor([self.n_tokens])))
        for t, tile in enumerate(self.plan.tiles if self.matrices is not None else ()):
            every = (0, self.indices[tile.reference].n_units)
            self._send_kept(tile, [(self.plan.owners[t], every)], broadcast)

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

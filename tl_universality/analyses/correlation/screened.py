"""Screened exact correlation: ``correlate(..., candidates=K)`` (docs/concepts.md, "Screened
exact correlation").

Stage 1 runs the exhaustive statistics on the first ``screen_tokens`` tokens (whole sequences) and
keeps, per reference unit and other model, the K most correlated and the K most anti-correlated
units: the candidates. Stage 2 streams every later token and accumulates exact float64 statistics
of those pairs only (:class:`~tl_universality.stats.pair_moments.PairMoments`, seeded with the
stage-1 sums, so no token is read twice): memory ``a · 2K`` per pair of models instead of
``a · b``, and a cost per token of ``a · 2K`` products instead of ``a · b``. The chance baselines
come from the stage-1 statistics.

Certificates. Stage 2 estimates the standard error of every candidate pair's correlation by batch
means over sequences. The max-correlation over the candidates is exact over all ``n`` tokens; what
could make it wrong is a non-candidate whose value over all tokens is larger. Every non-candidate's
stage-1 value is at most that of the best one, ``r₁``, and its value over all tokens differs from
its stage-1 value by an error of standard deviation ``σ·sqrt(1/n₁ - 1/n)``, with ``σ/sqrt(n)``
taken as the largest standard error among the unit's 2K candidates (lower correlations have larger
errors). Unit ``i`` is certified for a model when its exact max-correlation exceeds ``r₁`` by
``certificate_sigmas`` such deviations, and by the largest change of any candidate from its
stage-1 value (a screening prefix unlike the rest of the stream moves every correlation by more
than its noise): then, up to that margin, it is the value an exhaustive run over the same tokens
reports.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tl_universality.analyses.correlation.distributed import (
    all_reduce,
    broadcast_tensors,
    current_shard,
    on_any_rank,
    rank_folder,
    shard_source,
)
from tl_universality.analyses.correlation.engine import (
    CorrelationConfig,
    Setup,
    check_fingerprint,
    run_exhaustive,
    token_mismatch,
    verify_prefix,
)
from tl_universality.analyses.correlation.fingerprint import batch_digest
from tl_universality.analyses.correlation.followed import FollowedBaseline
from tl_universality.analyses.correlation.result import CorrelationResult
from tl_universality.analyses.correlation.run import CorrelationProgress, CorrelationRun
from tl_universality.core.errors import InvalidArgumentError
from tl_universality.core.saving import open_saved, remove_leftovers, save_folder
from tl_universality.data.tokens.sources import TokenSource
from tl_universality.stats.baselines import noise_max_corr
from tl_universality.stats.pair_moments import PairMoments, centred_chunks, float32_safe
from tl_universality.units.activations import stream_activations
from tl_universality.units.specs import PerModel

#: Default screening length: a quarter of the stream when its size is known, at most this.
SCREEN_TOKENS = 1 << 20
#: Blocks (sequences) of stage 2 before ``tol`` may stop a run.
MIN_BLOCKS = 20
PAIRS_FORMAT = "tl_universality.screened_checkpoint"
PAIRS_VERSION = 1
UNIVERSAL_THRESHOLD = 0.5  # the paper's, used by the early stop


class Remainder(TokenSource):
    """The sequences of ``source`` after its first ``skip`` sequences.

    Examples:
        >>> from tl_universality.data.tokens import TensorTokenSource
        >>> ids = torch.stack([torch.zeros(7, dtype=torch.long), torch.arange(7)], 1)
        >>> rest = Remainder(TensorTokenSource(ids, 0), skip=3)
        >>> [b[:, 1].tolist() for b in rest.batches(2)], rest.n_sequences
        ([[3, 4], [5, 6]], 4)
    """

    def __init__(self, source: TokenSource, skip: int) -> None:
        super().__init__(source.seq_len, source.bos_token_id, f"{source.name} [after screening]")
        self.inner, self.skip = source, int(skip)

    def sequences(self) -> Iterator[Int[Tensor, " seq"]]:
        for k, seq in enumerate(self.inner.sequences()):
            if k >= self.skip:
                yield seq

    @property
    def n_sequences(self) -> int | None:
        total = self.inner.n_sequences
        return None if total is None else max(0, total - self.skip)


def screen_sequences(cfg: CorrelationConfig, source: TokenSource) -> int:
    """Sequences of the screening stage: ``screen_tokens`` (default a quarter of a stream of
    known size, at most :data:`SCREEN_TOKENS`) in whole sequences, at least one."""
    total = source.n_sequences
    want = cfg.screen_tokens
    if want is None:
        want = SCREEN_TOKENS if total is None else min(SCREEN_TOKENS, total * source.seq_len // 4)
    n_seq = max(1, math.ceil(want / source.seq_len))
    return n_seq if total is None else min(n_seq, total)


def correlate_screened(setup: Setup, cfg: CorrelationConfig) -> Any:
    """The screened run behind ``correlate(..., candidates=K)``; see the module docstring."""
    k = int(cfg.candidates)  # type: ignore[arg-type]
    shard = current_shard()
    _check_width(setup, cfg, k)
    stream = setup.stream
    whole = stream.limit(cfg.max_tokens) if cfg.max_tokens is not None else stream
    n1_seq = screen_sequences(cfg, whole)
    n1_tokens = n1_seq * whole.seq_len
    follow = cfg.baseline_candidates or 0
    cfg1 = cfg.replace(
        candidates=None, screen_tokens=None, tol=None, baseline_candidates=None, top_k=k + 1,
        max_tokens=n1_tokens if cfg.max_tokens is None else min(n1_tokens, cfg.max_tokens),
    )  # fmt: skip
    folder = setup.folder
    mine = rank_folder(folder, shard)
    pairs_dir = mine / "pairs" if mine is not None else None
    settings = cfg.to_dict()
    settings.pop("checkpoint_every")  # checkpoint spacing may change between runs
    fingerprint = {"settings": settings, "screen_sequences": n1_seq, **models_print(setup)}

    loaded = load_pairs(pairs_dir)
    if loaded is not None:
        state, meta = loaded
        check_fingerprint(pairs_dir, meta["fingerprint"], fingerprint)
        screen = Screened.from_state(state, meta, setup.device, _offsets(setup))
        # The digests are of this rank's share of the screening batches.
        prefix = shard_source(whole.limit(n1_tokens), cfg.batch_size, shard)
        verify_prefix(pairs_dir, prefix, cfg.batch_size, list(meta["screen_digests"]), n1_seq)
    # Stage 1 is collective: when a rank has no stage-2 checkpoint (it stopped before writing
    # its first), every rank runs it again (from its own stage-1 checkpoint, so no batch is read
    # twice where that is complete) and only the ranks without one start stage 2 from it.
    missing = on_any_rank(loaded is None) if shard.distributed else loaded is None
    if missing:
        stage1 = dataclasses.replace(setup, folder=None if folder is None else folder / "screen")
        done = run_exhaustive(stage1, cfg1, screen=k, follow=follow)
    if loaded is None:
        product = pair_product(cfg.product_dtype)
        screen = Screened.from_stage1(done.run, k, shard.rank, setup.device, product)
        if follow:
            screen.followed = FollowedBaseline.from_stage1(
                done.run, follow, _offsets(setup), keep_sums=shard.rank == 0,
                device=setup.device, product=product,
            )  # fmt: skip
        config = {**done.config, **cfg.to_dict(), "screen_tokens_used": done.run.n_tokens}
        meta = {
            "fingerprint": fingerprint,
            "config": config,
            "screen_digests": done.digests,
            "digests": [],
            "sequences": 0,
            "complete": False,
            "stopped_early": False,
        }
    stream_pairs(setup, cfg, screen, meta, Remainder(whole, n1_seq), pairs_dir)
    return _results(setup, cfg, screen, meta)


def pair_product(product_dtype: str | None) -> torch.dtype:
    """dtype of the stage-2 pair products for the ``product_dtype`` setting: float64 when asked
    for, float32 otherwise (TF32 and bfloat16 speed up the exhaustive GEMMs only)."""
    return torch.float64 if product_dtype == "float64" else torch.float32


def _offsets(setup: Setup) -> list[tuple[int, ...]]:
    return [i.offsets for i in setup.indices]


def models_print(setup: Setup) -> dict[str, Any]:
    """What the statistics depend on besides the settings and the token contents."""
    out = {
        "models": [
            {"name": n, "weights": w} for n, w in zip(setup.labels, setup.weights, strict=True)
        ],
        "units": [i.to_dict() for i in setup.indices],
        "seq_len": setup.stream.seq_len,
    }
    return json.loads(json.dumps(out, default=str))


def _check_width(setup: Setup, cfg: CorrelationConfig, k: int) -> None:
    """Refuse, before any work, a K whose 2K candidates would not leave a non-candidate."""
    columns = range(len(setup.models)) if cfg.all_pairs else range(1, len(setup.models))
    for c in columns:
        b = setup.indices[c].n_units
        if 2 * k >= b:
            raise InvalidArgumentError(
                f"candidates={k} keeps {2 * k} of each other model's units, but"
                f" {setup.labels[c]} has only {b}. Fix: pass candidates < {(b + 1) // 2}, or"
                " candidates=None (the exhaustive mode, cheap at this size)."
            )


class Screened:
    """Stage-1 outputs and the stage-2 pair statistics of every direction ``(r, c)``."""

    def __init__(self, n1: int, k: int) -> None:
        self.n1, self.k = n1, k
        self.pairs: dict[tuple[int, int], PairMoments] = {}
        self.rival: dict[tuple[int, int], Tensor] = {}  # best stage-1 non-candidate value
        self.base: dict[tuple[int, int], Tensor] = {}  # stage-1 baseline draws
        self.baseline: str | None = None
        self.seed = 0  # of the baseline draws
        #: dtype of the pair products (float32 unless product_dtype="float64"); a batch whose
        #: values float32 cannot hold within the bound is multiplied in float64
        self.product = torch.float32
        self.float64_batches = 0
        #: with ``baseline_candidates``: the baseline followed through stage 2
        self.followed: FollowedBaseline | None = None
        self._buffers: dict[tuple[int, torch.dtype], list[Tensor]] = {}  # storage, reused

    @classmethod
    def from_stage1(
        cls, run: CorrelationRun, k: int, rank: int, device: torch.device, product: torch.dtype
    ) -> Screened:
        out = cls(run.n_tokens, k)
        out.baseline, out.seed = run.baseline, run.seed
        out.product = product
        for r, c in run.directions:
            s = run.summaries[(r, c)]
            cols = torch.cat([s.top_idx[:, :k], s.low_idx], 1)
            com = torch.cat([s.top_com[:, :k], s.low_com], 1)
            missing = cols < 0  # a dead row (or too few live columns): any column, sums 0
            cols, com = cols.masked_fill(missing, 0), com.masked_fill(missing, 0.0)
            pm = PairMoments.from_moments(
                cols.cpu(), run.n_tokens, run.means[r], run.m2s[r], run.means[c], run.m2s[c],
                com.cpu(), device=device, keep_sums=rank == 0, shift_dtype=product,
            )  # fmt: skip
            out.pairs[(r, c)] = pm
            out.rival[(r, c)] = s.top_val[:, k].cpu().masked_fill(s.top_idx[:, k].cpu() < 0, -1.0)
            out.base[(r, c)] = s.base.cpu()
        return out

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for (r, c), pm in self.pairs.items():
            out.update({f"pairs.{r}.{c}.{n}": v for n, v in pm.state_dict().items()})
            out[f"rival.{r}.{c}"] = self.rival[(r, c)]
            out[f"base.{r}.{c}"] = self.base[(r, c)]
        if self.followed is not None:
            out.update(self.followed.tensors())
        return out

    @classmethod
    def from_state(
        cls,
        state: dict[str, Tensor],
        meta: dict[str, Any],
        device: torch.device,
        offsets: list[tuple[int, ...]],
    ) -> Screened:
        out = cls(int(meta["n1"]), int(meta["k"]))
        out.baseline, out.seed = meta["config"]["baseline"], int(meta["config"]["seed"])
        out.product = pair_product(meta["config"]["product_dtype"])
        for key in meta["directions"]:
            r, c = int(key[0]), int(key[1])
            p = f"pairs.{r}.{c}."
            sub = {n[len(p) :]: v for n, v in state.items() if n.startswith(p)}
            out.pairs[(r, c)] = PairMoments.from_state_dict(sub, device=device)
            out.rival[(r, c)], out.base[(r, c)] = state[f"rival.{r}.{c}"], state[f"base.{r}.{c}"]
        if meta.get("followed"):
            config = meta["config"]
            out.followed = FollowedBaseline.from_state(
                state, meta["followed"], out.n1, offsets, config["baseline"], config["seed"], device
            )
        return out

    def shifts(self) -> dict[int, Tensor]:
        """The shift of every model's units (the same in every direction it takes part in)."""
        out = {}
        for (r, c), pm in self.pairs.items():
            out.setdefault(r, pm.shift_x)
            out.setdefault(c, pm.shift_y)
        return out

    def add(self, acts: list[Tensor], lengths: list[int]) -> None:
        """One batch: each model's centred copy is made once and serves every direction."""
        chunks, used = centred_chunks(
            dict(enumerate(acts)), self.shifts(), lengths, self.product, self._buffers
        )
        mixed = self.followed.project(chunks) if self.followed is not None else {}
        if used != torch.float64 and not all(float32_safe(z) for z in mixed.values()):
            chunks, used = centred_chunks(
                dict(enumerate(acts)), self.shifts(), lengths, torch.float64, self._buffers
            )
            mixed = self.followed.project(chunks)  # type: ignore[union-attr]
        if used != self.product:
            self.float64_batches += 1
        for (r, c), pm in self.pairs.items():
            for x, y in zip(chunks[r], chunks[c], strict=True):
                pm.add(x, y)
        if self.followed is not None:
            self.followed.add(chunks, mixed)

    def baseline_draws(
        self, key: tuple[int, int], sigmas: float
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``([draws, a] baseline, [a] certified or None, [draws, a] ceiling or None)`` of
        direction ``key``: followed over every token with ``baseline_candidates`` (certified and
        bounded by :meth:`FollowedBaseline.draws`), else the screening tokens' (None: no
        certificate, no bound); the ``"gaussian_noise"`` baseline is exact from the token count
        (its own ceiling)."""
        if self.followed is not None:
            return self.followed.draws(key, sigmas)
        pm, base = self.pairs[key], self.base[key]
        if self.baseline == "gaussian_noise" and base.shape[0]:
            r, c = key
            base = noise_max_corr(
                pm.n, pm.shift_y.shape[0], pm.n_a, n_draws=base.shape[0], seed=self.seed,
                key=(r, c),
            ).masked_fill(pm.dead_x().cpu()[None, :], torch.nan)  # fmt: skip
            return base, None, base
        return base, None, None

    # -- the numbers ---------------------------------------------------------------------------

    def reduce(self, key: tuple[int, int], top_k: int, sigmas: float) -> dict[str, Tensor]:
        """max/min/top over the candidates of direction ``key``, standard errors, certificate."""
        pm = self.pairs[key]
        cols = pm.cols.cpu()
        corr, se = pm.corr().cpu(), pm.standard_error().cpu()
        nan = corr.isnan()
        high, low = corr.masked_fill(nan, -torch.inf), corr.masked_fill(nan, torch.inf)
        max_val, j = high.max(1)
        min_val, i = low.min(1)
        tk = min(top_k, cols.shape[1])
        top_val, t = high.topk(tk, dim=1)
        out = {
            "max_corr": max_val, "argmax": cols.gather(1, j[:, None])[:, 0],
            "max_se": se.gather(1, j[:, None])[:, 0],
            "min_corr": min_val, "argmin": cols.gather(1, i[:, None])[:, 0],
            "min_se": se.gather(1, i[:, None])[:, 0],
            "top_corr": top_val, "top_index": cols.gather(1, t),
        }  # fmt: skip
        for v, idx in (("max_corr", "argmax"), ("min_corr", "argmin"), ("top_corr", "top_index")):
            undefined = out[v].isinf()
            out[v] = out[v].masked_fill(undefined, torch.nan)
            out[idx] = out[idx].masked_fill(undefined, -1)
        # σ/√n from the largest standard error among the unit's 2K candidates: the rival's
        # correlation is lower than the positive ones', and lower correlations have larger errors
        out["certified"], out["max_ceiling"] = pm.certify(
            out["max_corr"], self.rival[key], se, self.n1, sigmas
        )
        out["dead_x"], out["dead_y"] = pm.dead_x().cpu(), pm.dead_y().cpu()
        return out


# -- stage 2 --------------------------------------------------------------------------------------


def stream_pairs(
    setup: Setup,
    cfg: CorrelationConfig,
    screen: Screened,
    meta: dict[str, Any],
    rest: TokenSource,
    pairs_dir: Path | None,
    what: str | None = None,
) -> None:
    """Stream ``rest`` into the pair statistics of ``screen`` (in place), with checkpoints in
    ``pairs_dir`` (resumed from ``meta``), sharded under ``torch.distributed`` and merged at the
    end; ``cfg.tol`` may stop it early. ``what`` is the line printed before (default: the
    screened mode's)."""
    shard = current_shard()
    rest = shard_source(rest, cfg.batch_size, shard)
    exclude = list(cfg.exclude_token_ids) if cfg.exclude_token_ids is not None else None
    digests: list[str] = list(meta["digests"])
    sequences = int(meta["sequences"])
    if sequences:
        verify_prefix(pairs_dir, rest, cfg.batch_size, digests, sequences)
    meta["n1"], meta["k"] = screen.n1, screen.k
    meta["directions"] = [list(d) for d in screen.pairs]
    meta["followed"] = screen.followed.meta() if screen.followed is not None else None

    def checkpoint(complete: bool = False) -> None:
        meta.update(digests=digests, sequences=sequences, complete=complete)
        if pairs_dir is None:
            return
        with save_folder(pairs_dir / "state", PAIRS_FORMAT, PAIRS_VERSION, meta) as out:
            out.write_tensors("state", screen.tensors())

    if shard.distributed and _take_merged(setup, screen, meta):
        checkpoint(complete=True)
    previous: dict[str, Any] | None = None
    since = 0
    if not meta["complete"]:
        if setup.progress:
            print(
                what
                or f"Screened: {len(screen.pairs)} pair(s) of models x {2 * screen.k} candidates,"
                f" {screen.n1} screening tokens; streaming the rest.",
                file=sys.stderr,
            )
        batches = stream_activations(
            setup.models, rest, units=PerModel(setup.specs), batch_size=cfg.batch_size,
            device=setup.device, exclude_token_ids=exclude, start_sequence=sequences,
            progress=setup.progress,
        )  # fmt: skip
        index = -(-sequences // cfg.batch_size)  # of this rank's batches
        # Under torch.distributed with tol, the ranks check together once a round (a batch each,
        # or none where a shard has ended), on the statistics summed over the ranks, and stop
        # together: every rank makes the same collective calls.
        together = cfg.tol is not None and shard.distributed
        try:
            while True:
                batch = next(batches, None)
                if batch is not None:
                    digest = batch_digest(batch.tokens)
                    if index < len(digests) and digests[index] != digest:
                        raise token_mismatch(pairs_dir, index, cfg.batch_size)
                    if index >= len(digests):
                        digests.append(digest)
                    index += 1
                    screen.add(batch.acts, batch.keep.sum(1).tolist())
                    sequences += batch.tokens.shape[0]
                    since += batch.tokens.numel()
                    saved = pairs_dir is not None and since >= cfg.checkpoint_every
                    if saved:
                        checkpoint()
                        since = 0
                    if setup.callback is not None:
                        n_tok = sequences * rest.seq_len
                        setup.callback(CorrelationProgress(1, 2, sequences, n_tok, saved))
                read, batch = batch is not None, None
                if not (on_any_rank(read) if together else read):
                    break
                if cfg.tol is None:
                    continue
                previous, stop = _stable(_summed(screen) if together else screen, cfg, previous)
                if on_any_rank(stop) if together else stop:
                    meta["stopped_early"] = True
                    break
        finally:
            batches.close()
        if shard.distributed:  # every rank ends with the statistics of all
            merged = _summed(screen)
            screen.pairs, screen.followed = merged.pairs, merged.followed
        checkpoint(complete=True)


def _take_merged(setup: Setup, screen: Screened, meta: dict[str, Any]) -> bool:
    """Whether this rank, not finished while another is, took the merged statistics of the
    lowest finished rank (every rank calls this, before streaming).

    A rank that stopped between the end-of-stream merge and its last checkpoint is behind the
    ranks that wrote theirs: they hold the merged statistics and will not merge again.
    """
    shard = current_shard()
    done = bool(meta["complete"])
    first = all_reduce(torch.tensor([shard.rank if done else shard.world_size]), "min")
    src = int(first[0])
    if src == shard.world_size or not on_any_rank(not done):
        return False  # none finished, or all did
    got = broadcast_tensors(screen.tensors(), src)
    stopped = broadcast_tensors({"s": torch.tensor([bool(meta["stopped_early"])])}, src)["s"]
    if done:
        return False
    merged = Screened.from_state(got, meta, setup.device, _offsets(setup))
    screen.pairs, screen.followed = merged.pairs, merged.followed
    meta["stopped_early"] = bool(stopped[0])
    return True


def _summed(screen: Screened) -> Screened:
    """``screen`` with its pair statistics (and followed baseline) summed over the ranks, for the
    early stop's check and the merge at the end; ``screen`` keeps its own (a collective call)."""
    view = copy.copy(screen)
    view.pairs = {key: pm.summed(all_reduce) for key, pm in screen.pairs.items()}
    if screen.followed is not None:
        view.followed = screen.followed.summed(all_reduce)
    return view


def _stable(screen: Screened, cfg, previous: dict[str, Any] | None):
    """(this check, stop?) for the early stop; see ``correlate``'s ``tol``."""
    if min(pm.blocks for pm in screen.pairs.values()) < MIN_BLOCKS:
        return None, False
    tol = float(cfg.tol)
    now: dict[str, Any] = {"max": {}, "universal": {}}
    small = True
    per_ref: dict[int, list[tuple[Tensor, Tensor]]] = {}
    for key in screen.pairs:
        red = screen.reduce(key, 1, cfg.certificate_sigmas)
        now["max"][key] = red["max_corr"]
        live = ~red["max_corr"].isnan()
        small &= bool((red["max_se"][live].nan_to_num(torch.inf) < tol).all())
        draws, _, _ = screen.baseline_draws(key, cfg.certificate_sigmas)
        base = draws.nanmean(0) if draws.shape[0] else None
        if base is not None:
            per_ref.setdefault(key[0], []).append((red["max_corr"], base))
    for r, parts in per_ref.items():
        excess = torch.stack([m for m, _ in parts]).nanmean(0) - torch.stack(
            [b for _, b in parts]
        ).nanmean(0)
        now["universal"][r] = excess > UNIVERSAL_THRESHOLD
    if previous is None:
        return now, False
    moved = max(
        float((now["max"][key] - previous["max"][key]).nan_to_num(0).abs().max())
        for key in now["max"]
    )
    same = all(torch.equal(now["universal"][r], previous["universal"][r]) for r in now["universal"])
    return now, small and moved <= tol and same


def _results(setup: Setup, cfg, screen: Screened, meta: dict[str, Any]):
    labels = setup.labels
    n_tokens = next(iter(screen.pairs.values())).n
    config = {
        **meta["config"],
        "n_tokens_used": n_tokens,
        "stopped_early": bool(meta["stopped_early"]),
        "screen_sequences": meta["fingerprint"]["screen_sequences"],
    }
    refs = sorted({r for r, _ in screen.pairs})
    out = []
    for r in refs:
        others = sorted(c for rr, c in screen.pairs if rr == r)
        reds = [screen.reduce((r, c), cfg.top_k, cfg.certificate_sigmas) for c in others]
        bases = [screen.baseline_draws((r, c), cfg.certificate_sigmas) for c in others]
        held = [ok for _, ok, _ in bases if ok is not None]
        ceilings = [top for _, _, top in bases if top is not None]
        out.append(
            CorrelationResult(
                units=setup.indices[r],
                other_units=tuple(setup.indices[c] for c in others),
                names=(labels[r], *(labels[c] for c in others)),
                n_tokens=n_tokens,
                max_corr=torch.stack([d["max_corr"] for d in reds]),
                argmax=torch.stack([d["argmax"] for d in reds]),
                min_corr=torch.stack([d["min_corr"] for d in reds]),
                argmin=torch.stack([d["argmin"] for d in reds]),
                top_corr=torch.stack([d["top_corr"] for d in reds]),
                top_index=torch.stack([d["top_index"] for d in reds]),
                baseline_draws=torch.stack([b for b, _, _ in bases]),
                dead=reds[0]["dead_x"],
                other_dead=tuple(d["dead_y"] for d in reds),
                baseline=screen.baseline,
                config={**config, "reference": labels[r]},
                max_corr_se=torch.stack([d["max_se"] for d in reds]),
                min_corr_se=torch.stack([d["min_se"] for d in reds]),
                certified=torch.stack([d["certified"] for d in reds]),
                baseline_certified=torch.stack(held) if held else None,
                max_corr_ceiling=torch.stack([d["max_ceiling"] for d in reds]),
                baseline_ceiling=torch.stack(ceilings) if screen.baseline and ceilings else None,
            )
        )
    return out if cfg.all_pairs else out[0]


def load_pairs(pairs_dir: Path | None):
    if pairs_dir is None:
        return None
    state_dir = pairs_dir / "state"
    if not state_dir.exists():
        remove_leftovers(state_dir)
        if not state_dir.exists():
            return None
    fix = f"delete {pairs_dir} (or pass another checkpoint_dir) to start the run over."
    with open_saved(
        state_dir, PAIRS_FORMAT, PAIRS_VERSION, what="screened checkpoint", fix=fix
    ) as saved:
        return saved.tensors("state"), dict(saved.meta)

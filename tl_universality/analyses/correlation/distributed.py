"""Correlation runs with ``torch.distributed`` (docs/scaling.md, "Distributed runs").

When a process group is initialised (``torchrun``: NCCL on GPUs, gloo on CPU),
:func:`~tl_universality.analyses.correlation.correlate` splits the run over the ranks in one of
two ways (``parallel=``), and every rank returns the result a single process would.

Data-parallel (``"tokens"``, the default). The stream is cut into batches of ``batch_size``
sequences exactly as one process cuts it; batch ``k`` goes to rank ``k % world_size``. Shards are
disjoint, cover the stream, and depend only on ``(batch_size, world_size)``. Before a pass's
statistics are reduced, the float64 co-moments of the ranks are re-expressed about the global
mean (exact algebra, :meth:`CrossMoments.reduce_across`); about a common shift the sums are
additive, so one float64 all-reduce per accumulator gives the pairwise merge of Chan et al. over
all ranks (extremes with MIN/MAX). Every rank holds every tile of a pass; the reduction at the end
of a pass (correlations, maxima, top-k, the mixing baselines' ``rows × d × d`` products) is split
by rows: each rank reduces a near-equal share of the rows the pass reduces, model by model, then
takes the other rows from their owners (copies; equal to one process to float64 rounding).

Tile-parallel (``"tiles"``). Every rank reads every batch, but accumulates and reduces only its
own tiles of each pass (the plan deals each pass's tiles to the ranks, and gives each rank the
within-layer moments its tiles' baselines need): the statistics are split, not repeated, so a
pair too large for one device fits on several. After the last pass the running reductions
(maxima, minima, top-k, baseline draws, dead flags, kept matrices) are gathered and combined
exactly, with ties going to the lower column index, so every rank ends with the same result.

Checkpoints. Each rank writes its own state to ``checkpoint_dir/rank{r}/``; a manifest
``checkpoint_dir/distributed.json`` records the world size and the mode. Resuming needs both
unchanged (another world size deals the batches or tiles differently) and is refused otherwise.
A data-parallel rank stopped between a pass's merge and its next checkpoint resumes a pass
behind the others; it then takes the merged reductions of the passes done from a rank that is
furthest on (:func:`align_passes`). Within a pass the ranks are independent, so checkpoints at
different batches resume consistently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from tl_universality.analyses.correlation.run import CorrelationRun
from tl_universality.core.errors import CheckpointMismatchError, InvalidArgumentError
from tl_universality.data.tokens.sources import TokenSource
from tl_universality.stats.cross_moments import CrossMoments

MANIFEST = "distributed.json"
#: How each mode splits a run, as its manifest records it.
SHARDING_RULES = {
    "tokens": "batch k -> rank k % world_size",
    "tiles": "every batch on every rank; tile t -> rank plan.owners[t]",
}


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: ``rank`` of ``world_size`` (0 of 1 without a group).

    Examples:
        >>> current_shard()
        Shard(rank=0, world_size=1)
    """

    rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_shard() -> Shard:
    """The rank and world size of the initialised process group, else ``Shard(0, 1)``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard(0, 1)


def init_from_env() -> Shard:
    """Initialise the default process group from ``torchrun``'s environment, when there is one.

    Uses NCCL when CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo otherwise. Does
    nothing outside ``torchrun`` or when a group already exists.
    """
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            # one visible GPU per process (CUDA_VISIBLE_DEVICES set per rank): that one
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local if torch.cuda.device_count() > 1 else 0)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return current_shard()


def shard_source(source: TokenSource, batch_size: int, shard: Shard) -> TokenSource:
    """``source`` itself in one process, else this rank's :class:`ShardedSource` of it."""
    return ShardedSource(source, batch_size, shard) if shard.distributed else source


class ShardedSource(TokenSource):
    """The batches ``k`` of ``source`` with ``k % world_size == rank``, in order.

    Only :meth:`batches` with the ``batch_size`` given here is meaningful: the shard is defined
    on the batches of the whole stream.

    Examples:
        >>> from tl_universality.data.tokens import TensorTokenSource
        >>> ids = torch.stack([torch.zeros(5, dtype=torch.long), torch.arange(5)], 1)
        >>> shard = ShardedSource(TensorTokenSource(ids, 0), batch_size=2, shard=Shard(1, 2))
        >>> [b[:, 1].tolist() for b in shard.batches(2)], shard.n_sequences
        ([[2, 3]], 2)
    """

    def __init__(self, source: TokenSource, batch_size: int, shard: Shard) -> None:
        super().__init__(source.seq_len, source.bos_token_id, source.name)
        self.inner, self.batch_size, self.shard = source, int(batch_size), shard
        self.name = f"{source.name} [rank {shard.rank} of {shard.world_size}]"

    def _mine(self) -> Iterator[Int[Tensor, "batch seq"]]:
        for k, batch in enumerate(self.inner.batches(self.batch_size)):
            if k % self.shard.world_size == self.shard.rank:
                yield batch

    def batches(self, batch_size: int) -> Iterator[Int[Tensor, "batch seq"]]:
        if batch_size != self.batch_size:
            raise ValueError(
                f"{self.name} is sharded by batches of {self.batch_size}; got {batch_size}."
            )
        yield from self._mine()

    def sequences(self) -> Iterator[Int[Tensor, " seq"]]:
        for batch in self._mine():
            yield from batch

    @property
    def n_sequences(self) -> int | None:
        total = self.inner.n_sequences
        if total is None:
            return None
        b, w, r = self.batch_size, self.shard.world_size, self.shard.rank
        n_batches = -(-total // b)
        mine = range(r, n_batches, w)
        # every batch of mine is full but possibly the stream's last one
        return sum(min(b, total - k * b) for k in mine)


# -- the merge ------------------------------------------------------------------------------------


def merge_across_ranks(stats: Sequence[CrossMoments]) -> None:
    """Replace each rank's ``stats`` (in place) by the merge of every rank's, exactly.

    Every rank must call this with statistics of the same shapes, in the same order.
    """
    dist = torch.distributed
    for s in stats:
        s.reduce_across(all_reduce)
    if stats:
        dist.barrier()


def share_rows(run: CorrelationRun) -> None:
    """After a data-parallel pass's reduction, which each rank did for its own rows only
    (:meth:`CorrelationRun.owned_rows`): every rank takes the other rows from their owners."""
    run.share_rows(_broadcast)


def merge_tile_reductions(run: CorrelationRun) -> None:
    """Combine, in place, the reductions of a tile-parallel run's ranks (every rank calls it)."""
    run.merge_ranks(_all_gather, _broadcast)
    torch.distributed.barrier()


def align_passes(run: CorrelationRun) -> bool:
    """After every rank of a data-parallel run loaded its checkpoint: bring the ranks that are a
    pass behind to the furthest one's pass. Returns whether this rank was behind.

    A rank is behind when it stopped after a pass's merge but before its next checkpoint. The
    reductions of the passes done are the same on every rank that finished them (the merge made
    them so), so the rank takes them from the lowest rank that is furthest on and starts that
    pass afresh from its own first batch. Every rank must call this.
    """
    passes = [int(p) for p in _all_gather(torch.tensor([run.next_pass]))]
    ahead = max(passes)
    if min(passes) == ahead:
        return False
    src = passes.index(ahead)
    got = {name: _broadcast(t.contiguous(), src) for name, t in sorted(run.reductions().items())}
    n_tokens = int(_broadcast(torch.tensor([run.n_tokens]), src)[0])
    if run.next_pass == ahead:
        return False
    run.load_reductions(got)
    run.next_pass, run.sequences, run.stats, run.n_tokens = ahead, 0, None, n_tokens
    return True


def _comm_device(t: Tensor) -> torch.device:
    """Where a collective needs ``t``: CPU for gloo, this rank's GPU for NCCL."""
    if torch.distributed.get_backend() == "gloo":
        return torch.device("cpu")
    if t.device.type == "cuda":
        return t.device
    return torch.device("cuda", torch.cuda.current_device())


def _all_gather(t: Tensor) -> list[Tensor]:
    """Every rank's ``t`` (same shape and dtype on every rank), in rank order."""
    dist = torch.distributed
    buf = t.detach().to(_comm_device(t)).contiguous()
    out = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    if buf.numel():
        dist.all_gather(out, buf)
    return [o.to(t.device) for o in out]


def _broadcast(t: Tensor, src: int) -> Tensor:
    """Rank ``src``'s ``t`` (a new tensor on ``t``'s device); sent as raw bytes, so exact for
    any dtype."""
    buf = t.detach().to(_comm_device(t)).contiguous()
    if buf.data_ptr() == t.data_ptr():
        buf = buf.clone()  # not copied yet: the broadcast writes into it
    if buf.numel():
        torch.distributed.broadcast(buf.view(torch.uint8), src=src)
    return buf.to(t.device)


def broadcast_tensors(tensors: dict[str, Tensor], src: int) -> dict[str, Tensor]:
    """Rank ``src``'s ``tensors``, by name, exactly (every rank passes the same names, shapes
    and dtypes; a collective call)."""
    return {name: _broadcast(t, src) for name, t in sorted(tensors.items())}


def on_any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (a collective call)."""
    return bool(all_reduce(torch.tensor([float(flag)]), "max")[0] > 0)


def all_reduce(t: Tensor, op: str) -> Tensor:
    """``t`` reduced over the ranks (a new tensor on ``t``'s device)."""
    dist = torch.distributed
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    buf = t.detach().to(_comm_device(t)).contiguous().clone()
    dist.all_reduce(buf, op=ops[op])
    return buf.to(t.device)


def check_rank_device(device: torch.device) -> None:
    """Refuse, under ``torch.distributed``, a CUDA ``device`` that is not this rank's own GPU
    (``torch.cuda.current_device()``, which :func:`init_from_env` sets to ``LOCAL_RANK``): every
    rank would put its statistics on one GPU, and NCCL refuses two ranks on one device.

    Examples:
        >>> check_rank_device(torch.device("cpu"))  # outside torchrun, or not CUDA: nothing
    """
    shard = current_shard()
    if not shard.distributed or device.type != "cuda" or not torch.cuda.is_available():
        return
    own = torch.cuda.current_device()
    if device.index is not None and device.index != own:
        raise InvalidArgumentError(
            f"device={str(device)!r} on rank {shard.rank} is not this rank's GPU (cuda:{own}):"
            " under torchrun each rank works on its own GPU. Fix: pass device='cuda' (each"
            " rank's current GPU, cuda:LOCAL_RANK), and load each rank's models there"
            " (model.to('cuda'))."
        )


# -- checkpoints ----------------------------------------------------------------------------------


def rank_folder(folder: Path | None, shard: Shard, parallel: str = "tokens") -> Path | None:
    """Where this rank keeps its checkpoint, after checking the manifest of ``folder``.

    Without a process group the folder itself (and a distributed manifest there is refused);
    with one ``folder/rank{r}`` (rank 0 writes the manifest on the first run). A manifest of
    another world size or another ``parallel`` mode is refused.
    """
    if folder is None:
        return None
    manifest = folder / MANIFEST
    recorded = json.loads(manifest.read_text()) if manifest.exists() else None
    world = int(recorded["world_size"]) if recorded is not None else None
    if not shard.distributed:
        if world is not None and world > 1:
            raise _world_mismatch(folder, world, 1)
        return folder
    if world is None and (folder / "state").exists():
        raise _world_mismatch(folder, 1, shard.world_size)
    if world is not None and world != shard.world_size:
        raise _world_mismatch(folder, world, shard.world_size)
    mode = recorded.get("parallel", "tokens") if recorded is not None else parallel
    if mode != parallel:
        raise CheckpointMismatchError(
            f"The checkpoint in {folder} was written by a parallel={mode!r} run but this run"
            f" has parallel={parallel!r}: its ranks hold {_HOLD[mode]}, not {_HOLD[parallel]}."
            f" Fix: resume with parallel={mode!r} (--parallel {mode}), or pass another"
            " checkpoint_dir to start over."
        )
    if recorded is None and shard.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MANIFEST}.tmp"
        info = {"world_size": shard.world_size, "parallel": parallel}
        tmp.write_text(json.dumps({**info, "sharding": SHARDING_RULES[parallel]}, indent=1))
        os.replace(tmp, manifest)
    return folder / f"rank{shard.rank}"


_HOLD = {
    "tokens": "every tile's statistics over a shard of the batches",
    "tiles": "some tiles' statistics over every batch",
}


def _world_mismatch(folder: Path, recorded: int, now: int) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"The checkpoint in {folder} was written by {recorded} process(es) but this run has"
        f" {now}: each rank's checkpoint holds its share of the run (the batches k with"
        " k % world_size == rank, or its tiles of the plan), so it cannot be resumed by another"
        f" number of processes. Fix: resume with"
        f" torchrun --nproc_per_node {recorded} (or {recorded} processes in all), or pass"
        " another checkpoint_dir to start over."
    )

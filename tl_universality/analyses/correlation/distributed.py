"""Data-parallel correlation runs with ``torch.distributed`` (docs/scaling.md, "Distributed runs").

When a process group is initialised (``torchrun``: NCCL on GPUs, gloo on CPU),
:func:`~tl_universality.analyses.correlation.correlate` reads only this rank's shard of the
token batches and merges the statistics of every rank before it reduces them, so each rank
returns the result a single process would.

Sharding. The stream is cut into batches of ``batch_size`` sequences exactly as one process
cuts it; batch ``k`` goes to rank ``k % world_size``. Shards are disjoint, cover the stream, and
depend only on ``(batch_size, world_size)``.

Merge. The float64 co-moments of the ranks are first re-expressed about the global mean (exact
algebra, :meth:`CrossMoments.reduce_across`); about a common shift the sums are additive, so one
float64 all-reduce per accumulator gives the pairwise merge of Chan et al. over all ranks
(extremes with MIN/MAX). Every rank ends with the same statistics.

Checkpoints. Each rank writes its own statistics to ``checkpoint_dir/rank{r}/``; a manifest
``checkpoint_dir/distributed.json`` records the world size and the sharding rule. Resuming needs
the same world size (another one would assign the batches differently) and is refused otherwise.
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

from tl_universality.core.errors import CheckpointMismatchError
from tl_universality.data.tokens.sources import TokenSource
from tl_universality.stats.cross_moments import CrossMoments

MANIFEST = "distributed.json"
SHARDING_RULE = "batch k -> rank k % world_size"


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
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return current_shard()


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


def all_reduce(t: Tensor, op: str) -> Tensor:
    """``t`` reduced over the ranks (a new tensor on ``t``'s device); gloo gets CPU tensors."""
    dist = torch.distributed
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    on_cpu = dist.get_backend() == "gloo" and t.device.type != "cpu"
    buf = t.detach().to("cpu" if on_cpu else t.device).contiguous().clone()
    dist.all_reduce(buf, op=ops[op])
    return buf.to(t.device) if on_cpu else buf


# -- checkpoints ----------------------------------------------------------------------------------


def rank_folder(folder: Path | None, shard: Shard) -> Path | None:
    """Where this rank keeps its checkpoint, after checking the manifest of ``folder``.

    Without a process group the folder itself (and a distributed manifest there is refused);
    with one ``folder/rank{r}`` (rank 0 writes the manifest on the first run).
    """
    if folder is None:
        return None
    manifest = folder / MANIFEST
    recorded = json.loads(manifest.read_text())["world_size"] if manifest.exists() else None
    if not shard.distributed:
        if recorded is not None and int(recorded) > 1:
            raise _world_mismatch(folder, int(recorded), 1)
        return folder
    if recorded is None and (folder / "state").exists():
        raise _world_mismatch(folder, 1, shard.world_size)
    if recorded is not None and int(recorded) != shard.world_size:
        raise _world_mismatch(folder, int(recorded), shard.world_size)
    if recorded is None and shard.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MANIFEST}.tmp"
        tmp.write_text(
            json.dumps({"world_size": shard.world_size, "sharding": SHARDING_RULE}, indent=1)
        )
        os.replace(tmp, manifest)
    return folder / f"rank{shard.rank}"


def _world_mismatch(folder: Path, recorded: int, now: int) -> CheckpointMismatchError:
    return CheckpointMismatchError(
        f"The checkpoint in {folder} was written by {recorded} process(es) but this run has"
        f" {now}: each rank's statistics cover the batches k with k % world_size == rank, so"
        f" they cannot be resumed by another number of processes. Fix: resume with"
        f" torchrun --nproc_per_node {recorded} (or {recorded} processes in all), or pass"
        " another checkpoint_dir to start over."
    )

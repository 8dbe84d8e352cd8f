"""Run by ``torchrun`` from test_correlation_screened.py: a screened correlation on 2 ranks.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/analyses/screened_worker.py OUT``; each
rank saves ``OUT/rank{r}`` (a CorrelationResult folder), a checkpointed copy (``OUT/ckpt.rank{r}``),
its resumption when finished (``OUT/again.rank{r}``) and when rank 1 lost its stage-2 checkpoint
(``OUT/lost.rank{r}``), a run with float32
products (``OUT/f32.rank{r}``), one that follows the baseline (``OUT/follow.rank{r}``) and an early
stop (``OUT/tol.rank{r}``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from tests.helpers import build_model, noisy_permuted_pair, random_tokens
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.correlation.distributed import init_from_env

N_SEQ, SEQ, BATCH = 90, 32, 8
N_LONG = 600  # sequences of the early-stop run


def family():
    return [build_model(seed=s) for s in (0, 1, 2)]


def tokens():
    return random_tokens(N_SEQ, SEQ, seed=6)


def run(models, product_dtype="float64", **extra):
    return correlate(
        models[0], models[1:], tokens(), bos_token_id=0, progress=False, n_draws=1,
        batch_size=BATCH, product_dtype=product_dtype, candidates=5, screen_tokens=600, **extra,
    )  # fmt: skip


def long_tokens():
    return random_tokens(N_LONG, SEQ, seed=5)


def early(ref, other, toks, tol: float | None = 0.1):
    """The early stop of test_early_stop_when_stable (``tol=None``: the same run without it)."""
    return correlate(
        ref, other, toks, bos_token_id=0, progress=False, n_draws=1, batch_size=BATCH,
        product_dtype="float64", candidates=3, screen_tokens=256, tol=tol,
    )  # fmt: skip


def main(out: Path) -> None:
    shard = init_from_env()
    torch.manual_seed(0)
    models = family()
    run(models).save(out / f"rank{shard.rank}")
    run(models, checkpoint_dir=out / "ckpt").save(out / f"ckpt.rank{shard.rank}")
    # The same command again resumes from the finished checkpoints: each rank checks its own
    # shard's batches.
    run(models, checkpoint_dir=out / "ckpt").save(out / f"again.rank{shard.rank}")
    # Rank 1 loses its stage-2 checkpoint (killed before it was written): every rank reads its
    # stage-1 checkpoint again, and rank 1 takes the merged statistics from rank 0.
    torch.distributed.barrier()
    if shard.rank == 1:
        shutil.rmtree(out / "ckpt" / "rank1" / "pairs")
    torch.distributed.barrier()
    run(models, checkpoint_dir=out / "ckpt").save(out / f"lost.rank{shard.rank}")
    run(models, product_dtype=None).save(out / f"f32.rank{shard.rank}")  # float32 products
    run(models, baseline_candidates=4).save(out / f"follow.rank{shard.rank}")
    early(*noisy_permuted_pair(), long_tokens()).save(out / f"tol.rank{shard.rank}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

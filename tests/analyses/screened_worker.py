"""Run by ``torchrun`` from test_correlation_screened.py: a screened correlation on 2 ranks.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/analyses/screened_worker.py OUT``; each
rank saves ``OUT/rank{r}`` (a CorrelationResult folder), a checkpointed copy and a run with float32
products (``OUT/f32.rank{r}``) and one that follows the baseline (``OUT/follow.rank{r}``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.correlation.distributed import init_from_env

N_SEQ, SEQ, BATCH = 90, 32, 8


def family():
    return [build_model(seed=s) for s in (0, 1, 2)]


def tokens():
    return random_tokens(N_SEQ, SEQ, seed=6)


def run(models, product_dtype="float64", **extra):
    return correlate(
        models[0], models[1:], tokens(), bos_token_id=0, progress=False, n_draws=1,
        batch_size=BATCH, product_dtype=product_dtype, candidates=5, screen_tokens=600, **extra,
    )  # fmt: skip


def main(out: Path) -> None:
    shard = init_from_env()
    torch.manual_seed(0)
    models = family()
    run(models).save(out / f"rank{shard.rank}")
    run(models, checkpoint_dir=out / "ckpt").save(out / f"ckpt.rank{shard.rank}")
    run(models, product_dtype=None).save(out / f"f32.rank{shard.rank}")  # float32 products
    run(models, baseline_candidates=4).save(out / f"follow.rank{shard.rank}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

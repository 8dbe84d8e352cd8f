"""Run by ``torchrun`` from test_correlation_distributed.py: every case on this rank's shard.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/analyses/distributed_worker.py OUT``;
each rank saves ``OUT/{case}/rank{r}`` (a CorrelationResult folder).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.correlation.distributed import init_from_env

# name -> correlate keywords; the test runs the same ones in one process.
CASES = {
    "float32": dict(product_dtype="float32"),
    "float64": dict(product_dtype="float64", baseline="gaussian_mix", all_pairs=True),
    "tiled": dict(product_dtype="float64", memory_budget="600KB"),
}
N_SEQ, SEQ, BATCH = 26, 16, 4  # 7 batches, the last one short: rank 0 reads one more
GROW_FROM = 12 * SEQ  # the checkpointed run first reads 12 sequences, then grows to all


def family():
    return [build_model(seed=s) for s in (0, 1, 2)]


def tokens():
    return random_tokens(N_SEQ, SEQ, seed=3)


def run(models, case: str, **extra):
    return correlate(
        models[0], models[1:], tokens(), bos_token_id=0, progress=False, n_draws=2,
        batch_size=BATCH, **CASES[case], **extra,
    )  # fmt: skip


def main(out: Path) -> None:
    shard = init_from_env()
    torch.manual_seed(0)
    models = family()
    for case in CASES:
        start = time.perf_counter()
        result = run(models, case)
        seconds = time.perf_counter() - start
        results = result if isinstance(result, list) else [result]
        for i, r in enumerate(results):
            r.config["seconds"] = seconds
            r.save(out / f"{case}.{i}" / f"rank{shard.rank}")
    ckpt = out / "checkpoint"
    run(models, "float32", checkpoint_dir=ckpt, max_tokens=GROW_FROM)
    grown = run(models, "float32", checkpoint_dir=ckpt)
    grown.save(out / "grown.0" / f"rank{shard.rank}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

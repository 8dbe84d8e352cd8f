"""Run by ``torchrun`` from test_correlation_distributed.py: every case on this rank's share.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/analyses/distributed_worker.py OUT
[MODE]``; each rank saves ``OUT/{case}.{i}/rank{r}`` (a CorrelationResult folder). MODE is
``cases`` (default: every case of CASES, then a grown and a resumed checkpointed run), ``kill``
(a checkpointed run whose rank 1 dies in its second pass) or ``resume`` (that run again).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.correlation import capacity, correlate
from tl_universality.analyses.correlation.distributed import init_from_env
from tl_universality.core.errors import InvalidArgumentError

# kept matrices of all pairs over several passes, in both modes
MATRIX = dict(
    product_dtype="float64", all_pairs=True, keep_matrix="float64", baseline="gaussian_mix",
    memory_budget="1.4MB",
)  # fmt: skip
# name -> correlate keywords; the test runs the same ones in one process.
CASES = {
    "float32": dict(product_dtype="float32"),
    "float64": dict(product_dtype="float64", baseline="gaussian_mix", all_pairs=True),
    "tiled": dict(product_dtype="float64", memory_budget="600KB"),
    # tile-parallel: 2 passes of 2 bins, rotation baseline (each rank needs its tiles' grams)
    "tiles": dict(product_dtype="float64", parallel="tiles", memory_budget="600KB"),
    "tiles_float32": dict(product_dtype="float32", parallel="tiles", memory_budget="600KB"),
    # no budget: the tiles spread over the ranks in one pass; all pairs need side A's grams too
    "tiles_pairs": dict(product_dtype="float64", parallel="tiles", all_pairs=True),
    "tiles_matrix": dict(MATRIX, parallel="tiles"),
    # data-parallel, kept matrices and all pairs: each rank reduces its rows, then shares them
    "matrix": MATRIX,
    # models of 128, 96 and 48 units (family("widths")), 7 passes of a layer or two against one:
    # each pass reduces some rows of each model, which the ranks deal out
    "widths": dict(
        product_dtype="float64", all_pairs=True, keep_matrix="float64", memory_budget="1.3MB"
    ),
    # the error pass: data-parallel (same shards as the exhaustive run), and after tiles
    "errors": dict(product_dtype="float64", standard_errors=True),
    "tiles_errors": dict(
        product_dtype="float64", parallel="tiles", memory_budget="600KB", standard_errors=True
    ),
}
N_SEQ, SEQ, BATCH = 26, 16, 4  # 7 batches, the last one short: rank 0 reads one more
GROW_FROM = 12 * SEQ  # the checkpointed run first reads 12 sequences, then grows to all
KILLED = "tiled"  # the case of the killed run: 3 passes, data-parallel
PASS0_COPY = "rank1_pass0"  # rank 1's checkpoint in the killed run's first pass


def family(case: str | None = None):
    if case == "widths":
        return [build_model(seed=0), build_model(seed=1, d_mlp=96), build_model(seed=2, d_mlp=48)]
    return [build_model(seed=s) for s in (0, 1, 2)]


def tokens():
    return random_tokens(N_SEQ, SEQ, seed=3)


def run(models, case: str, **extra):
    return correlate(
        models[0], models[1:], tokens(), bos_token_id=0, progress=False, n_draws=2,
        batch_size=BATCH, **CASES[case], **extra,
    )  # fmt: skip


def save(result, out: Path, case: str, rank: int, **config) -> None:
    for i, r in enumerate(result if isinstance(result, list) else [result]):
        r.config.update(config)
        r.save(out / f"{case}.{i}" / f"rank{rank}")


def cases(out: Path, rank: int) -> None:
    models = family()
    for case in CASES:
        start = time.perf_counter()
        result = run(family(case) if case == "widths" else models, case)
        save(result, out, case, rank, seconds=time.perf_counter() - start)
    ckpt = out / "checkpoint"
    run(models, "float32", checkpoint_dir=ckpt, max_tokens=GROW_FROM)
    save(run(models, "float32", checkpoint_dir=ckpt), out, "grown", rank)
    # tile-parallel, checkpointed: the rerun resumes the complete checkpoint and merges again
    run(models, "tiles", checkpoint_dir=out / "tiles_checkpoint")
    save(run(models, "tiles", checkpoint_dir=out / "tiles_checkpoint"), out, "tiles_again", rank)
    # rank 1 alone has too little memory for the one-pass plan: every rank refuses (none waits)
    capacity.available_memory = lambda device: 10**12 if rank == 0 else 1000
    try:
        run(models, "float32")
        refused = ""
    except InvalidArgumentError as err:
        refused = str(err)
    (out / f"refused.{rank}.txt").write_text(refused or "ran")


def kill(out: Path, rank: int) -> None:
    """Rank 1 keeps a copy of its checkpoint after its second batch of pass 0, and exits (as
    if killed) after its second batch of pass 1, once rank 0 got there too."""
    ckpt = out / "killed"

    def callback(p) -> None:
        if p.sequences != 2 * BATCH or not p.checkpointed:
            return
        if p.pass_index == 0 and rank == 1:
            shutil.copytree(ckpt / "rank1" / "state", out / PASS0_COPY)
        if p.pass_index == 1:
            torch.distributed.barrier()  # rank 0 has checkpointed in pass 1 as well
            if rank == 1:
                os._exit(1)

    run(family(), KILLED, checkpoint_dir=ckpt, checkpoint_every=1, callback=callback)


def resume(out: Path, rank: int) -> None:
    """The killed run again, from its checkpoints as the kill left them ("killed"), and with
    rank 1's checkpoint a pass behind rank 0's ("behind"); then that again, from the complete
    checkpoints the resumed run left ("behind_again")."""
    models = family()
    for name, folder in (("killed", "killed"), ("behind", "behind"), ("behind_again", "behind")):
        result = run(models, KILLED, checkpoint_dir=out / folder, checkpoint_every=1)
        save(result, out, name, rank)


def main(out: Path, mode: str) -> None:
    shard = init_from_env()
    torch.manual_seed(0)
    {"cases": cases, "kill": kill, "resume": resume}[mode](out, shard.rank)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cases")

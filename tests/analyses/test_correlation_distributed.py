"""correlate under torch.distributed (gloo, 2 processes by torchrun) = the single-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.analyses import distributed_worker as worker
from tl_universality.analyses.correlation import CorrelationResult
from tl_universality.analyses.correlation.distributed import (
    Shard,
    ShardedSource,
    rank_folder,
)
from tl_universality.core.errors import CheckpointMismatchError
from tl_universality.data.tokens import TensorTokenSource

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("max_corr", "min_corr", "top_corr", "baseline_draws")
# The merge is exact up to float64 rounding, with float32 products as well: each batch is
# centred about its own mean (not a shift that depends on which batches a rank read) before it
# is rounded to float32, so every rank rounds a batch exactly as one process does.
TOL = {"float32": 1e-9, "float64": 1e-12, "tiled": 1e-12, "grown": 1e-9}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Every case of the worker, run once by ``torchrun --nproc_per_node 2`` (gloo)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = ROOT / "tests" / "analyses" / "distributed_worker.py"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def single(case: str) -> list[CorrelationResult]:
    models = worker.family()
    if case == "grown":
        return [worker.run(models, "float32")]
    result = worker.run(models, case)
    return result if isinstance(result, list) else [result]


def assert_close(got: CorrelationResult, want: CorrelationResult, tol: float) -> None:
    assert got.n_tokens == want.n_tokens
    for name in FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        assert torch.equal(g.isnan(), w.isnan()), name
        diff = (g - w).nan_to_num(0).abs().max().item()
        assert diff <= tol, f"{name}: max |diff| {diff:.2e} > {tol:g}"
    assert torch.equal(got.dead, want.dead)
    # the best match is the same wherever it is not a (numerical) tie
    clear = (want.top_corr[..., 0] - want.top_corr[..., 1]) > 1e-6
    assert torch.equal(got.argmax[clear], want.argmax[clear])


@pytest.mark.parametrize("case", [*worker.CASES, "grown"])
def test_two_gloo_ranks_equal_one_process(ranks: Path, case: str) -> None:
    want = single(case)
    for i, w in enumerate(want):
        r0 = CorrelationResult.load(ranks / f"{case}.{i}" / "rank0")
        r1 = CorrelationResult.load(ranks / f"{case}.{i}" / "rank1")
        assert r0.config["world_size"] == 2
        assert_close(r0, w, TOL[case])
        assert_close(r1, r0, 0.0)  # every rank returns the same result


def test_checkpoints_per_rank_and_other_world_size_refused(ranks: Path) -> None:
    ckpt = ranks / "checkpoint"
    assert (ckpt / "distributed.json").exists()
    assert (ckpt / "rank0" / "state").exists() and (ckpt / "rank1" / "state").exists()
    with pytest.raises(CheckpointMismatchError, match="written by 2 process"):
        worker.run(worker.family(), "float32", checkpoint_dir=ckpt)  # one process


def test_other_world_size_refused_before_reading(tmp_path: Path) -> None:
    rank_folder(tmp_path, Shard(0, 2))  # rank 0 writes the manifest
    with pytest.raises(CheckpointMismatchError, match="written by 2 process"):
        rank_folder(tmp_path, Shard(1, 3))
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "state").mkdir()
    with pytest.raises(CheckpointMismatchError, match="written by 1 process"):
        rank_folder(tmp_path / "single", Shard(0, 2))


def test_shards_are_disjoint_and_cover_the_stream() -> None:
    src = TensorTokenSource(
        torch.stack([torch.zeros(11, dtype=torch.long), torch.arange(11)], 1), 0
    )
    parts = [ShardedSource(src, 3, Shard(r, 3)) for r in range(3)]
    seen = sorted(int(s[1]) for p in parts for s in p.sequences())
    assert seen == list(range(11))
    assert [p.n_sequences for p in parts] == [3 + 2, 3, 3]  # batches 0,3 | 1 | 2
    with pytest.raises(ValueError, match="sharded by batches of 3"):
        next(parts[0].batches(2))

"""correlate under torch.distributed (gloo, 2 processes by torchrun) = the single-process run:
data-parallel and tile-parallel, checkpointed, grown, and resumed after a rank was killed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.analyses import distributed_worker as worker
from tl_universality.analyses.correlation import CorrelationResult, plan_correlation
from tl_universality.analyses.correlation import rows as rows_module
from tl_universality.analyses.correlation.distributed import (
    Shard,
    ShardedSource,
    rank_folder,
)
from tl_universality.analyses.correlation.rows import deal_rows, owned_range, row_chunks
from tl_universality.analyses.correlation.run import load_checkpoint
from tl_universality.core.errors import CheckpointMismatchError
from tl_universality.data.tokens import TensorTokenSource

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("max_corr", "min_corr", "top_corr", "baseline_draws")
# The merge is exact up to float64 rounding, with float32 products as well: each batch is
# centred about its own mean (not a shift that depends on which batches a rank read) before it
# is rounded to float32, so every rank rounds a batch exactly as one process does.
TOL = {"float32": 1e-9, "grown": 1e-9, "tiles_float32": 1e-9}  # float64 products: 1e-12


def torchrun(out: Path, mode: str) -> subprocess.CompletedProcess:
    """The worker in ``mode``, run by ``torchrun --nproc_per_node 2`` (gloo)."""
    exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = ROOT / "tests" / "analyses" / "distributed_worker.py"
    cmd = [exe, "--standalone", "--nproc_per_node", "2", str(script), str(out), mode]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=170)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Every case of the worker, run once on 2 ranks."""
    out = tmp_path_factory.mktemp("dist")
    done = torchrun(out, "cases")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A checkpointed 2-rank run whose rank 1 died in pass 1, then the same command again: on
    the checkpoints as left ("killed"), and with rank 1's a pass behind ("behind")."""
    out = tmp_path_factory.mktemp("killed")
    done = torchrun(out, "kill")
    assert done.returncode != 0, "rank 1 should have died"
    meta = [load_checkpoint(out / "killed" / f"rank{r}")[1] for r in (0, 1)]  # type: ignore[index]
    assert [m["next_pass"] for m in meta] == [1, 1] and meta[1]["sequences"] == 2 * worker.BATCH
    assert meta[0]["sequences"] >= 2 * worker.BATCH
    shutil.copytree(out / "killed", out / "behind")
    shutil.rmtree(out / "behind" / "rank1" / "state")
    shutil.copytree(out / worker.PASS0_COPY, out / "behind" / "rank1" / "state")
    assert load_checkpoint(out / "behind" / "rank1")[1]["next_pass"] == 0  # type: ignore[index]
    done = torchrun(out, "resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def single(case: str) -> list[CorrelationResult]:
    models = worker.family(case)
    case = {"grown": "float32", "tiles_again": "tiles"}.get(case, case)
    result = worker.run(models, case)
    return result if isinstance(result, list) else [result]


def assert_close(got: CorrelationResult, want: CorrelationResult, tol: float) -> None:
    assert got.n_tokens == want.n_tokens
    for name in FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        assert torch.equal(g.isnan(), w.isnan()), name
        diff = (g - w).nan_to_num(0).abs().max().item()
        assert diff <= tol, f"{name}: max |diff| {diff:.2e} > {tol:g}"
    for name in ("max_corr_se", "min_corr_se"):  # with standard_errors
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if w is not None:
            assert torch.equal(g.isnan(), w.isnan()) and bool((~w.isnan()).any()), name
            assert (g - w).nan_to_num(0).abs().max().item() <= tol, name
    assert torch.equal(got.dead, want.dead)
    assert all(torch.equal(g, w) for g, w in zip(got.other_dead, want.other_dead, strict=True))
    # the best match is the same wherever it is not a (numerical) tie
    clear = (want.top_corr[..., 0] - want.top_corr[..., 1]) > 1e-6
    assert torch.equal(got.argmax[clear], want.argmax[clear])
    assert (got.matrices is None) == (want.matrices is None)
    for g, w in zip(got.matrices or (), want.matrices or (), strict=True):
        assert torch.equal(g.isnan(), w.isnan())
        assert (g - w).nan_to_num(0).abs().max().item() <= tol


def assert_same_on_ranks(folder: Path, want: CorrelationResult, tol: float) -> None:
    r0, r1 = (CorrelationResult.load(folder / f"rank{r}") for r in (0, 1))
    assert r0.config["world_size"] == 2
    assert_close(r0, want, tol)
    for name in (*FIELDS, "argmax", "argmin", "top_index"):  # every rank returns the same
        assert torch.equal(getattr(r1, name).nan_to_num(9), getattr(r0, name).nan_to_num(9))
    for g, w in zip(r1.matrices or (), r0.matrices or (), strict=True):
        assert torch.equal(g.nan_to_num(9), w.nan_to_num(9))


@pytest.mark.parametrize("case", [*worker.CASES, "grown", "tiles_again"])
def test_two_gloo_ranks_equal_one_process(ranks: Path, case: str) -> None:
    want = single(case)
    for i, w in enumerate(want):
        assert_same_on_ranks(ranks / f"{case}.{i}", w, TOL.get(case, 1e-12))


def test_tile_parallel_ranks_hold_different_tiles(ranks: Path) -> None:
    for case in ("tiles", "tiles_pairs", "tiles_matrix"):
        config = CorrelationResult.load(ranks / f"{case}.0" / "rank0").config
        assert config["parallel"] == "tiles"
    # the baseline of a tile is reduced where its grams are: the plan puts them on its rank
    models = worker.family()
    plan = plan_correlation(
        models[0], models[1:], parallel="tiles", world_size=2, memory_budget="600KB",
        batch_size=worker.BATCH, seq_len=worker.SEQ, n_draws=2,
    )  # fmt: skip
    assert set(plan.owners) == {0, 1} and "pass 1, rank 1" in str(plan)
    for p in range(plan.n_passes):
        for rank in (0, 1):
            tiles = [plan.tiles[t] for t in plan.rank_tiles(p, rank)]
            held = {mh for t in tiles for mh in t.b_grams}
            assert {(m, h) for t in tiles for m, h0, h1 in t.b_parts for h in range(h0, h1)} == held


def test_too_little_memory_on_one_rank_is_refused_on_every_rank(ranks: Path) -> None:
    texts = [(ranks / f"refused.{r}.txt").read_text() for r in (0, 1)]
    assert all("memory_budget=None" in t and "per process" in t for t in texts), texts


def test_killed_rank_resumes_to_the_uninterrupted_result(killed: Path) -> None:
    want = single(worker.KILLED)[0]
    for name in ("killed", "behind", "behind_again"):
        assert_same_on_ranks(killed / f"{name}.0", want, 1e-12)
    # the rank that was behind recorded its whole first pass, as an uninterrupted rank does
    metas = [load_checkpoint(killed / "behind" / f"rank{r}")[1] for r in (0, 1)]  # type: ignore[index]
    shards = [14, 12]  # rank 0 reads batches 0, 2, 4, 6 (the last one short), rank 1 1, 3, 5
    assert [m["stream_sequences"] for m in metas] == shards and all(m["complete"] for m in metas)


def test_another_ranks_gpu_is_refused_naming_the_fix(monkeypatch) -> None:
    """Under torchrun every rank must use its own GPU: device='cuda:0' on rank 1 (whose GPU is
    cuda:1) is refused; 'cuda' (the current GPU) and cuda:1 pass. CUDA is simulated."""
    from tl_universality.analyses.correlation import distributed
    from tl_universality.core.errors import InvalidArgumentError

    monkeypatch.setattr(distributed, "current_shard", lambda: Shard(1, 2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    with pytest.raises(InvalidArgumentError, match=r"device='cuda:0' on rank 1 .*cuda:1.*Fix"):
        distributed.check_rank_device(torch.device("cuda:0"))
    distributed.check_rank_device(torch.device("cuda"))
    distributed.check_rank_device(torch.device("cuda:1"))
    distributed.check_rank_device(torch.device("cpu"))
    monkeypatch.setattr(distributed, "current_shard", lambda: Shard(0, 1))  # one process: any GPU
    distributed.check_rank_device(torch.device("cuda:0"))


def test_checkpoints_per_rank_and_other_world_size_refused(ranks: Path) -> None:
    ckpt = ranks / "checkpoint"
    assert (ckpt / "distributed.json").exists()
    assert (ckpt / "rank0" / "state").exists() and (ckpt / "rank1" / "state").exists()
    with pytest.raises(CheckpointMismatchError, match="written by 2 process"):
        worker.run(worker.family(), "float32", checkpoint_dir=ckpt)  # one process


def test_other_parallel_mode_refused_naming_the_argument(tmp_path: Path) -> None:
    rank_folder(tmp_path, Shard(0, 2), "tiles")
    with pytest.raises(CheckpointMismatchError, match=r"parallel='tiles'.*--parallel tiles"):
        rank_folder(tmp_path, Shard(1, 2), "tokens")
    assert rank_folder(tmp_path, Shard(1, 2), "tiles") == tmp_path / "rank1"


def test_other_world_size_refused_before_reading(tmp_path: Path) -> None:
    rank_folder(tmp_path, Shard(0, 2))  # rank 0 writes the manifest
    with pytest.raises(CheckpointMismatchError, match="written by 2 process"):
        rank_folder(tmp_path, Shard(1, 3))
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "state").mkdir()
    with pytest.raises(CheckpointMismatchError, match="written by 1 process"):
        rank_folder(tmp_path / "single", Shard(0, 2))


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_reduction_rows_are_split_disjointly_and_cover_every_row(world: int, monkeypatch) -> None:
    # a data-parallel rank reduces only its share of the rows a pass reduces; over the ranks
    # every row of every block (a tile's segment of a model's units) is reduced once, in chunks
    # of at most 12 entries, and the shares are near-equal whatever the pass's rows
    monkeypatch.setattr(rows_module, "FINAL_CHUNK", 12)
    for spans in ([(0, 23)], [(5, 12), (9, 14)], [(0, 3)], [(2, 4), (19, 23), (40, 41)]):
        ranges = deal_rows(spans, world)
        rows = sorted({r for s, e in spans for r in range(s, e)})
        counts = [sum(lo <= r < hi for r in rows) for lo, hi in ranges]
        assert sum(counts) == len(rows) and max(counts) - min(counts) <= 1
        for start, stop in spans:  # a block with these rows, at some place in its tile
            seen = []
            for lo, hi in ranges:
                for r0, r1, model_rows in row_chunks(7, 7 + stop - start, start, 6, (lo, hi)):
                    assert 0 < r1 - r0 <= 2  # 6 columns: 2 rows of 6 entries a chunk
                    assert model_rows == slice(start + r0 - 7, start + r1 - 7)
                    assert lo <= model_rows.start and model_rows.stop <= hi
                    seen += range(model_rows.start, model_rows.stop)
            assert sorted(seen) == list(range(start, stop))
    assert (
        sum(hi - lo for lo, hi in (owned_range(3, r, 7) for r in range(7))) == 3
    )  # 3 rows, 7 ranks


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

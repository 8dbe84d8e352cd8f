"""benchmarks/gpu_check.py runs on the CPU with --cpu-smoke and writes its JSON and markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    cmd = [sys.executable, script, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_cpu_smoke_writes_json_and_markdown(tmp_path: Path) -> None:
    done = run(str(tmp_path), "--cpu-smoke")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["accuracy"]["float32"] < 1e-6
    assert report["accuracy"]["rotation_orthogonality"] < 1e-13
    assert report["accuracy"]["rotation_seconds"] > 0
    assert "| check | value |" in (tmp_path / "gpu_check.md").read_text()
    pipes = report["pipelines"]
    assert pipes["exhaustive_s"] > 0 and pipes["screened_s"] > 0 and pipes["forward_s"] > 0
    assert 0.0 < pipes["certified_share"] <= 1.0  # the related family certifies units
    assert pipes["certified_max_diff"] <= 1e-6 and pipes["reference_max_diff"] < 1e-5
    assert pipes["reference_s"] > 0 and pipes["screened_vs_reference"] > 0
    assert report["accuracy"]["within_bounds"] is True


def test_without_cuda_one_clear_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        return
    done = run(str(tmp_path))
    assert done.returncode == 1 and done.stdout.strip().count("\n") == 0
    assert "no CUDA device" in done.stdout


def test_a_failing_section_keeps_the_others(tmp_path: Path, monkeypatch) -> None:
    """Device time is scarce: a section that raises records its error, the rest still run."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_check

    def broken(device, shape):
        raise RuntimeError("CUDA out of memory (planted)")

    monkeypatch.setattr(gpu_check, "throughput", broken)
    assert gpu_check.main([str(tmp_path), "--cpu-smoke"]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["throughput"] == {"error": "RuntimeError: CUDA out of memory (planted)"}
    assert report["accuracy"]["float32"] < 1e-6 and report["pipelines"]["forward_s"] > 0
    assert set(report["section_seconds"]) == {"accuracy", "throughput", "pipelines", "nccl_merge"}
    assert (
        "| throughput: error | RuntimeError: CUDA out of memory (planted) |"
        in (tmp_path / "gpu_check.md").read_text()
    )


def test_a_product_error_beyond_its_bound_fails_the_check(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_check

    monkeypatch.setitem(gpu_check.BOUNDS, "float32", 0.0)  # no float32 product is that exact
    monkeypatch.setattr(gpu_check, "pipelines", lambda device, smoke: {"skipped": "test"})
    assert gpu_check.main([str(tmp_path), "--cpu-smoke"]) == 1
    acc = json.loads((tmp_path / "gpu_check.json").read_text())["accuracy"]
    assert acc["within_bounds"] is False and acc["failed"].startswith("float32 ")

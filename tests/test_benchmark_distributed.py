"""benchmarks/distributed.py runs one process and two gloo ranks on tiny models and prints its
table; the ranks' results equal the one-process run within the script's bound (it exits 1 when
they do not)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_gloo_ranks_against_one_process_prints_the_table() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--size", "tiny", "--k", "3",
        "--n-seq", "12", "--seq-len", "16", "--batch-size", "4", "--screen-tokens", "64",
        "--product-dtype", "float64", "--bound", "1e-12", "--threads", "1",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 4, done.stdout  # the header and the three settings
    assert "2 ranks x 1 threads" in rows[0]
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[6]) <= 1e-12 and float(cells[7]) <= 1e-12, row

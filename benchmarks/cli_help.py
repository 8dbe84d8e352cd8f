"""Time ``tl-universality --help`` now and before the lazy command line, in one run.

"Before" is the package as of ``--before`` (default: the last commit with the eager CLI),
extracted with ``git archive`` into a temporary folder (no change to the checkout); "now" is the
working tree. Each is run ``--repeat`` times in a fresh interpreter; the median wall time is
printed. Run from the repository root:

    python benchmarks/cli_help.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "e81148d"  # the last commit whose CLI imported TransformerLens before parsing


def seconds(pythonpath: Path, module: str, repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", module, "--help"], env=env, check=True,
                       cwd=pythonpath, stdout=subprocess.DEVNULL)  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the old CLI")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "before.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), args.before,
                        "tl_universality"], check=True)  # fmt: skip
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        before = seconds(Path(tmp), "tl_universality.cli", args.repeat)
    now = seconds(ROOT, "tl_universality", args.repeat)
    print(f"tl-universality --help, median of {args.repeat} (load {os.getloadavg()[0]:.1f}):")
    print(f"  before ({args.before}): {before:.2f} s")
    print(f"  now (working tree): {now:.2f} s  ({before / now:.0f}x faster)")


if __name__ == "__main__":
    main()

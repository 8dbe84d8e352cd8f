"""The GPU check in one command (docs/scaling.md, "GPU"): accuracy against the CPU float64
oracle, the cross-moment update's share of a bare GEMM, and the 2-process NCCL merge.

Usage::

    python benchmarks/gpu_check.py OUT_DIR            # on a CUDA machine, <= 8 minutes
    python benchmarks/gpu_check.py OUT_DIR --cpu-smoke  # tiny shapes on CPU (tests the script)

Writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md``. Installs nothing, needs no network.
Without CUDA (and without ``--cpu-smoke``) it exits with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tl_universality.stats.cross_moments import CrossMoments  # noqa: E402

PRODUCTS = ("float32", "tf32", "bfloat16")
# GPT-2 small: 12 layers x 3072 neurons; one tile of 4 layers against 4 layers, 8 x 128 tokens.
FULL = dict(n_a=4 * 3072, n_b=4 * 3072, tokens=1024, batches=6)
SMOKE = dict(n_a=256, n_b=192, tokens=128, batches=3)


def accuracy(device: torch.device, shape: dict) -> dict[str, float]:
    """max |corr − oracle| per product dtype; the oracle is float64 on the CPU."""
    gen = torch.Generator().manual_seed(0)
    n_a, n_b = min(shape["n_a"], 2048), min(shape["n_b"], 2048)
    xs = [torch.randn(shape["tokens"], n_a, generator=gen).relu() for _ in range(shape["batches"])]
    ys = [x[:, :n_b] * 0.5 + torch.randn(x.shape[0], n_b, generator=gen) for x in xs]
    oracle = CrossMoments(n_a, n_b, product_dtype="float64")
    for x, y in zip(xs, ys, strict=True):
        oracle.update(x.double(), y.double())
    want = oracle.corr()
    out = {}
    for product in PRODUCTS if device.type == "cuda" else ("float32",):
        stats = CrossMoments(n_a, n_b, product_dtype=product, device=device)
        for x, y in zip(xs, ys, strict=True):
            stats.update(x.to(device), y.to(device))
        out[product] = float((stats.corr().cpu() - want).nan_to_num(0).abs().max())
    return out


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def throughput(device: torch.device, shape: dict) -> dict[str, float]:
    """Seconds per update and its share of a bare ``[a, tok] x [tok, b]`` GEMM of that dtype."""
    n_a, n_b, tok = shape["n_a"], shape["n_b"], shape["tokens"]
    x = torch.randn(tok, n_a, device=device).relu()
    y = torch.randn(tok, n_b, device=device).relu()
    out: dict[str, float] = {}
    for product in ("float32", "tf32") if device.type == "cuda" else ("float32",):
        torch.backends.cuda.matmul.allow_tf32 = product == "tf32"
        gemm = _time(lambda: x.T @ y, device, shape["batches"])
        torch.backends.cuda.matmul.allow_tf32 = False
        stats = CrossMoments(n_a, n_b, product_dtype=product, device=device)
        update = _time(lambda s=stats: s.update(x, y), device, shape["batches"])
        flops = 2.0 * n_a * n_b * tok
        out[f"{product}_gemm_tflops"] = flops / gemm / 1e12
        out[f"{product}_update_s"] = update
        out[f"{product}_update_share_of_gemm"] = gemm / update
    return out


def nccl_merge(folder: Path) -> dict[str, object]:
    """The 2-process distributed test, with NCCL, when there are 2 GPUs."""
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s); the NCCL merge needs 2"}
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    script = ROOT / "tests" / "analyses" / "distributed_worker.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(folder / "nccl")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return {"returncode": done.returncode, "seconds": time.perf_counter() - start,
            "tail": (done.stdout + done.stderr)[-2000:]}  # fmt: skip


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device']})", "", "| check | value |", "|---|---|"]
    for group in ("accuracy", "throughput"):
        for key, value in report[group].items():
            lines.append(f"| {group}: {key} | {value:.3g} |")
    lines.append(f"| nccl merge | {json.dumps(report['nccl_merge'])[:200]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; nothing checked (use --cpu-smoke to test the script)."
        )
        return 1
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    shape = SMOKE if args.cpu_smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
        "shape": shape,
        "accuracy": accuracy(device, shape),
        "throughput": throughput(device, shape),
        "nccl_merge": {"skipped": "cpu smoke"} if args.cpu_smoke else nccl_merge(args.out),
    }
    report["seconds"] = time.perf_counter() - start
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

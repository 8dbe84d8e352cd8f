"""One process against ``torchrun`` ranks on the same models and tokens (prints a table).

Every run happens in a child process: once alone with all the threads, once alone with a rank's
share of them, and once under ``torchrun --nproc_per_node N`` with the threads split over the
ranks, so that it uses the same cores as the first (on CUDA every process has one GPU, each rank
its own, and the ranks talk NCCL). Each child builds the models of ``benchmarks/correlation.py``
(``SIZES``) and its tokens, warms up, then times ``correlate`` in three settings: data-parallel
exhaustive (``parallel="tokens"``), tile-parallel exhaustive (``parallel="tiles"``) and
data-parallel screened (``candidates=8``). The table gives, per setting, the wall time of the
slowest rank; its ratio to one process with all the threads, and to one process with a rank's
threads (the scaling that ranks on devices of their own would see); the largest difference of
``max_corr`` and of the baseline to the one-process run (the merges are exact: float64 rounding);
and each process's peak resident memory. A difference above ``--bound`` makes the script exit
with status 1.

Usage::

    python benchmarks/distributed.py                      # 1 x 2 threads vs 2 ranks x 1 (gloo)
    python benchmarks/distributed.py --nproc 4 --device cuda --size gpt2-small --n-seq 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.correlation import BOS, SIZES, build, make_tokens, sync  # noqa: E402
from tl_universality.analyses.correlation import CorrelationResult, correlate  # noqa: E402
from tl_universality.analyses.correlation.distributed import init_from_env  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

SETTINGS = {
    "data-parallel exhaustive": dict(parallel="tokens"),
    "tile-parallel exhaustive": dict(parallel="tiles"),
    "data-parallel screened (K=8)": dict(parallel="tokens", candidates=8),
}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One process of a run: every setting, timed between barriers; rank 0 saves the results."""
    shard = init_from_env()
    torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    models = [build(args.size, s, args.seq_len, device) for s in range(args.k)]
    toks = make_tokens(args.n_seq, args.seq_len, SIZES[args.size]["d_vocab"])
    kw = dict(
        bos_token_id=BOS, batch_size=args.batch_size, progress=False, n_draws=1, device=device,
        product_dtype=args.product_dtype,
    )  # fmt: skip

    def barrier() -> None:
        sync(device)
        if shard.distributed:
            torch.distributed.barrier()

    warm = toks[: 2 * args.batch_size * shard.world_size]
    correlate(models[0], models[1:], warm, **kw)  # warm-up
    out = Path(args.child)
    seconds = {}
    for i, (name, extra) in enumerate(SETTINGS.items()):
        if name.endswith("screened (K=8)") and not args.screened:
            continue
        screen = dict(screen_tokens=args.screen_tokens) if "candidates" in extra else {}
        barrier()
        start = time.perf_counter()
        result = correlate(models[0], models[1:], toks, **kw, **extra, **screen)
        barrier()
        seconds[name] = time.perf_counter() - start
        if shard.rank == 0:
            result.save(out / f"setting{i}")
    report = {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "threads": args.threads}
    (out / f"rank{shard.rank}.json").write_text(json.dumps(report))
    if shard.distributed:
        torch.distributed.destroy_process_group()


def launch(args: argparse.Namespace, folder: Path, nproc: int, threads: int) -> list[dict]:
    """Run the children (``nproc`` ranks of ``threads`` threads each); their reports by rank."""
    folder.mkdir(parents=True)
    here = str(Path(__file__).resolve())
    passed = [
        "--size", args.size, "--k", str(args.k), "--n-seq", str(args.n_seq),
        "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
        "--device", args.device, "--product-dtype", args.product_dtype,
        "--screen-tokens", str(args.screen_tokens), "--threads", str(threads),
        "--child", str(folder),
    ]  # fmt: skip
    if not args.screened:
        passed.append("--no-screened")
    if nproc == 1:
        cmd = [sys.executable, here, *passed]
    else:
        exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        cmd = [exe, "--standalone", "--nproc_per_node", str(nproc), here, *passed]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(nproc)]


def largest_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if bool((a.isnan() != b.isnan()).any()):
        return float("inf")  # a unit dead in one run and live in the other
    return float((a - b).nan_to_num(0.0).abs().max()) if a.numel() else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--k", type=int, default=5, help="models (reference + k-1 others)")
    p.add_argument("--n-seq", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--product-dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--screen-tokens", type=int, default=1536)
    p.add_argument("--nproc", type=int, default=2, help="ranks of the torchrun run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads in all (default: all)")
    p.add_argument("--bound", type=float, default=1e-9, help="largest allowed |diff|")
    p.add_argument("--no-screened", dest="screened", action="store_false")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args)
        return 0
    threads = args.threads or os.cpu_count() or 1
    # on CUDA the ranks have devices of their own: no threads to share
    per_rank = threads if args.device == "cuda" else max(1, threads // args.nproc)
    if args.device == "cpu" and threads < args.nproc:
        print(
            f"note: --threads {threads} is below --nproc {args.nproc}: every rank takes one"
            f" thread, so the ranks use {args.nproc} threads in all, more than asked",
            file=sys.stderr,
        )
    work = Path(tempfile.mkdtemp(prefix="tl_universality_distributed_"))
    try:
        start = time.perf_counter()
        one = launch(args, work / "one", 1, threads)
        t_one = time.perf_counter() - start
        # one process with a rank's threads: what the ranks would each do alone (the scaling)
        alone = launch(args, work / "alone", 1, per_rank) if per_rank < threads else one
        start = time.perf_counter()
        many = launch(args, work / "many", args.nproc, per_rank)
        t_many = time.perf_counter() - start
        n_tok = args.n_seq * args.seq_len
        print(
            f"{args.k} models of {args.size} ({SIZES[args.size]['n_layers']} x"
            f" {SIZES[args.size]['d_mlp']} units), {n_tok:,} tokens, batch {args.batch_size},"
            f" {args.product_dtype} products, device {args.device}"
        )
        t, r, n = threads, per_rank, args.nproc
        print(
            f"| setting | 1 process x {t} threads | 1 process x {r} threads |"
            f" {n} ranks x {r} threads | vs 1 x {t} | vs 1 x {r} | max_corr diff |"
            " baseline diff |"
        )
        print("|---|---|---|---|---|---|---|---|")
        worst = 0.0
        for i, name in enumerate(SETTINGS):
            if name not in one[0]["seconds"]:
                continue
            s1 = one[0]["seconds"][name]
            s_alone = alone[0]["seconds"][name]
            sn = max(rank["seconds"][name] for rank in many)
            a = CorrelationResult.load(work / "one" / f"setting{i}")
            b = CorrelationResult.load(work / "many" / f"setting{i}")
            d_corr = largest_diff(a.max_corr, b.max_corr)
            d_base = largest_diff(a.baseline_max, b.baseline_max)
            worst = max(worst, d_corr, d_base)
            print(
                f"| {name} | {s1:.2f} s | {s_alone:.2f} s | {sn:.2f} s | {s1 / sn:.2f}x |"
                f" {s_alone / sn:.2f}x | {d_corr:.1e} | {d_base:.1e} |"
            )
        rss_one = one[0]["peak_rss_mb"]
        rss_many = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in many)
        print(f"peak resident memory (MB): 1 process {rss_one:.0f}; ranks {rss_many}")
        print(
            f"whole child runs (start-up, model building, warm-up included): {t_one:.1f} s vs"
            f" {t_many:.1f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if worst > args.bound:
        print(f"FAILED: a difference of {worst:.1e} exceeds --bound {args.bound:g}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

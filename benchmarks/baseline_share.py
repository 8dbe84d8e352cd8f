"""The rotation baseline's share of a GPT-2-small-shaped correlation run (prints a table).

Two random models of the same shape (``benchmarks/correlation.py``'s ``SIZES``: 12 layers x 3072
MLP neurons, d_model 768), reference + one other, a short token stream (default 16 sequences x
128 tokens: 2,032 tokens once BOS is left out). For each memory budget, :func:`correlate` runs with
``baseline=None`` and with ``baseline="rotation"`` at each number of draws, each in a fresh
process (so that its peak RSS is its own). The table shows the wall time, the passes, the time the
run spent on the mixing baseline at the end of its passes and how it splits: making the mixing
matrices (a product of d Householder reflections each), the variances of the mixed units (a
d x d x d product each) and the row-chunk products ``comoment @ mix.T`` (the rest), the
baseline's share of the run, and peak RSS.

The baseline's work does not grow with the tokens (it runs once per pass on the statistics), so
its share falls as the token count grows; the cross-moment update grows with the tokens.

Usage::

    python benchmarks/baseline_share.py                          # 12 layers, 2GB, draws 1 and 5
    python benchmarks/baseline_share.py --n-layers 4 --budgets 2GB,none --draws 1,5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.correlation import (  # noqa: E402
    BOS,
    SIZES,
    build,
    make_tokens,
    peak_reset,
    print_table,
)

warnings.filterwarnings("ignore", category=DeprecationWarning)


class _Timer:
    """Wraps a function: calls and seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.calls, self.seconds = fn, 0, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - t0


def child(args) -> None:
    """One correlate run in this fresh process; prints its measurements as JSON."""
    import tl_universality.analyses.correlation.run as run_module
    from tl_universality.analyses.correlation import correlate, plan_correlation

    size = f"{args.size}-{args.n_layers}L"
    SIZES[size] = {**SIZES[args.size], "n_layers": args.n_layers}
    models = [build(size, seed, args.seq_len, args.device) for seed in range(2)]
    toks = make_tokens(args.n_seq, args.seq_len, SIZES[size]["d_vocab"])
    baseline = None if args.draws == 0 else "rotation"
    budget = None if args.budget == "none" else args.budget
    kw = dict(baseline=baseline, n_draws=max(args.draws, 1), memory_budget=budget)
    plan = plan_correlation(models[0], models[1], batch_size=args.batch_size, **kw)

    # What the baseline's time goes to, measured where the run calls it.
    qr = _Timer(run_module.mixing_matrix)
    var = _Timer(run_module.mixed_variance)
    mixing = _Timer(run_module.CorrelationRun._mixing_baselines)
    reduce = _Timer(run_module.CorrelationRun.finish_pass)
    run_module.mixing_matrix, run_module.mixed_variance = qr, var
    run_module.CorrelationRun._mixing_baselines = lambda self, *a: mixing(self, *a)
    run_module.CorrelationRun.finish_pass = lambda self: reduce(self)

    before, peak_of = peak_reset()  # peak RSS from here on
    t0 = time.perf_counter()
    result = correlate(
        models[0], models[1], toks, batch_size=args.batch_size, device=args.device,
        bos_token_id=BOS, progress=False, **kw,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    out = dict(
        wall=wall, passes=plan.n_passes, tiles=len(plan.tiles), plan_peak=plan.peak_bytes,
        tokens=result.n_tokens, rss_before=before, rss_peak=peak_of(),
        reduce_s=reduce.seconds, baseline_s=mixing.seconds, qr_s=qr.seconds, qr_n=qr.calls,
        var_s=var.seconds, var_n=var.calls,
        unique=args.n_layers * args.draws,  # (model, layer, draw) of the other model
        baseline_mean=float(result.baseline_max.nanmean()) if baseline else float("nan"),
    )  # fmt: skip
    print(json.dumps(out))


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="gpt2-small", choices=sorted(SIZES))
    parser.add_argument("--n-layers", type=int, default=None, help="layers (default: the size's)")
    parser.add_argument("--n-seq", type=int, default=16, help="sequences")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--budgets", default="2GB", help="comma list of budgets, or 'none'")
    parser.add_argument("--draws", default="1,5", help="comma list of rotation draws")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--mmap-threshold", type=int, default=None, help="glibc MALLOC_MMAP_THRESHOLD_ (bytes)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--budget", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n-draws", dest="draws_one", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.n_layers = args.n_layers or SIZES[args.size]["n_layers"]
    if args.child:
        args.draws = args.draws_one
        child(args)
        return

    cfg = SIZES[args.size]
    print(
        f"Baseline share: 2 random {args.size}-shaped models ({args.n_layers} layers x"
        f" {cfg['d_mlp']} neurons, d_model {cfg['d_model']}), {args.n_seq} x {args.seq_len}"
        f" tokens, batch {args.batch_size}, device {args.device}, CPU threads"
        f" {args.threads or torch.get_num_threads()}, torch {torch.__version__}",
        flush=True,
    )
    env = dict(os.environ)
    if args.mmap_threshold:  # glibc then returns freed blocks: RSS shows what is held, but every
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)  # fresh block costs page faults
    rows = []
    for budget in args.budgets.split(","):
        none_wall = None
        for draws in [0, *(int(d) for d in args.draws.split(","))]:
            cmd = [
                sys.executable, __file__, "--child", "--size", args.size, "--n-layers",
                str(args.n_layers), "--n-seq", str(args.n_seq), "--seq-len", str(args.seq_len),
                "--batch-size", str(args.batch_size), "--device", args.device, "--budget", budget,
                "--n-draws", str(draws),
            ] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{budget} / {draws} draws failed")
            m = json.loads(done.stdout.strip().splitlines()[-1])
            if draws == 0:
                none_wall = m["wall"]
            products = m["baseline_s"] - m["qr_s"] - m["var_s"]
            extra = "" if draws == 0 or none_wall is None else _s(m["wall"] - none_wall)
            qrs, variances = f"{m['qr_n']}/{m['unique']}", f"{m['var_n']}"
            grew = m["rss_peak"] - m["rss_before"]
            rows.append(
                [budget, "none" if draws == 0 else f"rotation x{draws}", str(m["passes"]),
                 _s(m["wall"]), _s(m["reduce_s"]), _s(m["baseline_s"]),
                 f"{qrs}, {_s(m['qr_s'])}", f"{variances}, {_s(m['var_s'])}", _s(products),
                 f"{m['baseline_s'] / m['wall']:.0%}", extra,
                 f"{m['rss_peak'] / 1e9:.2f} GB", f"{grew / 1e9:.2f} GB",
                 f"{m['plan_peak'] / 1e9:.2f} GB"]
            )  # fmt: skip
            print("  " + " | ".join(rows[-1]), flush=True)
    print_table(
        f"Rotation baseline's share ({rows and m['tokens']} tokens; each row a fresh process)",
        ["budget", "baseline", "passes", "wall", "reductions", "baseline", "matrices (made/unique)",
         "variances", "products", "baseline share", "wall - no baseline", "peak RSS",
         "RSS grew", "plan peak"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

"""Accuracy and cost of the cross-moment update, against float64 numpy and a bare GEMM.

On the same activations (dense GELU-like units, plus planted sparse units: some active on one
token, some on a few, ReLU units with many exact zeros, and huge-mean/tiny-spread units), in one
process:

1. the largest error of every correlation against ``numpy.corrcoef`` in float64, for the default
   float32 product and for float64 products, and for the statistics of an earlier revision of this
   package (``--baseline-rev``, read with ``git show``; default: the revision before per-batch
   centring) when one is given;
2. the wall time of one update per batch for each, and the bare float32 GEMM of the same shapes:
   ratios made in this run.

Usage::

    python benchmarks/cross_moment_accuracy.py              # 1024 x 1024 units, 16k tokens
    python benchmarks/cross_moment_accuracy.py --baseline-rev 5254239
    python benchmarks/cross_moment_accuracy.py --layer-width 256 --baseline-rev bbdb16f

``--layer-width W`` also tracks B's within-layer second moments (the grams the mixing baselines
read) for layers of ``W`` units, and reports their largest error over ``√(Σy_i'² Σy_j'²)``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def activations(n: int, units: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, units, generator=g)
    x = torch.nn.functional.gelu(z * 1.5 - 0.5)
    k = units // 16
    x[:, :k] = 0.0  # planted sparse units: one token, a few tokens
    for j in range(k):
        hits = torch.randint(0, n, (1 + j % 4,), generator=g)
        x[hits, j] = 1.0 + torch.rand(hits.shape[0], generator=g) * 3
    x[:, k : 2 * k] = torch.relu(z[:, k : 2 * k] - 1.0)  # many exact zeros
    x[:, 2 * k : 3 * k] = 1e3 + 1e-2 * z[:, 2 * k : 3 * k]  # huge mean, tiny spread
    return x


def old_module(rev: str) -> types.ModuleType | None:
    """The CrossMoments of revision ``rev`` (its two modules), or None if git cannot give it."""
    mod = types.ModuleType("old_cross_moments")
    try:
        for name in ("products", "moments"):
            code = subprocess.run(
                ["git", "show", f"{rev}:tl_universality/stats/cross_moments/{name}.py"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            code = code.replace(
                "from tl_universality.stats.cross_moments.products import",
                "from _old_products import",
            )
            sub = types.ModuleType(f"_old_{name}")
            sys.modules[f"_old_{name}"] = sub
            exec(compile(code, f"{rev}:{name}.py", "exec"), sub.__dict__)  # noqa: S102 - our own code
        mod.CrossMoments = sys.modules["_old_moments"].CrossMoments
        return mod
    except (subprocess.CalledProcessError, KeyError, SyntaxError):
        return None


def run(cls, x, y, batch, **kw):
    stats = cls(x.shape[1], y.shape[1], **kw)
    times = []
    for s in range(0, x.shape[0], batch):
        t = time.perf_counter()
        stats.update(x[s : s + batch], y[s : s + batch])
        times.append(time.perf_counter() - t)
    return stats, float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--baseline-rev", default="95af18f")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layer-width", type=int, default=0, help="track B's grams (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tl_universality.stats.cross_moments import CrossMoments

    x = activations(args.tokens, args.units, 0)
    y = torch.cat([x[:, : args.units // 2], activations(args.tokens, args.units // 2, 1)], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        full = np.corrcoef(np.concatenate([x.double().numpy(), y.double().numpy()], 1).T)
    oracle = full[: args.units, args.units :]

    blocks = {}
    width = args.layer_width
    if width:
        blocks = {"b_blocks": [(s, s + width) for s in range(0, y.shape[1] - width + 1, width)]}
    yc = y.double().numpy()
    yc = yc - yc.mean(0)

    def gram_error(stats) -> float:
        worst = 0.0
        for i, (lo, hi) in enumerate(blocks.get("b_blocks", [])):
            want = yc[:, lo:hi].T @ yc[:, lo:hi]
            d = np.sqrt(np.diag(want))
            scale = np.outer(d, d)
            live = scale > 0
            err = np.abs(stats.within_b(i).numpy() - want)[live] / scale[live]
            worst = max(worst, float(err.max()))
        return worst

    rows = []
    candidates = [
        ("this revision, float32 product", CrossMoments, {}),
        ("this revision, float64 product", CrossMoments, {"product_dtype": torch.float64}),
    ]
    old = old_module(args.baseline_rev)
    if old is not None:
        candidates.append((f"revision {args.baseline_rev}, float32 product", old.CrossMoments, {}))
    for label, cls, kw in candidates:
        stats, t = run(cls, x, y, args.batch, **kw, **blocks)
        err = np.nanmax(np.abs(stats.corr().numpy() - oracle))
        rows.append((label, err, t, gram_error(stats) if blocks else None))
    xb, yb = x[: args.batch].contiguous(), y[: args.batch].contiguous()
    out = torch.empty(args.units, args.units)
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        torch.mm(xb.T, yb, out=out)
        ts.append(time.perf_counter() - t)
    gemm = float(np.median(ts))
    layers = f", B's grams for layers of {width}" if width else ""
    print(f"{args.units} x {args.units} units, {args.tokens} tokens, batches of {args.batch},"
          f" {args.threads} thread(s){layers}")  # fmt: skip
    grams = f" {'max gram error':>15s}" if width else ""
    print(
        f"{'statistics':40s} {'max |r - r64|':>14s} {'s / batch':>10s} {'x bare GEMM':>12s}{grams}"
    )
    for label, err, t, gram in rows:
        cell = f" {gram:15.2e}" if gram is not None else ""
        print(f"{label:40s} {err:14.2e} {t:10.4f} {t / gemm:12.2f}{cell}")
    print(f"{'bare float32 GEMM x^T y':40s} {'':>14s} {gemm:10.4f} {1.0:12.2f}")


if __name__ == "__main__":
    main()

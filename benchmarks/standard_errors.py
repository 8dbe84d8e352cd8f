"""What ``correlate(..., standard_errors=True)`` costs on top of an exhaustive run (prints a table).

On the same random models (``benchmarks/correlation.py``'s ``SIZES``) and tokens, in one process,
after a warm-up: the exhaustive run alone, the same run with ``standard_errors=True``, and the
forward passes alone (every model once over the stream, which is what the error pass repeats). The
table shows the wall times, the overhead as a ratio to the exhaustive run, the largest difference
of ``max_corr`` between the two runs (the error pass must leave the values alone: 0), the error
pass's own check (``config["standard_errors_check"]``) and the median standard error.

Usage::

    python benchmarks/standard_errors.py                        # 5 models of 4 x 512, CPU
    python benchmarks/standard_errors.py --device cuda --size gpt2-small --n-seq 64
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.correlation import BOS, SIZES, build, make_tokens, sync  # noqa: E402
from tl_universality.analyses.correlation import correlate  # noqa: E402
from tl_universality.units.activations import stream_activations  # noqa: E402
from tl_universality.units.specs import PerModel  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--k", type=int, default=5, help="models (reference + k-1 others)")
    p.add_argument("--n-seq", type=int, default=192)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    models = [build(args.size, s, args.seq_len, args.device) for s in range(args.k)]
    toks = make_tokens(args.n_seq, args.seq_len, SIZES[args.size]["d_vocab"])
    kw = dict(bos_token_id=BOS, batch_size=args.batch_size, progress=False, n_draws=1)

    def run(n_seq: int, **extra):
        return correlate(models[0], models[1:], toks[:n_seq], **kw, **extra)

    def forward() -> int:
        seen = 0
        for batch in stream_activations(
            models, toks, units=PerModel([None] * len(models)), batch_size=args.batch_size,
            bos_token_id=BOS, progress=False,
        ):  # fmt: skip
            seen += int(batch.keep.sum())
        return seen

    run(min(args.n_seq, 2 * args.batch_size), standard_errors=True)  # warm-up
    t_plain, plain = timed(lambda: run(args.n_seq), args.device)
    t_se, with_se = timed(lambda: run(args.n_seq, standard_errors=True), args.device)
    t_fwd, n_tok = timed(forward, args.device)
    diff = float((with_se.max_corr - plain.max_corr).nan_to_num(0).abs().max())
    se = with_se.max_corr_se[~with_se.max_corr.isnan()]
    print(
        f"{args.k} models of {args.size} ({SIZES[args.size]['n_layers']} x"
        f" {SIZES[args.size]['d_mlp']} units), {n_tok:,} tokens, device {args.device},"
        f" {torch.get_num_threads()} threads"
    )
    rows = [
        ("exhaustive", f"{t_plain:.2f} s", "1.00x"),
        ("exhaustive + standard_errors", f"{t_se:.2f} s", f"{t_se / t_plain:.2f}x"),
        ("forward passes alone", f"{t_fwd:.2f} s", f"{t_fwd / t_plain:.2f}x"),
    ]
    for name, t, ratio in rows:
        print(f"| {name:<28} | {t:>9} | {ratio:>6} |")
    print(
        f"max |diff| max_corr: {diff:.1e}; error pass check:"
        f" {with_se.config['standard_errors_check']:.1e}; median max_corr_se:"
        f" {float(se.median()):.2e}"
    )


if __name__ == "__main__":
    main()

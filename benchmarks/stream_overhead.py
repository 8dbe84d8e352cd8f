"""What ``stream_activations`` costs on top of the models' own forward passes (prints a table).

On the same models and tokens, interleaved, best of ``--repeats``: the bare forward passes
(``model(batch, stop_at_layer=...)`` under ``torch.no_grad``, every model, every batch) against
``stream_activations`` of the same models and batches, which also copies each hooked layer's kept
rows into one ``[tokens, units]`` tensor per model and checks them for NaN/inf. Two streams: one
that drops only the BOS position (the rows are copied as a strided view) and one that also drops
a frequent token (scattered positions: the rows are gathered by index).

Usage::

    python benchmarks/stream_overhead.py                 # the correlation benchmark's models
    python benchmarks/stream_overhead.py --size wide --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from correlation import BOS, SIZES, build, make_tokens, print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--k", type=int, default=5, help="models")
    parser.add_argument("--n-seq", type=int, default=48)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tl_universality.units.activations import stream_activations

    models = [build(args.size, seed, args.seq_len, "cpu") for seed in range(args.k)]
    toks = make_tokens(args.n_seq, args.seq_len, SIZES[args.size]["d_vocab"])
    # The most frequent non-BOS token, made frequent: 1 position in 16 (scattered).
    g = torch.Generator().manual_seed(1)
    toks[:, 1:][torch.rand(toks[:, 1:].shape, generator=g) < 1 / 16] = 1
    layers = SIZES[args.size]["n_layers"]

    def bare() -> None:
        with torch.no_grad():
            for i in range(0, args.n_seq, args.batch_size):
                for m in models:
                    m(toks[i : i + args.batch_size], stop_at_layer=layers)

    def stream(exclude: list[int]) -> None:
        for _ in stream_activations(
            models, toks, batch_size=args.batch_size, bos_token_id=BOS, progress=False,
            exclude_token_ids=exclude,
        ):  # fmt: skip
            pass

    runs = {
        "bare forward passes": bare,
        "stream_activations, BOS dropped (strided copy)": lambda: stream([BOS]),
        "stream_activations, BOS and token 1 dropped (gathered)": lambda: stream([BOS, 1]),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved: other load hits all alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    floor = min(times["bare forward passes"])
    rows = [
        [name, f"{min(t):.3f} s", f"{min(t) / floor:.3f}x", f"{(min(t) - floor) * 1e3:.0f} ms"]
        for name, t in times.items()
    ]
    cfg = SIZES[args.size]
    print_table(
        f"stream_activations vs the bare forward passes: {args.k} {args.size} models"
        f" ({cfg['n_layers']} x {cfg['d_mlp']} units), {args.n_seq} x {args.seq_len} tokens,"
        f" batch {args.batch_size}, CPU {torch.get_num_threads()} threads, best of {args.repeats}",
        ["run", "wall", "vs bare", "overhead"],
        rows,
    )


if __name__ == "__main__":
    main()

"""float64 += float32 accumulation: one whole-matrix add against row blocks (``accumulate``).

Every float32 product of the exhaustive engine (one per 512 tokens) is added into the float64
cross moments. A whole-matrix mixed-dtype ``add_`` converts the float32 operand into a float64
temporary as large as the accumulator, a fresh mapping on every call; row blocks reuse a small
one. Prints both times on the same tensors, their ratio, and checks the results are identical.

    python benchmarks/accumulate.py                 # 2048 x 8192 (the benchmark's k = 5 shape)
    python benchmarks/accumulate.py --rows 8192 --cols 32768
"""

from __future__ import annotations

import argparse
import time

import torch

from tl_universality.stats.cross_moments.products import accumulate


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    part = torch.randn(args.rows, args.cols, generator=g)
    whole = torch.zeros(args.rows, args.cols, dtype=torch.float64)
    blocked = whole.clone()
    t_whole = best_of(lambda: whole.add_(part), args.repeats)
    t_blocked = best_of(lambda: accumulate(blocked, part), args.repeats)
    same = torch.equal(whole, blocked)
    print(
        f"float64 += float32, {args.rows} x {args.cols}, {torch.get_num_threads()} threads,"
        f" best of {args.repeats}"
    )
    print(f"  whole-matrix add_    {t_whole * 1e3:8.1f} ms")
    print(f"  row blocks           {t_blocked * 1e3:8.1f} ms   ({t_whole / t_blocked:.1f}x faster)")
    print(f"  identical results:   {same}")


if __name__ == "__main__":
    main()

"""Benchmark of the correlation engine (prints a table; not a test).

On the same random models and token stream, in one process:

1. the cross-moment update (:meth:`CrossMoments.update`, with and without the within-layer moments
   the rotation baseline needs) against a bare GEMM of the same shapes and dtype: throughput in
   unit-pairs x tokens per second and the fraction of the GEMM rate;
2. :func:`correlate` (one pass, baseline from statistics) against a reference-style pipeline as in
   the paper's code (one pass per model pair with per-layer-pair float32 block products added into
   float64 accumulators, then a second full pass over rotated activations for the baseline), for
   k = 3 and k = 5 models: wall time and ratio; both reach the same max-correlations (checked);
3. peak memory of :func:`correlate` at 1x and 4x the tokens, each in a fresh subprocess;
4. at k = 5, reference-style vs exhaustive ``correlate`` vs screened ``correlate(...,
   candidates=K)``, each in a fresh process: wall time, ratios, max |diff| of max_corr against
   the exhaustive run (all units, certified units), universal-set agreement (each run's own
   baseline, and the exhaustive run's; units that moved, and how many of them had a certified
   universal decision: none should), certified shares (max-correlations, the followed baseline,
   universal decisions) and peak memory; 4a end to end, 4b on
   activations computed once and replayed from memory (the correlation work alone). ``--related
   NOISE`` runs it on a related family (``benchmarks/replay.py``) instead of random seeds;
   ``--baseline-candidates B`` adds a screened run that follows the baseline (``followed``).

Usage::

    python benchmarks/correlation.py                      # CPU, small models (~5 min on 2 cores)
    python benchmarks/correlation.py --device cuda --gpt2-small   # GPT-2-small-sized, on a GPU
    python benchmarks/correlation.py --size wide --skip gemm,pipe,mem   # 4 x 2048 units, section 4
    python benchmarks/correlation.py --skip gemm,pipe,mem --related 0.1  # section 4, related family
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

SIZES = {
    # GPT-2 proportions (d_mlp = 4 d_model), scaled down for a small CPU.
    "small": dict(n_layers=4, d_model=128, d_mlp=512, n_heads=4, d_head=32, d_vocab=2048),
    "tiny": dict(n_layers=2, d_model=32, d_mlp=128, n_heads=2, d_head=16, d_vocab=256),  # smoke
    # the wider shape: 4 layers x 2048 neurons
    "wide": dict(n_layers=4, d_model=512, d_mlp=2048, n_heads=8, d_head=64, d_vocab=2048),
    "gpt2-small": dict(n_layers=12, d_model=768, d_mlp=3072, n_heads=12, d_head=64, d_vocab=50257),
}
BOS = 0


def build(size: str, seed: int, n_ctx: int, device: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        **SIZES[size], n_ctx=n_ctx, act_fn="gelu_new", normalization_type="LN", seed=seed,
        device=device,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def make_tokens(n_seq: int, seq_len: int, d_vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(1, d_vocab, (n_seq, seq_len), generator=g)
    toks[:, 0] = BOS
    return toks


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[float, float, object]:
    """``(wall seconds, CPU seconds of this process, result)``.

    On a shared machine the wall time also counts time other processes took from us; the CPU
    time does not (but counts every thread), so both are reported.
    """
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


# -- 1. update vs GEMM ----------------------------------------------------------------------------


def bench_update(a: int, b: int, n: int, widths: list[int], device: str, repeats: int) -> list:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.nn.functional.gelu(torch.randn(n, a, generator=g)).to(device)
    y = torch.nn.functional.gelu(torch.randn(n, b, generator=g)).to(device)
    out = torch.empty(a, b, device=device)
    from tl_universality.stats.cross_moments import CrossMoments

    blocks, s = [], 0
    for w in widths:
        blocks.append((s, s + w))
        s += w
    with_gram = CrossMoments(a, b, b_blocks=blocks, device=device)
    without = CrossMoments(a, b, device=device)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # the same strict float32 as the update
    try:
        rows: dict[str, list[tuple[float, float, object]]] = {
            "gemm": [], "update": [], "update_gram": []
        }  # fmt: skip
        # Warm up, then interleave so that other load on the machine hits all three alike.
        torch.mm(x.T, y, out=out)
        with_gram.update(x, y)
        without.update(x, y)
        for _ in range(repeats):
            rows["gemm"].append(timed(lambda: torch.mm(x.T, y, out=out), device))
            rows["update"].append(timed(lambda: without.update(x, y), device))
            rows["update_gram"].append(timed(lambda: with_gram.update(x, y), device))
    finally:
        torch.set_float32_matmul_precision(prev)
    work = a * b * n
    gram_work = sum(w * w for w in widths) * n  # extra products the baselines need
    table = []
    # Best of the repeats: the least disturbed measurement of each.
    gemm_wall = min(r[0] for r in rows["gemm"])
    gemm_cpu = min(r[1] for r in rows["gemm"])
    for name, label, extra in (
        ("gemm", "bare GEMM x^T y (float32)", 0),
        ("update", "CrossMoments.update", 0),
        ("update_gram", "CrossMoments.update + within-layer moments", gram_work),
    ):
        wall = min(r[0] for r in rows[name])
        cpu = min(r[1] for r in rows[name])
        # fraction of the GEMM rate in unit-pairs x tokens, and counting every product computed
        table.append(
            [label, f"{a}x{b}x{n}", f"{wall * 1e3:.0f} ms", f"{work / wall:.3g}",
             f"{gemm_wall / wall:.2f}", f"{gemm_cpu / cpu:.2f}",
             f"{gemm_wall / wall * (work + extra) / work:.2f}"]
        )  # fmt: skip
    return table


# -- 2. reference-style pipeline ------------------------------------------------------------------


def reference_style(models, toks, batch_size: int, device: str, seed: int = 0):
    """One pass per model pair with per-layer-pair float32 block products added into float64
    accumulators, then a second full pass over rotated activations for the baseline (the
    structure of the paper's research code). Returns per-pair (max_corr, baseline max)."""
    from tl_universality.stats.baselines import mixing_matrix
    from tl_universality.units.activations import stream_activations

    ref = models[0]
    n_layers = [m.cfg.n_layers for m in models]
    d = ref.cfg.d_mlp
    out = []
    for j, other in enumerate(models[1:], start=1):
        rotations = [
            mixing_matrix("rotation", d, seed=seed, key=(j, h, 0), device=device).float()
            for h in range(n_layers[j])
        ]
        results = []
        for rotate in (False, True):
            la, lb = n_layers[0], n_layers[j]
            f64 = dict(dtype=torch.float64, device=device)
            sx, sxx = torch.zeros(la, d, **f64), torch.zeros(la, d, **f64)
            sy, syy = torch.zeros(lb, d, **f64), torch.zeros(lb, d, **f64)
            sxy = torch.zeros(la, d, lb, d, **f64)
            n = 0
            for batch in stream_activations(
                [ref, other], toks, batch_size=batch_size, device=device, bos_token_id=BOS,
                progress=False,
            ):  # fmt: skip
                x = batch.acts[0].reshape(-1, la, d)
                y = batch.acts[1].reshape(-1, lb, d)
                if rotate:
                    y = torch.stack([y[:, h] @ rotations[h].T for h in range(lb)], 1)
                n += x.shape[0]
                sx += x.sum(0).double()
                sxx += (x.double() ** 2).sum(0)
                sy += y.sum(0).double()
                syy += (y.double() ** 2).sum(0)
                for l1 in range(la):
                    for l2 in range(lb):
                        sxy[l1, :, l2, :] += (x[:, l1].T @ y[:, l2]).double()
            cov = sxy / n - (sx / n)[:, :, None, None] * (sy / n)[None, None, :, :]
            var_x = sxx / n - (sx / n) ** 2
            var_y = syy / n - (sy / n) ** 2
            corr = cov / torch.sqrt(var_x[:, :, None, None] * var_y[None, None, :, :])
            results.append(corr.reshape(la * d, lb * d).nan_to_num(-1).amax(1))
            del sxy, cov, corr
        out.append(tuple(results))
    return out


def bench_pipelines(size, ks, n_seq, seq_len, batch_size, device, n_ctx, repeats) -> list:
    from tl_universality.analyses.correlation import correlate

    models = [build(size, seed, n_ctx, device) for seed in range(max(ks))]
    toks = make_tokens(n_seq, seq_len, SIZES[size]["d_vocab"])
    # Warm up both pipelines (BLAS/LAPACK initialisation, allocator) on a few sequences.
    correlate(models[0], models[1], toks[:2], n_draws=1, device=device, bos_token_id=BOS,
              progress=False)  # fmt: skip
    reference_style(models[:2], toks[:2], batch_size, device)
    table = []
    for k in ks:
        ms = models[:k]
        runs_ours, runs_ref = [], []
        for _ in range(repeats):  # interleaved: load from other processes hits both alike
            *t, ours = timed(
                lambda ms=ms: correlate(
                    ms[0], ms[1:], toks, batch_size=batch_size, device=device, n_draws=1,
                    bos_token_id=BOS, progress=False,
                ),
                device,
            )  # fmt: skip
            runs_ours.append(t)
            *t, ref = timed(lambda ms=ms: reference_style(ms, toks, batch_size, device), device)
            runs_ref.append(t)
        t_ours, t_ref = min(r[0] for r in runs_ours), min(r[0] for r in runs_ref)
        cpu_ours, cpu_ref = min(r[1] for r in runs_ours), min(r[1] for r in runs_ref)
        # Both find the same max-correlations (float32 products in both; raw sums in the
        # reference lose a little precision).
        diff = max(
            float((ours.max_corr[m].to(device) - ref[m][0].double()).abs().max())
            for m in range(k - 1)
        )
        units = ours.units.n_units
        pairs = units * units * (k - 1)
        n_tok = ours.n_tokens
        table.append(
            [f"k={k}", f"{n_tok}", f"{t_ref:.1f} s", f"{t_ours:.1f} s", f"{t_ref / t_ours:.2f}x",
             f"{cpu_ref / cpu_ours:.2f}x", f"{pairs * n_tok / t_ours:.3g}", f"{diff:.1e}"]
        )  # fmt: skip
    return table


# -- 3. memory ------------------------------------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_reset():
    """(RSS now, a function giving the peak since now); Linux clear_refs, else ru_maxrss."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS"), lambda: _status("VmHWM")
    except OSError:
        now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return now, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(args) -> None:
    """Run one correlate in this (fresh) process and print its peak memory as JSON."""
    from tl_universality.analyses.correlation import correlate

    models = [build(args.size, seed, args.n_ctx, args.device) for seed in range(3)]
    toks = make_tokens(args.n_seq, args.seq_len, SIZES[args.size]["d_vocab"])
    before, peak_of = peak_reset()  # the peak is correlate's, not the imports'
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = correlate(
        models[0], models[1:], toks, batch_size=args.batch_size, device=args.device, n_draws=1,
        bos_token_id=BOS, progress=False,
    )  # fmt: skip
    peak = peak_of()
    gpu = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else 0
    out = {"tokens": result.n_tokens, "rss_before": before, "rss_peak": peak, "gpu": gpu}
    print(json.dumps(out))


def bench_memory(args, factors=(1, 4)) -> list:
    # At least 3 batches at 1x: the steady state (two batches' activations alive at once while
    # the streamer computes the next) is reached on the second full batch.
    base = max(args.n_seq, 3 * args.batch_size)
    # A fixed mmap threshold makes glibc return freed large blocks to the system, so RSS shows
    # what the run holds rather than the allocator's growing cache of freed blocks.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    table = []
    for f in factors:
        cmd = [
            sys.executable, __file__, "--memory-child", "--size", args.size, "--device",
            args.device, "--n-seq", str(base * f), "--seq-len", str(args.seq_len),
            "--batch-size", str(args.batch_size), "--n-ctx", str(args.n_ctx),
        ] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        grew = (m["rss_peak"] - m["rss_before"]) / 1e6
        row = [f"{f}x", str(m["tokens"]), f"{m['rss_before'] / 1e6:.0f} MB",
               f"{m['rss_peak'] / 1e6:.0f} MB", f"{grew:.0f} MB"]  # fmt: skip
        if args.device.startswith("cuda"):
            row.append(f"{m['gpu'] / 1e6:.0f} MB")
        table.append(row)
    return table


# -- 4. screened vs exhaustive vs reference-style ------------------------------------------------


def screened_child(args) -> None:
    """One pipeline (args.screened_child) on k models in this fresh process: time, peak memory
    and the per-model max-correlations, written to args.out (safetensors) and printed as JSON."""
    from replay import related_family, replay_activations
    from safetensors.torch import save_file

    from tl_universality.analyses.correlation import correlate

    k, method = args.k, args.screened_child
    if args.related is None:
        models = [build(args.size, seed, args.n_ctx, args.device) for seed in range(k)]
    else:
        models = related_family(build(args.size, 0, args.n_ctx, args.device), k, args.related)
    toks = make_tokens(args.n_seq, args.seq_len, SIZES[args.size]["d_vocab"])
    if args.cached:  # every pipeline then replays the same activations from memory
        replay_activations(models, toks, args.batch_size, args.device, BOS)
    kw = dict(batch_size=args.batch_size, device=args.device, n_draws=1, bos_token_id=BOS,
              progress=False)  # fmt: skip
    extra = dict(candidates=args.candidates, screen_tokens=args.screen_tokens)
    if method == "followed":
        extra["baseline_candidates"] = args.baseline_candidates

    def go(ms, t):
        if method == "forward":  # the floor of every pipeline: each model's activations once
            from tl_universality.units.activations import stream_activations

            for _ in stream_activations(ms, t, batch_size=args.batch_size, device=args.device,
                                        bos_token_id=BOS, progress=False):  # fmt: skip
                pass
            return {"max_corr": torch.zeros(1), "baseline": torch.zeros(1)}
        if method == "reference":
            out = reference_style(ms, t, args.batch_size, args.device)
            return {"max_corr": torch.stack([m for m, _ in out]).double(),
                    "baseline": torch.stack([b for _, b in out]).double()}  # fmt: skip
        r = correlate(ms[0], ms[1:], t, **kw, **(extra if method != "exhaustive" else {}))
        out = {"max_corr": r.max_corr, "baseline": r.baseline_max}
        if r.certified is not None:
            out["certified"] = r.certified.to(torch.uint8)
        if r.baseline_certified is not None:
            out["baseline_certified"] = r.baseline_certified.to(torch.uint8)
        if (decided := r.universal_certified()) is not None:  # a baseline over all tokens
            out["decided"] = decided.to(torch.uint8)
        return out

    go(models[:2], toks[:2])  # warm-up: BLAS, allocator
    before, peak_of = peak_reset()
    wall, cpu, out = timed(lambda: go(models, toks), args.device)
    peak = peak_of()
    save_file({n: v.contiguous() for n, v in out.items()}, args.out)
    print(json.dumps({"wall": wall, "cpu": cpu, "rss_before": before, "rss_peak": peak}))


def bench_screened(args, cached: bool = False) -> list:
    import tempfile

    from safetensors.torch import load_file

    # The default allocator: a fixed mmap threshold (as in section 3) would make every large
    # allocation a fresh mapping and multiply the time spent in the kernel.
    env = dict(os.environ)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        methods = ["forward", "reference", "exhaustive", "screened"]
        for method in methods + (["followed"] if args.baseline_candidates else []):
            out = os.path.join(tmp, f"{method}.safetensors")
            cmd = [
                sys.executable, __file__, "--screened-child", method, "--out", out, "--k",
                str(args.k), "--size", args.size, "--device", args.device, "--n-seq",
                str(args.n_seq), "--seq-len", str(args.seq_len), "--batch-size",
                str(args.batch_size), "--n-ctx", str(args.n_ctx), "--candidates",
                str(args.candidates), "--screen-tokens", str(args.screen_tokens),
                "--baseline-candidates", str(args.baseline_candidates or 0),
            ] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
            cmd += (["--cached"] if cached else []) + (
                ["--related", str(args.related)] if args.related is not None else []
            )
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            runs[method] = (json.loads(done.stdout.strip().splitlines()[-1]), load_file(out))
    ex = runs["exhaustive"][1]

    def universal(r, baseline=None):
        base = r["baseline"] if baseline is None else baseline
        return (r["max_corr"] - base).nanmean(0) > 0.5

    table = []
    for method, (m, r) in runs.items():
        if method == "forward":
            ratios = [f"{runs[b][0]['wall'] / m['wall']:.2f}x" for b in ("reference", "exhaustive")]
            ratios = ["-", "-"] if cached else ratios  # a replay of views costs next to nothing
            label = "replay of cached activations" if cached else "forward passes only"
            peak = f"{(m['rss_peak'] - m['rss_before']) / 1e6:.0f} MB"
            table.append([label, f"{m['wall']:.1f} s", *ratios, *["-"] * 8, peak])
            continue
        diff = (r["max_corr"] - ex["max_corr"]).abs().nan_to_num(0)
        base_diff = (r["baseline"] - ex["baseline"]).abs().nan_to_num(0).max()
        screened = "certified" in r
        cert = r["certified"].bool() if screened else None
        same = torch.equal(universal(r), universal(ex))
        moved = universal(r) != universal(ex)
        n_set = f"DIFFER ({int(universal(r).sum())}): {int(moved.sum())} moved"
        if "decided" in r:  # a unit whose universal decision is certified never moves
            n_set += f", {int((moved & r['decided'].bool()).sum())} certified"
        # the same max-correlations give the same set under one baseline: the screened baseline
        # comes from the screening tokens only, so units near the threshold can move
        same_base = torch.equal(universal(r, ex["baseline"]), universal(ex))
        row = [
            method, f"{m['wall']:.1f} s", f"{runs['reference'][0]['wall'] / m['wall']:.2f}x",
            f"{runs['exhaustive'][0]['wall'] / m['wall']:.2f}x", f"{diff.max():.1e}",
            f"{diff[cert].max():.1e}" if screened and cert.any() else "-",
            f"{base_diff:.1e}",
            f"same ({int(universal(r).sum())})" if same else n_set,
            "same" if same_base else "DIFFER",
            f"{cert.float().mean():.1%}" if screened else "-",
            f"{r['baseline_certified'].float().mean():.1%}" if "baseline_certified" in r else "-",
            f"{r['decided'].float().mean():.1%}" if "decided" in r else "-",
            f"{(m['rss_peak'] - m['rss_before']) / 1e6:.0f} MB",
        ]  # fmt: skip
        table.append(row)
    return table


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpt2-small", action="store_true", help="GPT-2-small-sized models")
    parser.add_argument("--size", default=None, choices=sorted(SIZES), help="model shape")
    parser.add_argument("--n-seq", type=int, default=None, help="sequences (tokens at 1x)")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--n-ctx", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help="timings per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of sections to skip: gemm,pipe,mem,screened (4a),cached (4b)",
    )
    parser.add_argument("--k", type=int, default=5, help="models in the screened comparison")
    parser.add_argument("--candidates", type=int, default=8, help="K of the screened mode")
    parser.add_argument("--screen-tokens", type=int, default=None, help="screened stage 1")
    parser.add_argument(
        "--baseline-candidates", type=int, default=0, help="also a screened run following B"
    )
    parser.add_argument(
        "--related", type=float, default=None,
        help="section 4 on a permuted, noised family of one model (noise / weight std)",
    )  # fmt: skip
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--screened-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    args.size = args.size or ("gpt2-small" if args.gpt2_small else "small")
    big = args.size == "gpt2-small"
    args.seq_len = args.seq_len or (512 if big else 128)
    args.n_ctx = args.n_ctx or args.seq_len
    args.batch_size = args.batch_size or (16 if big else 32)
    args.n_seq = args.n_seq or (128 if big else 48)
    args.screen_tokens = args.screen_tokens or args.n_seq * args.seq_len // 4
    if args.memory_child:
        memory_child(args)
        return
    if args.screened_child:
        screened_child(args)
        return

    cfg = SIZES[args.size]
    units = cfg["n_layers"] * cfg["d_mlp"]
    name = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"Correlation benchmark: {args.size} {'random' if args.related is None else 'related'}"
        f" models ({cfg['n_layers']} layers x"
        f" {cfg['d_mlp']} neurons = {units} units each), {args.n_seq} sequences x {args.seq_len}"
        f" tokens, batch {args.batch_size}, device {args.device} ({name}),"
        f" torch {torch.__version__}"
    )
    skip = set(args.skip.split(",")) - {""}
    if "gemm" not in skip:
        n = args.batch_size * (args.seq_len - 1)
        rows = bench_update(units, 4 * units, n, [cfg["d_mlp"]] * (4 * cfg["n_layers"]),
                            args.device, args.repeats)  # fmt: skip
        print_table(
            "1. Cross-moment update vs bare GEMM (reference x 4 other models, one batch; best of"
            f" {args.repeats}; fractions of the GEMM rate by wall time, by CPU time, and by wall"
            " time counting every product computed)",
            ["operation", "a x b x tokens", "wall", "pairs*tok/s", "of GEMM (wall)",
             "of GEMM (CPU)", "of GEMM, all products"],
            rows,
        )  # fmt: skip
    if "pipe" not in skip:
        rows = bench_pipelines(
            args.size, (3, 5), args.n_seq, args.seq_len, args.batch_size, args.device, args.n_ctx,
            max(1, args.repeats // 2),
        )  # fmt: skip
        print_table(
            "2. Reference-style pipeline (pass per pair + baseline pass) vs correlate (one pass),"
            f" rotation baseline, 1 draw, best of {max(1, args.repeats // 2)}",
            ["models", "tokens", "reference-style", "correlate", "speed-up (wall)",
             "speed-up (CPU)", "pairs*tok/s", "max |diff| max_corr"],
            rows,
        )  # fmt: skip
    if "mem" not in skip:
        header = ["tokens", "n", "RSS before", "RSS peak", "peak - before"]
        if gpu:
            header.append("GPU peak")
        print_table(
            "3. Peak memory of correlate (k=3), fresh process each, glibc"
            " MALLOC_MMAP_THRESHOLD_=131072",
            header,
            bench_memory(args),
        )
    family = "random seeds" if args.related is None else f"related family, noise {args.related}"
    for cached in (False, True):
        if ("screened" if not cached else "cached") in skip:
            continue
        what = (
            "activations computed once, replayed from memory: the correlation work alone"
            if cached
            else "end to end, forward passes included"
        )
        print_table(
            f"4{'b' if cached else 'a'}. Reference-style vs exhaustive vs screened"
            f" (candidates={args.candidates}, screen_tokens={args.screen_tokens}), k={args.k},"
            f" {family}, rotation baseline, 1 draw; {what}; fresh process each; diffs against"
            " exhaustive",
            ["pipeline", "wall", "vs reference", "vs exhaustive", "max |diff| max_corr",
             "certified units", "max |diff| baseline", "universal set", "exhaustive's baseline",
             "certified", "baseline certified", "universal certified", "peak - before"],
            bench_screened(args, cached),
        )  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

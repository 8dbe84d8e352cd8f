"""Explore seed-family settings: which small CPU-trainable family shows universal neurons?

For each candidate setting this trains (or loads from the cache) a seed family with
:func:`tl_universality.data.seeds.train_seed_family` and measures universality as docs/concepts.md,
"Universality"
defines
it, with a few lines of torch instead of the project's streaming engine:

- activations: MLP ``hook_post`` of every layer, on up to ``--tokens`` held-out tokens, with the
  BOS/EOS positions (``<|endoftext|>``) left out;
- ``max_corr_m(i)``: max over all neurons j of seed m of the Pearson correlation (float64) with
  neuron i of seed 0; dead (zero-variance) neurons get correlation 0;
- ``baseline_m(i)``: the same against seed m's neurons mixed within each layer by a random
  orthogonal rotation;
- ``excess(i) = mean_m max_corr_m(i) - mean_m baseline_m(i)``; universal iff excess > 0.5.

Usage (one training at a time, politely)::

    nice .venv/bin/python benchmarks/explore_seed_family.py --list
    nice .venv/bin/python benchmarks/explore_seed_family.py L1-d64-m1024-v1024-s400
    nice .venv/bin/python benchmarks/explore_seed_family.py --all --out results.jsonl

Each result is printed as a row of the table in ``docs/seed_family.md`` and appended as JSON to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from tl_universality.data.seeds import PRESETS, SeedFamilyConfig, train_seed_family

BASE = SeedFamilyConfig(
    name="explore",
    n_layers=1,
    d_model=64,
    n_heads=4,
    d_head=16,
    d_mlp=1024,
    n_ctx=64,
    vocab_size=1024,
    steps=400,
    batch_size=32,
    lr=3e-3,
    warmup=30,
    seeds=(0, 1, 2),
)


def _candidates() -> dict[str, SeedFamilyConfig]:
    """The settings tried, by name (the name spells out what differs from BASE)."""
    c = {
        "L1-d64-m1024-v1024-s400": BASE,
        "L1-d64-m1024-v1024-s1200": BASE.replace(steps=1200, warmup=60),
        "L1-d64-m1024-v512-s400": BASE.replace(vocab_size=512),
        "L1-d64-m1024-v1024-s400-src": BASE.replace(include_source=True),
        "L1-d64-m2048-v1024-s400": BASE.replace(d_mlp=2048),
        "L1-d128-m2048-v1024-s400": BASE.replace(d_model=128, d_head=32, d_mlp=2048),
        "L1-d64-m1024-v1024-s400-relu": BASE.replace(act_fn="relu"),
        "L2-d64-m1024-v1024-s400": BASE.replace(n_layers=2),
        "tiny": PRESETS["tiny"],
        "demo": PRESETS["demo"],
    }
    return {name: cfg.replace(name=name) if name not in PRESETS else cfg for name, cfg in c.items()}


CANDIDATES = _candidates()


@torch.no_grad()
def mlp_activations(model, tokens: torch.Tensor, bos: int) -> list[torch.Tensor]:
    """``hook_post`` of every layer, ``[n_tokens, d_mlp]`` each, BOS/EOS positions removed."""
    keep = tokens != bos
    acts: list[list[torch.Tensor]] = [[] for _ in range(model.cfg.n_layers)]
    for start in range(0, tokens.shape[0], 64):
        batch = tokens[start : start + 64]
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("mlp.hook_post"))
        for layer in range(model.cfg.n_layers):
            acts[layer].append(cache[f"blocks.{layer}.mlp.hook_post"][keep[start : start + 64]])
    return [torch.cat(a).double() for a in acts]


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Columns to zero mean and unit norm; dead columns become 0 (so their correlation is 0)."""
    x = x - x.mean(0)
    norm = x.norm(dim=0)
    return torch.where(norm > 0, x / norm.clamp_min(1e-300), torch.zeros_like(x))


def max_corr(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each column of standardised ``a``, the max correlation with any column of ``b``."""
    return torch.cat([(a[:, i : i + chunk].T @ b).amax(1) for i in range(0, a.shape[1], chunk)])


def random_rotation(n: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def measure(family, max_tokens: int = 50_000) -> dict:
    """Universality of seed 0's neurons against the other seeds (see the module docstring)."""
    bos = family.tokenizer.bos_token_id
    seq = family.config.n_ctx
    tokens = family.held_out_tokens().limit(max_tokens // (seq - 1) * seq).to_tensor()
    acts = [mlp_activations(m, tokens, bos) for m in family.models]
    ref = standardise(torch.cat(acts[0], 1))
    gen = torch.Generator().manual_seed(0)
    real, base = [], []
    for other in acts[1:]:
        real.append(max_corr(ref, standardise(torch.cat(other, 1))))
        rotated = [layer @ random_rotation(layer.shape[1], gen) for layer in other]
        base.append(max_corr(ref, standardise(torch.cat(rotated, 1))))
    mc, bl = torch.stack(real).mean(0).numpy(), torch.stack(base).mean(0).numpy()
    excess = mc - bl
    per_layer = [int(part.sum()) for part in np.split(excess > 0.5, len(acts[0]))]
    # Effective rank (participation ratio of the covariance spectrum) of seed 0's activations.
    eig = torch.linalg.eigvalsh(torch.cov(torch.cat(acts[0], 1).T)).clamp_min(0)
    return {
        "n_tokens": int(ref.shape[0]),
        "universal_pct": float(100 * (excess > 0.5).mean()),
        "universal_per_layer": per_layer,
        "median_max_corr": float(np.median(mc)),
        "median_baseline": float(np.median(bl)),
        "excess_p99": float(np.quantile(excess, 0.99)),
        "excess_max": float(excess.max()),
        "excess_gt_0.3_pct": float(100 * (excess > 0.3).mean()),
        "dead_pct": float(100 * (ref.abs().sum(0) == 0).double().mean()),
        "effective_rank": float(eig.sum() ** 2 / (eig**2).sum()),
    }


def run(name: str, max_tokens: int, progress: bool, n_seeds: int | None = None) -> dict:
    config = CANDIDATES[name]
    if n_seeds is not None:
        config = config.replace(seeds=config.seeds[:n_seeds])
    t0 = time.perf_counter()
    family = train_seed_family(config, progress=progress)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    stats = measure(family, max_tokens)
    return {
        "setting": name if n_seeds is None else f"{name} ({n_seeds} seeds)",
        "config": config.to_dict(),
        "n_params": family.info["n_params"],
        "n_train_tokens": family.info["n_train_tokens"],
        "s_per_seed": float(np.mean(family.train_seconds)),
        "cpu_s_per_seed": float(
            np.mean([r.get("train_cpu_seconds", np.nan) for r in family.info["seeds"]])
        ),
        "load_average": float(os.getloadavg()[0]),
        "held_out_loss": [round(x, 3) for x in family.held_out_loss],
        "call_seconds": wall,
        "measure_seconds": time.perf_counter() - t1,
        **stats,
    }


def table_row(r: dict) -> str:
    loss = np.mean(r["held_out_loss"])
    return (
        f"| {r['setting']} | {r['s_per_seed']:.0f} | {loss:.2f} | {r['universal_pct']:.2f} % "
        f"| {r['median_max_corr']:.3f} | {r['median_baseline']:.3f} "
        f"| {r['excess_p99']:.2f} / {r['excess_max']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="names of candidate settings")
    parser.add_argument("--all", action="store_true", help="run every candidate")
    parser.add_argument("--list", action="store_true", help="list the candidates")
    parser.add_argument("--tokens", type=int, default=50_000, help="held-out tokens to measure")
    parser.add_argument("--out", type=Path, default=None, help="append JSON results here")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 wastes least on a shared machine: idle OpenMP threads spin)",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="train only the first N seeds (cheap screening)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.list:
        for name, cfg in CANDIDATES.items():
            print(f"{name:36s} ~{cfg.n_params_estimate / 1e6:.2f}M params, {cfg.steps} steps")
        return
    names = list(CANDIDATES) if args.all else args.settings
    for name in names:
        result = run(name, args.tokens, args.progress, args.seeds)
        print(json.dumps({k: v for k, v in result.items() if k != "config"}))
        print(table_row(result), flush=True)
        if args.out is not None:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

"""Sparse attention decomposition: planted-circuit recovery, directions per firing, trace speed.

Run from the repository root:

    python benchmarks/attention_decomposition.py

Offline. Uses the tiny seed family (trained on first use, ~1-2 minutes on a CPU) and the demo
family only if it is already cached (it is never trained here).
"""

from __future__ import annotations

import time

import torch

from tl_universality.attention_decomposition.decompose import decompose_attention
from tl_universality.attention_decomposition.planted import planted_circuit
from tl_universality.attention_decomposition.trace import trace_circuit
from tl_universality.data.seeds import load_seed_family, train_seed_family


def planted_recovery() -> None:
    exact = total = 0
    for seed in range(5):
        for sender in (0, 1):
            model, tokens = planted_circuit(n_prompts=8, seed=seed, sender=sender)
            got = trace_circuit(model, tokens, ["L1H0"]).head_edges()
            exact += got == {(f"L0H{sender}", "L1H0")}
            total += 1
    print(f"planted circuit: exact head-edge set recovered in {exact}/{total} models"
          " (5 seeds x 2 senders, 8 prompts each)")  # fmt: skip


def directions_per_firing(family, label: str, n_prompts: int = 16) -> None:
    tokens = family.held_out_tokens().to_tensor()[:n_prompts]
    for i, model in enumerate(family.models):
        counts, pair_counts = [], []
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                dec = decompose_attention(model, tokens, layer, head)
                fires = (dec.attention >= 0.5) & (dec.src > 0) & (dec.total > 0)
                counts.append(dec.n_selected[fires])
                pair_counts.append(dec.n_selected)
        fired = torch.cat(counts).double()
        every = torch.cat(pair_counts).double()
        rank = model.cfg.d_head
        print(f"{label} seed {i}: {fired.numel()} firings; selected directions per firing"
              f" median {fired.median():.0f}, mean {fired.mean():.2f} of d_head={rank}"
              f" (all pairs: median {every.median():.0f}, mean {every.mean():.2f})")  # fmt: skip
        roots = [(model.cfg.n_layers - 1, h) for h in range(model.cfg.n_heads)]
        trace_circuit(model, tokens[:2], roots, dest=None)  # warm-up
        start = time.perf_counter()
        trace = trace_circuit(model, tokens, roots, dest=None)
        per_prompt = (time.perf_counter() - start) / len(tokens)
        s = trace.summary()
        print(f"{label} seed {i}: trace of all top-layer heads at every position of"
              f" {len(tokens)} prompts x {tokens.shape[1]} tokens: {s['n_firings']} firings,"
              f" {s['n_nodes']} nodes, {s['n_edges']} edges ({s['n_head_edges']} head-to-head);"
              f" {per_prompt * 1000:.1f} ms per traced prompt")  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    planted_recovery()
    directions_per_firing(train_seed_family("tiny", progress=False, num_threads=1), "tiny")
    try:
        demo = load_seed_family("demo")
    except FileNotFoundError:
        print("demo family: not cached, skipped (train it with `tl-universality train-seeds`)")
    else:
        directions_per_firing(demo, "demo")


if __name__ == "__main__":
    main()

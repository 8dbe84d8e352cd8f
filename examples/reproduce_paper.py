"""Reproduce the paper's universality measurement on the Stanford CRFM GPT-2 seeds.

Needs the internet (model weights and the Pile from the Hugging Face hub) and, for GPT-2 small at
the paper's scale, a GPU. Seed ``a`` is the reference, compared with seeds b-e in one pass.

    python examples/reproduce_paper.py --size small --max-tokens 10_000_000 --device cuda

The paper used 100M tokens; the universal share is already stable at ~10M (see the scaling guide).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer_lens import HookedTransformer

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.core.environment import default_device, require_hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["small", "medium"])
    parser.add_argument("--dataset", default="NeelNanda/pile-10k")
    parser.add_argument("--max-tokens", type=int, default=10_000_000)
    parser.add_argument("--device", default=default_device(), help="default: cuda if available")
    parser.add_argument("--memory-budget", default="40GB")
    parser.add_argument("--out", default="runs/stanford-gpt2")
    args = parser.parse_args()
    require_hub(Path(__file__).name)

    models = [
        HookedTransformer.from_pretrained(f"stanford-gpt2-{args.size}-{seed}", device=args.device)
        for seed in "abcde"
    ]
    result = models[0].universality.correlate(
        models[1:],
        args.dataset,
        max_tokens=args.max_tokens,
        batch_size=32,
        device=args.device,
        memory_budget=args.memory_budget,
        checkpoint_dir=f"{args.out}/checkpoint",
    )
    result.save(f"{args.out}/correlation")
    print(result.universal_neurons(threshold=0.5).head(20))
    # The paper: 4.16% universal in small-a, concentrated in the first and last layers.
    print(result.universal_share())


if __name__ == "__main__":
    main()

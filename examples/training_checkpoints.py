"""Universality over training: correlate seed a with seeds b-e at several training checkpoints.

Needs the internet. The Stanford CRFM GPT-2 runs have 609 checkpoints each; TransformerLens selects
one with ``checkpoint_value=`` (the training step).

    python examples/training_checkpoints.py --steps 1000 10000 100000 400000 --max-tokens 2000000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.core.environment import default_device, require_hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["small", "medium"])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000, 100000, 400000])
    parser.add_argument("--dataset", default="NeelNanda/pile-10k")
    parser.add_argument("--max-tokens", type=int, default=2_000_000)
    parser.add_argument("--device", default=default_device(), help="default: cuda if available")
    args = parser.parse_args()
    require_hub(Path(__file__).name)

    rows = []
    for step in args.steps:
        models = [
            HookedTransformer.from_pretrained(
                f"stanford-gpt2-{args.size}-{seed}", checkpoint_value=step, device=args.device
            )
            for seed in "abcde"
        ]
        result = models[0].universality.correlate(
            models[1:], args.dataset, max_tokens=args.max_tokens, device=args.device
        )
        table = result.to_dataframe()
        rows.append(
            {
                "step": step,
                "universal_share": float(table["is_universal"].mean()),
                "median_max_corr": float(table["mean_corr"].median()),
                "median_baseline": float(table["mean_baseline"].median()),
            }
        )
        print(rows[-1])
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

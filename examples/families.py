"""Neuron families of the universal neurons of the offline seed family (no network needed).

Trains (or loads from the cache) a seed family, correlates seed 0's neurons with the other seeds',
explains the universal ones by exact variance reduction over token-level features (docs/concepts.md
§1.3), labels each with a family, and prints the family counts per layer and three example
neurons per family with their top features.

    python examples/families.py                   # the tiny family (about a minute on a CPU)
    python examples/families.py --family demo     # the demo family (minutes)
    python examples/families.py --html out/       # also save top-activating contexts as HTML
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.families import (
    explain,
    family_counts,
    label_families,
    top_activations,
)
from tl_universality.analyses.features import default_features
from tl_universality.data.seeds import train_seed_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--threshold", type=float, default=0.5, help="excess_corr for universal")
    parser.add_argument("--n-unigrams", type=int, default=300)
    parser.add_argument("--html", type=Path, default=None, help="folder for top-activation pages")
    args = parser.parse_args()
    pd.set_option("display.width", 140)
    pd.set_option("display.max_colwidth", 40)

    family = train_seed_family(args.family, progress=False)
    ref, *others = family.models
    tokens = family.held_out_tokens()
    print(f"{args.family} family: {len(family.models)} seeds, {tokens.n_tokens:,} held-out tokens")

    result = correlate(ref, others, tokens, progress=False)
    neurons = result.universal_neurons(args.threshold)
    chosen = f"excess_corr > {args.threshold}"
    if neurons.empty:
        # A small family may have no neuron above the paper's 0.5 (see docs/families.md): say so,
        # and label the most universal 5% instead.
        table = result.to_dataframe()
        cut = table["excess_corr"].quantile(0.95)
        neurons = table[table["excess_corr"] >= cut].reset_index(drop=True)
        chosen = f"top 5% by excess_corr (>= {cut:.3f}); none has excess_corr > {args.threshold}"
    print(f"{len(neurons)} neurons chosen: {chosen}")

    features = default_features(ref, tokens, n_unigrams=args.n_unigrams)
    print(f"features: {features!r}")
    explanations = explain(ref, tokens, neurons, features=features, top_k=3, progress=False)
    labels = label_families(explanations)

    print("\nFamily counts per layer:")
    print(family_counts(labels).to_string())

    print("\nThree example neurons per family (their top 3 features):")
    for name, group in labels.groupby("family", sort=False):
        print(f"\n[{name}]")
        examples = group.sort_values("variance_reduction", ascending=False).head(3)
        for row in examples.itertuples():
            top = explanations[
                (explanations["layer"] == row.layer) & (explanations["neuron"] == row.neuron)
            ]
            pairs = zip(top["feature"], top["variance_reduction"], strict=True)
            described = ", ".join(f"{f} ({vr:.2f})" for f, vr in pairs)
            print(f"  L{row.layer}.{row.neuron}: {described}")
            if args.html is not None:
                args.html.mkdir(parents=True, exist_ok=True)
                page = top_activations(ref, tokens, int(row.layer), int(row.neuron), k=15)
                page.save_html(args.html / f"L{row.layer}_N{row.neuron}_{name}.html")
    if args.html is not None:
        print(f"\ntop-activating contexts written to {args.html}/")


if __name__ == "__main__":
    main()

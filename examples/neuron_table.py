"""The neuron table joined with universality, on the offline seed family (no network needed).

Trains (or loads from the cache) a seed family, correlates seed 0's neurons with the other seeds',
builds seed 0's neuron table on the held-out tokens, and prints what the paper compares: universal
vs other neurons (activation frequency, kurtosis, weight norms), prediction / suppression /
partition neurons per layer and the token sets they act on.

    python examples/neuron_table.py                  # the tiny family (seconds)
    python examples/neuron_table.py --family demo    # the demo family (minutes on a CPU)
    python examples/neuron_table.py --plots out/     # also save the paper's figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.neuron_stats import compare_universal
from tl_universality.analyses.roles import role_counts
from tl_universality.analyses.vocab import top_tokens
from tl_universality.data.seeds import train_seed_family

# The paper's claims (docs/concepts.md, "The neuron table"): universal neurons fire more sparsely,
# have heavier-tailed activations and larger weight norms. Sign of (universal - other) it expects.
EXPECTED_DIRECTION = {
    "act_freq": -1,
    "kurt": +1,
    "w_in_norm": +1,
    "w_out_norm": +1,
    "l2_penalty": +1,
    "vocab_kurt": +1,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--plots", type=Path, default=None, help="folder for the figures")
    args = parser.parse_args()
    pd.set_option("display.width", 120)

    family = train_seed_family(args.family, progress=False)
    ref, *others = family.models
    tokens = family.held_out_tokens()
    print(f"{args.family} family: {len(family.models)} seeds, {tokens.n_tokens:,} held-out tokens")

    result = correlate(ref, others, tokens, progress=False)
    # Weight statistics assume TransformerLens's processed weights; folding LayerNorm and
    # centring changes no MLP activation, only how the weights are written down.
    ref.process_weights_()
    table = ref.universality.neuron_stats(tokens, correlation=result, progress=False)
    n_universal = int(table["is_universal"].sum())
    print(f"{n_universal} of {len(table)} neurons universal ({n_universal / len(table):.2%})")

    compared = table
    if n_universal == 0:
        # A small family may have no neuron above the paper's 0.5; compare the top 5% instead.
        top = table["excess_corr"] >= table["excess_corr"].quantile(0.95)
        compared = table.assign(is_universal=top)
        print("no neuron passes excess_corr > 0.5: comparing the top 5% by excess_corr")
    contrast = compare_universal(compared, list(EXPECTED_DIRECTION))
    holds = [
        "yes" if (row.universal_mean - row.other_mean) * EXPECTED_DIRECTION[row.property] > 0
        else "no"
        for row in contrast.itertuples()
    ]  # fmt: skip
    print("\nUniversal vs other neurons (means; 'paper' = the paper's direction holds):")
    print(contrast.assign(paper=holds).to_string(index=False, float_format="{:.4g}".format))

    roles = ref.universality.prediction_neurons(table=table)
    print("\nRoles by layer (vocab_kurt > 10; prediction if vocab_skew > 0):")
    print(role_counts(roles))

    sets = ref.universality.token_set_scores(tokenizer=family.tokenizer)
    best = sets.best.merge(roles[["layer", "neuron", "role", "vocab_kurt"]], on=["layer", "neuron"])
    print("\nBest token sets of the neurons they explain best:")
    print(best.sort_values("var_reduction", ascending=False).head(8).to_string(index=False))

    layer, neuron = table.sort_values("excess_corr", ascending=False)[["layer", "neuron"]].iloc[0]
    print(f"\nTokens the most universal neuron ({layer}.{neuron}) raises and lowers:")
    print(top_tokens(ref, int(layer), int(neuron), k=5).to_string(index=False))

    if args.plots is not None:
        from tl_universality.outputs.plots import (
            plot_property_distributions,
            plot_vocab_moments_by_layer,
        )

        args.plots.mkdir(parents=True, exist_ok=True)
        plot_property_distributions(compared).savefig(args.plots / "universal_properties.png")
        plot_vocab_moments_by_layer(roles).savefig(args.plots / "vocab_moments_by_layer.png")
        print(f"\nFigures saved in {args.plots}")


if __name__ == "__main__":
    main()

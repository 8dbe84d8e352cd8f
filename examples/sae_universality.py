"""SAE latents as units: are the features universal across seeds, and which neurons carry them?

Runs offline on the seed family (trained and cached on first use):

1. train one small sae-lens SAE per seed on the last layer's MLP output (``train_family_saes``);
2. correlate the latents of seed 0's SAE with the other seeds' (``latent_universality``) and
   compare the universal share with the neurons' (``correlate``);
3. check the match with the weights: cosine of matched decoder directions through the unembedding
   (``decoder_similarity``);
4. describe the latents (``sae_unit_stats``) and look inside one model: which neurons a universal
   latent is made of, which latents a neuron carries (``neuron_latent_correlation``).

    python examples/sae_universality.py --family tiny   # a minute
    python examples/sae_universality.py                 # the demo family (longer the first time)

For a published SAE (needs the internet) use ``load_pretrained_sae(release, sae_id)``; every
function below takes it in the same way.
"""

from __future__ import annotations

import argparse

import pandas as pd

from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.sae import (
    decoder_similarity,
    latent_universality,
    neuron_latent_correlation,
    sae_unit_stats,
    train_family_saes,
)
from tl_universality.data.seeds import train_seed_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="demo", choices=["tiny", "demo"])
    parser.add_argument("--train-tokens", type=int, default=1_000_000)
    args = parser.parse_args()
    pd.set_option("display.width", 160)

    family = train_seed_family(args.family)
    models = family.models
    hook = f"blocks.{models[0].cfg.n_layers - 1}.hook_mlp_out"
    # 4x the residual width: as many latents as the layer has neurons in these presets.
    saes = train_family_saes(
        family, hook, d_sae=4 * models[0].cfg.d_model, total_tokens=args.train_tokens
    )
    tokens = family.held_out_tokens()

    latents = latent_universality(models, saes, tokens)
    neurons = correlate(models[0], models[1:], tokens)
    print(f"universal latents: {int(latents.is_universal().sum())} of {latents.units.n_units}")
    print(f"universal neurons: {int(neurons.is_universal().sum())} of {neurons.units.n_units}")

    sims = decoder_similarity(saes[0], saes[1], latents, models=(models[0], models[1]))
    print("\nmatched latents, decoder cosine through W_U (vs random pairs):")
    print(sims.sort_values("excess_corr", ascending=False).head(10).to_string(index=False))

    table = sae_unit_stats(models[0], saes[0], tokens, correlation=latents)
    columns = ["neuron", "excess_corr", "act_freq", "post_kurt", "dec_norm", "vocab_kurt"]
    print("\nmost universal latents of seed 0's SAE (neuron = latent index):")
    print(table.sort_values("excess_corr", ascending=False)[columns].head(10).to_string())

    inside = neuron_latent_correlation(models[0], saes[0], tokens, top_k=5)
    best = int(table["excess_corr"].idxmax())
    print(f"\nneurons latent {best} is made of:")
    print(inside.neurons_of_latent(best).to_string(index=False))
    if neurons.is_universal().any():
        layer, neuron = neurons.universal_neurons().loc[0, ["layer", "neuron"]]
        print(f"\nlatents carried by universal neuron {layer}.{neuron}:")
        print(inside.latents_of_neuron(int(layer), int(neuron)).to_string(index=False))


if __name__ == "__main__":
    main()

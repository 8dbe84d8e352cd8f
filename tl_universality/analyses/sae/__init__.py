"""SAE latents as units (docs/concepts.md, "SAE latents as units")."""

from tl_universality.analyses.sae.latents import (
    NeuronLatentCorrelation,
    SAELike,
    decoder_similarity,
    latent_universality,
    neuron_latent_correlation,
    sae_unit_stats,
    units_layer,
)
from tl_universality.analyses.sae.training import (
    load_pretrained_sae,
    model_fingerprint,
    train_family_saes,
    train_sae,
)
from tl_universality.units.sae import (
    SAEUnits,
    attached_sae_units,
)

__all__ = [
    "NeuronLatentCorrelation",
    "SAELike",
    "SAEUnits",
    "attached_sae_units",
    "decoder_similarity",
    "latent_universality",
    "load_pretrained_sae",
    "model_fingerprint",
    "neuron_latent_correlation",
    "sae_unit_stats",
    "train_family_saes",
    "train_sae",
    "units_layer",
]

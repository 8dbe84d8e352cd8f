"""Moved to :mod:`tl_universality.analyses.sae`.

This path works for one more release.
"""

from tl_universality.analyses.sae import (
    NeuronLatentCorrelation,
    SAELike,
    SAEUnits,
    attached_sae_units,
    decoder_similarity,
    latent_universality,
    load_pretrained_sae,
    model_fingerprint,
    neuron_latent_correlation,
    sae_unit_stats,
    train_family_saes,
    train_sae,
    units_layer,
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

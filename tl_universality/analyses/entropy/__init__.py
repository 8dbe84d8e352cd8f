"""Entropy neurons (docs/concepts.md, "Circuit roles")."""

from tl_universality.analyses.entropy.intervention import (
    EntropyInterventionResult,
    entropy_intervention,
    matched_random_neurons,
)
from tl_universality.analyses.entropy.scores import (
    LN_SCALE_HOOK,
    METRICS,
    NeuronSpec,
    default_null_space_dim,
    entropy_neuron_scores,
    null_space_basis,
)

__all__ = [
    "EntropyInterventionResult",
    "LN_SCALE_HOOK",
    "METRICS",
    "NeuronSpec",
    "default_null_space_dim",
    "entropy_intervention",
    "entropy_neuron_scores",
    "matched_random_neurons",
    "null_space_basis",
]

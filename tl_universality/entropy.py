"""Moved to :mod:`tl_universality.analyses.entropy`.

This path works for one more release.
"""

from tl_universality.analyses.entropy import (
    LN_SCALE_HOOK,
    METRICS,
    EntropyInterventionResult,
    NeuronSpec,
    default_null_space_dim,
    entropy_intervention,
    entropy_neuron_scores,
    matched_random_neurons,
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

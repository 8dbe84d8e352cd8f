"""Neuron families: which token-level feature explains each neuron (docs/concepts.md,
"Neuron families").
"""

from tl_universality.analyses.families.examples import (
    ActivatingExample,
    TopActivations,
    top_activations,
    top_activations_of,
)
from tl_universality.analyses.families.explain import (
    explain,
    families,
    family_counts,
    label_families,
    neuron_frame,
    token_source,
    variance_reduction,
)
from tl_universality.analyses.families.variance import (
    NeuronsSpec,
    VarianceReductionStats,
    variance_reduction_stream,
)

__all__ = [
    "ActivatingExample",
    "NeuronsSpec",
    "TopActivations",
    "VarianceReductionStats",
    "explain",
    "families",
    "family_counts",
    "label_families",
    "neuron_frame",
    "token_source",
    "top_activations",
    "top_activations_of",
    "variance_reduction",
    "variance_reduction_stream",
]

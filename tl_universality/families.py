"""Moved to :mod:`tl_universality.analyses.families`.

This path works for one more release.
"""

from tl_universality.analyses.families import (
    ActivatingExample,
    NeuronsSpec,
    TopActivations,
    VarianceReductionStats,
    explain,
    families,
    family_counts,
    label_families,
    neuron_frame,
    top_activations,
    variance_reduction,
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
    "top_activations",
    "variance_reduction",
    "variance_reduction_stream",
]

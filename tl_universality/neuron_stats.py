"""Moved to :mod:`tl_universality.analyses.neuron_stats`.

This path works for one more release.
"""

from tl_universality.analyses.neuron_stats import (
    ACTIVATION_COLUMNS,
    CONTRAST_PROPERTIES,
    VOCAB_COLUMNS,
    WEIGHT_COLUMNS,
    WeightCosineKind,
    activation_moments,
    compare_universal,
    join_correlation,
    neuron_stats,
    weight_cosines,
    weight_stats,
)

__all__ = [
    "ACTIVATION_COLUMNS",
    "CONTRAST_PROPERTIES",
    "VOCAB_COLUMNS",
    "WEIGHT_COLUMNS",
    "WeightCosineKind",
    "activation_moments",
    "compare_universal",
    "join_correlation",
    "neuron_stats",
    "weight_cosines",
    "weight_stats",
]

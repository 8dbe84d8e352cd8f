"""Moved to :mod:`tl_universality.units.activations`.

This path works for one more release.
"""

from tl_universality.units.activations import (
    ActivationBatch,
    UnitIndex,
    UnitsSpec,
    UnitTransform,
    collect_activations,
    excluded_token_ids,
    is_per_model,
    model_device,
    stream_activations,
    unit_index,
)

__all__ = [
    "ActivationBatch",
    "UnitIndex",
    "UnitTransform",
    "UnitsSpec",
    "collect_activations",
    "excluded_token_ids",
    "is_per_model",
    "model_device",
    "stream_activations",
    "unit_index",
]

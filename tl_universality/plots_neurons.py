"""Moved to :mod:`tl_universality.outputs.plots`.

This path works for one more release.
"""

from tl_universality.outputs.plots import (
    DEFAULT_PROPERTIES,
    plot_property_distributions,
    plot_role_counts,
    plot_vocab_moments_by_layer,
)

__all__ = [
    "DEFAULT_PROPERTIES",
    "plot_property_distributions",
    "plot_role_counts",
    "plot_vocab_moments_by_layer",
]

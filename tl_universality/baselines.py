"""Moved to :mod:`tl_universality.stats.baselines`.

This path works for one more release.
"""

from tl_universality.stats.baselines import (
    BASELINE_KINDS,
    MIXING_KINDS,
    BaselineKind,
    baseline_max_corr,
    check_kind,
    generator,
    mixed_correlation,
    mixed_max_corr,
    mixing_matrix,
    nanmax,
    noise_max_corr,
    null_corr_sf,
    null_max_corr,
)

__all__ = [
    "BASELINE_KINDS",
    "BaselineKind",
    "MIXING_KINDS",
    "baseline_max_corr",
    "check_kind",
    "generator",
    "mixed_correlation",
    "mixed_max_corr",
    "mixing_matrix",
    "nanmax",
    "noise_max_corr",
    "null_corr_sf",
    "null_max_corr",
]

"""Moved to :mod:`tl_universality.analyses.correlation`.

This path works for one more release.
"""

from tl_universality.analyses.correlation import (
    CorrelationPlan,
    CorrelationProgress,
    CorrelationResult,
    Tile,
    correlate,
    logger,
    parse_bytes,
    plan_correlation,
)

__all__ = [
    "CorrelationPlan",
    "CorrelationProgress",
    "CorrelationResult",
    "Tile",
    "correlate",
    "logger",
    "parse_bytes",
    "plan_correlation",
]

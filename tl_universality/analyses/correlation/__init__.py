"""Universality by correlation (docs/concepts.md, "Universality").

- :mod:`~tl_universality.analyses.correlation.config`: :class:`CorrelationConfig`, the settings.
- :mod:`~tl_universality.analyses.correlation.fingerprint`: what a checkpoint proves it saw.
- :mod:`~tl_universality.analyses.correlation.plan`: tiles and passes under a memory budget.
- :mod:`~tl_universality.analyses.correlation.run`: the run's statistics, reductions, checkpoints.
- :mod:`~tl_universality.analyses.correlation.result`: :class:`CorrelationResult`.
- :mod:`~tl_universality.analyses.correlation.engine`: :func:`correlate`, the entry point.
- :mod:`~tl_universality.analyses.correlation.distributed`: ``torchrun`` runs, split by tokens
  (data-parallel) or by tiles (tile-parallel), and their per-rank checkpoints.
"""

from tl_universality.analyses.correlation.config import CorrelationConfig
from tl_universality.analyses.correlation.engine import correlate
from tl_universality.analyses.correlation.plan import (
    CorrelationPlan,
    Tile,
    logger,
    parse_bytes,
    plan_correlation,
)
from tl_universality.analyses.correlation.result import CorrelationResult
from tl_universality.analyses.correlation.run import CorrelationProgress

__all__ = [
    "CorrelationConfig",
    "CorrelationPlan",
    "CorrelationProgress",
    "CorrelationResult",
    "Tile",
    "correlate",
    "logger",
    "parse_bytes",
    "plan_correlation",
]

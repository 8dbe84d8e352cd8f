"""Moved to :mod:`tl_universality.analyses.roles`.

This path works for one more release.
"""

from tl_universality.analyses.roles import (
    ROLES,
    TokenSetScores,
    TokenSetsSpec,
    prediction_neurons,
    role_counts,
    token_set_scores,
)

__all__ = [
    "ROLES",
    "TokenSetScores",
    "TokenSetsSpec",
    "prediction_neurons",
    "role_counts",
    "token_set_scores",
]

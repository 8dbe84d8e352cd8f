"""Moved to :mod:`tl_universality.analyses.attention`.

This path works for one more release.
"""

from tl_universality.analyses.attention import (
    AttentionDeactivationScores,
    PathAblationResult,
    attention_deactivation_scores,
    bos_keys,
    bos_query_directions,
    path_ablation,
)

__all__ = [
    "AttentionDeactivationScores",
    "PathAblationResult",
    "attention_deactivation_scores",
    "bos_keys",
    "bos_query_directions",
    "path_ablation",
]

"""Sparse attention decomposition and head-to-head circuit tracing (Franco & Crovella 2024).

A head's attention score is a sum of one term per singular direction of its QK form with biases
(:mod:`.svd`, :mod:`.decompose`); a handful of directions usually carry it. Projecting upstream
writers on those directions (:mod:`.writers`) shows which earlier heads send the signal, and
recursing from root heads draws a graph of head-to-head communication (:mod:`.trace`), which
projections of the signal test causally (:mod:`.intervene`) and :mod:`.html` shows.
"""

from tl_universality.attention_decomposition.decompose import (
    AttentionDecomposition,
    decompose_attention,
    select_prefix,
)
from tl_universality.attention_decomposition.svd import AttentionSVD, attention_svd

__all__ = [
    "AttentionDecomposition",
    "AttentionSVD",
    "attention_svd",
    "decompose_attention",
    "select_prefix",
]

"""Moved to :mod:`tl_universality.analyses.vocab`.

This path works for one more release.
"""

from tl_universality.analyses.vocab import (
    CompositionKind,
    LayersSpec,
    direction_vocab_moments,
    top_tokens,
    unembed,
    vocab_composition,
    vocab_moments,
    w_in,
    w_out,
    warn_if_unprocessed,
    weight_processing_notes,
)

__all__ = [
    "CompositionKind",
    "LayersSpec",
    "direction_vocab_moments",
    "top_tokens",
    "unembed",
    "vocab_composition",
    "vocab_moments",
    "w_in",
    "w_out",
    "warn_if_unprocessed",
    "weight_processing_notes",
]

"""Moved to :mod:`tl_universality.analyses.composition`.

This path works for one more release.
"""

from tl_universality.analyses.composition import (
    KINDS,
    CompositionKindQKV,
    HeadComposition,
    head_composition,
)

__all__ = [
    "CompositionKindQKV",
    "HeadComposition",
    "KINDS",
    "head_composition",
]

"""Moved to :mod:`tl_universality.stats.moments`.

This path works for one more release.
"""

from tl_universality.stats.moments import (
    Moments,
)

__all__ = [
    "Moments",
]

"""Moved to :mod:`tl_universality.stats.cross_moments`.

This path works for one more release.
"""

from tl_universality.stats.cross_moments import (
    Block,
    CrossMoments,
    ProductDtype,
    resolve_product_dtype,
)

__all__ = [
    "Block",
    "CrossMoments",
    "ProductDtype",
    "resolve_product_dtype",
]

"""Streaming sufficient statistics for correlating two unit sets."""

from tl_universality.stats.cross_moments.moments import (
    CrossMoments,
)
from tl_universality.stats.cross_moments.products import (
    CENTRE_BLOCK_CPU,
    PRODUCT_CHUNK,
    Block,
    ProductDtype,
    Side,
    as_parts,
    matmul_precision,
    mm,
    resolve_product_dtype,
)

__all__ = [
    "Block",
    "CENTRE_BLOCK_CPU",
    "CrossMoments",
    "PRODUCT_CHUNK",
    "ProductDtype",
    "Side",
    "as_parts",
    "matmul_precision",
    "mm",
    "resolve_product_dtype",
]

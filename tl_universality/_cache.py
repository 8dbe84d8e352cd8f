"""Moved to :mod:`tl_universality.core.cache` and :mod:`tl_universality.core.saving`.

This path works for one more release.
"""

from tl_universality.core.cache import CACHE_ENV, cache_root, stable_hash
from tl_universality.core.saving import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    reading_saved,
)

__all__ = [
    "CACHE_ENV",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "cache_root",
    "reading_saved",
    "stable_hash",
]

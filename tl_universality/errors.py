"""Moved to :mod:`tl_universality.core.errors`.

This path works for one more release.
"""

from tl_universality.core.errors import (
    AccessorError,
    CheckpointMismatchError,
    CorruptCacheError,
    EmptyTokenSourceError,
    HookError,
    NonFiniteActivationError,
    NoUnitsError,
    SequenceTooLongError,
    TokenizerMismatchError,
    UniversalityError,
)

__all__ = [
    "AccessorError",
    "CheckpointMismatchError",
    "CorruptCacheError",
    "EmptyTokenSourceError",
    "HookError",
    "NoUnitsError",
    "NonFiniteActivationError",
    "SequenceTooLongError",
    "TokenizerMismatchError",
    "UniversalityError",
]

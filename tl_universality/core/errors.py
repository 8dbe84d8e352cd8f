"""Errors raised by tl_universality.

Every error names the problem and the fix. They subclass the built-in exception a user would
expect (``ValueError`` for bad input, ``RuntimeError`` for a run that went wrong), so existing
``except`` clauses keep working.
"""

from __future__ import annotations


class UniversalityError(Exception):
    """Base class of every error raised by tl_universality."""


class AccessorError(UniversalityError, RuntimeError):
    """Building ``model.universality`` failed.

    Raised instead of the original ``AttributeError``, which ``nn.Module.__getattr__`` would
    otherwise swallow and replace with a misleading "has no attribute 'universality'".
    """


class TokenizerMismatchError(UniversalityError, ValueError):
    """Models that must share a tokenizer do not (different vocabularies or special tokens)."""


class HookError(UniversalityError, ValueError):
    """A requested hook does not exist, never fired, or had an unexpected shape."""


class NoUnitsError(UniversalityError, ValueError):
    """The model has none of the units asked for (e.g. MLP neurons of an attention-only model)."""


class EmptyTokenSourceError(UniversalityError, ValueError):
    """A token source yielded no sequence."""


class SequenceTooLongError(UniversalityError, ValueError):
    """Sequences are longer than a model's context window (``cfg.n_ctx``)."""


class NonFiniteActivationError(UniversalityError, FloatingPointError):
    """Activations contained NaN or infinity."""


class CorruptCacheError(UniversalityError, OSError):
    """A cached model, tokenizer or results folder is incomplete or unreadable."""


class CheckpointMismatchError(UniversalityError, ValueError):
    """A checkpoint folder holds a run made with different arguments (models, tokens, units...)."""

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


class InvalidArgumentError(UniversalityError, ValueError, TypeError):
    """An argument of a public function has the wrong type or is out of range.

    A ``ValueError`` and a ``TypeError`` at once, so either ``except`` clause catches it. The
    message names the argument, the value and the fix.
    """


class InvalidTokensError(InvalidArgumentError):
    """Token ids that are not integers, not 1-D/2-D, or outside ``[0, d_vocab)``."""


class TokenFileError(UniversalityError, ValueError):
    """A token file (text, JSONL, parquet) cannot be read; the message names the file and line."""

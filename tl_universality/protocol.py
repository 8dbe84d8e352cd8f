"""Moved to :mod:`tl_universality.core.protocol`.

This path works for one more release.
"""

from tl_universality.core.protocol import (
    HookedModel,
    HookFn,
    check_hooks_exist,
    check_same_tokenizer,
    has_mlps,
    mlp_hook_names,
    model_name,
    vocabulary_fingerprint,
)

__all__ = [
    "HookFn",
    "HookedModel",
    "check_hooks_exist",
    "check_same_tokenizer",
    "has_mlps",
    "mlp_hook_names",
    "model_name",
    "vocabulary_fingerprint",
]

"""Moved to :mod:`tl_universality.data.token_sets`.

This path works for one more release.
"""

from tl_universality.data.token_sets import (
    BUILTIN_TOKEN_SETS,
    TokenPredicate,
    TokenSet,
    get_token_set,
    list_token_sets,
    masks_matrix,
    register_token_set,
    token_set_frame,
    token_set_masks,
    unregister_token_set,
    vocab_strings,
)

__all__ = [
    "BUILTIN_TOKEN_SETS",
    "TokenPredicate",
    "TokenSet",
    "get_token_set",
    "list_token_sets",
    "masks_matrix",
    "register_token_set",
    "token_set_frame",
    "token_set_masks",
    "unregister_token_set",
    "vocab_strings",
]

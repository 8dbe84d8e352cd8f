"""Builders of small objects shared by the tests (small defaults, override what a test needs)."""

from __future__ import annotations

from typing import Any

from transformer_lens import HookedTransformer, HookedTransformerConfig

#: The default test architecture: TransformerLens's own unit-test size.
SMALL_MODEL: dict[str, Any] = dict(
    n_layers=2,
    d_model=32,
    n_heads=4,
    d_head=8,
    d_mlp=64,
    d_vocab=64,
    n_ctx=32,
    act_fn="gelu_new",
    normalization_type="LN",
    seed=0,
)


def build_model(tokenizer: Any = None, **overrides: Any) -> HookedTransformer:
    """A small random ``HookedTransformer`` (2 layers, d_model 32, d_mlp 64, d_vocab 64, n_ctx 32).

    Any ``HookedTransformerConfig`` field can be overridden, e.g. ``build_model(n_ctx=8, seed=1)``;
    with a tokenizer, ``d_vocab`` defaults to its size.
    """
    cfg = dict(SMALL_MODEL)
    if tokenizer is not None:
        cfg["d_vocab"] = len(tokenizer)
    cfg.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)

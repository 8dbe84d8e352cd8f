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


def byte_level_tokenizer(tokens: list[str]) -> Any:
    """A real fast GPT-2-style tokenizer over exactly ``tokens`` (ids in order), no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def saved(tokenizer: Any, folder: Any) -> Any:
    """Save and reload from ``folder``: TransformerLens needs a tokenizer with a real path."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

"""The small slice of TransformerLens's hook interface that tl_universality relies on.

Everything in the package is typed against :class:`HookedModel`, not against a class:
``HookedTransformer``, ``HookedSAETransformer`` and ``TransformerBridge`` all satisfy it, and
TransformerLens 4 removed ``HookedTransformer`` altogether.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from tl_universality.core.errors import HookError, NoUnitsError, TokenizerMismatchError

HookFn = Callable[..., Any]
"""A TransformerLens forward hook: ``fn(activation, hook) -> activation | None``."""


@runtime_checkable
class HookedModel(Protocol):
    """What we use of a TransformerLens model: config, named hook points and scoped hooks.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
        ...                               act_fn="relu")
        >>> isinstance(HookedTransformer(cfg), HookedModel)
        True
    """

    cfg: Any
    hook_dict: dict[str, Any]

    def hooks(
        self,
        fwd_hooks: list[tuple[str | Callable[[str], bool], HookFn]] = ...,
        bwd_hooks: list[tuple[str | Callable[[str], bool], HookFn]] = ...,
        reset_hooks_end: bool = ...,
        clear_contexts: bool = ...,
    ) -> AbstractContextManager[Any]: ...

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...


def model_name(model: HookedModel) -> str:
    """A readable name for error messages: ``cfg.model_name`` or the class name."""
    name = getattr(model.cfg, "model_name", None)
    return str(name) if name else type(model).__name__


def has_mlps(model: HookedModel) -> bool:
    """Whether the model has MLP layers (attention-only models do not)."""
    return not getattr(model.cfg, "attn_only", False) and bool(getattr(model.cfg, "d_mlp", 0))


def mlp_hook_names(model: HookedModel, hook: str = "hook_post") -> list[str]:
    """Names of ``blocks.{l}.mlp.{hook}`` for every layer, checked to exist.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
        ...                               act_fn="relu")
        >>> mlp_hook_names(HookedTransformer(cfg))
        ['blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post']
    """
    if not has_mlps(model):
        raise NoUnitsError(
            f"{model_name(model)} has no MLP layers"
            f" (attn_only={getattr(model.cfg, 'attn_only', None)}), so it has no MLP neurons to"
            " analyse. Pass `units=` with hooks the model has, e.g."
            " ['blocks.0.attn.hook_z'] or ['blocks.0.hook_resid_post']."
        )
    names = [f"blocks.{layer}.mlp.{hook}" for layer in range(model.cfg.n_layers)]
    check_hooks_exist(model, names)
    return names


def check_hooks_exist(model: HookedModel, names: Sequence[str]) -> None:
    """Raise :class:`HookError` naming any hook the model lacks, with the closest real names."""
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        hints = []
        for name in missing[:3]:
            close = difflib.get_close_matches(name, list(model.hook_dict), n=3, cutoff=0.6)
            hints.append(
                f"{name!r} (did you mean {', '.join(map(repr, close))}?)" if close else repr(name)
            )
        raise HookError(
            f"{model_name(model)} has no hook point named {'; '.join(hints)}"
            f"{' and others' if len(missing) > 3 else ''}. List the available ones with"
            " `list(model.hook_dict)`."
        )


def vocabulary_fingerprint(model: HookedModel) -> tuple[int, str | None]:
    """``(d_vocab, hash of the tokenizer's vocabulary or None when the model has no tokenizer)``."""
    d_vocab = int(model.cfg.d_vocab)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return d_vocab, None
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = [getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "pad_token_id", None)]
    digest = hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()[:16]
    return d_vocab, digest


def check_same_tokenizer(models: Sequence[HookedModel]) -> None:
    """Raise :class:`TokenizerMismatchError` unless all models share one vocabulary.

    Models must read the same token ids as the same tokens, or correlating their neurons on the
    same token stream compares different inputs.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> def make(v):
        ...     return HookedTransformer(HookedTransformerConfig(
        ...         n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=v, act_fn="relu"))
        >>> check_same_tokenizer([make(10), make(10)])
        >>> check_same_tokenizer([make(10), make(12)])
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.TokenizerMismatchError: ...
    """
    prints = [vocabulary_fingerprint(m) for m in models]
    ref_vocab, ref_hash = prints[0]
    for i, (d_vocab, digest) in enumerate(prints[1:], start=1):
        if d_vocab != ref_vocab or (ref_hash and digest and digest != ref_hash):
            what = (
                f"d_vocab {d_vocab} vs {ref_vocab}"
                if d_vocab != ref_vocab
                else "the same size but different token strings or special tokens"
            )
            raise TokenizerMismatchError(
                f"Model {i} ({model_name(models[i])}) and model 0 ({model_name(models[0])}) have"
                f" different tokenizers ({what}). Universality compares models on the same tokens:"
                " use seed models that share one tokenizer, e.g. load them all with the same"
                " `tokenizer=` or from the same family."
            )


def attn_scale(model: HookedModel, layer: int) -> float:
    """What the model divides ``q · k`` by in ``layer`` (``sqrt(d_head)`` by default)."""
    try:
        return float(model.blocks[layer].attn.attn_scale)  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError):
        cfg = model.cfg
        scale = float(cfg.attn_scale) if getattr(cfg, "use_attn_scale", True) else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scale *= layer + 1
        return scale

"""What a flow graph reads: one prompt, one position, some layers, checked with errors that
name the argument, the value and the fix."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tl_universality.core.protocol import HookedModel, model_name


def as_prompt(
    model: HookedModel, tokens_or_text: Any, prepend_bos: bool = True
) -> Int[Tensor, "1 seq"]:
    """One prompt as a ``[1, seq]`` id tensor: text (tokenized, BOS first) or token ids."""
    if isinstance(tokens_or_text, str):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError(
                f"tokens_or_text={tokens_or_text[:40]!r} is text but {model_name(model)} has no"
                " tokenizer. Pass token ids (a list or a 1-D tensor) instead."
            )
        tokens = model.to_tokens(tokens_or_text, prepend_bos=prepend_bos)  # type: ignore[attr-defined]
    elif isinstance(tokens_or_text, Tensor):
        tokens = tokens_or_text.long()
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[0] != 1:
            raise ValueError(
                f"tokens_or_text has shape {tuple(tokens_or_text.shape)}; a flow graph reads one"
                " prompt. Pass a 1-D tensor of ids (or a [1, seq] tensor), e.g. tokens[0]."
            )
    elif isinstance(tokens_or_text, Sequence) and all(
        isinstance(t, numbers.Integral) for t in tokens_or_text
    ):
        tokens = torch.tensor([list(tokens_or_text)], dtype=torch.long)
    else:
        raise ValueError(
            f"tokens_or_text={tokens_or_text!r:.60} is neither text nor token ids. Pass a string,"
            " a list of ints or a 1-D tensor of ids."
        )
    d_vocab, n_ctx = int(model.cfg.d_vocab), int(model.cfg.n_ctx)
    if tokens.shape[1] == 0:
        raise ValueError("tokens_or_text is empty. Pass a prompt of at least one token.")
    if tokens.shape[1] > n_ctx:
        raise ValueError(
            f"tokens_or_text has {tokens.shape[1]} tokens, more than the model's n_ctx={n_ctx}."
            f" Pass at most {n_ctx} tokens."
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        raise ValueError(
            f"tokens_or_text holds ids outside [0, {d_vocab}) (min {int(tokens.min())}, max"
            f" {int(tokens.max())}). Pass ids of this model's vocabulary."
        )
    return tokens


def resolve_position(position: Any, seq_len: int) -> int:
    """A position index in ``[0, seq_len)``, negative counting from the end.

    Examples:
        >>> resolve_position(-1, 5), resolve_position(2, 5)
        (4, 2)
        >>> resolve_position(5, 5)
        Traceback (most recent call last):
        ...
        ValueError: position=5 is out of range for a prompt of 5 tokens. ...
    """
    if not isinstance(position, numbers.Integral) or isinstance(position, bool):
        raise ValueError(
            f"position={position!r} is not an integer. Pass a token index, e.g. position=-1 for"
            " the last token."
        )
    resolved = int(position) + seq_len if position < 0 else int(position)
    if not 0 <= resolved < seq_len:
        raise ValueError(
            f"position={position} is out of range for a prompt of {seq_len} tokens. Pass a"
            f" position in [{-seq_len}, {seq_len}), e.g. -1 for the last token."
        )
    return resolved


def resolve_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """Sorted distinct layer indices (negative count from the end); ``None`` is every layer.

    Examples:
        >>> resolve_layers(None, 3), resolve_layers(-1, 3), resolve_layers([2, 0, 2], 3)
        ([0, 1, 2], [2], [0, 2])
    """
    if layers is None:
        return list(range(n_layers))
    items = [layers] if isinstance(layers, numbers.Integral) else list(layers)
    resolved = []
    for layer in items:
        if not isinstance(layer, numbers.Integral) or not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layers={layers!r} names layer {layer!r}, which the model (n_layers={n_layers})"
                f" does not have. Pass layer indices in [{-n_layers}, {n_layers}), or None for"
                " all."
            )
        resolved.append(int(layer) % n_layers)
    if not resolved:
        raise ValueError("layers=[] selects no layer. Pass None for every layer, or some indices.")
    return sorted(set(resolved))

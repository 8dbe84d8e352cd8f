"""Vocabulary composition of MLP neurons: what each neuron's output direction does to the logits.

A neuron writes ``act * w_out`` into the residual stream; through the unembedding that adds
``act * (w_out · W_U[:, v])`` to the logit of every token ``v``. The paper summarises the
distribution of ``c_v = cos(w_out, W_U[:, v])`` over the vocabulary by its population moments
(docs/concepts.md, "The neuron table"): a high kurtosis means the neuron singles out a small token
set (prediction if the
skew is positive, suppression if negative), a high variance means it splits the vocabulary.

Weights are read as the model holds them; the statistics assume TransformerLens's processed
weights (``fold_ln=True, center_writing_weights=True, center_unembed=True``, the defaults of
``HookedTransformer.from_pretrained``), so that the final LayerNorm's scale is folded into ``W_U``
and the constant logit offset is removed. :func:`weight_processing_notes` says when a model looks
unprocessed. Everything is computed in float64, a block of neurons at a time, so a
GPT-2-medium-sized model never needs a ``[units, d_vocab]`` matrix at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.protocol import HookedModel, has_mlps, mlp_hook_names, model_name
from tl_universality.stats.moments import Moments

CompositionKind = Literal["cosine", "logit"]
"""``"cosine"``: cos(w_out, W_U[:, v]); ``"logit"``: the direct logit effect w_out · W_U[:, v]."""

LayersSpec = int | Sequence[int] | None
"""One layer, a list of layers, or ``None`` for every layer."""

_BLOCK_ELEMENTS = 2**23
"""Neurons per block are chosen so that one ``[block, d_vocab]`` float64 matrix is ~64 MiB."""


def resolve_layers(model: HookedModel, layers: LayersSpec) -> list[int]:
    mlp_hook_names(model)  # raises a clear NoUnitsError for attention-only models
    n_layers = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n_layers))
    chosen = [int(layers)] if isinstance(layers, (int, np.integer)) else [int(x) for x in layers]
    bad = [x for x in chosen if not 0 <= x < n_layers]
    if bad:
        raise IndexError(f"{model_name(model)} has layers 0..{n_layers - 1}; got {bad}.")
    return chosen


def block_weight(model: HookedModel, layer: int, module: str, name: str) -> Tensor:
    """``model.blocks[layer].<module>.<name>``, else the stacked ``model.<name>[layer]``."""
    try:
        return getattr(getattr(model.blocks[layer], module), name)  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError):
        return getattr(model, name)[layer]


def w_out(model: HookedModel, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """Output weights of ``layer``'s neurons, one row per neuron, in float64 on the CPU."""
    return block_weight(model, layer, "mlp", "W_out").detach().to("cpu", torch.float64)


def w_in(model: HookedModel, layer: int) -> Float[Tensor, "d_model d_mlp"]:
    """Input weights of ``layer``'s neurons, one column per neuron, in float64 on the CPU."""
    return block_weight(model, layer, "mlp", "W_in").detach().to("cpu", torch.float64)


def unembed(model: HookedModel) -> Float[Tensor, "d_model d_vocab"]:
    """The unembedding ``W_U`` in float64 on the CPU."""
    return model.W_U.detach().to("cpu", torch.float64)  # type: ignore[attr-defined]


def safe_inverse(norms: Tensor) -> Tensor:
    # A zero vector has no direction; give it cosine 0 instead of NaN so one dead weight does not
    # poison a whole block (its moments come out as variance 0, skew/kurtosis NaN).
    return torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)


def _direction_blocks(
    directions: Float[Tensor, "n d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    kind: CompositionKind,
    chunk_size: int | None,
) -> Iterator[tuple[int, Float[Tensor, "block d_vocab"]]]:
    """Yield ``(first_row, values)`` blocks of ``directions`` read through ``W_U``, float64."""
    if kind not in ("cosine", "logit"):
        raise ValueError(f"kind must be 'cosine' or 'logit', got {kind!r}.")
    directions = directions.detach().to(W_U.device, torch.float64)
    if kind == "cosine":
        W_U = W_U * safe_inverse(W_U.norm(dim=0))
    block = chunk_size or max(1, _BLOCK_ELEMENTS // W_U.shape[1])
    for start in range(0, directions.shape[0], block):
        rows = directions[start : start + block]
        if kind == "cosine":
            rows = rows * safe_inverse(rows.norm(dim=1))[:, None]
        yield start, rows @ W_U


def composition_blocks(
    model: HookedModel,
    layers: list[int],
    kind: CompositionKind,
    chunk_size: int | None,
) -> Iterator[tuple[int, int, Float[Tensor, "block d_vocab"]]]:
    """Yield ``(layer, first_neuron, values)`` blocks of the vocabulary composition, float64."""
    W_U = unembed(model)
    for layer in layers:
        for start, values in _direction_blocks(w_out(model, layer), W_U, kind, chunk_size):
            yield layer, start, values


def direction_vocab_moments(
    model: HookedModel,
    directions: Float[Tensor, "n d_model"],
    *,
    kind: CompositionKind = "cosine",
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """``vocab_mean, vocab_var, vocab_skew, vocab_kurt`` of any residual-stream directions (one
    row each) read through ``model``'s unembedding, e.g. SAE decoder rows; the same statistics
    :func:`vocab_moments` gives for neurons' ``w_out``.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               act_fn="relu", seed=0)
        >>> direction_vocab_moments(HookedTransformer(cfg), torch.randn(3, 16)).shape
        (3, 4)
    """
    parts = [
        Moments.of(values.T)  # Moments reduce over rows: here the vocabulary
        for _, values in _direction_blocks(directions, unembed(model), kind, chunk_size)
    ]
    return pd.DataFrame(
        {
            f"vocab_{name}": torch.cat([getattr(m, name) for m in parts]).numpy()
            for name in ("mean", "var", "skew", "kurt")
        }
    )


def vocab_composition(
    model: HookedModel,
    layers: LayersSpec = None,
    kind: CompositionKind = "cosine",
    *,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
) -> Float[Tensor, "units d_vocab"]:
    """Each neuron's output direction read through the unembedding, ``[units, d_vocab]``.

    Units are ordered layer by layer (as in :func:`~tl_universality.units.activations.unit_index`).
    The result is ``units × d_vocab``: for all of GPT-2 small that is 36,864 × 50,257 (7.4 GB in
    float32), so ask for the layers you need, or use :func:`vocab_moments` / :func:`top_tokens`,
    which never hold it.

    Args:
        model: any TransformerLens model with MLPs.
        layers: layer(s) to include (default all).
        kind: ``"cosine"`` for cos(w_out, W_U[:, v]) (the paper's vocabulary composition) or
            ``"logit"`` for the direct logit effect w_out · W_U[:, v] of a unit activation.
        dtype: dtype of the returned tensor (computed in float64).
        chunk_size: neurons per block (default: ~64 MiB blocks).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> comp = vocab_composition(model, layers=1)
        >>> comp.shape, bool(comp.abs().max() <= 1 + 1e-6)
        (torch.Size([32, 20]), True)
    """
    chosen = resolve_layers(model, layers)
    d_mlp, d_vocab = int(model.cfg.d_mlp), int(model.cfg.d_vocab)
    result = torch.empty(len(chosen) * d_mlp, d_vocab, dtype=dtype)  # filled block by block
    size = result.numel() * result.element_size()
    if size > 2 * 2**30:
        warnings.warn(
            f"vocab_composition builds a {tuple(result.shape)} matrix ({size / 2**30:.1f} GiB)."
            " Pass `layers=` to keep it smaller, or use vocab_moments / top_tokens, which stream.",
            ResourceWarning,
            stacklevel=2,
        )
    offset = 0  # blocks arrive in unit order
    for _, _, values in composition_blocks(model, chosen, kind, chunk_size):
        result[offset : offset + values.shape[0]] = values
        offset += values.shape[0]
    return result


def vocab_moments(
    model: HookedModel,
    layers: LayersSpec = None,
    *,
    kind: CompositionKind = "cosine",
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Population moments of each neuron's vocabulary composition.

    One row per neuron with ``layer, neuron, vocab_mean, vocab_var, vocab_skew, vocab_kurt``:
    mean, variance, skewness and kurtosis (not excess: Gaussian = 3) of ``c_v`` over the whole
    vocabulary, computed in float64 block by block. A neuron whose ``w_out`` is zero has variance 0
    and NaN skew/kurtosis.

    Args:
        model: any TransformerLens model with MLPs (processed weights assumed, see module doc).
        layers: layer(s) to include (default all).
        kind: moments of the cosines (default, the paper's) or of the raw logit effects.
        chunk_size: neurons per block (default: ~64 MiB blocks).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", seed=0)
        >>> table = vocab_moments(HookedTransformer(cfg))
        >>> table.shape, list(table.columns)
        ((64, 6), ['layer', 'neuron', 'vocab_mean', 'vocab_var', 'vocab_skew', 'vocab_kurt'])
    """
    frames = []
    for layer in resolve_layers(model, layers):
        table = direction_vocab_moments(
            model, w_out(model, layer), kind=kind, chunk_size=chunk_size
        )
        table.insert(0, "neuron", np.arange(len(table), dtype=np.int64))
        table.insert(0, "layer", np.full(len(table), layer, dtype=np.int64))
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def top_tokens(
    model: HookedModel,
    layer: int,
    neuron: int,
    k: int = 10,
    *,
    kind: CompositionKind = "cosine",
    tokenizer: object | None = None,
) -> pd.DataFrame:
    """The ``k`` tokens a neuron's output raises most and lowers most.

    Returns a table with columns ``side`` (``"top"``/``"bottom"``), ``rank`` (0 = most extreme),
    ``token_id``, ``token`` (the decoded string, leading space included, see
    :func:`~tl_universality.data.token_sets.vocab_strings`) and ``value`` (cosine or logit effect).

    Args:
        model: the model.
        layer, neuron: which neuron.
        k: tokens per side.
        kind: rank by cosine (default) or by raw logit effect.
        tokenizer: tokenizer for the strings (default ``model.tokenizer``; without one the token
            column holds the ids as text).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", seed=0)
        >>> top = top_tokens(HookedTransformer(cfg), 0, 3, k=2)
        >>> top[["side", "rank"]].values.tolist()
        [['top', 0], ['top', 1], ['bottom', 0], ['bottom', 1]]
    """
    from tl_universality.data.token_sets import vocab_strings

    chosen = resolve_layers(model, layer)
    n_neurons = int(model.cfg.d_mlp)
    if not 0 <= neuron < n_neurons:
        raise IndexError(f"layer {layer} has {n_neurons} neurons, not neuron {neuron}.")
    W_U = unembed(model)
    row = w_out(model, chosen[0])[neuron]
    values = row @ W_U
    if kind == "cosine":
        values = values * safe_inverse(W_U.norm(dim=0)) * safe_inverse(row.norm()[None])
    elif kind != "logit":
        raise ValueError(f"kind must be 'cosine' or 'logit', got {kind!r}.")
    k = min(int(k), values.shape[0])
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    strings = (
        vocab_strings(tok, values.shape[0])
        if tok is not None
        else [str(i) for i in range(values.shape[0])]
    )
    rows = []
    for side, largest in (("top", True), ("bottom", False)):
        vals, ids = torch.topk(values, k, largest=largest)
        for rank, (v, i) in enumerate(zip(vals.tolist(), ids.tolist(), strict=True)):
            rows.append((side, rank, i, strings[i], v))
    return pd.DataFrame(rows, columns=["side", "rank", "token_id", "token", "value"])


def weight_processing_notes(model: HookedModel, atol: float = 1e-4) -> list[str]:
    """Which of TransformerLens's weight-processing conventions ``model`` does not follow.

    The paper's weight statistics assume ``fold_ln`` (LayerNorm scales folded into the next
    weights, ``cfg.normalization_type`` ``"LNPre"``/``"RMSPre"``), ``center_writing_weights``
    (every ``W_out`` row has zero mean over ``d_model``, so LayerNorm's centring is a no-op) and
    ``center_unembed`` (each row of ``W_U`` has zero mean over the vocabulary, so no direction adds
    the same amount to every logit). Returns one line per unmet convention (empty when all hold).
    Processed models come from ``HookedTransformer.from_pretrained`` (default) or
    ``model.process_weights_()``.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", normalization_type="LN", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> len(weight_processing_notes(model))
        3
        >>> model.process_weights_()
        >>> weight_processing_notes(model)
        []
    """
    notes = []
    norm = getattr(model.cfg, "normalization_type", None)
    if norm in ("LN", "RMS"):
        notes.append(
            f"LayerNorm scales are not folded (normalization_type={norm!r}; fold_ln=True expected):"
            " w_in norms and vocab composition ignore the LN weights."
        )
    if norm in ("LN", "LNPre") and has_mlps(model):
        worst = max(
            float(w_out(model, layer).mean(dim=1).abs().max())
            for layer in resolve_layers(model, None)
        )
        if worst > atol:
            notes.append(
                f"W_out rows are not centred (largest mean {worst:.2g};"
                " center_writing_weights=True expected): w_out norms include a component the"
                " next LayerNorm removes."
            )
    if hasattr(model, "W_U"):
        worst_u = float(unembed(model).mean(dim=1).abs().max())
        if worst_u > atol:
            notes.append(
                f"W_U is not centred over the vocabulary (largest row mean {worst_u:.2g};"
                " center_unembed=True expected): cosines include a direction that shifts every"
                " logit equally."
            )
    return notes


def warn_if_unprocessed(model: HookedModel, what: str, stacklevel: int = 3) -> list[str]:
    """Warn (once per message) when ``model`` breaks the processed-weight conventions."""
    notes = weight_processing_notes(model)
    if notes:
        warnings.warn(
            f"{what} assume TransformerLens's processed weights, but in {model_name(model)!r}: "
            + " ".join(notes)
            + " Load with HookedTransformer.from_pretrained(...) defaults or call"
            " model.process_weights_() first.",
            UserWarning,
            stacklevel=stacklevel,
        )
    return notes

"""Logit-lens readings: any residual-space vector read as a distribution over the vocabulary.

VISIT (Katz & Belinkov 2023) reads every vector of a forward pass (hidden states, head outputs
``z_h W_O[h]``, MLP value vectors ``act · W_out[n]``) through the model's final LayerNorm and its
unembedding: ``logits(v) = LN_final(v) @ W_U + b_U``. This module is that reading, for a batch of
vectors at once, with the numbers a flow graph shows: the top and bottom tokens with their
probabilities, the entropy, and the target token's probability and rank.

Two ways to normalise, because a LayerNorm is not linear:

- ``mode="own"`` (VISIT's): each vector is normalised by *its own* scale, as if it were the whole
  residual stream. The reading of the final residual is then exactly the model's output, but the
  reading of a *part* (a head's output, a neuron's value vector) is an approximation: in the real
  forward pass that part is divided by the scale of the residual it is added to, and it is
  centred and scaled together with everything else. Its top tokens say what the vector points
  at; its probabilities are not the change it makes to the output.
- ``mode="residual"``: each vector is centred and divided by the *live* scale of the final
  residual at its position (``ln_final.hook_scale``), then the LN weight and bias apply. The
  reading is affine in the vector (the sum of the readings of a decomposition of the residual,
  minus the reading of zero for every extra term, is the model's output): this is direct logit
  attribution, exact as a statement about logits.

For a model without LayerNorm (``cfg.normalization_type=None``, e.g. the LN-free models of
Heimersheim 2024) both modes are the same exact affine map ``v @ W_U + b_U``, and readings of the
parts of a sum add up to the reading of the sum.

Examples:
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
    ...                               act_fn="relu", seed=0)
    >>> model = HookedTransformer(cfg)
    >>> table = read_vectors(model, torch.randn(3, 8), k=2, target=4)
    >>> table.columns.tolist()[:4]
    ['norm', 'top_token', 'top_ids', 'top_tokens']
    >>> int(table.loc[0, "target_rank"]) >= 1
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.protocol import HookedModel

ReadingMode = Literal["own", "residual"]
"""How a vector is normalised before the unembedding: by its own scale or the residual's."""

READING_COLUMNS = (
    "norm",
    "top_token",
    "top_ids",
    "top_tokens",
    "top_probs",
    "bottom_ids",
    "bottom_tokens",
    "bottom_probs",
    "entropy",
    "target_prob",
    "target_rank",
)
"""The columns :func:`read_vectors` returns, in order (``top_*``/``bottom_*`` hold lists)."""

LIST_COLUMNS = ("top_ids", "top_tokens", "top_probs", "bottom_ids", "bottom_tokens", "bottom_probs")


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` naming the accepted reading modes."""
    if mode not in ("own", "residual"):
        raise ValueError(
            f"reading={mode!r} is not a reading mode. Pass reading='own' (each vector normalised"
            " by its own scale, as VISIT does) or reading='residual' (by the final residual's"
            " live scale: affine, direct logit attribution)."
        )


def final_normalize(
    model: HookedModel,
    vectors: Float[Tensor, "n d_model"],
    scale: Float[Tensor, "n 1"] | None = None,
) -> Float[Tensor, "n d_model"]:
    """Apply the final LayerNorm to ``vectors``, with their own scale or the given one.

    Follows ``cfg.normalization_type``: ``LN``/``LNPre`` centre and divide by
    ``sqrt(var + eps)``, ``RMS``/``RMSPre`` divide by ``sqrt(mean(x²) + eps)``, then the learned
    weight and bias apply where the model has them; ``None`` is the identity. With ``scale`` the
    division uses it instead of each vector's own (the residual's live scale).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
        ...                               act_fn="relu")
        >>> model = HookedTransformer(cfg)
        >>> x = torch.randn(2, 8)
        >>> torch.allclose(final_normalize(model, x), model.ln_final(x), atol=1e-6)
        True
    """
    kind = getattr(model.cfg, "normalization_type", None)
    if kind is None:
        return vectors
    x = vectors
    if kind in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    elif kind not in ("RMS", "RMSPre"):
        raise ValueError(
            f"normalization_type={kind!r} is not one the logit lens knows. Flow graphs read"
            " models with LN, LNPre, RMS, RMSPre or no normalisation (None)."
        )
    if scale is None:
        scale = (x.pow(2).mean(-1, keepdim=True) + float(model.cfg.eps)).sqrt()
    x = x / scale
    ln = model.ln_final  # type: ignore[attr-defined]
    if getattr(ln, "w", None) is not None:
        x = x * ln.w
    if getattr(ln, "b", None) is not None:
        x = x + ln.b
    return x


def vector_logits(
    model: HookedModel,
    vectors: Float[Tensor, "n d_model"],
    *,
    mode: ReadingMode = "own",
    scale: Float[Tensor, "n 1"] | None = None,
) -> Float[Tensor, "n d_vocab"]:
    """``LN_final(v) @ W_U + b_U`` for every row (see the module docstring for ``mode``).

    ``mode="residual"`` needs ``scale``: the final residual's ``ln_final.hook_scale`` at the
    position each vector belongs to.
    """
    check_mode(mode)
    if mode == "residual" and scale is None and model.cfg.normalization_type is not None:
        raise ValueError(
            "mode='residual' needs `scale`, the final residual's ln_final.hook_scale at each"
            " vector's position; flow_graph passes it from its cache."
        )
    W_U = model.W_U  # type: ignore[attr-defined]
    vectors = vectors.to(W_U.dtype)
    normalized = final_normalize(model, vectors, scale if mode == "residual" else None)
    logits = normalized @ W_U
    b_U = getattr(model, "b_U", None)
    return logits + b_U if b_U is not None else logits


def token_strings(model: HookedModel) -> list[str]:
    """The printed form of every token id: the decoded string, or ``<id>`` without a tokenizer."""
    from tl_universality.data.token_sets import vocab_strings

    d_vocab = int(model.cfg.d_vocab)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [f"<{i}>" for i in range(d_vocab)]
    strings = vocab_strings(tokenizer, d_vocab)
    return [s if s else f"<{i}>" for i, s in enumerate(strings)]


def read_vectors(
    model: HookedModel,
    vectors: Float[Tensor, "n d_model"],
    *,
    k: int = 5,
    target: int | None = None,
    mode: ReadingMode = "own",
    scale: Float[Tensor, "n 1"] | None = None,
    strings: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read each row of ``vectors`` through the final LN and the unembedding.

    Args:
        model: The model whose ``ln_final``, ``W_U`` and ``b_U`` read the vectors.
        vectors: ``[n, d_model]`` residual-space vectors.
        k: How many top and bottom tokens to keep.
        target: A token id whose probability and rank (1 = most probable) are reported;
            ``None`` gives NaN and -1.
        mode: ``"own"`` or ``"residual"`` normalisation (module docstring).
        scale: ``[n, 1]`` residual scales for ``mode="residual"``.
        strings: Token strings (default :func:`token_strings`).

    Returns:
        One row per vector with :data:`READING_COLUMNS`: ``norm`` (‖v‖), the top token, the
        ``k`` most and least probable token ids, strings and probabilities, the entropy of the
        distribution in nats, ``target_prob`` and ``target_rank``.
    """
    with torch.no_grad():
        logits = vector_logits(model, vectors.detach(), mode=mode, scale=scale).float()
    log_probs = logits.log_softmax(-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nan_to_num().sum(-1)
    k = max(1, min(int(k), logits.shape[-1]))
    top = logits.topk(k, dim=-1)
    bottom = logits.topk(k, dim=-1, largest=False)
    strings = list(strings) if strings is not None else token_strings(model)
    top_ids, bottom_ids = top.indices.cpu().numpy(), bottom.indices.cpu().numpy()
    top_p = probs.gather(-1, top.indices).cpu().numpy()
    bottom_p = probs.gather(-1, bottom.indices).cpu().numpy()
    if target is not None:
        target_logit = logits[:, int(target)]
        target_prob = probs[:, int(target)].cpu().numpy().astype(float)
        target_rank = ((logits > target_logit[:, None]).sum(-1) + 1).cpu().numpy()
    else:
        target_prob = np.full(len(logits), np.nan)
        target_rank = np.full(len(logits), -1)
    rows: dict[str, Any] = {
        "norm": vectors.detach().float().norm(dim=-1).cpu().numpy().astype(float),
        "top_token": [strings[i[0]] for i in top_ids],
        "top_ids": [ids.tolist() for ids in top_ids],
        "top_tokens": [[strings[i] for i in ids] for ids in top_ids],
        "top_probs": [p.tolist() for p in top_p],
        "bottom_ids": [ids.tolist() for ids in bottom_ids],
        "bottom_tokens": [[strings[i] for i in ids] for ids in bottom_ids],
        "bottom_probs": [p.tolist() for p in bottom_p],
        "entropy": entropy.cpu().numpy().astype(float),
        "target_prob": target_prob,
        "target_rank": target_rank.astype(np.int64),
    }
    return pd.DataFrame(rows, columns=list(READING_COLUMNS))


def resolve_target(model: HookedModel, target: Any, argument: str = "target") -> int:
    """A token id from an id or a string that is exactly one token; errors name the fix.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
        ...                               act_fn="relu")
        >>> resolve_target(HookedTransformer(cfg), 3)
        3
        >>> resolve_target(HookedTransformer(cfg), 12)
        Traceback (most recent call last):
        ...
        ValueError: target=12 is not a token id of this model ...
    """
    d_vocab = int(model.cfg.d_vocab)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < d_vocab:
            raise ValueError(
                f"{argument}={int(target)} is not a token id of this model (d_vocab={d_vocab})."
                f" Pass an id in [0, {d_vocab}) or the token's string."
            )
        return int(target)
    if isinstance(target, str):
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                f"{argument}={target!r} is a string but the model has no tokenizer. Pass the"
                " target's token id instead."
            )
        ids = tokenizer.encode(target, add_special_tokens=False)
        if len(ids) != 1 or ids[0] >= d_vocab:
            pieces = [tokenizer.decode([i]) for i in ids]
            raise ValueError(
                f"{argument}={target!r} is not one token of this model's vocabulary (it"
                f" tokenizes to {len(ids)} tokens: {pieces!r}). Pass a string that is a single"
                " token (mind the leading space, e.g. ' the') or a token id."
            )
        return int(ids[0])
    raise ValueError(
        f"{argument}={target!r} is neither a token id nor a token string. Pass an int id, a"
        " single-token string, or None for the next token (the prediction at the last position)."
    )

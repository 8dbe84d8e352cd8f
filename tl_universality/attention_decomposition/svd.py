"""The bilinear form of one attention head, with biases, and its singular directions.

A head's unscaled attention score between a destination (query) position and a source (key)
position is ``q · k = (x_dest W_Q + b_Q) · (x_src W_K + b_K)``, with ``x`` the residual stream
after the head's LayerNorm. Appending a constant 1 to the normalised residual, ``x̃ = [x; 1]``,
makes it one bilinear form with no separate bias terms:

    q · k = x̃_dest Ω̃ x̃_srcᵀ,   Ω̃ = Q̃ K̃ᵀ,   Q̃ = [W_Q; b_Q],   K̃ = [W_K; b_K]

so ``Ω̃ = [[W_Q W_Kᵀ, W_Q b_Kᵀ], [b_Q W_Kᵀ, b_Q · b_K]]`` is ``(d_model + 1) × (d_model + 1)`` and
has rank at most ``d_head``. Its SVD ``Ω̃ = U diag(σ) Vᵀ`` truncated to ``d_head`` is exact, and the
score splits into one term per singular direction, ``Σ_k σ_k (x̃_dest · u_k)(x̃_src · v_k)``
(:mod:`~tl_universality.attention_decomposition.decompose`).

Conventions. Here ``x`` is the residual *normalised* by the LayerNorm (centred where the norm
centres, divided by its scale) and the LayerNorm's own weight and bias are folded into ``W_Q``,
``b_Q``, ``W_K`` and ``b_K`` (what TransformerLens's ``fold_ln`` does to the weights), so the
decomposition is exact whether or not the model's weights were processed. A model without
normalisation reads the raw residual. The SVD is computed in float64 from the two thin factors
(QR of ``Q̃`` and ``K̃``, then the SVD of a ``d_head × d_head`` matrix), which is exact and much
cheaper than the SVD of ``Ω̃`` itself; singular vectors get a deterministic sign (the largest
entry of each ``u_k`` is positive).

Results are cached per model and head, and recomputed when the head's weights change.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.names import head_name
from tl_universality.core.protocol import HookedModel, attn_scale, model_name

SUPPORTED_POSITIONAL = ("standard",)
"""Positional embedding types for which the score is a bilinear form of the residual alone."""


@dataclass(frozen=True, eq=False)
class AttentionSVD:
    """The SVD of one head's augmented QK form ``Ω̃`` (float64, rank ``d_head``).

    Attributes:
        layer, head: The head.
        U: ``[d_model + 1, d_head]`` left (query-side) singular vectors; the last row multiplies
            the constant coordinate of ``x̃``.
        S: ``[d_head]`` singular values, largest first.
        V: ``[d_model + 1, d_head]`` right (key-side) singular vectors.
        centred: Whether the head's LayerNorm centres the residual (``LN``/``LNPre``).
        attn_scale: The number the model divides ``q · k`` by.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4,
        ...     d_head=2, n_heads=2, d_vocab=10, act_fn="relu", seed=0))
        >>> svd = attention_svd(model, 0, 1)
        >>> svd.U.shape, svd.S.shape, svd.name
        (torch.Size([9, 2]), torch.Size([2]), 'L0H1')
    """

    layer: int
    head: int
    U: Float[Tensor, "d_aug rank"]
    S: Float[Tensor, " rank"]
    V: Float[Tensor, "d_aug rank"]
    centred: bool
    attn_scale: float

    @property
    def name(self) -> str:
        """The head's unit name, e.g. ``L1H3``."""
        return head_name(self.layer, self.head)

    @property
    def rank(self) -> int:
        """Number of singular directions (``d_head``)."""
        return int(self.S.shape[0])

    def omega(self) -> Float[Tensor, "d_aug d_aug"]:
        """``Ω̃`` rebuilt from the SVD, ``U diag(S) Vᵀ``."""
        return (self.U * self.S) @ self.V.T


def positional_support_error(model: HookedModel) -> str | None:
    """Why the score of ``model`` is not a bilinear form of the residual, or None if it is."""
    cfg = model.cfg
    kind = getattr(cfg, "positional_embedding_type", "standard")
    if kind not in SUPPORTED_POSITIONAL:
        return (
            f"{model_name(model)} uses positional_embedding_type={kind!r}: its attention score"
            " depends on the positions apart from the residual stream, so it is not one bilinear"
            " form of x̃. Sparse attention decomposition supports models with learned absolute"
            " position embeddings (positional_embedding_type='standard'), e.g. GPT-2."
        )
    if getattr(cfg, "attn_scores_soft_cap", -1.0) not in (None, -1.0, 0.0):
        return (
            f"{model_name(model)} soft-caps its attention scores (attn_scores_soft_cap="
            f"{cfg.attn_scores_soft_cap}), so the score is not the bilinear form. Use a model"
            " without soft-capping."
        )
    return None


def check_head(model: HookedModel, layer: int, head: int) -> tuple[int, int]:
    """``(layer, head)`` as ints, or a ``ValueError`` naming the argument, the value and the fix."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if isinstance(layer, bool) or not 0 <= int(layer) < n_layers:
        raise ValueError(
            f"layer={layer!r} is not a layer of {model_name(model)}: pass 0 <= layer < {n_layers}."
        )
    if isinstance(head, bool) or not 0 <= int(head) < n_heads:
        raise ValueError(
            f"head={head!r} is not a head of {model_name(model)}: pass 0 <= head < {n_heads}."
        )
    if (why := positional_support_error(model)) is not None:
        raise ValueError(why)
    return int(layer), int(head)


def norm_kind(model: HookedModel) -> str | None:
    """The normalisation in front of attention: ``LN``, ``LNPre``, ``RMS``, ``RMSPre`` or None."""
    return getattr(model.cfg, "normalization_type", None)


def _ln1_affine(model: HookedModel, layer: int) -> tuple[Tensor | None, Tensor | None]:
    """``(weight, bias)`` of the LayerNorm in front of ``layer``'s attention (None if absent)."""
    if norm_kind(model) not in ("LN", "RMS"):
        return None, None
    ln = model.blocks[layer].ln1  # type: ignore[attr-defined]
    weight = getattr(ln, "w", None)
    bias = getattr(ln, "b", None)
    as64 = lambda t: t.detach().to("cpu", torch.float64) if isinstance(t, Tensor) else None
    return as64(weight), as64(bias)


def head_factors(
    model: HookedModel, layer: int, head: int
) -> tuple[Float[Tensor, "d_aug d_head"], Float[Tensor, "d_aug d_head"]]:
    """``(Q̃, K̃)``: ``[W_Q; b_Q]`` and ``[W_K; b_K]`` with the LayerNorm's weight and bias folded
    in (float64), so that ``q · k = x̃_dest Q̃ K̃ᵀ x̃_srcᵀ`` for the normalised ``x̃``.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4,
        ...     d_head=2, n_heads=2, d_vocab=10, act_fn="relu", seed=0))
        >>> [f.shape for f in head_factors(model, 0, 0)]
        [torch.Size([9, 2]), torch.Size([9, 2])]
    """
    as64 = lambda t: t.detach().to("cpu", torch.float64)
    W_Q = as64(model.W_Q[layer, head])  # type: ignore[attr-defined]
    W_K = as64(model.W_K[layer, head])  # type: ignore[attr-defined]
    b_Q = as64(model.b_Q[layer, head])  # type: ignore[attr-defined]
    b_K = as64(model.b_K[layer, head])  # type: ignore[attr-defined]
    weight, bias = _ln1_affine(model, layer)
    if bias is not None:  # (x w + b) W + b_W = x (w ⊙ W) + (b W + b_W)
        b_Q, b_K = b_Q + bias @ W_Q, b_K + bias @ W_K
    if weight is not None:
        W_Q, W_K = weight[:, None] * W_Q, weight[:, None] * W_K
    return torch.cat([W_Q, b_Q[None]]), torch.cat([W_K, b_K[None]])


def omega(model: HookedModel, layer: int, head: int) -> Float[Tensor, "d_aug d_aug"]:
    """The augmented QK matrix ``Ω̃ = Q̃ K̃ᵀ`` of one head, ``(d_model + 1)²``, float64."""
    layer, head = check_head(model, layer, head)
    Q, K = head_factors(model, layer, head)
    return Q @ K.T


def _thin_svd(
    Q: Float[Tensor, "d_aug r"], K: Float[Tensor, "d_aug r"]
) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of ``Q Kᵀ`` from its factors: ``Q = Q1 R1``, ``K = Q2 R2``, ``R1 R2ᵀ = A S Bᵀ``."""
    Q1, R1 = torch.linalg.qr(Q)
    Q2, R2 = torch.linalg.qr(K)
    A, S, Bh = torch.linalg.svd(R1 @ R2.T)
    U, V = Q1 @ A, Q2 @ Bh.T
    # Deterministic signs: the entry of largest magnitude of each u_k is positive (v_k follows).
    pivot = U.abs().argmax(dim=0)
    sign = torch.sign(U[pivot, torch.arange(U.shape[1])])
    sign[sign == 0] = 1.0
    return U * sign, S, V * sign


# Cache: per model (weakly held), per head, the weights it was computed from and the SVD.
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], tuple[Tensor, Tensor, AttentionSVD]]]
_CACHE = weakref.WeakKeyDictionary()


def attention_svd(model: HookedModel, layer: int, head: int) -> AttentionSVD:
    """The SVD of head ``(layer, head)``'s augmented QK form ``Ω̃`` (biases included).

    ``Ω̃ = [[W_Q W_Kᵀ, W_Q b_Kᵀ], [b_Q W_Kᵀ, b_Q · b_K]]`` on ``x̃ = [x; 1]``, truncated to rank
    ``d_head`` (exact: ``Ω̃`` has no higher rank). Cached per model and head; the cache entry is
    recomputed when the head's (or its LayerNorm's) weights change, and dropped with the model.

    Args:
        model: A TransformerLens model with absolute (``standard``) position embeddings.
        layer: The head's layer.
        head: The head's index in its layer.

    Returns:
        An :class:`AttentionSVD` (float64 ``U``, ``S``, ``V``).

    Raises:
        ValueError: ``layer`` or ``head`` is out of range, or the model's score is not a bilinear
            form of the residual (rotary, ALiBi, soft-capped scores).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4,
        ...     d_head=2, n_heads=2, d_vocab=10, act_fn="relu", seed=0))
        >>> svd = attention_svd(model, 0, 0)
        >>> bool(torch.allclose(svd.omega(), omega(model, 0, 0)))
        True
        >>> attention_svd(model, 0, 0) is svd  # cached
        True
    """
    layer, head = check_head(model, layer, head)
    Q, K = head_factors(model, layer, head)
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no cache
        per_model = {}
    hit = per_model.get((layer, head))
    if hit is not None and torch.equal(hit[0], Q) and torch.equal(hit[1], K):
        return hit[2]
    U, S, V = _thin_svd(Q, K)
    result = AttentionSVD(
        layer=layer,
        head=head,
        U=U,
        S=S,
        V=V,
        centred=norm_kind(model) in ("LN", "LNPre"),
        attn_scale=attn_scale(model, layer),
    )
    per_model[(layer, head)] = (Q, K, result)
    return result


__all__ = ["AttentionSVD", "attention_svd", "attn_scale", "head_factors", "omega"]

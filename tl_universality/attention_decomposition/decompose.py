"""One attention score as a sum of terms, one per singular direction, and the few that carry it.

With the SVD of a head's augmented QK form (:mod:`~tl_universality.attention_decomposition.svd`),
the unscaled score of a (destination, source) pair is a sum over the ``d_head`` directions,

    q · k = Σ_k t_k,   t_k = σ_k (x̃_dest · u_k)(x̃_src · v_k),

with ``x̃ = [x; 1]`` the normalised residual augmented by a constant. ``hook_attn_scores`` is that
sum divided by the head's attention scale.

**The selected directions.** Sort the terms so that those pushing towards the total's sign come
first (descending when the total is positive, ascending when it is negative) and keep the smallest
prefix whose cumulative sum reaches ``threshold × total`` (default 1.0: the whole score). The
prefix of every term of the total's sign always reaches it (the rest can only pull back), so a
prefix exists; when every term has the total's sign, only the full set reaches it, and rounding
can leave even that a hair short, so "reaches" allows a relative tolerance of ``1e-9`` of ``Σ|t|``
and, failing everything, the prefix with the largest cumulative sum is kept. A zero total selects
nothing. :func:`select_prefix` does this for any tensor of terms; the tracer uses it again to keep
the writers that carry a signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_universality.attention_decomposition.svd import AttentionSVD, attention_svd, norm_kind
from tl_universality.core.names import head_name
from tl_universality.core.protocol import HookedModel, model_name
from tl_universality.core.result import Result, new_axes
from tl_universality.units.activations import model_device
from tl_universality.units.hooks import run_with_interventions

PositionSpec = int | Sequence[int] | Tensor | None
"""A position: one for every prompt (an int, negative counts from the end), one per prompt (a
sequence or 1-D tensor of length ``batch``), or None for all of them."""

TOLERANCE = 1e-9
"""Relative tolerance (of ``Σ|t|``) with which a cumulative sum "reaches" the total."""


# -- inputs ------------------------------------------------------------------------------------


def as_tokens(model: HookedModel, tokens: Any) -> Int[Tensor, "batch pos"]:
    """Token ids ``[batch, pos]`` on the model's device, from ids or text (needs a tokenizer).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4,
        ...     d_head=2, n_heads=2, d_vocab=10, act_fn="relu"))
        >>> as_tokens(model, [1, 2, 3]).tolist()
        [[1, 2, 3]]
        >>> as_tokens(model, [[1, 12]])
        Traceback (most recent call last):
        ...
        ValueError: tokens holds id 12, but ... has d_vocab=10: ...
    """
    if isinstance(tokens, str) or (
        isinstance(tokens, Sequence) and tokens and isinstance(tokens[0], str)
    ):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError(
                f"tokens={tokens!r:.60} is text, but {model_name(model)} has no tokenizer. Pass"
                " token ids ([batch, pos] tensor) instead."
            )
        ids = model.to_tokens(tokens)  # type: ignore[attr-defined]
    else:
        ids = torch.as_tensor(tokens)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"tokens must be integer ids, got dtype {ids.dtype}. Pass a LongTensor.")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.numel() == 0:
        raise ValueError(
            f"tokens must be [batch, pos] token ids, got shape {tuple(ids.shape)}. Pass a 2-D"
            " tensor with at least one prompt and one position."
        )
    n_ctx, d_vocab = int(model.cfg.n_ctx), int(model.cfg.d_vocab)
    if ids.shape[1] > n_ctx:
        raise ValueError(
            f"tokens has {ids.shape[1]} positions, more than {model_name(model)}'s n_ctx={n_ctx}."
            f" Truncate the prompts to {n_ctx} tokens."
        )
    if int(ids.min()) < 0 or int(ids.max()) >= d_vocab:
        bad = int(ids.max()) if int(ids.max()) >= d_vocab else int(ids.min())
        raise ValueError(
            f"tokens holds id {bad}, but {model_name(model)} has d_vocab={d_vocab}: pass ids in"
            f" [0, {d_vocab})."
        )
    return ids.long().to(model_device(model))


def positions(spec: PositionSpec, batch: int, n_pos: int, what: str) -> Tensor | None:
    """``[batch]`` positions in ``[0, n_pos)`` from a :data:`PositionSpec` (None stays None)."""
    if spec is None:
        return None
    values = torch.as_tensor(spec, dtype=torch.long).cpu().reshape(-1)
    if values.numel() == 1:
        values = values.expand(batch)
    if values.numel() != batch:
        raise ValueError(
            f"{what} has {values.numel()} positions for {batch} prompts: pass one int for all"
            f" prompts or one position per prompt."
        )
    values = torch.where(values < 0, values + n_pos, values)
    if int(values.min()) < 0 or int(values.max()) >= n_pos:
        raise ValueError(
            f"{what}={spec!r} is outside the {n_pos} positions of the prompts: pass positions in"
            f" [-{n_pos}, {n_pos})."
        )
    return values.clone()


def pairs(
    dest: Tensor | None, src: Tensor | None, batch: int, n_pos: int
) -> tuple[Int[Tensor, " pair"], Int[Tensor, " pair"], Int[Tensor, " pair"]]:
    """Every ``(prompt, dest, src)`` with ``src <= dest`` the specs allow, prompt-major."""
    grid_p, grid_d, grid_s = torch.meshgrid(
        torch.arange(batch), torch.arange(n_pos), torch.arange(n_pos), indexing="ij"
    )
    keep = grid_s <= grid_d
    if dest is not None:
        keep &= grid_d == dest[:, None, None]
    if src is not None:
        keep &= grid_s == src[:, None, None]
    if not bool(keep.any()):
        raise ValueError(
            "No (dest, src) pair with src <= dest: a causal head attends only backwards. Pass"
            " src <= dest."
        )
    return grid_p[keep], grid_d[keep], grid_s[keep]


# -- the residual as the head reads it ---------------------------------------------------------


def residual_hooks(model: HookedModel, layer: int) -> list[str]:
    """The hook points :func:`augmented_residual` needs for ``layer``."""
    names = [f"blocks.{layer}.hook_resid_pre"]
    if norm_kind(model) is not None:
        names.append(f"blocks.{layer}.ln1.hook_scale")
    return names


def augmented_residual(
    model: HookedModel, cache: dict[str, Tensor], layer: int
) -> tuple[Float[Tensor, "batch pos d_aug"], Float[Tensor, "batch pos"]]:
    """``(x̃, scale)``: the normalised residual in front of ``layer``'s attention with a constant
    1 appended (float64), and the LayerNorm scale it was divided by (1 without normalisation)."""
    resid = cache[f"blocks.{layer}.hook_resid_pre"].to("cpu", torch.float64)
    kind = norm_kind(model)
    if kind is None:
        scale = torch.ones(resid.shape[:-1], dtype=torch.float64)
    else:
        scale = cache[f"blocks.{layer}.ln1.hook_scale"].to("cpu", torch.float64)[..., 0]
    if kind in ("LN", "LNPre"):
        resid = resid - resid.mean(-1, keepdim=True)
    x = resid / scale[..., None]
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1), scale


# -- the selection rule ------------------------------------------------------------------------


def check_share(value: float, name: str) -> float:
    """``value`` as a float in (0, 1], or a ``ValueError`` naming ``name``."""
    if not 0 < float(value) <= 1:
        raise ValueError(
            f"{name}={value!r} must be in (0, 1]: the share of the total the selected prefix must"
            " reach (1.0 = all of it)."
        )
    return float(value)


def select_prefix(
    terms: Float[Tensor, "... k"], threshold: float = 1.0, total: Tensor | None = None
) -> Bool[Tensor, "... k"]:
    """Mask of the smallest prefix of the sorted terms whose sum reaches ``threshold × total``.

    Terms are sorted towards the total's sign (descending for a positive total, ascending for a
    negative one); ``total`` defaults to the sum of the terms. See the module docstring for the
    case where no strict prefix reaches the total.

    Examples:
        >>> select_prefix(torch.tensor([0.5, 3.0, -1.0, 1.0])).tolist()  # total 3.5: 3 + 1
        [False, True, False, True]
        >>> select_prefix(torch.tensor([0.5, -3.0, 1.0])).tolist()  # total -1.5: -3 alone
        [False, True, False]
        >>> select_prefix(torch.tensor([1.0, 2.0, 3.0])).tolist()  # no strict prefix: all
        [True, True, True]
        >>> select_prefix(torch.tensor([4.0, 1.0, -1.0]), threshold=0.7).tolist()
        [True, False, False]
    """
    check_share(threshold, "threshold")
    terms = terms.to(torch.float64)
    if total is None:
        total = terms.sum(-1)
    sign = torch.sign(total)
    signed = terms * sign[..., None]
    order = torch.sort(signed, dim=-1, descending=True, stable=True).indices
    cumulative = torch.gather(signed, -1, order).cumsum(-1)
    target = float(threshold) * total.abs() - TOLERANCE * terms.abs().sum(-1)
    reached = cumulative >= target[..., None]
    first = torch.where(reached.any(-1), reached.int().argmax(-1), cumulative.argmax(-1))
    n_keep = torch.where(sign == 0, torch.zeros_like(first), first + 1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(terms.shape[-1]).expand_as(order).contiguous())
    return ranks < n_keep[..., None]


# -- the result --------------------------------------------------------------------------------


@dataclass
class AttentionDecomposition(Result):
    """Per-direction terms of one head's attention score at a set of (prompt, dest, src) pairs.

    Attributes:
        layer, head: The head.
        prompt, dest, src: ``[pair]`` indices of the pairs.
        terms: ``[pair, d_head]`` the terms ``t_k``, in singular-value order.
        selected: ``[pair, d_head]`` the selected directions (:func:`select_prefix`).
        attention: ``[pair]`` the attention probability of the pair (``hook_pattern``).
        attn_scale: The head's attention scale (``score = terms.sum(-1) / attn_scale``).
        threshold: The prefix rule's threshold.
    """

    FORMAT = "tl_universality.attention_decomposition"
    VERSION = 1

    layer: int
    head: int
    prompt: Int[Tensor, " pair"]
    dest: Int[Tensor, " pair"]
    src: Int[Tensor, " pair"]
    terms: Float[Tensor, "pair rank"]
    selected: Bool[Tensor, "pair rank"]
    attention: Float[Tensor, " pair"]
    attn_scale: float
    threshold: float = 1.0

    @property
    def total(self) -> Float[Tensor, " pair"]:
        """The unscaled score ``q · k`` of each pair (the sum of its terms)."""
        return self.terms.sum(-1)

    @property
    def n_selected(self) -> Int[Tensor, " pair"]:
        """How many directions carry each pair's score."""
        return self.selected.sum(-1)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per pair: ``prompt, dest, src, score`` (as ``hook_attn_scores``),
        ``total`` (unscaled), ``attention``, ``n_selected`` and ``directions`` (the selected
        indices, largest term first)."""
        order = torch.argsort(-(self.terms * torch.sign(self.total)[:, None]), dim=-1, stable=True)
        directions = [
            [int(k) for k in row if mask[k]]
            for row, mask in zip(order.tolist(), self.selected, strict=True)
        ]
        return pd.DataFrame(
            {
                "head": head_name(self.layer, self.head),
                "prompt": self.prompt.numpy(),
                "dest": self.dest.numpy(),
                "src": self.src.numpy(),
                "score": (self.total / self.attn_scale).numpy(),
                "total": self.total.numpy(),
                "attention": self.attention.numpy(),
                "n_selected": self.n_selected.numpy(),
                "directions": directions,
            }
        )

    def summary(self) -> dict[str, Any]:
        """Pair count and the distribution of the number of selected directions."""
        n = self.n_selected.double()
        return {
            "head": head_name(self.layer, self.head),
            "n_pairs": int(n.numel()),
            "rank": int(self.terms.shape[-1]),
            "mean_selected": float(n.mean()),
            "median_selected": float(n.median()),
            "threshold": float(self.threshold),
        }

    def plot(self, ax: Any = None) -> Any:
        """Histogram of the number of selected directions per pair."""
        fig, ax = new_axes(ax)
        rank = int(self.terms.shape[-1])
        ax.hist(self.n_selected.numpy(), bins=np.arange(rank + 2) - 0.5)
        ax.set_xlabel("selected directions")
        ax.set_ylabel("pairs")
        ax.set_title(f"{head_name(self.layer, self.head)}: directions carrying the score")
        return fig

    def _write(self, out: Any, meta: dict[str, Any]) -> None:
        meta.update(
            layer=self.layer, head=self.head, attn_scale=self.attn_scale, threshold=self.threshold
        )
        out.write_tensors(
            "pairs",
            {
                "prompt": self.prompt,
                "dest": self.dest,
                "src": self.src,
                "terms": self.terms,
                "selected": self.selected,
                "attention": self.attention,
            },
        )

    @classmethod
    def _read(cls, saved: Any) -> AttentionDecomposition:
        m, t = saved.meta, saved.tensors("pairs")
        return cls(
            layer=int(m["layer"]), head=int(m["head"]), attn_scale=float(m["attn_scale"]),
            threshold=float(m["threshold"]), **t,
        )  # fmt: skip


def direction_projections(
    svd: AttentionSVD, x_aug: Float[Tensor, "batch pos d_aug"]
) -> tuple[Float[Tensor, "batch pos rank"], Float[Tensor, "batch pos rank"]]:
    """``(x̃ · u_k, x̃ · v_k)`` at every position: the query-side and key-side coordinates."""
    return x_aug @ svd.U, x_aug @ svd.V


def decompose_attention(
    model: HookedModel,
    tokens: Any,
    layer: int,
    head: int,
    dest: PositionSpec = None,
    src: PositionSpec = None,
    *,
    threshold: float = 1.0,
) -> AttentionDecomposition:
    """Split head ``(layer, head)``'s attention scores into one term per singular direction.

    One forward pass (stopped after ``layer``) records the residual in front of the head; then,
    for every requested (prompt, dest, src) pair at once, ``t_k = σ_k (x̃_dest·u_k)(x̃_src·v_k)``
    and the selected prefix (module docstring). ``Σ_k t_k / attn_scale`` equals
    ``hook_attn_scores``.

    Args:
        model: A TransformerLens model with absolute position embeddings.
        tokens: ``[batch, pos]`` token ids (or text, with a tokenizer).
        layer, head: The head.
        dest: Destination (query) positions: an int for all prompts, one per prompt, or None for
            all.
        src: Source (key) positions, the same way; None: every ``src <= dest``.
        threshold: Share of the total the selected prefix must reach, in (0, 1].

    Returns:
        An :class:`AttentionDecomposition` (terms, selection, table, save/load).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8,
        ...     d_head=4, n_heads=2, d_vocab=20, act_fn="relu", seed=0))
        >>> tokens = torch.tensor([[0, 5, 7, 9], [0, 3, 3, 1]])
        >>> dec = decompose_attention(model, tokens, 1, 0, dest=-1)  # every src of the last dest
        >>> dec.terms.shape, dec.to_dataframe().columns[:4].tolist()
        (torch.Size([8, 4]), ['head', 'prompt', 'dest', 'src'])
    """
    layer, head = int(layer), int(head)
    svd = attention_svd(model, layer, head)
    ids = as_tokens(model, tokens)
    batch, n_pos = ids.shape
    dest_t = positions(dest, batch, n_pos, "dest")
    src_t = positions(src, batch, n_pos, "src")
    prompt_i, dest_i, src_i = pairs(dest_t, src_t, batch, n_pos)
    pattern = f"blocks.{layer}.attn.hook_pattern"
    _, cache = run_with_interventions(
        model, ids, capture=[*residual_hooks(model, layer), pattern], stop_at_layer=layer + 1
    )
    x_aug, _ = augmented_residual(model, cache, layer)
    a, b = direction_projections(svd, x_aug)
    terms = svd.S * a[prompt_i, dest_i] * b[prompt_i, src_i]
    attention = cache[pattern][:, head].to("cpu", torch.float64)[prompt_i, dest_i, src_i]
    return AttentionDecomposition(
        layer=layer,
        head=head,
        prompt=prompt_i,
        dest=dest_i,
        src=src_i,
        terms=terms,
        selected=select_prefix(terms, threshold),
        attention=attention,
        attn_scale=svd.attn_scale,
        threshold=float(threshold),
    )


__all__ = [
    "AttentionDecomposition",
    "PositionSpec",
    "as_tokens",
    "augmented_residual",
    "check_share",
    "decompose_attention",
    "direction_projections",
    "select_prefix",
]

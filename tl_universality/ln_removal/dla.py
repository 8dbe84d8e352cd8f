"""Direct logit attribution, and how exact it is: with and without the final LayerNorm.

The residual stream at the end of the model is a sum of components: the token and position
embeddings, every head's output ``z_h W_O[h]``, every layer's attention output bias and every
MLP's output. The logit of the true next token ``t`` is read from it through the final
normalisation and ``W_U[:, t]``. Each component's *direct logit attribution* (DLA) is its share:

- LN-free model: ``c · W_U[:, t]`` (plus ``b_U[t]`` as a component of its own). The read-out is
  linear, so the shares sum to the logit and each share is exactly what removing the component
  from the final residual takes away from the logit.
- LayerNorm model: ``(c − mean(c)) / scale · (w ⊙ W_U[:, t])`` with the live final scale frozen
  (plus the LayerNorm bias and ``b_U``). The shares still sum to the logit, but each depends on
  every other component through the scale: removing a component changes the scale, so the logit
  moves by something else than its share.

:func:`direct_logit_attribution` reports both numbers per component: ``dla`` (mean share) and
``ablation_gap`` (mean |share − (logit − logit with the component removed from the final residual,
scale recomputed)|), and overall the largest ``|Σ shares − logit|``. On an LN-free model both
errors are rounding; on a LayerNorm model the gap measures how approximate DLA is.

Examples:
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4,
    ...     d_head=4, d_mlp=16, d_vocab=10, act_fn="relu", normalization_type=None, seed=0))
    >>> dla = direct_logit_attribution(model, torch.tensor([[0, 3, 5, 7], [0, 2, 4, 6]]))
    >>> dla.summary()["exact"], dla.summary()["max_sum_error"] < 1e-5
    (True, True)
    >>> list(dla.to_dataframe()["component"])[:3]
    ['embed', 'pos_embed', 'L0H0']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.core.names import head_name
from tl_universality.core.protocol import HookedModel, model_name
from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder


@dataclass
class DirectLogitAttribution(Result):
    """Per component: mean share of the true next-token logit and how exact that share is.

    Attributes:
        table: One row per component: ``component, layer, head, dla, dla_abs,
            ablation_gap``.
        max_sum_error: Largest ``|Σ shares − logit|`` over the positions.
        exact: Whether the model has no final normalisation (DLA exact by construction).
        n_tokens: Positions averaged over.
        model_name: The model's name.
    """

    FORMAT: ClassVar[str] = "tl_universality.direct_logit_attribution"
    VERSION: ClassVar[int] = 1

    table: pd.DataFrame
    max_sum_error: float
    exact: bool
    n_tokens: int
    model_name: str = ""

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_table("components", self.table)
        meta.update(
            max_sum_error=self.max_sum_error,
            exact=self.exact,
            n_tokens=self.n_tokens,
            model_name=self.model_name,
        )

    @classmethod
    def _read(cls, saved: SavedFolder) -> DirectLogitAttribution:
        m = saved.meta
        return cls(
            saved.table("components"),
            float(m["max_sum_error"]),
            bool(m["exact"]),
            int(m["n_tokens"]),
            str(m["model_name"]),
        )

    def to_dataframe(self) -> pd.DataFrame:
        """One row per component."""
        return self.table.copy()

    def summary(self) -> dict[str, Any]:
        """Exactness (no final LN), largest sum error and largest mean ablation gap."""
        return {
            "model": self.model_name,
            "exact": self.exact,
            "max_sum_error": float(self.max_sum_error),
            "max_ablation_gap": float(self.table["ablation_gap"].max()),
            "n_tokens": int(self.n_tokens),
        }

    def plot(self, ax: Any = None) -> Any:
        """Mean DLA per component (bars) with the ablation gap (black ticks)."""
        fig, ax = new_axes(ax, figsize=(max(6.0, 0.25 * len(self.table)), 4.0))
        x = range(len(self.table))
        ax.bar(x, self.table["dla"], color="C0", label="mean DLA")
        ax.plot(x, self.table["ablation_gap"], "k_", ms=10, label="ablation gap")
        ax.set_xticks(list(x), self.table["component"], rotation=90, fontsize="small")
        ax.set_ylabel("logit of the true next token")
        ax.set_title(f"Direct logit attribution ({self.model_name}; exact={self.exact})")
        ax.legend(fontsize="small")
        return fig


def _components(model: HookedModel, cache: Any) -> tuple[list[dict[str, Any]], list[Tensor]]:
    cfg = model.cfg
    rows: list[dict[str, Any]] = []
    parts: list[Tensor] = []
    for hook, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
        if hook in cache:
            rows.append({"component": label, "layer": -1, "head": -1})
            parts.append(cache[hook])
    for layer in range(cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head, d_head]
        w_o = model.blocks[layer].attn.W_O  # type: ignore[attr-defined]
        per_head = torch.einsum("bphd,hdm->hbpm", z, w_o)
        for head in range(cfg.n_heads):
            rows.append({"component": head_name(layer, head), "layer": layer, "head": head})
            parts.append(per_head[head])
        b_o = model.blocks[layer].attn.b_O  # type: ignore[attr-defined]
        rows.append({"component": f"L{layer}.attn_bias", "layer": layer, "head": -1})
        parts.append(b_o.expand_as(per_head[0]))
        if f"blocks.{layer}.hook_mlp_out" in cache:
            rows.append({"component": f"L{layer}.mlp", "layer": layer, "head": -1})
            parts.append(cache[f"blocks.{layer}.hook_mlp_out"])
    return rows, parts


def _read(
    model: HookedModel,
    norm: str | None,
    x: Float[Tensor, "*c b p d"],
    readout: Float[Tensor, "b p d"],
    scale: Float[Tensor, "b p 1"] | None,
) -> Float[Tensor, "*c b p"]:
    """The true-token logit read from ``x`` (without biases): through the final LayerNorm with
    ``scale`` frozen, or with its live scale recomputed from ``x`` when ``scale`` is None."""
    if norm is None:
        return (x * readout).sum(-1)
    ln = model.ln_final  # type: ignore[attr-defined]
    w = ln.w.to(torch.float64) if norm == "LN" else torch.ones_like(readout[0, 0])
    centred = x - x.mean(-1, keepdim=True)
    if scale is None:
        scale = (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    return (centred / scale * w * readout).sum(-1)


@torch.no_grad()
def direct_logit_attribution(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    *,
    batch_size: int = 8,
) -> DirectLogitAttribution:
    """Each component's share of the true next-token logit, and how exact the shares are.

    Args:
        model: A GPT-2-style ``HookedTransformer`` with ``normalization_type`` ``"LN"``,
            ``"LNPre"`` or None (LN-free).
        tokens: ``[batch, pos]`` token ids; every position but the last predicts the next token.
        batch_size: Sequences per forward pass.

    Returns:
        A :class:`DirectLogitAttribution`.
    """
    norm = getattr(model.cfg, "normalization_type", None)
    if norm not in (None, "LN", "LNPre"):
        raise ValueError(
            f"{model_name(model)} has normalization_type={norm!r}; direct_logit_attribution"
            " handles 'LN', 'LNPre' and None (LN-free). Fix: use a GPT-2-style model."
        )
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(
            f"tokens must be [batch, pos] with pos >= 2, got shape {tuple(tokens.shape)}."
            " Fix: pass rows of at least two token ids."
        )
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    W_U = model.W_U.to(torch.float64)  # type: ignore[attr-defined]
    b_U = model.b_U.to(torch.float64)  # type: ignore[attr-defined]
    sums: Tensor | None = None
    abs_sums: Tensor | None = None
    gaps: Tensor | None = None
    rows: list[dict[str, Any]] = []
    max_err, count = 0.0, 0
    device = next(model.parameters()).device  # type: ignore[attr-defined]
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(device)
        logits, cache = model.run_with_cache(batch)  # type: ignore[attr-defined]
        rows, parts = _components(model, cache)
        comps = torch.stack([p.to(torch.float64) for p in parts])[:, :, :-1]  # [c, b, p, d]
        target = batch[:, 1:]
        readout = W_U[:, target].permute(1, 2, 0)  # [b, p, d]
        resid = cache[final][:, :-1].to(torch.float64)

        bias = b_U[target]
        if norm == "LN":
            bias = bias + (model.ln_final.b.to(torch.float64) * readout).sum(-1)  # type: ignore[attr-defined]
        scale = None if norm is None else cache["ln_final.hook_scale"][:, :-1].to(torch.float64)
        shares = _read(model, norm, comps, readout, scale)  # [c, b, p]
        full = _read(model, norm, resid, readout, scale) + bias
        true_logit = logits[:, :-1].to(torch.float64).gather(-1, target[..., None])[..., 0]
        max_err = max(max_err, float((shares.sum(0) + bias - true_logit).abs().max()))
        without = _read(model, norm, resid[None] - comps, readout, None) + bias
        gap = (shares - (full - without)).abs().sum((1, 2))
        sums = shares.sum((1, 2)) if sums is None else sums + shares.sum((1, 2))
        abs_sums = (
            shares.abs().sum((1, 2)) if abs_sums is None else abs_sums + shares.abs().sum((1, 2))
        )
        gaps = gap if gaps is None else gaps + gap
        count += target.numel()
    assert sums is not None and abs_sums is not None and gaps is not None
    table = pd.DataFrame(rows)
    table["dla"] = (sums / count).numpy()
    table["dla_abs"] = (abs_sums / count).numpy()
    table["ablation_gap"] = (gaps / count).numpy()
    return DirectLogitAttribution(table, max_err, norm is None, count, model_name(model))


__all__ = ["DirectLogitAttribution", "direct_logit_attribution"]

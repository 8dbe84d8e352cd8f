"""Head composition scores of MLP neurons: how much of a neuron's output later heads can read.

A neuron in layer ``L_n`` writes ``w_out`` (a row of ``W_out``) into the residual stream; every
attention head in a later layer reads the stream through its circuits. Following TransformerLens's
composition scores (``HookedTransformer.all_composition_scores``, Elhage et al. 2021), in the
row-vector convention ``x ↦ x M`` and with the neuron's output ``w`` in place of an earlier head's
OV circuit, the score against a head's circuit ``M`` is

    ‖w M‖ / (‖w‖ · ‖M‖_F)

with ``M`` per kind:

- **Q-composition**: ``M = W_Q W_Kᵀ`` (the ``d_model × d_model`` QK circuit), the neuron's output
  read on the query side;
- **K-composition**: ``M = W_K W_Qᵀ`` (the QK circuit transposed), read on the key side;
- **V-composition**: ``M = W_V W_O`` (the OV circuit), read as a value and written on.

The score lies in [0, 1]; a direction picked at random scores about ``1/sqrt(d_model)``
(exactly, the mean of the squared score over isotropic directions is ``1/d_model``), which is kept
as :attr:`HeadComposition.baseline`. Biases are ignored (as in TransformerLens), and processed
weights (``fold_ln``, so LayerNorm scales are inside ``W_Q``/``W_K``/``W_V``) are assumed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.analyses.vocab import LayersSpec, block_weight, resolve_layers, w_out
from tl_universality.core.names import head_name, neuron_name
from tl_universality.core.protocol import HookedModel
from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder

CompositionKindQKV = Literal["q", "k", "v"]
KINDS: tuple[str, ...] = ("q", "k", "v")


@dataclass(repr=False)
class HeadComposition(Result):
    """Composition scores of every neuron with every later attention head.

    Attributes:
        scores: ``{"q" | "k" | "v": [neuron_layers, d_mlp, head_layers, n_heads]}`` on the full
            layer grids (index by the real layer numbers); NaN where the head is not in a later
            layer than the neuron, or a layer was not computed.
        baseline: ``1/sqrt(d_model)``, the typical score of a random direction.
        neuron_layers, head_layers: the layers that were computed.
    """

    FORMAT = "tl_universality.head_composition"

    scores: dict[str, Float[Tensor, "neuron_layers d_mlp head_layers n_heads"]]
    baseline: float
    neuron_layers: tuple[int, ...]
    head_layers: tuple[int, ...]

    def __getitem__(self, kind: str) -> Float[Tensor, "neuron_layers d_mlp head_layers n_heads"]:
        return self.scores[kind]

    def to_dataframe(self, min_score: float | None = None) -> pd.DataFrame:
        """Long table: ``layer, neuron, head_layer, head_index`` and one ``<kind>_comp`` column
        per kind.

        Only (neuron, later head) pairs appear. ``min_score`` keeps rows where any kind reaches it
        (the full table of GPT-2 medium has ~19M rows).
        """
        first = next(iter(self.scores.values()))
        n_layers, d_mlp, n_head_layers, n_heads = first.shape
        valid = ~torch.isnan(first)
        if min_score is not None:
            high = torch.zeros_like(valid)
            for values in self.scores.values():
                high |= values >= min_score
            valid &= high
        idx = valid.nonzero().numpy()
        table = pd.DataFrame(
            {
                "layer": idx[:, 0].astype(np.int64),
                "neuron": idx[:, 1].astype(np.int64),
                "head_layer": idx[:, 2].astype(np.int64),
                "head_index": idx[:, 3].astype(np.int64),
            }
        )
        for kind, values in self.scores.items():
            table[f"{kind}_comp"] = values[valid].numpy()
        return table

    def summary(self) -> dict[str, Any]:
        """Per kind, the largest score, its (neuron, head) pair and how many pairs score above
        five times the random-direction baseline."""
        out: dict[str, Any] = {"baseline": float(self.baseline)}
        for kind, values in self.scores.items():
            flat = torch.nan_to_num(values.to(torch.float64), nan=-torch.inf)
            best = int(flat.argmax())
            layer, neuron, head_layer, head = np.unravel_index(best, tuple(values.shape))
            out[f"{kind}_max"] = float(flat.reshape(-1)[best])
            out[f"{kind}_best"] = f"{neuron_name(layer, neuron)}->{head_name(head_layer, head)}"
            out[f"{kind}_n_above_5x_baseline"] = int((values > 5 * self.baseline).sum())
        return out

    def plot(self, ax: Any = None, kind: str = "v") -> Any:
        """Histogram of one kind's scores with the random-direction baseline marked."""
        fig, ax = new_axes(ax, figsize=(6, 4))
        values = self.scores[kind]
        ax.hist(values[~torch.isnan(values)].numpy(), bins=60, log=True)
        ax.axvline(self.baseline, color="black", ls="--", label="random direction")
        ax.set_xlabel(f"{kind}-composition")
        ax.set_ylabel("(neuron, head) pairs")
        ax.legend()
        return fig

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_tensors("scores", self.scores)
        meta.update(
            baseline=self.baseline,
            kinds=list(self.scores),
            neuron_layers=list(self.neuron_layers),
            head_layers=list(self.head_layers),
        )

    @classmethod
    def _read(cls, saved: SavedFolder) -> HeadComposition:
        meta = saved.meta
        scores = saved.tensors("scores")
        order = [k for k in meta["kinds"] if k in KINDS]
        if sorted(order) != sorted(scores) or len({tuple(v.shape) for v in scores.values()}) > 1:
            raise ValueError("the score tensors disagree with the kinds or with each other")
        return cls(
            {k: scores[k] for k in order},
            float(meta["baseline"]),
            tuple(int(x) for x in meta["neuron_layers"]),
            tuple(int(x) for x in meta["head_layers"]),
        )

    @classmethod
    def _load_fix(cls) -> str:
        return "run head_composition(...) again and save it, or point to the right folder."

    def __repr__(self) -> str:
        shape = tuple(next(iter(self.scores.values())).shape)
        kinds = list(self.scores)
        return f"HeadComposition(kinds={kinds}, shape={shape}, baseline={self.baseline:.3g})"


def _attn(model: HookedModel, layer: int, name: str) -> Tensor:
    return block_weight(model, layer, "attn", name).detach().to("cpu", torch.float64)


def _gram(a: Float[Tensor, "heads d_model d_head"]) -> Float[Tensor, "heads d_head d_head"]:
    return a.transpose(-1, -2) @ a


def head_composition(
    model: HookedModel,
    kinds: Sequence[str] = KINDS,
    *,
    layers: LayersSpec = None,
    head_layers: LayersSpec = None,
    dtype: torch.dtype = torch.float32,
) -> HeadComposition:
    """Score every neuron's output against the QK and OV circuits of every later head.

    See the module docstring for the definition of each kind. Computed in float64 without forming
    any ``d_model × d_model`` circuit: with ``M = A Bᵀ`` (``A, B`` of shape ``d_model × d_head``),
    ``‖w M‖² = (w A)(BᵀB)(w A)ᵀ`` and ``‖M‖_F² = Σ (AᵀA) ∘ (BᵀB)``, so the cost is that of
    ``W_out @ W_Q`` per layer pair.

    Args:
        model: a TransformerLens model with MLPs and attention.
        kinds: any of ``"q"``, ``"k"``, ``"v"``.
        layers: neuron layers (default all).
        head_layers: head layers (default all).
        dtype: dtype of the returned tensors.

    Returns:
        A :class:`HeadComposition` with one ``[n_layers, d_mlp, n_layers, n_heads]`` tensor per
        kind and a long-table view.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=2,
        ...                               d_vocab=20, d_mlp=8, act_fn="gelu", seed=0)
        >>> comp = head_composition(HookedTransformer(cfg))
        >>> comp["q"].shape, len(comp.to_dataframe())  # only layer-0 neurons x layer-1 heads
        (torch.Size([2, 8, 2, 2]), 16)
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}; got {list(kinds)}.")
    neuron_layers = resolve_layers(model, layers)
    attn_layers = resolve_layers(model, head_layers)
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    n_heads = int(model.cfg.n_heads)
    out = {
        k: torch.full((n_layers, d_mlp, n_layers, n_heads), torch.nan, dtype=dtype) for k in kinds
    }
    outputs = {layer: w_out(model, layer) for layer in neuron_layers}
    norms = {layer: w.norm(dim=1) for layer, w in outputs.items()}
    for lh in attn_layers:
        earlier = [ln for ln in neuron_layers if ln < lh]
        if not earlier:
            continue
        W_Q, W_K = _attn(model, lh, "W_Q"), _attn(model, lh, "W_K")
        W_V, W_O = _attn(model, lh, "W_V"), _attn(model, lh, "W_O")
        G_Q, G_K, G_V = _gram(W_Q), _gram(W_K), _gram(W_V)
        G_O = W_O @ W_O.transpose(-1, -2)  # [heads, d_head, d_head]
        qk_frob = (G_Q * G_K).sum(dim=(-1, -2)).sqrt()
        ov_frob = (G_V * G_O).sum(dim=(-1, -2)).sqrt()
        # kind -> (read-in matrix A, Gram of the write-out factor, ||M||_F)
        circuits = {
            "q": (W_Q, G_K, qk_frob),
            "k": (W_K, G_Q, qk_frob),
            "v": (W_V, G_O, ov_frob),
        }
        for ln in earlier:  # one neuron layer at a time keeps P at [heads, d_mlp, d_head]
            denom_w = norms[ln][:, None]
            for kind in kinds:
                A, G, frob = circuits[kind]
                P = torch.einsum("nm,hmd->hnd", outputs[ln], A)
                sq = torch.einsum("hnd,hde,hne->nh", P, G, P).clamp_min(0)
                denom = denom_w * frob[None, :]
                out[kind][ln, :, lh, :] = torch.where(denom > 0, sq.sqrt() / denom, torch.nan)
    return HeadComposition(
        out,
        1.0 / math.sqrt(int(model.cfg.d_model)),
        tuple(neuron_layers),
        tuple(attn_layers),
    )

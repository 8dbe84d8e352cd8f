"""Attention (BOS) deactivation neurons (docs/concepts.md, "Circuit roles").

A head that has nothing to do parks its attention on the BOS token. A neuron whose output pushes a
later head's query towards the BOS key switches that head off: the paper's attention deactivation
neurons.

- :func:`attention_deactivation_scores` scores every (neuron, later head) pair from the weights:
  ``score = w_outᵀ · W_Q[h] · k_BOS[h] / attn_scale``, the change of the head's attention logit on
  BOS per unit of the neuron's activation, against random directions of the same norm.
- :func:`path_ablation` is the causal test: remove the neuron's contribution ``act * w_out`` from
  the head's *query* input only (keys and values exactly as in the clean run, through
  :class:`~tl_universality.units.hooks.RemoveFromQueryInput`) and measure, per token, the change of
  the
  head's attention to BOS and of the norm of its output, and their correlation with the neuron's
  activation.

Approximations of the score, as in the paper: the query's LayerNorm *scale* (one number per token)
is left out, so the score is the logit change at a query whose LayerNorm divides by 1; the
LayerNorm's centring and weight (when not folded into ``W_Q``) are applied to ``w_out``, because
they are linear. ``b_Q`` adds the same amount to the logit whatever the neuron does, so it is no
part of the neuron's score; ``b_K`` and everything upstream of the BOS key are in ``k_BOS``, taken
from a forward pass on the BOS token alone (BOS at position 0 attends only to itself, so its key is
the same in every sequence). The division uses the head's own attention scale, which is
``sqrt(d_head)`` unless the config says otherwise (e.g. ``scale_attn_by_inverse_layer_idx``). For
rotary models the query's rotation is left out (the score is the one at zero relative distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tl_universality.core.errors import NoUnitsError
from tl_universality.core.names import head_name, neuron_name
from tl_universality.core.protocol import HookedModel, attn_scale, mlp_hook_names, model_name
from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.units.activations import model_device
from tl_universality.units.hooks import (
    RemoveFromQueryInput,
    run_with_interventions,
    split_qkv_input,
    token_batches,
)

# ---------------------------------------------------------------------------------------------
# Weight scores
# ---------------------------------------------------------------------------------------------


def _bos_id(model: HookedModel, bos_token_id: int | None) -> int:
    if bos_token_id is not None:
        return int(bos_token_id)
    tokenizer = getattr(model, "tokenizer", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise ValueError(
            f"{model_name(model)} has no tokenizer with a BOS token, so k_BOS is undefined."
            " Pass bos_token_id=..."
        )
    return int(bos)


def _query_norm(model: HookedModel, layer: int) -> tuple[Tensor | None, bool]:
    """``(weight or None, centres)`` of the LayerNorm in front of ``layer``'s queries."""
    norm_type = getattr(model.cfg, "normalization_type", None)
    if norm_type is None:
        return None, False
    try:
        weight = model.blocks[layer].ln1.w  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError):
        weight = None
    weight = weight.detach().to("cpu", torch.float64) if isinstance(weight, Tensor) else None
    return weight, norm_type in ("LN", "LNPre")


def bos_keys(
    model: HookedModel, bos_token_id: int | None = None
) -> Float[Tensor, "layer head d_head"]:
    """Every head's key on the BOS token alone, from one forward pass on ``[[BOS]]`` (float64).

    Grouped-query models are expanded to one key per query head.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4,
        ...     d_head=4, n_heads=2, d_vocab=10, act_fn="relu", seed=0))
        >>> bos_keys(model, bos_token_id=0).shape
        torch.Size([2, 2, 4])
    """
    bos = torch.tensor([[_bos_id(model, bos_token_id)]], device=model_device(model))
    names = [f"blocks.{layer}.attn.hook_k" for layer in range(int(model.cfg.n_layers))]
    _, cache = run_with_interventions(model, bos, capture=names)
    keys = []
    n_heads = int(model.cfg.n_heads)
    for name in names:
        k = cache[name][0, 0].to("cpu", torch.float64)  # [kv_heads, d_head]
        if k.shape[0] != n_heads:  # grouped-query attention: kv head j serves a block of heads
            k = torch.repeat_interleave(k, n_heads // k.shape[0], dim=0)
        keys.append(k)
    return torch.stack(keys)


def bos_query_directions(
    model: HookedModel, bos_token_id: int | None = None
) -> Float[Tensor, "layer head d_model"]:
    """For each head, the residual direction ``g`` with ``score(w) = w · g``.

    ``g = C(w_ln ⊙ W_Q k_BOS) / attn_scale``, with ``C`` the LayerNorm's centring and ``w_ln`` its
    weight where the model has them (module docstring): the dot product of any residual vector with
    ``g`` is the change of the head's BOS attention logit it causes through the query.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4,
        ...     d_head=4, n_heads=2, d_vocab=10, act_fn="relu", seed=0))
        >>> bos_query_directions(model, bos_token_id=0).shape
        torch.Size([2, 2, 8])
    """
    k_bos = bos_keys(model, bos_token_id)
    W_Q = model.W_Q.detach().to("cpu", torch.float64)  # type: ignore[attr-defined]
    directions = torch.einsum("lhdk,lhk->lhd", W_Q, k_bos)
    for layer in range(directions.shape[0]):
        weight, centres = _query_norm(model, layer)
        g = directions[layer]
        if weight is not None:
            g = g * weight
        if centres:
            g = g - g.mean(-1, keepdim=True)
        directions[layer] = g / attn_scale(model, layer)
    return directions


@dataclass(repr=False)
class AttentionDeactivationScores(Result):
    """Deactivation scores of every (neuron, later head) pair, with a random-direction baseline.

    Attributes:
        scores: ``[layer, neuron, head_layer, head]``; NaN where ``head_layer <= layer``.
        random_scores: ``[n_random, layer, neuron, head_layer, head]``: the same score for random
            unit directions scaled to each neuron's ``‖w_out‖`` (one fresh direction per neuron and
            draw); NaN where ``head_layer <= layer``.
        w_out_norm: ``[layer, neuron]``.
        bos_query_directions: ``[head_layer, head, d_model]``, see :func:`bos_query_directions`.
        model_name: For titles.
    """

    FORMAT = "tl_universality.attention_deactivation_scores"

    scores: Float[Tensor, "layer neuron head_layer head"]
    random_scores: Float[Tensor, "n_random layer neuron head_layer head"]
    w_out_norm: Float[Tensor, "layer neuron"]
    bos_query_directions: Float[Tensor, "head_layer head d_model"]
    model_name: str = ""

    def baseline(self) -> tuple[Float[Tensor, "head_layer head"], Float[Tensor, "head_layer head"]]:
        """Mean and standard deviation of each head's score for a random *unit* direction.

        A random direction's score does not depend on which neuron it stands in for, so the draws
        of all neurons are pooled per head; multiply by a neuron's ``‖w_out‖`` for its baseline.
        """
        norms = self.w_out_norm[None, :, :, None, None]
        unit = torch.where(norms > 0, self.random_scores / norms.clamp_min(1e-30), torch.nan)
        flat = unit.permute(3, 4, 0, 1, 2).reshape(*self.scores.shape[2:], -1)
        mean = torch.nanmean(flat, dim=-1)
        std = (torch.nanmean((flat - mean[..., None]) ** 2, dim=-1)).sqrt()
        return mean, std

    def to_dataframe(self, top_k: int | None = None) -> pd.DataFrame:
        """The ranked table: one row per (neuron, later head) pair, highest score first.

        Columns: ``layer, neuron, head_layer, head_index, score, w_out_norm, random_mean,
        random_std`` (the baseline for this neuron's norm) and ``z_score``
        ((score - random_mean) / random_std).
        With ``top_k`` only the best rows are built (the full table of GPT-2 medium has ~18M).
        """
        return self._ranked(torch.ones(self.scores.shape[2:], dtype=torch.bool), top_k)

    def top(self, k: int = 20, head: tuple[int, int] | None = None) -> pd.DataFrame:
        """The ``k`` highest-scoring pairs, overall or for one ``(head_layer, head)``."""
        heads = torch.ones(self.scores.shape[2:], dtype=torch.bool)
        if head is not None:
            head_layer, index = head
            if bool(torch.isnan(self.scores[:, :, head_layer, index]).all()):
                raise ValueError(
                    f"Head {head_name(head_layer, index)} has no earlier neurons to score."
                )
            heads = torch.zeros_like(heads)
            heads[head_layer, index] = True
        return self._ranked(heads, k)

    def _ranked(self, heads: Tensor, top_k: int | None) -> pd.DataFrame:
        """Rows of the heads selected by the ``[head_layer, head]`` mask ``heads``, best first."""
        scores = self.scores.to(torch.float64)
        valid = ~torch.isnan(scores) & heads[None, None]
        flat = torch.where(valid, scores, -torch.inf).reshape(-1)
        n_valid = int(valid.sum())
        k = n_valid if top_k is None else min(int(top_k), n_valid)
        # Stable order for ties: sort the (few) selected rows, not the whole tensor.
        chosen = torch.topk(flat, k).indices if k < n_valid else valid.reshape(-1).nonzero()[:, 0]
        chosen = chosen[torch.sort(-flat[chosen], stable=True).indices]
        layer, neuron, head_layer, head = torch.unravel_index(chosen, scores.shape)
        score = flat[chosen]
        norm = self.w_out_norm.to(torch.float64)[layer, neuron]
        mean, std = self.baseline()
        random_mean = norm * mean.to(torch.float64)[head_layer, head]
        random_std = norm * std.to(torch.float64)[head_layer, head]
        return pd.DataFrame(
            {
                "layer": layer.numpy(),
                "neuron": neuron.numpy(),
                "head_layer": head_layer.numpy(),
                "head_index": head.numpy(),
                "score": score.numpy(),
                "w_out_norm": norm.numpy(),
                "random_mean": random_mean.numpy(),
                "random_std": random_std.numpy(),
                "z_score": ((score - random_mean) / random_std).numpy(),
            }
        )

    def summary(self) -> dict[str, Any]:
        """The best (neuron, head) pair, its score and z-score, and how many pairs score more than
        3 standard deviations above the random baseline."""
        top = self.to_dataframe(top_k=1)
        ranked = self.to_dataframe()
        out: dict[str, Any] = {"n_pairs": int(len(ranked))}
        if len(top):
            row = top.iloc[0]
            out.update(
                best_neuron=neuron_name(row["layer"], row["neuron"]),
                best_head=head_name(row["head_layer"], row["head_index"]),
                best_score=float(row["score"]),
                best_z_score=float(row["z_score"]),
                n_z_above_3=int((ranked["z_score"] > 3).sum()),
            )
        return out

    def plot(self, ax: Any = None, head: tuple[int, int] | None = None, bins: int = 50) -> Any:
        """Histogram of the scores of every earlier neuron for ``head`` (default: the head of the
        best pair) against the random baseline (scores of norm-matched random directions).
        Returns the matplotlib figure."""
        fig, ax = new_axes(ax, figsize=(6, 4))
        if head is None:
            best = self.to_dataframe(top_k=1)
            if best.empty:
                raise ValueError("No (neuron, later head) pair to plot: the model has one layer.")
            head = (int(best["head_layer"].iloc[0]), int(best["head_index"].iloc[0]))
        head_layer, index = head
        real = self.scores[:, :, head_layer, index].reshape(-1)
        rand = self.random_scores[:, :, :, head_layer, index].reshape(-1)
        real, rand = real[~torch.isnan(real)].numpy(), rand[~torch.isnan(rand)].numpy()
        edges = np.histogram_bin_edges(np.concatenate([real, rand]), bins=bins)
        ax.hist(rand, bins=edges, alpha=0.5, density=True, label="random directions")
        ax.hist(real, bins=edges, alpha=0.5, density=True, label="neurons")
        ax.set_yscale("log")
        ax.set_xlabel("w_out · W_Q k_BOS / attn_scale")
        ax.set_ylabel("density")
        ax.set_title(f"BOS deactivation scores for head {head_name(head_layer, index)}")
        ax.legend()
        return fig

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_tensors(
            "scores",
            {
                "scores": self.scores,
                "random_scores": self.random_scores,
                "w_out_norm": self.w_out_norm,
                "bos_query_directions": self.bos_query_directions,
            },
        )
        meta["model_name"] = self.model_name

    @classmethod
    def _read(cls, saved: SavedFolder) -> AttentionDeactivationScores:
        t = saved.tensors("scores")
        result = cls(**t, model_name=str(saved.meta.get("model_name", "")))
        n_layers, d_mlp = result.w_out_norm.shape
        if result.scores.shape[:2] != (n_layers, d_mlp) or result.random_scores.shape[1:] != (
            result.scores.shape
        ):
            raise ValueError("scores, random_scores and w_out_norm disagree in shape")
        return result

    @classmethod
    def _load_fix(cls) -> str:
        return "run attention_deactivation_scores(...) again and save it."


def attention_deactivation_scores(
    model: HookedModel,
    *,
    n_random: int = 1,
    seed: int = 0,
    bos_token_id: int | None = None,
) -> AttentionDeactivationScores:
    """Score every MLP neuron against every head of a later layer for switching it off.

    ``score[l, n, l_h, h] = w_out[l, n] · g[l_h, h]`` with ``g`` from :func:`bos_query_directions`,
    i.e. ``w_outᵀ · W_Q[h] · k_BOS[h] / sqrt(d_head)`` up to the LayerNorm treatment in the module
    docstring: how much one unit of the neuron's activation raises the head's attention logit on
    BOS. A large positive score means the neuron pushes the head to attend to BOS (switches it
    off). The baseline replaces each ``w_out`` by random unit vectors scaled to its norm.

    Args:
        model: Any TransformerLens model with MLPs.
        n_random: Random directions per neuron for the baseline.
        seed: Seed of the random directions.
        bos_token_id: The BOS id (default: the tokenizer's).

    Returns:
        An :class:`AttentionDeactivationScores` (tensor and ranked table).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4,
        ...     d_head=4, n_heads=2, d_vocab=10, d_mlp=16, act_fn="relu", seed=0))
        >>> result = attention_deactivation_scores(model, bos_token_id=0)
        >>> result.scores.shape, len(result.to_dataframe())  # 16 neurons of layer 0 x 2 heads
        (torch.Size([2, 16, 2, 2]), 32)
    """
    mlp_hook_names(model)
    if int(model.cfg.n_layers) < 2:
        raise NoUnitsError(
            f"{model_name(model)} has a single layer: no head reads an MLP neuron's output, so"
            " there is no (neuron, later head) pair to score."
        )
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1, got {n_random}.")
    directions = bos_query_directions(model, bos_token_id)  # [L, H, D]
    W_out = model.W_out.detach().to("cpu", torch.float64)  # type: ignore[attr-defined]
    n_layers, d_mlp, d_model = W_out.shape
    norms = W_out.norm(dim=-1)
    # Only heads after the neuron's layer read what it writes.
    later = torch.arange(n_layers)[None, :] > torch.arange(n_layers)[:, None]  # [l, l_h]
    mask = later[:, None, :, None]
    scores = torch.einsum("lnd,mhd->lnmh", W_out, directions)
    scores = torch.where(mask, scores, torch.nan).to(torch.float32)

    generator = torch.Generator().manual_seed(seed)
    random_scores = torch.empty(n_random, *scores.shape, dtype=torch.float32)
    for layer in range(n_layers):  # one layer at a time: bounded memory for big models
        r = torch.randn(n_random, d_mlp, d_model, generator=generator, dtype=torch.float64)
        r = r / r.norm(dim=-1, keepdim=True) * norms[layer][None, :, None]
        block = torch.einsum("rnd,mhd->rnmh", r, directions)
        random_scores[:, layer] = torch.where(mask[layer], block, torch.nan).to(torch.float32)
    return AttentionDeactivationScores(
        scores=scores,
        random_scores=random_scores,
        w_out_norm=norms.to(torch.float32),
        bos_query_directions=directions.to(torch.float32),
        model_name=model_name(model),
    )


# ---------------------------------------------------------------------------------------------
# Causal test
# ---------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


@dataclass(repr=False)
class PathAblationResult(Result):
    """Per-token effect of removing a neuron's output from one head's query input.

    Attributes:
        neuron: ``(layer, neuron)``.
        head: ``(head_layer, head)``.
        table: One row per token (BOS positions excluded): ``sequence, position, token,
            activation`` (the neuron's), ``bos_attention_clean, bos_attention_ablated,
            bos_attention_change`` (ablated - clean) and ``output_norm_clean,
            output_norm_ablated, output_norm_change`` (‖z_h W_O[h]‖ per token).
        model_name: For titles.
    """

    FORMAT = "tl_universality.path_ablation"

    neuron: tuple[int, int]
    head: tuple[int, int]
    table: pd.DataFrame
    model_name: str = ""

    def to_dataframe(self) -> pd.DataFrame:
        """The per-token table."""
        return self.table.copy()

    @property
    def correlations(self) -> dict[str, float]:
        """Pearson correlation of the neuron's activation with each change (NaN if constant)."""
        act = self.table["activation"].to_numpy()
        return {
            column: _pearson(act, self.table[column].to_numpy())
            for column in ("bos_attention_change", "output_norm_change")
        }

    def summary(self) -> dict[str, float]:
        """Mean changes over all tokens and over tokens where the neuron is active (> 0), and the
        correlations."""
        t = self.table
        active = t[t["activation"] > 0]
        out: dict[str, float] = {"n_tokens": float(len(t)), "n_active": float(len(active))}
        for column in ("bos_attention_change", "output_norm_change"):
            out[f"mean_{column}"] = float(t[column].mean())
            out[f"mean_{column}_active"] = float(active[column].mean()) if len(active) else np.nan
            out[f"corr_activation_{column}"] = self.correlations[column]
        return out

    def plot(self, ax: Any = None) -> Any:
        """Scatter the neuron's activation against both changes (``ax``: a pair of axes).
        Returns the matplotlib figure."""
        if ax is None:
            fig, axes = new_axes(figsize=(10, 4), nrows=1, ncols=2)
        else:
            axes, fig = ax, ax[0].figure
        corr = self.correlations
        for a, column, label in zip(
            axes,
            ("bos_attention_change", "output_norm_change"),
            ("change in attention to BOS", "change in head output norm"),
            strict=True,
        ):
            a.scatter(self.table["activation"], self.table[column], s=4, alpha=0.5)
            a.axhline(0, color="grey", lw=1)
            a.set_xlabel(f"activation of neuron {neuron_name(*self.neuron)}")
            a.set_ylabel(label)
            a.set_title(f"head {head_name(*self.head)}: r = {corr[column]:.2f}")
        return fig

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_table("table", self.table.reset_index(drop=True))
        meta.update(neuron=list(self.neuron), head=list(self.head), model_name=self.model_name)

    @classmethod
    def _read(cls, saved: SavedFolder) -> PathAblationResult:
        meta = saved.meta
        return cls(
            neuron=(int(meta["neuron"][0]), int(meta["neuron"][1])),
            head=(int(meta["head"][0]), int(meta["head"][1])),
            table=saved.table("table"),
            model_name=str(meta.get("model_name", "")),
        )

    @classmethod
    def _load_fix(cls) -> str:
        return "run path_ablation(...) again and save it."


def _check_pair(model: HookedModel, neuron: tuple[int, int], head: tuple[int, int]) -> None:
    n_layers, d_mlp, n_heads = (int(model.cfg.n_layers), int(model.cfg.d_mlp), model.cfg.n_heads)
    layer, index = neuron
    head_layer, head_index = head
    if not (0 <= layer < n_layers and 0 <= index < d_mlp):
        raise IndexError(f"{model_name(model)} has no neuron {neuron_name(layer, index)}.")
    if not (0 <= head_layer < n_layers and 0 <= head_index < int(n_heads)):
        raise IndexError(f"{model_name(model)} has no head {head_name(head_layer, head_index)}.")
    if head_layer <= layer:
        raise ValueError(
            f"Head {head_name(head_layer, head_index)} does not read neuron"
            f" {neuron_name(layer, index)}'s output: pick a head in a later layer than {layer}."
        )


def path_ablation(
    model: HookedModel,
    neuron: tuple[int, int],
    head: tuple[int, int],
    tokens: Tokens,
    *,
    batch_size: int = 8,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> PathAblationResult:
    """Remove ``act * w_out`` of ``neuron`` from ``head``'s query input only; measure per token.

    Two forward passes per batch, both with ``use_split_qkv_input`` on (and restored afterwards)
    so they share one numerical path: a clean one and one with
    :class:`~tl_universality.units.hooks.RemoveFromQueryInput`. The head's keys and values, and
    every
    other head, see the clean residual stream; the passes stop after the head's layer. Attention to
    BOS is attention to position 0 (every sequence starts with BOS); the head's output norm is
    ``‖z_h · W_O[h]‖``. For a deactivation neuron, removing it lowers the head's attention to BOS
    where the neuron is active (negative ``bos_attention_change``, negatively correlated with the
    activation).

    Args:
        model: Any TransformerLens model with MLPs.
        neuron: ``(layer, neuron)``.
        head: ``(head_layer, head)`` with ``head_layer > layer``.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` takes (e.g. a
            ``[n, seq]`` tensor of BOS-first rows).
        batch_size: Sequences per forward pass.
        max_tokens: Use at most this many tokens.
        bos_token_id: BOS id for a token tensor (default: the tokenizer's, else the first token).
        progress: Show a progress bar over batches.

    Returns:
        A :class:`PathAblationResult` (per-token table, correlations, plot).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4,
        ...     d_head=4, n_heads=2, d_vocab=10, d_mlp=16, act_fn="relu", seed=0))
        >>> toks = torch.tensor([[0, 3, 5, 7], [0, 2, 4, 6]])
        >>> result = path_ablation(model, (0, 1), (1, 0), toks)
        >>> len(result.to_dataframe()), sorted(result.correlations)  # 2 x 3 non-BOS tokens
        (6, ['bos_attention_change', 'output_norm_change'])
    """
    mlp_hook_names(model)
    neuron = (int(neuron[0]), int(neuron[1]))
    head = (int(head[0]), int(head[1]))
    _check_pair(model, neuron, head)
    layer, index = neuron
    head_layer, head_index = head
    ablate = RemoveFromQueryInput.from_model(model, neuron, head)
    act_name = f"blocks.{layer}.mlp.hook_post"
    pattern_name = f"blocks.{head_layer}.attn.hook_pattern"
    z_name = f"blocks.{head_layer}.attn.hook_z"
    capture = [act_name, pattern_name, z_name]
    W_O = model.W_O[head_layer, head_index].detach()  # type: ignore[attr-defined]

    def measure(cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        bos_attention = cache[pattern_name][:, head_index, :, 0]
        output = cache[z_name][:, :, head_index] @ W_O.to(cache[z_name])
        return bos_attention, output.norm(dim=-1)

    columns: dict[str, list[np.ndarray]] = {}
    first_sequence = 0
    batches = token_batches(
        model, tokens, batch_size=batch_size, bos_token_id=bos_token_id, max_tokens=max_tokens
    )
    with split_qkv_input(model):
        for batch in tqdm(batches, disable=not progress, desc="path ablation", unit="batch"):
            _, clean = run_with_interventions(
                model, batch, capture=capture, stop_at_layer=head_layer + 1
            )
            _, ablated = run_with_interventions(
                model, batch, [ablate], capture=capture, stop_at_layer=head_layer + 1
            )
            bos_clean, norm_clean = measure(clean)
            bos_ablated, norm_ablated = measure(ablated)
            keep = torch.zeros_like(batch, dtype=torch.bool)
            keep[:, 1:] = True  # position 0 is BOS: it can attend only to itself
            seq = torch.arange(batch.shape[0], device=batch.device)[:, None].expand_as(batch)
            pos = torch.arange(batch.shape[1], device=batch.device)[None, :].expand_as(batch)
            values = {
                "sequence": seq + first_sequence,
                "position": pos,
                "token": batch,
                "activation": clean[act_name][..., index],
                "bos_attention_clean": bos_clean,
                "bos_attention_ablated": bos_ablated,
                "bos_attention_change": bos_ablated - bos_clean,
                "output_norm_clean": norm_clean,
                "output_norm_ablated": norm_ablated,
                "output_norm_change": norm_ablated - norm_clean,
            }
            for key, value in values.items():
                columns.setdefault(key, []).append(value[keep].detach().cpu().numpy())
            first_sequence += batch.shape[0]
    table = pd.DataFrame({key: np.concatenate(parts) for key, parts in columns.items()})
    return PathAblationResult(neuron=neuron, head=head, table=table, model_name=model_name(model))


__all__ = [
    "AttentionDeactivationScores",
    "PathAblationResult",
    "attention_deactivation_scores",
    "bos_keys",
    "bos_query_directions",
    "path_ablation",
]

"""Who wrote what a head reads: the residual in front of a layer as a sum of upstream writers.

The residual stream in front of layer ``l`` is exactly the sum of what was written into it:

    resid_pre[l] = embed + pos_embed + Σ_{l' < l} (Σ_h z_h W_O[h] + b_O + mlp_out)

and the head reads ``x̃ = [C(resid_pre) / scale; 1]`` (``C`` the LayerNorm's centring where it
centres, ``scale`` its scale at that position). Both operations are linear once the scale is
known, so ``x̃`` splits into one contribution per writer, ``[C(w_j) / scale; 0]``, plus the
constant part ``[C(Σ b_O) / scale; 1]`` that we call the ``bias`` writer. Projected on any
directions (the singular vectors of a head), the writers' projections sum to the projection of the
whole ``x̃``.

Writers are named by unit: ``embed``, ``pos_embed``, ``bias``, heads ``L1H3`` (each head's own
output ``z_h W_O[h]``, TransformerLens's ``hook_result``), MLP layers ``L1MLP``. MLP neurons given
in ``neurons`` (e.g. the attention-deactivation neurons of
:func:`~tl_universality.analyses.attention.attention_deactivation_scores`) become writers of their
own, ``L1N191`` with output ``act · w_out``, and their layer's ``L1MLP`` keeps the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.core.names import head_name, neuron_name
from tl_universality.core.protocol import HookedModel, has_mlps, model_name

NeuronSpec = Sequence[tuple[int, int]] | Any | None
"""MLP neurons to trace as writers: ``(layer, neuron)`` pairs, or a table with ``layer`` and
``neuron`` columns (e.g. ``attention_deactivation_scores(model).top(10)``)."""


def mlp_name(layer: int) -> str:
    """The node name of a whole MLP layer's output, ``L{layer}MLP``."""
    return f"L{int(layer)}MLP"


def as_neurons(model: HookedModel, neurons: NeuronSpec) -> tuple[tuple[int, int], ...]:
    """Sorted distinct ``(layer, neuron)`` pairs, checked against the model.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4,
        ...     d_head=4, n_heads=2, d_vocab=10, d_mlp=16, act_fn="relu"))
        >>> as_neurons(model, [(1, 3), (0, 2), (1, 3)])
        ((0, 2), (1, 3))
    """
    if neurons is None:
        return ()
    if hasattr(neurons, "columns"):
        if not {"layer", "neuron"} <= set(neurons.columns):
            raise ValueError(
                f"neurons is a table with columns {list(neurons.columns)}; it needs 'layer' and"
                " 'neuron' columns (as the tables of attention_deactivation_scores have)."
            )
        neurons = list(zip(neurons["layer"].tolist(), neurons["neuron"].tolist(), strict=True))
    out = set()
    for item in neurons:
        try:
            layer, index = (int(v) for v in item)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"neurons holds {item!r}; pass (layer, neuron) pairs such as (0, 191)."
            ) from err
        out.add((layer, index))
    if out and not has_mlps(model):
        raise ValueError(
            f"neurons={sorted(out)[:3]} but {model_name(model)} has no MLPs: pass neurons=None."
        )
    n_layers, d_mlp = int(model.cfg.n_layers), int(getattr(model.cfg, "d_mlp", 0) or 0)
    for layer, index in out:
        if not (0 <= layer < n_layers and 0 <= index < d_mlp):
            raise ValueError(
                f"neurons holds ({layer}, {index}), which {model_name(model)} does not have: pass"
                f" 0 <= layer < {n_layers} and 0 <= neuron < {d_mlp}."
            )
    return tuple(sorted(out))


@dataclass(frozen=True)
class WriterSet:
    """The writers into the residual in front of one layer, in a fixed order.

    Attributes:
        layer: The reading layer.
        names: Node names, in order: ``embed, pos_embed``, then per earlier layer its heads,
            its traced neurons and its ``MLP``, then ``bias``.
        kinds: ``embed``, ``pos_embed``, ``head``, ``neuron``, ``mlp`` or ``bias`` per writer.
        layers: The writer's layer (-1 for embeddings and bias).
        indices: Head or neuron index (-1 otherwise).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4,
        ...     d_head=4, n_heads=2, d_vocab=10, d_mlp=16, act_fn="relu"))
        >>> writer_set(model, 1, neurons=[(0, 5)]).names
        ('embed', 'pos_embed', 'L0H0', 'L0H1', 'L0N5', 'L0MLP', 'bias')
    """

    layer: int
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    layers: tuple[int, ...]
    indices: tuple[int, ...]
    neurons: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return len(self.names)


def writer_set(model: HookedModel, layer: int, neurons: NeuronSpec = None) -> WriterSet:
    """Every writer into the residual that ``layer``'s attention reads (module docstring)."""
    chosen = as_neurons(model, neurons)
    rows: list[tuple[str, str, int, int]] = [
        ("embed", "embed", -1, -1),
        ("pos_embed", "pos_embed", -1, -1),
    ]
    mlps = has_mlps(model)
    for earlier in range(int(layer)):
        for h in range(int(model.cfg.n_heads)):
            rows.append((head_name(earlier, h), "head", earlier, h))
        if mlps:
            for n_layer, n in chosen:
                if n_layer == earlier:
                    rows.append((neuron_name(n_layer, n), "neuron", n_layer, n))
            rows.append((mlp_name(earlier), "mlp", earlier, -1))
    rows.append(("bias", "bias", -1, -1))
    names, kinds, layers, indices = zip(*rows, strict=True)
    kept = tuple(nl for nl in chosen if nl[0] < int(layer))
    return WriterSet(int(layer), names, kinds, layers, indices, kept)


def writer_hooks(model: HookedModel, layer: int, neurons: NeuronSpec = None) -> list[str]:
    """The hook points :func:`writer_projections` needs for the writers into ``layer``."""
    names = ["hook_embed", "hook_pos_embed"]
    neuron_layers = {n_layer for n_layer, _ in as_neurons(model, neurons)}
    for earlier in range(int(layer)):
        names.append(f"blocks.{earlier}.attn.hook_z")
        if has_mlps(model):
            names.append(f"blocks.{earlier}.hook_mlp_out")
            if earlier in neuron_layers:
                names.append(f"blocks.{earlier}.mlp.hook_post")
    return names


def writer_projections(
    model: HookedModel,
    cache: dict[str, Tensor],
    writers: WriterSet,
    prompt: Int[Tensor, " n"],
    position: Int[Tensor, " n"],
    directions: Float[Tensor, "d_aug r"],
    scale: Float[Tensor, "batch pos"],
    centred: bool,
) -> Float[Tensor, "n writer r"]:
    """Each writer's contribution to ``x̃ · directions`` at ``(prompt, position)`` (float64).

    ``directions`` are columns in ``x̃`` space (``d_model + 1`` rows), e.g. a head's ``U`` or
    ``V``; ``scale`` is the LayerNorm scale from
    :func:`~tl_universality.attention_decomposition.decompose.augmented_residual`. Summed over
    writers, the result is ``x̃[prompt, position] @ directions``.
    """
    as64 = lambda t: t.detach().to("cpu", torch.float64)
    D = directions[:-1]
    if centred:  # (C w) · d = w · (C d): centre the directions once instead of every vector
        D = D - D.mean(0, keepdim=True)
    inv_scale = 1.0 / scale[prompt, position]  # [n]
    n_layers = writers.layer
    parts: list[Tensor] = []

    def read(name: str) -> Tensor:
        return as64(cache[name][prompt, position])

    parts.append((read("hook_embed") @ D)[:, None])
    parts.append((read("hook_pos_embed") @ D)[:, None])
    bias = torch.zeros(D.shape[0], dtype=torch.float64)
    mlps = has_mlps(model)
    for earlier in range(n_layers):
        z = read(f"blocks.{earlier}.attn.hook_z")  # [n, kv-expanded heads, d_head]
        W_O = as64(model.W_O[earlier])  # type: ignore[attr-defined]  # [h, d_head, d_model]
        parts.append(torch.einsum("nhe,hed,dr->nhr", z, W_O, D))
        bias = bias + as64(model.b_O[earlier])  # type: ignore[attr-defined]
        if not mlps:
            continue
        mlp_out = read(f"blocks.{earlier}.hook_mlp_out") @ D  # [n, r]
        for n_layer, n in writers.neurons:
            if n_layer != earlier:
                continue
            act = read(f"blocks.{earlier}.mlp.hook_post")[:, n]
            w_out = as64(model.W_out[earlier, n])  # type: ignore[attr-defined]
            neuron = act[:, None] * (w_out @ D)[None]
            parts.append(neuron[:, None])
            mlp_out = mlp_out - neuron
        parts.append(mlp_out[:, None])
    projected = torch.cat(parts, dim=1) * inv_scale[:, None, None]
    constant = (bias @ D)[None] * inv_scale[:, None] + directions[-1][None]
    return torch.cat([projected, constant[:, None]], dim=1)


__all__ = [
    "NeuronSpec",
    "WriterSet",
    "as_neurons",
    "mlp_name",
    "writer_hooks",
    "writer_projections",
    "writer_set",
]

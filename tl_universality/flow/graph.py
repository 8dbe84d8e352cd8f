"""One forward pass as a flow graph of vocabulary-projected vectors (VISIT, Katz & Belinkov 2023).

:func:`flow_graph` runs the model once with a cache and decomposes what happens at one position:

- **residual nodes**: the residual stream into the first layer read and after every attention
  block (``resid_mid``) and MLP block (``resid_post``, which is the next layer's input);
- **block nodes**: the attention output ``hook_attn_out`` and the MLP output ``hook_mlp_out``;
- **unit nodes**: every kept head's output ``z_h @ W_O[h]`` (:func:`head_outputs`) and every kept
  neuron's value vector ``act_n · W_out[n]`` (:func:`neuron_values`), chosen by the score and
  budget of :mod:`tl_universality.flow.prune`; what is not kept is summed into one ``rest`` node
  per block, so the decomposition stays complete; with ``include_biases`` the biases ``b_O`` and
  ``b_out`` are nodes too (otherwise they are part of the rest);
- **source nodes**: the block input at the earlier positions the kept heads read from most.

Every node carries its logit-lens reading (:mod:`tl_universality.flow.readout`): top and bottom
tokens with probabilities, entropy, the target token's probability and rank.

Edges, with one rule for their weights: ``weight`` is the norm of the vector that flows along the
edge, and ``share = c · t / ‖t‖²`` is the signed fraction of the target vector ``t`` that the
flowing vector ``c`` accounts for (the shares of all edges into a sum node add up to 1):

============  ====================================  ===================================
kind          from → to                             flowing vector ``c``
============  ====================================  ===================================
``skip``      residual → next residual              the residual itself
``write``     block output → next residual          the block output
``head``      head / rest / bias → attention out    the head's output
``neuron``    neuron / rest / bias → MLP out        the value vector ``act_n W_out[n]``
``value``     block input at source s → head        ``A[h, p, s] · v_s W_O[h]``
``read``      ``resid_mid`` → neuron                the value vector (``share`` is NaN)
============  ====================================  ===================================

``value`` edges also carry ``attention`` (the pattern ``A[h, p, s]``) and ``score`` (the
pre-softmax score ``hook_attn_scores``); the position read's own input is the residual node, so
its value edge starts there. Head nodes carry a reading of their query in the residual space,
:func:`query_directions` (``W_K[h] q``: the direction whose dot product with the normalised key
input gives the attention score), as VISIT does; note this is ``W_K q``, not ``W_Kᵀ``-anything.

Examples:
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4,
    ...                               d_mlp=32, d_vocab=20, act_fn="gelu_new", seed=0)
    >>> graph = flow_graph(HookedTransformer(cfg), [0, 5, 7, 3], heads=2, neurons=(3, 1))
    >>> graph.summary()["n_nodes"], graph.summary()["n_edges"]
    (31, 48)
    >>> final = graph.nodes.set_index("id").loc["L1.resid_post"]  # the model's own output
    >>> int(final["target_rank"]), graph.meta["target_source"]
    (1, 'prediction')
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.names import head_name, neuron_name
from tl_universality.core.protocol import HookedModel, check_hooks_exist, has_mlps, model_name
from tl_universality.flow.inputs import as_prompt, resolve_layers, resolve_position
from tl_universality.flow.overlay import universality_overlay
from tl_universality.flow.prune import (
    Budget,
    HeadBudget,
    NeuronBudget,
    keep_strongest,
    keep_top_bottom,
)
from tl_universality.flow.readout import (
    ReadingMode,
    check_mode,
    read_vectors,
    resolve_target,
    token_strings,
)
from tl_universality.flow.result import FlowGraph

COLUMNS_PER_LAYER = 6
"""Layout columns of one layer: input residual, heads, attention out, ``resid_mid``, neurons,
MLP out (the next column is the next layer's input)."""


# -- the pieces, as free functions the tests and users can check --------------------------------


def head_outputs(
    model: HookedModel, layer: int, z: Float[Tensor, "heads d_head"]
) -> Float[Tensor, "heads d_model"]:
    """``z_h @ W_O[h]`` for every head; with ``b_O`` they sum to the attention output."""
    return torch.einsum("hd,hdm->hm", z, model.W_O[layer])  # type: ignore[attr-defined]


def neuron_values(
    model: HookedModel, layer: int, acts: Float[Tensor, " d_mlp"]
) -> Float[Tensor, "d_mlp d_model"]:
    """``act_n · W_out[n]`` for every neuron; with ``b_out`` they sum to the MLP output."""
    return acts[:, None] * model.W_out[layer]  # type: ignore[attr-defined]


def query_directions(
    model: HookedModel, layer: int, q: Float[Tensor, "heads d_head"]
) -> Float[Tensor, "heads d_model"]:
    """Each head's query mapped into the key input space: ``r_h = W_K[h] @ q_h``.

    The attention score of source ``s`` is ``(r_h · ln1(x_s) + q_h · b_K[h]) / attn_scale`` for
    models with learned absolute positions (not rotary), so ``r_h`` is the direction in the
    (normalised) residual the head looks for.
    """
    W_K = model.W_K[layer]  # type: ignore[attr-defined]  # [heads, d_model, d_head]
    return torch.einsum("hmd,hd->hm", W_K, q)


def _hook_names(model: HookedModel, layers: list[int], mlps: bool) -> list[str]:
    names = []
    for layer in layers:
        block = f"blocks.{layer}"
        names += [f"{block}.hook_resid_pre", f"{block}.hook_resid_post", f"{block}.hook_attn_out"]
        names += [f"{block}.attn.{h}" for h in ("hook_z", "hook_pattern", "hook_v", "hook_q")]
        names.append(f"{block}.attn.hook_attn_scores")
        if mlps:
            names += [f"{block}.hook_resid_mid", f"{block}.mlp.hook_post", f"{block}.hook_mlp_out"]
    if model.cfg.normalization_type is not None:
        names.append("ln_final.hook_scale")
    check_hooks_exist(model, names)
    return names


def _share(c: Tensor, t: Tensor) -> float:
    denom = float(t.double().pow(2).sum())
    return float((c.double() @ t.double()) / denom) if denom > 0 else float("nan")


# -- the graph ---------------------------------------------------------------------------------


class _Builder:
    """Collects node vectors and records, and edges, while walking the layers."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.vectors: list[Tensor] = []
        self.positions: list[int] = []
        self.edges: list[dict[str, Any]] = []
        self.ids: set[str] = set()

    def node(self, vector: Tensor, position: int, **record: Any) -> str:
        if record["id"] not in self.ids:
            self.ids.add(record["id"])
            self.records.append(record)
            self.vectors.append(vector)
            self.positions.append(position)
        return record["id"]

    def edge(
        self,
        source: str,
        target: str,
        kind: str,
        c: Tensor,
        t: Tensor | None,
        layer: int,
        **extra: Any,
    ) -> None:
        share = _share(c, t) if t is not None else float("nan")
        self.edges.append(
            dict(
                source=source,
                target=target,
                kind=kind,
                layer=layer,
                weight=float(c.float().norm()),
                share=share,
                **extra,
            )
        )


def flow_graph(
    model: HookedModel,
    tokens_or_text: Any,
    position: int = -1,
    target: int | str | None = None,
    layers: int | Sequence[int] | None = None,
    *,
    heads: HeadBudget = 10,
    neurons: NeuronBudget = (18, 7),
    top_k: int = 5,
    sources: int = 3,
    include_biases: bool = False,
    reading: ReadingMode = "own",
    correlation: Any = None,
    families: pd.DataFrame | None = None,
    threshold: float = 0.5,
    prepend_bos: bool = True,
) -> FlowGraph:
    """The VISIT flow graph of one forward pass at one position (module docstring).

    Args:
        model: Any TransformerLens hooked model with sequential attention and MLP blocks.
        tokens_or_text: A prompt: text (tokenized with ``prepend_bos``) or token ids.
        position: The token position to read (negative from the end); any position works.
        target: The token whose probability and rank colour the graph: an id or a single-token
            string. Default: the next token of the prompt, or at the last position the model's
            own prediction.
        layers: Layers to draw (an index or a list; default all).
        heads: Heads kept per layer: a count or a share of the written norm
            (:mod:`~tl_universality.flow.prune`).
        neurons: Neurons kept per layer: ``(top, bottom)`` counts or a share.
        top_k: Top and bottom tokens kept per reading.
        sources: For each kept head, the source positions (other than the one read) with the
            largest value-weighted contribution that get a node and a ``value`` edge.
        include_biases: Draw ``b_O`` and ``b_out`` as nodes (else they are in the rest nodes).
        reading: ``"own"`` (VISIT) or ``"residual"`` scale (:mod:`~tl_universality.flow.readout`).
        correlation: A correlation result with this model as the reference (anything whose
            ``to_dataframe()`` has ``layer, neuron, excess_corr``, or such a DataFrame): neuron
            nodes get ``excess_corr`` and ``is_universal`` (``excess_corr > threshold``).
        families: A table with ``layer, neuron, family``: neuron nodes get their family.
        threshold: Excess correlation above which a neuron is universal (the paper's 0.5).
        prepend_bos: Prepend BOS when tokenizing text.

    Returns:
        A :class:`~tl_universality.flow.result.FlowGraph` (nodes, edges, the pruned units).
    """
    started = time.perf_counter()
    check_mode(reading)
    budget = Budget(heads=heads, neurons=neurons)
    if getattr(model.cfg, "parallel_attn_mlp", False):
        raise ValueError(
            f"{model_name(model)} runs attention and MLP in parallel (parallel_attn_mlp=True);"
            " flow graphs decompose sequential blocks. Use a GPT-2/Pythia-style model."
        )
    if not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be a positive int, e.g. top_k=5.")
    if not isinstance(sources, numbers.Integral) or sources < 0:
        raise ValueError(f"sources={sources!r} must be an int >= 0, e.g. sources=3.")
    tokens = as_prompt(model, tokens_or_text, prepend_bos)
    seq_len = tokens.shape[1]
    p = resolve_position(position, seq_len)
    chosen = resolve_layers(layers, int(model.cfg.n_layers))
    mlps = has_mlps(model)
    names = _hook_names(model, chosen, mlps)
    device = model.W_U.device  # type: ignore[attr-defined]
    with torch.no_grad():
        logits, cache = model.run_with_cache(  # type: ignore[attr-defined]
            tokens.to(device), names_filter=lambda name: name in names
        )
        missing = [n for n in names if n not in cache]
        if missing:
            raise RuntimeError(
                f"Hooks {missing[:3]} of {model_name(model)} did not fire; the flow graph needs"
                " them. Enable them (e.g. a config flag) or use another model."
            )
        if target is None:
            target_id = int(tokens[0, p + 1]) if p + 1 < seq_len else int(logits[0, p].argmax())
            target_source = "next token" if p + 1 < seq_len else "prediction"
        else:
            target_id, target_source = resolve_target(model, target), "given"
        builder, edges, pruned = _build(
            model, cache, p, chosen, mlps, budget, int(sources), include_biases
        )
        strings = token_strings(model)
        prediction = int(logits[0, p].argmax())
        nodes = _read_nodes(model, builder, cache, reading, int(top_k), target_id, strings, tokens)
    meta = {
        "model": model_name(model),
        "n_layers": int(model.cfg.n_layers),
        "normalization_type": model.cfg.normalization_type,
        "layers": chosen,
        "position": p,
        "tokens": tokens[0].tolist(),
        "token_strings": [strings[t] for t in tokens[0].tolist()],
        "target": target_id,
        "target_token": strings[target_id],
        "target_source": target_source,
        "prediction": prediction,
        "prediction_token": strings[prediction],
        "reading": reading,
        "budget": budget.to_dict(),
        "top_k": int(top_k),
        "sources": int(sources),
        "include_biases": bool(include_biases),
    }
    nodes = universality_overlay(nodes, correlation, families, threshold)
    meta["build_seconds"] = time.perf_counter() - started
    return FlowGraph(nodes=nodes, edges=edges, pruned=pruned, meta=meta)


def _build(
    model: HookedModel,
    cache: Any,
    p: int,
    layers: list[int],
    mlps: bool,
    budget: Budget,
    n_sources: int,
    include_biases: bool,
) -> tuple[_Builder, pd.DataFrame, pd.DataFrame]:
    b = _Builder()
    pruned: list[dict[str, Any]] = []
    n_heads = int(model.cfg.n_heads)
    previous: int | None = None
    for index, layer in enumerate(layers):
        block = f"blocks.{layer}"
        col = COLUMNS_PER_LAYER * index
        x_pre = cache[f"{block}.hook_resid_pre"][0]
        # The input residual is the previous layer's resid_post when that layer is drawn.
        if previous is not None and previous == layer - 1:
            resid_in = f"L{previous}.resid_post"
        else:
            resid_in = b.node(
                x_pre[p],
                p,
                id=f"L{layer}.resid_pre",
                kind="resid_pre",
                layer=layer,
                column=col,
                unit=-1,
            )

        # Attention: heads, their value sources, the rest, the bias.
        attn_out = cache[f"{block}.hook_attn_out"][0, p]
        z = cache[f"{block}.attn.hook_z"][0, p]
        outs = head_outputs(model, layer, z)
        pattern = cache[f"{block}.attn.hook_pattern"][0, :, p]  # [heads, src]
        scores = cache[f"{block}.attn.hook_attn_scores"][0, :, p]
        v = cache[f"{block}.attn.hook_v"][0]  # [src, kv_heads, d_head]
        if v.shape[1] != n_heads:  # grouped-query attention shares keys/values across heads
            v = v.repeat_interleave(n_heads // v.shape[1], dim=1)
        per_source = torch.einsum(
            "hs,shd,hdm->hsm", pattern[:, : p + 1], v[: p + 1], model.W_O[layer]
        )  # type: ignore[attr-defined]
        q = cache[f"{block}.attn.hook_q"][0, p]
        if q.shape[0] != n_heads:
            q = q.repeat_interleave(n_heads // q.shape[0], dim=0)
        queries = query_directions(model, layer, q)
        head_norms = outs.norm(dim=-1)
        kept = keep_strongest(head_norms, budget.heads).tolist()
        attn_id = f"L{layer}.attn_out"
        for h in kept:
            hid = b.node(
                outs[h],
                p,
                id=head_name(layer, h),
                kind="head",
                layer=layer,
                column=col + 1,
                unit=h,
                score=float(head_norms[h]),
                attention_entropy=_entropy(pattern[h, : p + 1]),
                query=queries[h],
            )
            b.edge(hid, attn_id, "head", outs[h], attn_out, layer)
            norms = per_source[h].norm(dim=-1)
            others = [s for s in torch.argsort(norms, descending=True).tolist() if s != p]
            for s in [p, *others[:n_sources]]:
                sid = (
                    resid_in
                    if s == p
                    else b.node(
                        x_pre[s],
                        s,
                        id=f"L{layer}.resid_pre@{s}",
                        kind="source",
                        layer=layer,
                        column=col,
                        unit=-1,
                    )
                )
                b.edge(
                    sid,
                    hid,
                    "value",
                    per_source[h, s],
                    outs[h],
                    layer,
                    attention=float(pattern[h, s]),
                    score=float(scores[h, s]),
                )
        rest = [h for h in range(n_heads) if h not in set(kept)]
        pruned += [
            dict(
                layer=layer,
                kind="head",
                unit=h,
                name=head_name(layer, h),
                score=float(head_norms[h]),
                norm=float(head_norms[h]),
            )
            for h in rest
        ]
        pruned_sum = outs[rest].sum(0) if rest else torch.zeros_like(attn_out)
        b_O = model.b_O[layer]  # type: ignore[attr-defined]
        _rest_and_bias(b, p, layer, "attn", col + 1, pruned_sum, len(rest), b_O, include_biases,
                       attn_id, attn_out, "head")  # fmt: skip
        b.node(attn_out, p, id=attn_id, kind="attn_out", layer=layer, column=col + 2, unit=-1)
        # Attention-only models have no resid_mid: the attention block writes resid_post.
        mid_kind = "resid_mid" if mlps else "resid_post"
        x_mid = cache[f"{block}.hook_{mid_kind}"][0, p]
        mid_id = b.node(x_mid, p, id=f"L{layer}.{mid_kind}", kind=mid_kind, layer=layer,
                        column=col + (3 if mlps else COLUMNS_PER_LAYER), unit=-1)  # fmt: skip
        b.edge(resid_in, mid_id, "skip", x_pre[p], x_mid, layer)
        b.edge(attn_id, mid_id, "write", attn_out, x_mid, layer)
        previous = layer
        if not mlps:
            continue

        # MLP: top and bottom neurons, the rest, the bias.
        mlp_out = cache[f"{block}.hook_mlp_out"][0, p]
        acts = cache[f"{block}.mlp.hook_post"][0, p]
        values = neuron_values(model, layer, acts)
        w_norms = model.W_out[layer].norm(dim=-1)  # type: ignore[attr-defined]
        neuron_scores = acts * w_norms
        top, bottom = keep_top_bottom(neuron_scores, budget.neurons)
        mlp_id = f"L{layer}.mlp_out"
        chosen_neurons = [(n, "top") for n in top.tolist()] + [
            (n, "bottom") for n in bottom.tolist()
        ]
        for n, side in chosen_neurons:
            nid = b.node(
                values[n],
                p,
                id=neuron_name(layer, n),
                kind="neuron",
                layer=layer,
                column=col + 4,
                unit=n,
                score=float(neuron_scores[n]),
                activation=float(acts[n]),
                w_out_norm=float(w_norms[n]),
                side=side,
            )
            b.edge(mid_id, nid, "read", values[n], None, layer, activation=float(acts[n]))
            b.edge(nid, mlp_id, "neuron", values[n], mlp_out, layer)
        kept_set = {n for n, _ in chosen_neurons}
        rest_mask = torch.ones(len(acts), dtype=torch.bool, device=acts.device)
        rest_mask[list(kept_set)] = False
        rest_idx = rest_mask.nonzero()[:, 0]
        pruned += [
            dict(
                layer=layer,
                kind="neuron",
                unit=int(n),
                name=neuron_name(layer, int(n)),
                score=float(neuron_scores[n]),
                norm=float(neuron_scores[n].abs()),
            )
            for n in rest_idx.tolist()
        ]
        b_out = model.b_out[layer]  # type: ignore[attr-defined]
        _rest_and_bias(b, p, layer, "mlp", col + 4, values[rest_mask].sum(0), len(rest_idx), b_out,
                       include_biases, mlp_id, mlp_out, "neuron")  # fmt: skip
        b.node(mlp_out, p, id=mlp_id, kind="mlp_out", layer=layer, column=col + 5, unit=-1)
        x_post = cache[f"{block}.hook_resid_post"][0, p]
        post_id = f"L{layer}.resid_post"
        b.node(
            x_post,
            p,
            id=post_id,
            kind="resid_post",
            layer=layer,
            column=col + COLUMNS_PER_LAYER,
            unit=-1,
        )
        b.edge(mid_id, post_id, "skip", x_mid, x_post, layer)
        b.edge(mlp_id, post_id, "write", mlp_out, x_post, layer)
    edges = pd.DataFrame(b.edges)
    for column in ("attention", "score", "activation"):
        if column not in edges:
            edges[column] = np.nan
    edges = edges[
        ["source", "target", "kind", "layer", "weight", "share", "attention", "score", "activation"]
    ]
    pruned_table = pd.DataFrame(pruned, columns=["layer", "kind", "unit", "name", "score", "norm"])
    return b, edges, pruned_table


def _rest_and_bias(
    b: _Builder,
    p: int,
    layer: int,
    block: str,
    column: int,
    pruned_sum: Tensor,
    n_pruned: int,
    bias: Tensor,
    include_biases: bool,
    out_id: str,
    out: Tensor,
    kind: str,
) -> None:
    """The pruned units' sum and the block's bias, so the block's incoming edges stay complete.

    A bias node when biases are drawn or nothing was pruned; a rest node when units were pruned,
    holding the bias too unless it has its own node.
    """
    bias_name = "b_O" if block == "attn" else "b_out"
    if include_biases or n_pruned == 0:
        bid = b.node(bias, p, id=f"L{layer}.{block}_bias", kind="bias", layer=layer,
                     column=column, unit=-1, label=f"L{layer} {bias_name}")  # fmt: skip
        b.edge(bid, out_id, kind, bias, out, layer)
    if n_pruned:
        rest = pruned_sum if include_biases else pruned_sum + bias
        units = "heads" if block == "attn" else "neurons"
        label = f"L{layer} {n_pruned} other {units}" + ("" if include_biases else f" + {bias_name}")
        rid = b.node(rest, p, id=f"L{layer}.{block}_rest", kind="rest", layer=layer,
                     column=column, unit=-1, n_units=n_pruned, label=label)  # fmt: skip
        b.edge(rid, out_id, kind, rest, out, layer)


def _entropy(weights: Tensor) -> float:
    w = weights.double().clamp_min(0)
    w = w / w.sum()
    return float(-(w * w.clamp_min(1e-300).log()).sum())


def _read_nodes(
    model: HookedModel,
    b: _Builder,
    cache: Any,
    reading: ReadingMode,
    top_k: int,
    target: int,
    strings: list[str],
    tokens: Tensor,
) -> pd.DataFrame:
    vectors = torch.stack([v.float() for v in b.vectors])
    scale = None
    if reading == "residual" and model.cfg.normalization_type is not None:
        scale = cache["ln_final.hook_scale"][0, b.positions].float()
    readings = read_vectors(
        model, vectors, k=top_k, target=target, mode=reading, scale=scale, strings=strings
    )
    records = []
    for record in b.records:
        record = dict(record)
        record.pop("query", None)
        records.append(record)
    nodes = pd.DataFrame(records)
    defaults = {
        "score": np.nan,
        "activation": np.nan,
        "w_out_norm": np.nan,
        "attention_entropy": np.nan,
        "side": "",
        "n_units": 0,
    }
    for column, value in defaults.items():
        nodes[column] = nodes[column].fillna(value) if column in nodes else value
    nodes["n_units"] = nodes["n_units"].astype(np.int64)
    nodes["position"] = b.positions
    nodes["token"] = [strings[int(tokens[0, s])] for s in b.positions]
    nodes["label"] = [_label(r) for r in b.records]
    nodes = pd.concat([nodes, readings], axis=1)
    # A head's query, as a direction in the residual, read like every other vector.
    queries = [(i, r["query"]) for i, r in enumerate(b.records) if r.get("query") is not None]
    nodes["query_tokens"] = [[] for _ in range(len(nodes))]
    if queries and model.cfg.positional_embedding_type != "rotary":
        qread = read_vectors(
            model, torch.stack([q.float() for _, q in queries]), k=top_k, strings=strings
        )
        for (i, _), tokens_read in zip(queries, qread["top_tokens"], strict=True):
            nodes.at[i, "query_tokens"] = tokens_read
    first = ["id", "kind", "label", "layer", "column", "unit", "position", "token"]
    return nodes[first + [c for c in nodes.columns if c not in first]]


def _label(record: dict[str, Any]) -> str:
    if "label" in record:
        return record["label"]
    kind = record["kind"]
    if kind in ("head", "neuron"):
        return record["id"]
    if kind == "source":
        return f"L{record['layer']} input @{record['id'].rsplit('@', 1)[1]}"
    return f"L{record['layer']} {kind}"

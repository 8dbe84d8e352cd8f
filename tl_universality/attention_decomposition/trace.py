"""Head-to-head circuit tracing: which upstream writers send the signal a firing head reads.

A **firing** is one (prompt, dest, src) of a head where it attends strongly: attention at least
``min_attention`` (default 0.5), a positive score, and (by default) a source other than position 0,
where heads park attention they do not need. For a firing, the selected directions ``S``
(:func:`~tl_universality.attention_decomposition.decompose.select_prefix`) carry the score; on the
query side the head reads ``a_k = √σ_k (x̃_dest · u_k)``, on the key side
``b_k = √σ_k (x̃_src · v_k)``, and ``t_k = a_k b_k``. Writer ``j``'s share of the query-side signal
is

    c_j = Σ_{k ∈ S} √σ_k (x̃_j,dest · u_k) · sign(b_k)

(its projection on the selected directions, weighted by ``√σ_k`` and signed so that a positive
value pushes the term towards the score's sign), and the same with ``v_k`` and ``sign(a_k)`` on the
key side. Over all writers (:mod:`~tl_universality.attention_decomposition.writers`) the ``c_j``
sum to ``Σ_{k∈S} √σ_k |a_k|``, the query side's part of the signal. The **edges** of a firing are
the writers whose sorted contributions reach ``edge_share`` (default 0.7) of that sum, by the same
prefix rule as the directions.

**Recursion.** Every head that is an edge of a firing at position ``p`` (the destination for a
query-side edge, the source for a key-side one) is traced in turn at destination ``p``: its own
firings there. Heads are processed from the top layer down, so every request for a head is known
before it is traced, and each (head, prompt, dest) is traced once. MLPs, neurons, embeddings and
biases end the recursion. One forward pass records everything; the rest is tensor algebra,
vectorised over the firings of each head.

The result, :class:`CircuitTrace`, holds four tables: ``nodes`` (one per unit), ``edges`` (one per
(writer, head) pair, aggregated over firings), ``firings`` and ``contributions`` (one row per
(firing, side, kept writer)); ``to_networkx()`` and ``to_graphml()`` give the graph.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tl_universality.attention_decomposition.decompose import (
    PositionSpec,
    as_tokens,
    augmented_residual,
    check_share,
    positions,
    residual_hooks,
    select_prefix,
)
from tl_universality.attention_decomposition.svd import attention_svd, check_head
from tl_universality.attention_decomposition.writers import (
    NeuronSpec,
    as_neurons,
    writer_hooks,
    writer_projections,
    writer_set,
)
from tl_universality.core.names import head_name, parse_unit
from tl_universality.core.protocol import HookedModel, model_name
from tl_universality.core.result import Result, new_axes
from tl_universality.units.hooks import run_with_interventions

HeadSpec = str | tuple[int, int]
"""A head: ``"L9H9"`` or ``(9, 9)``."""

SIDES = ("query", "key")

NODE_COLUMNS = ["node", "kind", "layer", "index", "is_root", "n_firings", "n_in", "n_out"]
EDGE_COLUMNS = [
    "source", "target", "n_firings", "n_query", "n_key", "mean_share", "total_contribution",
]  # fmt: skip
FIRING_COLUMNS = [
    "firing", "node", "layer", "head", "prompt", "dest", "src", "attention", "score", "depth",
    "n_selected", "directions", "signal_query", "signal_key",
]  # fmt: skip
CONTRIBUTION_COLUMNS = [
    "firing", "source", "target", "side", "prompt", "position", "contribution", "share",
]  # fmt: skip


def as_head(model: HookedModel, spec: Any) -> tuple[int, int]:
    """``(layer, head)`` from ``"L9H9"`` or ``(9, 9)``, checked against the model."""
    if isinstance(spec, str):
        try:
            unit = parse_unit(spec)
        except ValueError as err:
            raise ValueError(f"roots holds {spec!r}: {err}") from err
        if unit.kind != "head":
            raise ValueError(f"roots holds {spec!r}, a {unit.kind}: roots are heads, e.g. 'L1H3'.")
        return check_head(model, unit.layer, unit.index)
    try:
        layer, head = spec
    except (TypeError, ValueError) as err:
        raise ValueError(f"roots holds {spec!r}: name a head as 'L1H3' or (1, 3).") from err
    return check_head(model, layer, head)


def _kind_of(name: str) -> tuple[str, int, int]:
    if name in ("embed", "pos_embed", "bias"):
        return name, -1, -1
    if name.endswith("MLP"):
        return "mlp", int(name[1:-3]), -1
    unit = parse_unit(name)
    return unit.kind, unit.layer, unit.index


@dataclass
class CircuitTrace(Result):
    """A traced graph of head-to-head communication, as tables first and a graph second.

    Attributes:
        nodes: One row per unit: ``node`` (``L1H3``, ``L0MLP``, ``L0N5``, ``embed``,
            ``pos_embed``, ``bias``), ``kind``, ``layer``, ``index``, ``is_root``,
            ``n_firings`` (traced firings of a head), ``n_in``/``n_out`` (edges).
        edges: One row per (writer, head): ``source, target, n_firings`` (firings in which the
            writer was kept), ``n_query``/``n_key`` (of them, on each side), ``mean_share`` (mean
            share of the side's signal), ``total_contribution``.
        firings: One row per traced firing: ``firing`` (id), the head, ``prompt, dest, src,
            attention, score`` (as ``hook_attn_scores``), ``depth`` (0 for roots),
            ``n_selected``, ``directions`` (space-separated indices, largest term first),
            ``signal_query``/``signal_key`` (the sums the shares are of).
        contributions: One row per (firing, side, kept writer): ``position`` is where the writer
            wrote (dest for the query side, src for the key side).
        settings: The arguments of the trace and its timing.
    """

    FORMAT = "tl_universality.circuit_trace"
    VERSION = 1

    nodes: pd.DataFrame
    edges: pd.DataFrame
    firings: pd.DataFrame
    contributions: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    # -- views -----------------------------------------------------------------------------------

    def to_dataframe(self) -> pd.DataFrame:
        """The edges table."""
        return self.edges.copy()

    def head_edges(self) -> set[tuple[str, str]]:
        """The ``(source, target)`` pairs whose source is a head: head-to-head communication."""
        heads = set(self.nodes.loc[self.nodes["kind"] == "head", "node"])
        return {(s, t) for s, t in zip(self.edges["source"], self.edges["target"], strict=True)
                if s in heads}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """Nodes, edges (all and head-to-head), firings, the typical number of selected
        directions, and the time per prompt."""
        n_sel = self.firings["n_selected"]
        return {
            "n_nodes": int(len(self.nodes)),
            "n_edges": int(len(self.edges)),
            "n_head_edges": len(self.head_edges()),
            "n_firings": int(len(self.firings)),
            "mean_selected": float(n_sel.mean()) if len(n_sel) else float("nan"),
            "median_selected": float(n_sel.median()) if len(n_sel) else float("nan"),
            "n_prompts": int(self.settings.get("n_prompts", 0)),
            "seconds_per_prompt": float(self.settings.get("seconds_per_prompt", float("nan"))),
        }

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph``: node and edge attributes are the columns of the tables."""
        import networkx as nx

        graph = nx.DiGraph(name=str(self.settings.get("model_name", "circuit")))
        for row in self.nodes.to_dict("records"):
            node = row.pop("node")
            graph.add_node(node, **{k: _scalar(v) for k, v in row.items()})
        for row in self.edges.to_dict("records"):
            source, target = row.pop("source"), row.pop("target")
            graph.add_edge(source, target, **{k: _scalar(v) for k, v in row.items()})
        return graph

    def to_graphml(self, path: str | os.PathLike) -> Path:
        """Write the graph as GraphML (readable by networkx, Gephi, Cytoscape); returns the path."""
        import networkx as nx

        path = Path(path)
        nx.write_graphml(self.to_networkx(), path)
        return path

    def to_html(self, path: str | os.PathLike | None = None, title: str | None = None) -> str:
        """The self-contained interactive page (:mod:`.html`); written to ``path`` when given."""
        from tl_universality.attention_decomposition.html import render_trace

        page = render_trace(self, title=title)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def plot(self, ax: Any = None) -> Any:
        """Nodes by layer (x) with edges drawn as lines, width by firings; a matplotlib Figure."""
        fig, ax = new_axes(ax, figsize=(7.0, 4.5))
        where = _layout(self.nodes)
        most = max(int(self.edges["n_firings"].max()), 1) if len(self.edges) else 1
        for row in self.edges.itertuples():
            (x0, y0), (x1, y1) = where[row.source], where[row.target]
            ax.plot([x0, x1], [y0, y1], color="tab:blue", alpha=0.5,
                    lw=0.5 + 3.0 * row.n_firings / most)  # fmt: skip
        for node, (x, y) in where.items():
            root = bool(self.nodes.set_index("node").loc[node, "is_root"])
            ax.scatter([x], [y], s=60, color="tab:red" if root else "tab:grey", zorder=3)
            ax.annotate(node, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("layer (embeddings at -1, bias at the right)")
        ax.set_yticks([])
        ax.set_title(f"circuit trace: {len(self.nodes)} nodes, {len(self.edges)} edges")
        return fig

    # -- saving ----------------------------------------------------------------------------------

    def _write(self, out: Any, meta: dict[str, Any]) -> None:
        meta["settings"] = self.settings
        out.write_table("nodes", self.nodes)
        out.write_table("edges", self.edges)
        out.write_table("firings", self.firings)
        out.write_table("contributions", self.contributions)

    @classmethod
    def _read(cls, saved: Any) -> CircuitTrace:
        return cls(
            nodes=saved.table("nodes"),
            edges=saved.table("edges"),
            firings=saved.table("firings"),
            contributions=saved.table("contributions"),
            settings=dict(saved.meta.get("settings", {})),
        )


def _scalar(value: Any) -> Any:
    """A GraphML-safe Python scalar."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _layout(nodes: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """``node -> (x, y)``: x the layer (embeddings -1, bias after the last), y stacked."""
    top = int(nodes["layer"].max()) + 1 if len(nodes) else 0
    where: dict[str, tuple[float, float]] = {}
    counts: dict[float, int] = {}
    for row in nodes.sort_values(["layer", "kind", "index", "node"]).itertuples():
        x = float(top) if row.kind == "bias" else float(row.layer)
        if row.kind in ("mlp", "neuron"):
            x += 0.5  # an MLP writes after its layer's heads
        y = counts.get(x, 0)
        counts[x] = y + 1
        where[row.node] = (x, float(y))
    return where


def _firing_positions(
    pattern: Tensor, scores: Tensor, prompts: Tensor, dests: Tensor, min_attention: float,
    skip_bos: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(prompt, dest, src)`` of the firings among the requested ``(prompt, dest)``."""
    attn = pattern[prompts, dests]  # [n, pos]
    score = scores[prompts, dests]
    fires = (attn >= min_attention) & (score > 0)
    fires &= torch.arange(attn.shape[-1])[None] <= dests[:, None]
    if skip_bos:
        fires[:, 0] = False
    row, src = fires.nonzero(as_tuple=True)
    return prompts[row], dests[row], src


def trace_circuit(
    model: HookedModel,
    tokens: Any,
    roots: Sequence[HeadSpec],
    *,
    dest: PositionSpec = -1,
    min_attention: float = 0.5,
    skip_bos: bool = True,
    threshold: float = 1.0,
    edge_share: float = 0.7,
    neurons: NeuronSpec = None,
    max_depth: int | None = None,
) -> CircuitTrace:
    """Trace which upstream heads send the signals that ``roots`` read (module docstring).

    Args:
        model: A TransformerLens model with absolute position embeddings.
        tokens: ``[batch, pos]`` token ids (or text, with a tokenizer).
        roots: Heads to start from, ``["L9H9", (10, 0)]``.
        dest: Where the roots are traced: an int for every prompt (default the last position),
            one per prompt (e.g. the end of each IOI prompt), or None for every position.
        min_attention: A firing's least attention probability.
        skip_bos: Skip firings whose source is position 0.
        threshold: Share of the score the selected directions must reach, in (0, 1].
        edge_share: Share of a side's signal the kept writers must reach, in (0, 1].
        neurons: MLP neurons to trace as writers of their own (``(layer, neuron)`` pairs or a table
            with ``layer``/``neuron`` columns, e.g. attention-deactivation neurons).
        max_depth: Stop recursing after this many steps from the roots (None: down to layer 0).

    Returns:
        A :class:`CircuitTrace` (tables, networkx graph, GraphML, HTML, save/load).

    Examples:
        >>> from tl_universality.attention_decomposition.planted import planted_circuit
        >>> model, tokens = planted_circuit()
        >>> trace = trace_circuit(model, tokens, ["L1H0"])
        >>> sorted(trace.head_edges())
        [('L0H0', 'L1H0')]
    """
    started = time.perf_counter()
    heads = sorted({as_head(model, r) for r in roots})
    if not heads:
        raise ValueError("roots is empty: name at least one head to trace from, e.g. ['L1H3'].")
    if not 0 <= float(min_attention) <= 1:
        raise ValueError(f"min_attention={min_attention!r} must be a probability in [0, 1].")
    if max_depth is not None and int(max_depth) < 0:
        raise ValueError(f"max_depth={max_depth!r} must be >= 0 (or None for no limit).")
    check_share(threshold, "threshold")
    check_share(edge_share, "edge_share")
    chosen = as_neurons(model, neurons)
    ids = as_tokens(model, tokens)
    batch, n_pos = ids.shape
    root_dest = positions(dest, batch, n_pos, "dest")
    top = max(layer for layer, _ in heads)
    names: set[str] = set()
    for layer in range(top + 1):
        names.update(residual_hooks(model, layer))
        names.update(writer_hooks(model, layer, chosen))
        names.update([f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_attn_scores"])
    _, cache = run_with_interventions(model, ids, capture=sorted(names), stop_at_layer=top + 1)

    # pending[(layer, head)] = {(prompt, dest): depth}
    pending: dict[tuple[int, int], dict[tuple[int, int], int]] = {}
    for head in heads:
        requests = pending.setdefault(head, {})
        for p in range(batch):
            dests = range(n_pos) if root_dest is None else [int(root_dest[p])]
            for d in dests:
                requests[(p, d)] = 0
    firing_rows: list[dict[str, Any]] = []
    contribution_rows: list[dict[str, Any]] = []
    for layer in range(top, -1, -1):
        writers = writer_set(model, layer, chosen)
        x_aug, scale = augmented_residual(model, cache, layer)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].to("cpu", torch.float64)
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"].to("cpu", torch.float64)
        for head in range(int(model.cfg.n_heads)):
            requests = pending.pop((layer, head), None)
            if not requests:
                continue
            keys = sorted(requests)
            prompts = torch.tensor([k[0] for k in keys])
            dests = torch.tensor([k[1] for k in keys])
            p_i, d_i, s_i = _firing_positions(
                pattern[:, head], scores[:, head], prompts, dests, min_attention, skip_bos
            )
            if p_i.numel() == 0:
                continue
            svd = attention_svd(model, layer, head)
            root_s = svd.S.sqrt()
            a = (x_aug[p_i, d_i] @ svd.U) * root_s  # [F, r]
            b = (x_aug[p_i, s_i] @ svd.V) * root_s
            terms = a * b
            selected = select_prefix(terms, threshold).to(torch.float64)
            sign = torch.sign(terms.sum(-1))[:, None]
            sides = {
                "query": (writer_projections(model, cache, writers, p_i, d_i, svd.U * root_s,
                                             scale, svd.centred), torch.sign(b) * sign, d_i),
                "key": (writer_projections(model, cache, writers, p_i, s_i, svd.V * root_s,
                                           scale, svd.centred), torch.sign(a) * sign, s_i),
            }  # fmt: skip
            node = head_name(layer, head)
            depth_of = [requests[(int(p), int(d))] for p, d in zip(p_i, d_i, strict=True)]
            order = torch.argsort(-(terms * sign), dim=-1, stable=True)
            first_id = len(firing_rows)
            signals: dict[str, Tensor] = {}
            for side, (proj, side_sign, where) in sides.items():
                contrib = (proj * (selected * side_sign)[:, None, :]).sum(-1)  # [F, W]
                signal = contrib.sum(-1)
                signals[side] = signal
                keep = select_prefix(contrib, edge_share) & (signal > 0)[:, None]
                for f, w in keep.nonzero().tolist():
                    source = writers.names[w]
                    contribution_rows.append({
                        "firing": first_id + f, "source": source, "target": node, "side": side,
                        "prompt": int(p_i[f]), "position": int(where[f]),
                        "contribution": float(contrib[f, w]),
                        "share": float(contrib[f, w] / signal[f]),
                    })  # fmt: skip
                    if writers.kinds[w] != "head":
                        continue
                    depth = depth_of[f] + 1
                    if max_depth is not None and depth > int(max_depth):
                        continue
                    up = pending.setdefault((writers.layers[w], writers.indices[w]), {})
                    key = (int(p_i[f]), int(where[f]))
                    up[key] = min(up.get(key, depth), depth)
            for f in range(p_i.numel()):
                directions = [int(k) for k in order[f] if selected[f, k]]
                firing_rows.append({
                    "firing": first_id + f, "node": node, "layer": layer, "head": head,
                    "prompt": int(p_i[f]), "dest": int(d_i[f]), "src": int(s_i[f]),
                    "attention": float(pattern[p_i[f], head, d_i[f], s_i[f]]),
                    "score": float(scores[p_i[f], head, d_i[f], s_i[f]]),
                    "depth": depth_of[f], "n_selected": len(directions),
                    "directions": " ".join(map(str, directions)),
                    "signal_query": float(signals["query"][f]),
                    "signal_key": float(signals["key"][f]),
                })  # fmt: skip
    firings = pd.DataFrame(firing_rows, columns=FIRING_COLUMNS)
    contributions = pd.DataFrame(contribution_rows, columns=CONTRIBUTION_COLUMNS)
    edges = _edges(contributions)
    nodes = _nodes(heads, firings, edges)
    seconds = time.perf_counter() - started
    settings = {
        "model_name": model_name(model), "roots": [head_name(*h) for h in heads],
        "min_attention": float(min_attention), "skip_bos": bool(skip_bos),
        "threshold": float(threshold), "edge_share": float(edge_share),
        "neurons": [list(n) for n in chosen], "max_depth": max_depth,
        "dest": None if root_dest is None else root_dest.tolist(),
        "n_prompts": int(batch), "n_positions": int(n_pos),
        "seconds": seconds, "seconds_per_prompt": seconds / batch,
    }  # fmt: skip
    return CircuitTrace(nodes, edges, firings, contributions, settings)


def _edges(contributions: pd.DataFrame) -> pd.DataFrame:
    if contributions.empty:
        return pd.DataFrame(columns=EDGE_COLUMNS).astype(
            {"n_firings": "int64", "n_query": "int64", "n_key": "int64",
             "mean_share": "float64", "total_contribution": "float64"}
        )  # fmt: skip
    c = contributions.assign(
        is_query=contributions["side"] == "query", is_key=contributions["side"] == "key"
    )
    grouped = c.groupby(["source", "target"], sort=True)
    edges = pd.DataFrame(
        {
            "n_firings": grouped["firing"].nunique(),
            "n_query": grouped["is_query"].sum(),
            "n_key": grouped["is_key"].sum(),
            "mean_share": grouped["share"].mean(),
            "total_contribution": grouped["contribution"].sum(),
        }
    ).reset_index()
    return edges[EDGE_COLUMNS].astype({"n_query": "int64", "n_key": "int64"})


def _nodes(
    heads: list[tuple[int, int]], firings: pd.DataFrame, edges: pd.DataFrame
) -> pd.DataFrame:
    names = {head_name(*h) for h in heads} | set(edges["source"]) | set(edges["target"])
    n_firings = firings.groupby("node").size() if len(firings) else pd.Series(dtype="int64")
    n_in = edges.groupby("target").size() if len(edges) else pd.Series(dtype="int64")
    n_out = edges.groupby("source").size() if len(edges) else pd.Series(dtype="int64")
    roots = {head_name(*h) for h in heads}
    rows = []
    for name in names:
        kind, layer, index = _kind_of(name)
        rows.append({
            "node": name, "kind": kind, "layer": layer, "index": index, "is_root": name in roots,
            "n_firings": int(n_firings.get(name, 0)), "n_in": int(n_in.get(name, 0)),
            "n_out": int(n_out.get(name, 0)),
        })  # fmt: skip
    order = {"embed": 0, "pos_embed": 1, "head": 2, "neuron": 3, "mlp": 4, "bias": 5}
    nodes = pd.DataFrame(rows, columns=NODE_COLUMNS)
    nodes["_order"] = nodes["kind"].map(order)
    nodes = nodes.sort_values(["layer", "_order", "index", "node"]).drop(columns="_order")
    return nodes.reset_index(drop=True)


__all__ = ["CircuitTrace", "HeadSpec", "as_head", "trace_circuit"]

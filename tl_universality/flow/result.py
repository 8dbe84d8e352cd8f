"""The :class:`FlowGraph` result: nodes and edges tables first, views (networkx, PNG, HTML) second.

A flow graph saves and loads through the project's result protocol
(:class:`~tl_universality.core.result.Result`): three parquet tables (``nodes``, ``edges``,
``pruned``) and the run's settings in the manifest. The columns:

- ``nodes``: ``id`` (``L1H3``, ``L1N191``, ``L1.resid_mid``, ``L0.resid_pre@2``...), ``kind``
  (``resid_pre``, ``resid_mid``, ``resid_post``, ``source``, ``head``, ``attn_out``, ``neuron``,
  ``mlp_out``, ``rest``, ``bias``), ``label``, ``layer``, ``column`` (layout column; six per layer),
  ``unit`` (head or neuron index, -1 otherwise), ``position`` and ``token`` (where the vector
  lives), ``score`` (pruning score), ``activation``, ``w_out_norm``, ``attention_entropy``,
  ``side`` (``top``/``bottom`` neuron), ``n_units`` (units summed in a rest node), the reading
  (:data:`~tl_universality.flow.readout.READING_COLUMNS`), ``query_tokens`` (heads), and the
  universality overlay ``excess_corr``, ``is_universal``, ``family``;
- ``edges``: ``source``, ``target``, ``kind``, ``layer``, ``weight``, ``share``, ``attention``,
  ``score``, ``activation`` (:mod:`~tl_universality.flow.graph` defines them);
- ``pruned``: ``layer``, ``kind``, ``unit``, ``name``, ``score``, ``norm`` of every unit not drawn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder
from tl_universality.flow.readout import LIST_COLUMNS

_MAIN = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def layout(nodes: pd.DataFrame) -> pd.DataFrame:
    """``x, y`` of every node: its column, and a row (residual and block nodes on row 0, units
    below them, strongest first; source positions below their residual).

    Examples:
        >>> nodes = pd.DataFrame({"id": ["a", "h1", "h2"], "kind": ["resid_pre", "head", "head"],
        ...                       "column": [0, 1, 1], "score": [np.nan, 1.0, 3.0]})
        >>> layout(nodes)[["x", "y"]].values.tolist()
        [[0.0, 0.0], [1.0, -2.0], [1.0, -1.0]]
    """
    out = pd.DataFrame({"id": nodes["id"], "x": nodes["column"].astype(float), "y": 0.0})
    order = {"head": 0, "neuron": 0, "source": 1, "rest": 2, "bias": 3}
    for _, group in nodes[~nodes["kind"].isin(_MAIN)].groupby("column"):
        rank = group.assign(
            _kind=group["kind"].map(order).fillna(4),
            _strength=-group["score"].abs().fillna(0.0),
        ).sort_values(["_kind", "_strength"], kind="stable")
        out.loc[rank.index, "y"] = -np.arange(1, len(rank) + 1, dtype=float)
    return out


def short(token: str, width: int = 12) -> str:
    """A token as printed on a graph: visible whitespace, at most ``width`` characters.

    Examples:
        >>> short(" the"), short("\\n"), short("\\x07")
        ('␣the', '⏎', '\\\\x07')
    """
    text = str(token).replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class FlowGraph(Result):
    """A vocabulary-projected flow graph of one forward pass at one position.

    Build one with :func:`~tl_universality.flow.graph.flow_graph`. ``nodes``, ``edges`` and
    ``pruned`` are DataFrames (module docstring); ``meta`` holds the prompt, the position, the
    target and the settings.

    Examples:
        >>> import tempfile
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> from tl_universality.flow.graph import flow_graph
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=2,
        ...                               d_mlp=16, d_vocab=12, act_fn="relu", seed=0)
        >>> graph = flow_graph(HookedTransformer(cfg), [0, 3, 5], neurons=(2, 1))
        >>> again = FlowGraph.load(graph.save(Path(tempfile.mkdtemp()) / "flow"))
        >>> again.nodes["id"].tolist() == graph.nodes["id"].tolist()
        True
        >>> graph.to_networkx().number_of_edges() == len(graph.edges)
        True
    """

    FORMAT = "tl_universality.flow_graph"
    VERSION = 1

    nodes: pd.DataFrame
    edges: pd.DataFrame
    pruned: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    # -- the result protocol -------------------------------------------------------------------

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_table("nodes", self.nodes)
        out.write_table("edges", self.edges)
        out.write_table("pruned", self.pruned)
        meta.update(self.meta)

    @classmethod
    def _read(cls, saved: SavedFolder) -> FlowGraph:
        nodes = saved.table("nodes")
        for column in (*LIST_COLUMNS, "query_tokens"):
            if column in nodes:
                nodes[column] = [list(v) if v is not None else [] for v in nodes[column]]
        edges, pruned = saved.table("edges"), saved.table("pruned")
        known = set(nodes["id"])
        dangling = (set(edges["source"]) | set(edges["target"])) - known
        if dangling:
            raise ValueError(f"edges name nodes that are not in the node table: {sorted(dangling)}")
        return cls(nodes=nodes, edges=edges, pruned=pruned, meta=dict(saved.meta))

    def to_dataframe(self) -> pd.DataFrame:
        """The node table (one row per node, with its reading)."""
        return self.nodes.copy()

    def summary(self) -> dict[str, Any]:
        """Counts, the position and target, and the final reading's target rank."""
        kinds = self.nodes["kind"].value_counts()
        final = self.nodes[self.nodes["kind"].isin(["resid_post"])]
        final_rank = int(final["target_rank"].iloc[-1]) if len(final) else -1
        meta = self.meta
        position = int(meta.get("position", -1))
        strings = meta.get("token_strings", [])
        return {
            "n_nodes": len(self.nodes),
            "n_edges": len(self.edges),
            "n_heads": int(kinds.get("head", 0)),
            "n_neurons": int(kinds.get("neuron", 0)),
            "n_sources": int(kinds.get("source", 0)),
            "n_pruned": len(self.pruned),
            "n_universal": int(self.nodes["is_universal"].sum()),
            "position": position,
            "token": strings[position] if 0 <= position < len(strings) else "",
            "target_token": meta.get("target_token", ""),
            "target_source": meta.get("target_source", ""),
            "prediction_token": meta.get("prediction_token", ""),
            "final_target_rank": final_rank,
            "build_seconds": float(meta.get("build_seconds", float("nan"))),
        }

    # -- views ---------------------------------------------------------------------------------

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph``: node attributes are the node table's columns, edge
        attributes the edge table's (one edge per source/target pair)."""
        import networkx as nx

        graph = nx.DiGraph(**{k: v for k, v in self.meta.items() if k != "tokens"})
        for record in self.nodes.to_dict("records"):
            graph.add_node(record.pop("id"), **record)
        for record in self.edges.to_dict("records"):
            graph.add_edge(record.pop("source"), record.pop("target"), **record)
        return graph

    def top_nodes(self, n: int = 5, kinds: tuple[str, ...] = ("head", "neuron")) -> pd.DataFrame:
        """The ``n`` units that write the most (largest ``|score|``), with what they read as."""
        units = self.nodes[self.nodes["kind"].isin(kinds)]
        order = units["score"].abs().sort_values(ascending=False).index[:n]
        columns = ["id", "kind", "score", "top_token", "top_tokens", "target_rank", "family"]
        return units.loc[order, columns].reset_index(drop=True)

    def describe(self, n: int = 5) -> str:
        """A few lines in words: the prompt, counts, and the strongest units' readings."""
        s = self.summary()
        tokens = self.meta.get("token_strings", [])
        lines = [
            f"flow graph of {self.meta.get('model', '?')} at position {s['position']}"
            f" ({short(s['token'])!s}) of {len(tokens)} tokens;"
            f" target {short(s['target_token'])} ({s['target_source']}),"
            f" prediction {short(s['prediction_token'])}",
            f"{s['n_nodes']} nodes ({s['n_heads']} heads, {s['n_neurons']} neurons,"
            f" {s['n_sources']} source positions), {s['n_edges']} edges, {s['n_pruned']} units"
            f" pruned; final reading ranks the target {s['final_target_rank']}",
        ]
        for row in self.top_nodes(n).itertuples():
            tops = ", ".join(short(t) for t in row.top_tokens[:3])
            lines.append(
                f"  {row.id:>8} score {row.score:+.2f} reads as [{tops}]"
                f" (target rank {row.target_rank})"
            )
        return "\n".join(lines)

    def plot(self, ax: Any = None) -> Any:
        """The graph as a static figure: layers as columns, nodes coloured by the target's rank
        (log scale, bright = rank 1), edge width by weight, labelled with their top token."""
        from matplotlib import colors
        from matplotlib.collections import LineCollection

        pos = layout(self.nodes).set_index("id")
        width = float(pos["x"].max()) + 2
        height = max(3.0, 0.28 * (1 - float(pos["y"].min())) + 1.5)
        fig, ax = new_axes(ax, figsize=(min(2.0 + 1.3 * width, 40), min(height, 30)))
        n_vocab = max(2, int(self.nodes["target_rank"].max()))
        norm = colors.LogNorm(vmin=1, vmax=n_vocab)
        edges = self.edges
        segments = [
            [
                (pos.at[e.source, "x"], pos.at[e.source, "y"]),
                (pos.at[e.target, "x"], pos.at[e.target, "y"]),
            ]
            for e in edges.itertuples()
        ]
        top = max(float(edges["weight"].max()), 1e-12) if len(edges) else 1.0
        widths = 0.3 + 3.0 * edges["weight"].to_numpy() / top
        ax.add_collection(
            LineCollection(segments, linewidths=widths, colors="0.55", alpha=0.45, zorder=1)
        )
        ranks = self.nodes["target_rank"].clip(lower=1).to_numpy()
        sizes = np.where(self.nodes["kind"].isin(_MAIN), 140, 55)
        xy = pos.loc[self.nodes["id"]]
        points = ax.scatter(
            xy["x"],
            xy["y"],
            c=ranks,
            cmap="viridis_r",
            norm=norm,
            s=sizes,
            edgecolors="k",
            linewidths=0.4,
            zorder=2,
        )
        for record, x, y in zip(self.nodes.itertuples(), xy["x"], xy["y"], strict=True):
            ax.annotate(
                f"{record.label}: {short(record.top_token)}",
                (x, y),
                fontsize=6,
                xytext=(4, 3),
                textcoords="offset points",
                zorder=3,
            )
        n_layers = len(self.meta.get("layers", [])) or 1
        for i, layer in enumerate(self.meta.get("layers", [])):
            ax.axvspan(6 * i - 0.4, 6 * i + 5.6, color="0.5" if i % 2 else "0.8", alpha=0.08)
            ax.text(6 * i + 2.6, 0.8, f"layer {layer}", ha="center", fontsize=8)
        ax.set_xlim(-0.6, 6 * n_layers + 1.2)
        ax.set_ylim(float(pos["y"].min()) - 0.8, 1.4)
        ax.set_axis_off()
        s = self.summary()
        ax.set_title(
            f"flow at position {s['position']} ({short(s['token'])}), target"
            f" {short(s['target_token'])}: {s['n_nodes']} nodes, {s['n_edges']} edges",
            fontsize=9,
        )
        fig.colorbar(points, ax=ax, label="rank of the target token", shrink=0.6)
        return fig

    def to_html(self, path: str | os.PathLike | None = None) -> str:
        """The self-contained interactive page (:mod:`~tl_universality.flow.html`); written to
        ``path`` when given. It needs no network: scripts and styles are inline."""
        from tl_universality.flow.html import render_html

        page = render_html(self)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(page, encoding="utf-8")
        return page

"""A self-contained interactive view of a circuit trace: one HTML file, inline CSS and JS, offline.

The page draws the graph as SVG (nodes in columns by layer, edges as curves whose width grows with
the number of firings they appear in), shows a node's details on hover, highlights its edges on
click, and lists the edges in a table that sorts by any column. No CDN, no network: the data are
embedded as JSON. When the script has drawn everything it sets ``data-status="ok:<nodes>:<edges>"``
on ``<body>``; a script error sets ``data-status="error: ..."`` (what the browser tests check).
"""

from __future__ import annotations

import html
import json
from typing import Any

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #555; font-size: 0.9em; }
svg { border: 1px solid #ddd; background: #fcfcfc; }
.node circle { stroke: #333; stroke-width: 1; cursor: pointer; }
.node text { font-size: 11px; pointer-events: none; }
.edge { fill: none; stroke: #3a6ea5; stroke-opacity: 0.45; }
.edge.key { stroke: #c0392b; } .edge.dim { stroke-opacity: 0.06; }
.edge.hot { stroke-opacity: 0.95; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #999;
       padding: 6px 8px; font-size: 12px; pointer-events: none; }
table { border-collapse: collapse; margin-top: 1em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { cursor: pointer; background: #f0f0f0; } td:first-child, td:nth-child(2) { text-align: left; }
"""

_JS = r"""
window.onerror = function (msg) { document.body.dataset.status = "error: " + msg; };
(function () {
  const data = JSON.parse(document.getElementById("trace-data").textContent);
  const colour = {head: "#f5b041", mlp: "#58d68d", neuron: "#48c9b0", embed: "#aab7b8",
                  pos_embed: "#aab7b8", bias: "#d7dbdd"};
  const top = Math.max(0, ...data.nodes.map(n => n.layer)) + 1;
  const late = n => (n.kind === "mlp" || n.kind === "neuron") ? 0.5 : 0;
  const column = n => n.kind === "bias" ? top : n.layer + late(n);
  const columns = {};
  data.nodes.forEach(n => { const c = column(n); (columns[c] = columns[c] || []).push(n); });
  const xs = Object.keys(columns).map(Number).sort((a, b) => a - b);
  const W = Math.max(400, 150 * xs.length), rows = Math.max(1, ...xs.map(c => columns[c].length));
  const H = Math.max(200, 50 * rows + 40);
  const pos = {};
  xs.forEach((c, i) => columns[c].forEach((n, j) => {
    const x = 60 + i * (W - 120) / Math.max(1, xs.length - 1);
    pos[n.node] = [x, 30 + (j + 0.5) * (H - 60) / columns[c].length];
  }));
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.getElementById("graph");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const most = Math.max(1, ...data.edges.map(e => e.n_firings));
  const edgeEls = data.edges.map(e => {
    const [x0, y0] = pos[e.source], [x1, y1] = pos[e.target];
    const path = document.createElementNS(svgNS, "path");
    const mid = (x0 + x1) / 2;
    path.setAttribute("d", `M${x0},${y0} C${mid},${y0} ${mid},${y1} ${x1},${y1}`);
    path.setAttribute("class", "edge" + (e.n_key > e.n_query ? " key" : ""));
    path.setAttribute("stroke-width", 1 + 5 * e.n_firings / most);
    path.dataset.source = e.source; path.dataset.target = e.target;
    svg.appendChild(path);
    return path;
  });
  const tip = document.getElementById("tip");
  let chosen = null;
  data.nodes.forEach(n => {
    const g = document.createElementNS(svgNS, "g");
    g.setAttribute("class", "node");
    const [x, y] = pos[n.node];
    const c = document.createElementNS(svgNS, "circle");
    c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", n.is_root ? 9 : 7);
    c.setAttribute("fill", colour[n.kind] || "#ccc");
    if (n.is_root) c.setAttribute("stroke-width", 3);
    const t = document.createElementNS(svgNS, "text");
    t.setAttribute("x", x + 10); t.setAttribute("y", y - 8); t.textContent = n.node;
    g.appendChild(c); g.appendChild(t); svg.appendChild(g);
    c.addEventListener("mousemove", ev => {
      tip.style.display = "block"; tip.style.left = (ev.clientX + 12) + "px";
      tip.style.top = (ev.clientY + 12) + "px";
      tip.textContent = `${n.node} (${n.kind}) firings: ${n.n_firings},` +
        ` in: ${n.n_in}, out: ${n.n_out}`;
    });
    c.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    c.addEventListener("click", () => {
      chosen = chosen === n.node ? null : n.node;
      edgeEls.forEach(p => {
        const on = chosen && (p.dataset.source === chosen || p.dataset.target === chosen);
        p.classList.toggle("hot", !!on); p.classList.toggle("dim", !!chosen && !on);
      });
    });
  });
  const cols = ["source", "target", "n_firings", "n_query", "n_key", "mean_share"];
  const table = document.getElementById("edges");
  const cell = v => typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v;
  const fill = rows => {
    table.innerHTML = "<tr>" + cols.map(c => `<th data-col="${c}">${c}</th>`).join("") + "</tr>" +
      rows.map(e => "<tr>" + cols.map(c => `<td>${cell(e[c])}</td>`).join("") + "</tr>").join("");
    table.querySelectorAll("th").forEach(th => th.addEventListener("click", () => {
      const c = th.dataset.col;
      fill(rows.slice().sort((a, b) => (a[c] < b[c] ? 1 : a[c] > b[c] ? -1 : 0)));
    }));
  };
  fill(data.edges);
  document.body.dataset.status = `ok:${data.nodes.length}:${data.edges.length}`;
})();
"""


def _records(frame: Any, columns: list[str]) -> list[dict[str, Any]]:
    out = []
    for row in frame[columns].to_dict("records"):
        out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out


def render_trace(trace: Any, title: str | None = None) -> str:
    """The page of a :class:`~tl_universality.attention_decomposition.trace.CircuitTrace`.

    Examples:
        >>> from tl_universality.attention_decomposition.planted import planted_circuit
        >>> from tl_universality.attention_decomposition.trace import trace_circuit
        >>> model, tokens = planted_circuit()
        >>> page = render_trace(trace_circuit(model, tokens, ["L1H0"]))
        >>> "<script src=" in page, '"L0H0"' in page
        (False, True)
    """
    data = {
        "nodes": _records(trace.nodes, ["node", "kind", "layer", "is_root", "n_firings", "n_in",
                                        "n_out"]),
        "edges": _records(trace.edges, ["source", "target", "n_firings", "n_query", "n_key",
                                        "mean_share"]),
    }  # fmt: skip
    summary = trace.summary()
    settings = trace.settings
    title = title or f"Circuit trace of {settings.get('model_name', 'a model')}"
    # "</" inside a script element would end it: escape the slash.
    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    meta = (
        f"roots {', '.join(settings.get('roots', []))} · {summary['n_prompts']} prompts ·"
        f" {summary['n_firings']} firings · {summary['n_nodes']} nodes · {summary['n_edges']}"
        f" edges · median {summary['median_selected']} selected directions per firing ·"
        f" edge share {settings.get('edge_share')}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body data-status="loading">
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(meta)}</p>
<p class="meta">Blue: query-side edges; red: key-side. Width: firings the edge appears in.
Click a node to highlight its edges; click a column header to sort.</p>
<svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg>
<div id="tip"></div>
<table id="edges"></table>
<script type="application/json" id="trace-data">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


__all__ = ["render_trace"]

"""A flow graph as one self-contained interactive HTML page (no CDN, opens offline).

The page embeds the graph's nodes and edges as JSON and draws them as SVG with a small inline
script: layers as column bands, nodes coloured by the rank of the target token in their reading
(bright = rank 1, dark = last, log scale), universal neurons outlined, edge width by weight.
Hovering a node shows its reading (top and bottom tokens with probabilities, entropy, the
target's probability and rank, its score, activation, excess correlation and family) and
highlights its edges. Text is inserted with ``textContent``, never as markup, so tokens such as
``"<b>"`` are shown, not interpreted.

When the drawing finishes the script sets ``data-flow="ok:<nodes>:<edges>"`` on ``<body>``; an
error anywhere sets ``data-flow-error``. A headless browser's ``--dump-dom`` shows either.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from tl_universality.flow.result import FlowGraph, layout, short

_NODE_FIELDS = (
    "id",
    "label",
    "kind",
    "layer",
    "unit",
    "position",
    "token",
    "score",
    "activation",
    "norm",
    "top_tokens",
    "top_probs",
    "bottom_tokens",
    "bottom_probs",
    "entropy",
    "target_prob",
    "target_rank",
    "query_tokens",
    "excess_corr",
    "is_universal",
    "family",
)
_EDGE_FIELDS = ("source", "target", "kind", "weight", "share", "attention", "score")


def _plain(value: Any) -> Any:
    """JSON-ready: NaN becomes null, numpy scalars and arrays plain Python."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def graph_data(graph: FlowGraph) -> dict[str, Any]:
    """What the page draws: nodes (with ``x, y``), edges, and the prompt's meta."""
    pos = layout(graph.nodes).set_index("id")
    nodes = []
    for record in graph.nodes.to_dict("records"):
        item = {k: _plain(record.get(k)) for k in _NODE_FIELDS}
        item["x"], item["y"] = float(pos.at[record["id"], "x"]), float(pos.at[record["id"], "y"])
        item["short"] = short(record.get("top_token", ""))
        nodes.append(item)
    edges = [{k: _plain(r.get(k)) for k in _EDGE_FIELDS} for r in graph.edges.to_dict("records")]
    meta = {k: _plain(v) for k, v in graph.meta.items() if k != "tokens"}
    meta["d_vocab"] = max([n["target_rank"] or 1 for n in nodes] + [2])
    return {"nodes": nodes, "edges": edges, "meta": meta, "summary": graph.summary()}


def _script_json(data: Any) -> str:
    # Inside <script>, "</" would end the element and "<!--" open a comment.
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


_STYLE = """
body { font: 13px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 17px; margin: 0 0 4px; }
#prompt span { padding: 1px 3px; margin: 1px; border-radius: 3px; background: #eee;
  white-space: pre; display: inline-block; }
#prompt span.read { background: #ffd54f; font-weight: 600; }
#wrap { overflow: auto; border: 1px solid #ddd; margin-top: 8px; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; padding: 8px;
  box-shadow: 0 2px 8px rgba(0,0,0,.2); max-width: 360px; pointer-events: none; font-size: 12px; }
#tip table { border-collapse: collapse; } #tip td { padding: 0 6px 0 0; white-space: pre; }
#tip .h { font-weight: 600; margin-top: 4px; }
.legend { font-size: 12px; color: #555; margin-top: 4px; }
svg text { font-size: 10px; pointer-events: none; }
"""

_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById("flow-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const dx = 150, dy = 26, left = 40, top = 50;
  const stops = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
  function colour(rank) {
    if (rank === null || rank < 1) return "#bbb";
    const t = 1 - Math.log(rank) / Math.log(Math.max(2, data.meta.d_vocab));
    const u = Math.min(0.999, Math.max(0, t)) * (stops.length - 1), i = Math.floor(u), f = u - i;
    const c = stops[i].map((v, j) => Math.round(v + f * (stops[i + 1][j] - v)));
    return "rgb(" + c.join(",") + ")";
  }
  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  const prompt = document.getElementById("prompt");
  (data.meta.token_strings || []).forEach(function (t, i) {
    const s = document.createElement("span");
    s.textContent = t;
    s.title = "position " + i;
    if (i === data.meta.position) s.className = "read";
    prompt.appendChild(s);
  });
  const byId = {};
  let maxX = 0, minY = 0;
  data.nodes.forEach(function (n) {
    byId[n.id] = n; maxX = Math.max(maxX, n.x); minY = Math.min(minY, n.y);
  });
  const X = n => left + n.x * dx, Y = n => top - n.y * dy;
  const svg = el("svg", {width: left + (maxX + 1.5) * dx, height: top + (1 - minY) * dy + 20});
  (data.meta.layers || []).forEach(function (layer, i) {
    el("rect", {x: left + (6 * i - 0.4) * dx, y: 4, width: 6 * dx, height: top + (1 - minY) * dy,
                fill: i % 2 ? "#f4f4f4" : "#fafafa"}, svg);
    const t = el("text", {x: left + (6 * i + 2.5) * dx, y: 20, "text-anchor": "middle"}, svg);
    t.textContent = "layer " + layer;
  });
  const maxW = Math.max(1e-12, ...data.edges.map(e => e.weight || 0));
  const kindColour = {value: "#7e57c2", read: "#26a69a", skip: "#90a4ae", write: "#5c6bc0",
                      head: "#ef6c00", neuron: "#2e7d32"};
  const edgeEls = [];
  data.edges.forEach(function (e) {
    const a = byId[e.source], b = byId[e.target];
    if (!a || !b) throw new Error("edge to an unknown node: " + e.source + " -> " + e.target);
    const line = el("line", {x1: X(a), y1: Y(a), x2: X(b), y2: Y(b),
      stroke: kindColour[e.kind] || "#999", "stroke-opacity": 0.35,
      "stroke-width": 0.5 + 5 * (e.weight || 0) / maxW}, svg);
    edgeEls.push([e, line]);
  });
  const tip = document.getElementById("tip");
  function fmt(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
  function row(table, cells) {
    const tr = document.createElement("tr");
    cells.forEach(function (c) { const td = document.createElement("td"); td.textContent = c;
                                 tr.appendChild(td); });
    table.appendChild(tr);
  }
  function line(text, cls) {
    const d = document.createElement("div"); d.textContent = text;
    if (cls) d.className = cls; tip.appendChild(d);
  }
  function show(n, ev) {
    tip.replaceChildren();
    line(n.label + " (" + n.kind + ")", "h");
    line("at position " + n.position + " " + JSON.stringify(n.token) + ", norm " + fmt(n.norm, 2)
         + (n.score !== null ? ", score " + fmt(n.score, 3) : "")
         + (n.activation !== null ? ", activation " + fmt(n.activation, 3) : ""));
    line("target " + JSON.stringify(data.meta.target_token) + ": p = " + fmt(n.target_prob, 4)
         + ", rank " + n.target_rank + "; entropy " + fmt(n.entropy, 2) + " nats");
    if (n.kind === "neuron" && (n.excess_corr !== null || n.family))
      line("excess corr " + fmt(n.excess_corr, 3) + (n.is_universal ? " (universal)" : "")
           + (n.family ? ", family " + n.family : ""));
    line("top tokens", "h");
    let t = document.createElement("table"); tip.appendChild(t);
    n.top_tokens.forEach((tok, i) => row(t, [JSON.stringify(tok), fmt(n.top_probs[i], 4)]));
    line("bottom tokens", "h");
    t = document.createElement("table"); tip.appendChild(t);
    n.bottom_tokens.forEach((tok, i) => row(t, [JSON.stringify(tok), fmt(n.bottom_probs[i], 6)]));
    if (n.query_tokens && n.query_tokens.length)
      line("query reads as: " + n.query_tokens.map(q => JSON.stringify(q)).join(" "));
    tip.style.display = "block";
    move(ev);
    edgeEls.forEach(function (p) {
      const on = p[0].source === n.id || p[0].target === n.id;
      p[1].setAttribute("stroke-opacity", on ? 0.9 : 0.08);
    });
  }
  function move(ev) {
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 380) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  }
  function hide() {
    tip.style.display = "none";
    edgeEls.forEach(p => p[1].setAttribute("stroke-opacity", 0.35));
  }
  const main = {resid_pre: 1, resid_mid: 1, resid_post: 1, attn_out: 1, mlp_out: 1};
  data.nodes.forEach(function (n) {
    const g = el("g", {"data-id": n.id}, svg);
    const r = main[n.kind] ? 8 : 5.5;
    el("circle", {cx: X(n), cy: Y(n), r: r, fill: colour(n.target_rank),
      stroke: n.is_universal ? "#ff6d00" : "#333", "stroke-width": n.is_universal ? 3 : 0.8}, g);
    const label = el("text", {x: X(n) + r + 3, y: Y(n) + 3}, g);
    label.textContent = n.label + ": " + n.short;
    g.addEventListener("mouseenter", ev => show(n, ev));
    g.addEventListener("mousemove", move);
    g.addEventListener("mouseleave", hide);
  });
  document.getElementById("wrap").appendChild(svg);
  document.body.setAttribute("data-flow", "ok:" + svg.querySelectorAll("circle").length + ":"
                             + svg.querySelectorAll("line").length);
})();
"""


def render_html(graph: FlowGraph) -> str:
    """The page as a string (module docstring)."""
    data = graph_data(graph)
    s = data["summary"]
    title = html.escape(
        f"Flow graph of {graph.meta.get('model', '')}: position {s['position']}"
        f" ({short(s['token'])}), target {short(s['target_token'])}"
    )
    budget = graph.meta.get("budget", {})
    legend = html.escape(
        f"{s['n_nodes']} nodes, {s['n_edges']} edges, {s['n_pruned']} units pruned (budget"
        f" {budget}); reading: {graph.meta.get('reading', '')}. Colour: rank of the target in"
        " each node's reading (yellow = 1). Orange ring: universal neuron. Hover a node."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{_STYLE}</style></head>
<body>
<script>window.onerror = function (msg, src, line) {{
  document.body.setAttribute("data-flow-error", String(msg) + " @" + line); }};</script>
<h1>{title}</h1>
<div id="prompt"></div>
<div class="legend">{legend}</div>
<div id="wrap"></div>
<div id="tip"></div>
<script type="application/json" id="flow-data">{_script_json(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""

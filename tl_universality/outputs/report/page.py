"""HTML of the report's pages: the page frame, sortable and filterable tables whose neuron names
link to the neuron pages, interactive plotly figures and embedded PNG figures.

Pages are self-contained except for ``assets/plotly.min.js``, written once per report folder and
read by every page with a plot, so the folder opens offline (no CDN). Each page marks its
``<body>`` once loaded: ``data-figures="ok:N"`` when every figure rendered (images decoded, plots
drawn), ``"broken:k/N"`` otherwise, so a headless browser can check it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_universality.core.names import neuron_name

PLOTLY_JS = "plotly.min.js"
ASSETS = "assets"
NEURON_DIR = "neurons"
_UNIT = re.compile(r"^L\d+N\d+$")


@dataclass
class Section:
    """One section of a page: a title, a note, plotly figures, matplotlib figures and tables."""

    title: str
    text: str = ""
    figures: list[tuple[str, Any]] = field(default_factory=list)  # (name, matplotlib figure)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    plots: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (name, plotly dict)
    html: str = ""  # ready HTML placed after the note


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
figure { margin: 1rem 0; } img { max-width: 100%; } .note { color: #555; }
table { border-collapse: collapse; font-size: .85rem; margin: .3rem 0 1.5rem; }
th, td { border: 1px solid #ddd; padding: .2rem .45rem; text-align: right; }
th { background: #f4f4f4; } td.t, th.t { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
input.filter { margin: .4rem 0 .1rem; padding: .2rem .4rem; width: 18rem; }
.plot { width: 100%; height: 420px; } .scroll { max-height: 32rem; overflow: auto; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; } .card { border: 1px solid #ddd;
  border-radius: 4px; padding: .4rem .7rem; } .card b { display: block; font-size: 1.2rem; }
"""

# Sorting (click a header; numbers by their data-v value), filtering (rows containing the
# text), then the load check. Plain DOM code, no library.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      const body = table.tBodies[0], rows = Array.from(body.rows);
      const up = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      const key = r => { const c = r.cells[col]; const v = c.dataset.v;
        return v !== undefined && v !== "" && !isNaN(+v) ? +v : c.textContent.trim(); };
      rows.sort(function (a, b) { const x = key(a), y = key(b);
        const c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0)
                                        : (typeof x === "number" ? -1 : 1);
        return up ? c : -c; });
      rows.forEach(r => body.appendChild(r));
    });
  });
});
document.querySelectorAll("input.filter").forEach(function (input) {
  const table = document.getElementById(input.dataset.table);
  input.addEventListener("input", function () {
    const q = input.value.toLowerCase();
    Array.from(table.tBodies[0].rows).forEach(function (r) {
      r.style.display = r.textContent.toLowerCase().includes(q) ? "" : "none"; });
  });
});
window.addEventListener("load", function () {
  const imgs = Array.from(document.images), plots = Array.from(document.querySelectorAll(".plot"));
  let ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  plots.forEach(function (div) {
    try { Plotly.newPlot(div, JSON.parse(div.dataset.figure), {responsive: true}); ok += 1; }
    catch (err) { console.error("plot " + div.id + " failed: " + err); }
  });
  const n = imgs.length + plots.length;
  document.body.dataset.figures = ok === n ? "ok:" + ok : "broken:" + ok + "/" + n;
});
"""


def page_html(title: str, body: str, *, root: str = "", plotly: bool = False) -> str:
    """A whole page: ``root`` is the path from the page to the report folder (``""`` or
    ``"../"``); ``plotly`` loads the report's one copy of plotly.js."""
    script = f'<script src="{root}{ASSETS}/{PLOTLY_JS}"></script>\n' if plotly else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n{script}</head>\n"
        f'<body data-figures="pending">\n<h1>{html.escape(title)}</h1>\n{body}\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def write_plotly_js(report_dir: Path) -> Path:
    """Copy plotly.js (from the installed plotly package) into ``report_dir/assets`` once."""
    from plotly.offline import get_plotlyjs

    path = report_dir / ASSETS / PLOTLY_JS
    if not path.is_file() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(get_plotlyjs(), encoding="utf-8")
    return path


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


class Renderer:
    """Renders sections with unique element ids; ``pages`` are the neuron names that have a page
    (their names link to it), ``root`` the path from this page to the report folder."""

    def __init__(self, pages: Iterable[str] = (), root: str = "") -> None:
        self.pages = set(pages)
        self.root = root
        self._n = 0

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def unit(self, name: str) -> str:
        """A neuron name, linked to its page when it has one."""
        text = html.escape(name)
        if name in self.pages:
            return f'<a href="{self.root}{NEURON_DIR}/{text}.html">{text}</a>'
        return text

    def table(self, df: pd.DataFrame, *, max_rows: int = 1000) -> str:
        """A sortable, filterable table; ``layer, neuron`` pairs get a linked ``unit`` column,
        and cells holding a neuron name (``L1N5``) link too."""
        df = with_unit_column(df).head(max_rows)
        table_id = self._id("table")
        head = "".join(
            f'<th class="{"t" if not _numeric(df[c]) else ""}">{html.escape(str(c))}</th>'
            for c in df.columns
        )
        rows = []
        for values in df.itertuples(index=False):
            cells = [self._cell(v) for v in values]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        more = f" (first {max_rows})" if len(df) == max_rows else ""
        return (
            f'<input class="filter" data-table="{table_id}" placeholder="filter {len(df)} rows'
            f'{more}">\n<div class="scroll"><table class="sortable" id="{table_id}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )

    def _cell(self, value: Any) -> str:
        if isinstance(value, bool | np.bool_):
            return f'<td class="t" data-v="{int(value)}">{value}</td>'
        if isinstance(value, int | np.integer):
            return f'<td data-v="{int(value)}">{int(value)}</td>'
        if isinstance(value, float | np.floating):
            v = float(value)
            text = "" if math.isnan(v) else f"{v:.4g}"
            return f'<td data-v="{"" if math.isnan(v) else repr(v)}">{text}</td>'
        text = str(value)
        if _UNIT.match(text):
            return f'<td class="t">{self.unit(text)}</td>'
        return f'<td class="t">{html.escape(text)}</td>'

    def plot(self, name: str, figure: dict[str, Any]) -> str:
        from tl_universality.outputs.report.figures import clean

        data = html.escape(json.dumps(clean(figure), default=_json_default), quote=True)
        return (
            f'<figure><div class="plot" id="{self._id("plot")}" data-figure="{data}"></div>'
            f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>"
        )

    def sections(self, sections: list[Section], figure_dir: Path | None = None) -> str:
        """HTML of ``sections``; matplotlib figures are embedded as PNG and, if ``figure_dir``
        is set, also saved there."""
        parts = []
        for s_i, section in enumerate(sections):
            parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
            if section.text:
                parts.append(f"<p class='note'>{html.escape(section.text)}</p>")
            parts.append(section.html)
            for name, figure in section.plots:
                parts.append(self.plot(name, figure))
            for name, fig in section.figures:
                data = png_bytes(fig)
                if figure_dir is not None:
                    figure_dir.mkdir(parents=True, exist_ok=True)
                    (figure_dir / f"{s_i:02d}_{name}.png").write_bytes(data)
                uri = "data:image/png;base64," + base64.b64encode(data).decode()
                parts.append(
                    f"<figure><img alt='{html.escape(name)}' src='{uri}'>"
                    f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>"
                )
            for name, table in section.tables:
                parts.append(f"<h3>{html.escape(name)}</h3>")
                parts.append(self.table(table))
            parts.append("</section>")
        return "\n".join(parts)


def render_html(title: str, sections: list[Section], figure_dir: Path | None = None) -> str:
    """A page of ``sections`` (no neuron links); see :class:`Renderer`."""
    renderer = Renderer()
    body = renderer.sections(sections, figure_dir)
    return page_html(title, body, plotly=any(s.plots for s in sections))


def with_unit_column(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a first column ``unit`` (``L1N5``) when it has integer ``layer``/``neuron``.

    Examples:
        >>> with_unit_column(pd.DataFrame({"layer": [1], "neuron": [5]})).columns.tolist()
        ['unit', 'layer', 'neuron']
    """
    if "unit" in df or not {"layer", "neuron"} <= set(df.columns):
        return df
    if not (_integer(df["layer"]) and _integer(df["neuron"])):
        return df
    units = [neuron_name(int(a), int(b)) for a, b in zip(df["layer"], df["neuron"], strict=True)]
    return df.reset_index(drop=True).assign(unit=units)[["unit", *df.columns]]


def _integer(column: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(column)


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return str(value)

"""The demo end to end (tiny family), and its report folder checked in a real headless Chromium."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest

from tests.helpers import chromium, needs_chromium
from tl_universality.analyses.correlation import CorrelationResult
from tl_universality.cli import main
from tl_universality.outputs import report


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, tiny_family):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--family", "tiny", "--out", str(out), "--quiet", "--max-tokens", "12000"])
    assert code == 0
    return out


def script_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line and "rror" in line]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag == "script" and attrs.get("src"):
            self.srcs.append(attrs["src"])


class _Tables(HTMLParser):
    """Every table of a page as rows of cell texts (an independent parse of the HTML)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None


def tables_of(page: Path) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page.read_text())
    return parser.tables


def broken_links(page: Path) -> list[str]:
    """Relative links and scripts of ``page`` that name no file (an independent HTML parse)."""
    parser = _Links()
    parser.feed(page.read_text())
    missing = []
    for ref in parser.hrefs + parser.srcs:
        url = urlparse(ref)
        if url.scheme in ("http", "https"):
            missing.append(ref)  # the report must not need the network
        elif not (page.parent / url.path).is_file():
            missing.append(ref)
    return missing


def test_demo_writes_every_result_and_a_consistent_summary(demo_dir):
    for name in (report.NEURON_TABLE, report.FAMILIES, report.PREDICTION, report.ENTROPY_SCORES):
        assert (demo_dir / name).is_file(), name
    summary = json.loads((demo_dir / report.SUMMARY).read_text())
    table = CorrelationResult.load(demo_dir / report.CORRELATION_DIR).to_dataframe()
    assert summary["universal_share"] == pytest.approx(table["is_universal"].mean())
    assert summary["median_baseline"] == pytest.approx(table["mean_baseline"].median())
    assert summary["n_tokens"] <= 12000


def test_report_numbers_agree_with_summary_json(demo_dir):
    """The summary table shows the numbers of summary.json (both read summary())."""
    summary = json.loads((demo_dir / report.SUMMARY).read_text())
    (run,) = [t for t in tables_of(demo_dir / "report" / "index.html") if t[0] == ["item", "value"]]
    shown = dict(run[1:])
    assert shown["n_tokens"].replace(",", "") == str(summary["n_tokens"])
    assert shown["n_universal"].replace(",", "") == str(summary["n_universal"])
    n_pages = len(list((demo_dir / "report" / "neurons").glob("*.html")))
    assert f"the {n_pages} most universal" in summary["contrast_group"] or (
        n_pages == summary["n_universal"]
    )


def test_every_page_neuron_is_linked_and_shows_its_data(demo_dir, tiny_family):
    folder = demo_dir / "report"
    table = CorrelationResult.load(demo_dir / report.CORRELATION_DIR).to_dataframe()
    n = max(10, round(0.05 * len(table)))  # no tiny neuron is universal: the top 5 %, at least 10
    expected = {f"L{r.layer}N{r.neuron}" for r in table.nlargest(n, "excess_corr").itertuples()}
    pages = {p.stem for p in (folder / "neurons").glob("*.html")}
    assert pages == expected
    index = (folder / "index.html").read_text()
    for name in expected:
        assert f'href="neurons/{name}.html"' in index
    best = table.nlargest(1, "excess_corr").iloc[0]
    name = f"L{best.layer}N{best.neuron}"
    page = (folder / "neurons" / f"{name}.html").read_text()
    assert "Top-activating contexts" in page and 'class="tok top"' in page
    for label in ("m1", "m2"):
        layer, neuron = best[f"max_sim_layer_{label}"], best[f"max_sim_neuron_{label}"]
        assert f"L{layer}N{neuron}" in page
    assert (
        '<script src="../assets/plotly.min.js"' not in page
        or (folder / "assets" / "plotly.min.js").is_file()
    )


def test_report_is_offline_and_plotly_is_embedded_once(demo_dir):
    folder = demo_dir / "report"
    assert (folder / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    for page in [folder / "index.html", *(folder / "neurons").glob("*.html")]:
        text = page.read_text()
        assert "cdn." not in text and "https://" not in text.split("<script>")[0]
        assert len(text) < 1_500_000  # plotly.js is not inlined in the pages
        assert broken_links(page) == [], page.name


@needs_chromium
def test_report_renders_in_chromium_without_script_errors(demo_dir):
    folder = demo_dir / "report"
    page = folder / "index.html"
    text = page.read_text()
    n_figures = len(re.findall(r"<img ", text)) + len(re.findall(r'class="plot"', text))
    assert n_figures >= 8
    dom = chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-figures="ok:{n_figures}"' in dom.stdout, "not every figure rendered"
    assert "js-plotly-plot" in dom.stdout  # plotly.js drew the plots
    assert script_errors(dom.stderr) == []
    neuron = sorted((folder / "neurons").glob("*.html"))[0]
    dom = chromium(neuron, "--dump-dom")
    assert 'data-figures="ok:' in dom.stdout and script_errors(dom.stderr) == []
    for name, target in (("index", page), ("neuron", neuron)):
        shot = folder / f"screenshot_{name}.png"
        chromium(target, f"--screenshot={shot}", "--window-size=1200,2400")
        assert shot.is_file() and shot.stat().st_size > 10_000


@needs_chromium
def test_the_browser_check_catches_broken_pages(tmp_path):
    """Negative control: a broken image, a plot that fails, a script error and a dead link are
    all detected by the checks above."""
    sections = [report.Section("broken", "x", plots=[("p", {"data": [], "layout": {}})])]
    page_html = report.render_html("t", sections).replace(
        "<h1>t</h1>",
        "<h1>t</h1><img src='data:image/png;base64,AAAA'><script>nope();</script>"
        "<a href='neurons/L9N9.html'>L9N9</a>",
    )
    page = tmp_path / "index.html"
    page.write_text(page_html)  # and no assets/plotly.min.js: the plot cannot be drawn
    dom = chromium(page, "--dump-dom")
    assert 'data-figures="broken:0/2"' in dom.stdout
    assert script_errors(dom.stderr)
    assert broken_links(page) == ["neurons/L9N9.html", "assets/plotly.min.js"]


def test_role_chart_has_whole_layer_ticks():
    from tl_universality.outputs.plots import plot_role_counts

    roles = pd.DataFrame({"layer": [0, 1, 1], "role": pd.Categorical(
        ["prediction", "suppression", "prediction"],
        categories=["prediction", "suppression", "partition", "none"])})  # fmt: skip
    fig = plot_role_counts(roles)
    ticks = fig.axes[0].get_xticks()
    assert list(ticks) == [0, 1]  # matplotlib's default put ticks at 0, 0.2, ..., 1

"""The FlowGraph result: save/load, networkx, the PNG and the HTML page in a real Chromium."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tests.helpers import build_model, chromium, needs_chromium
from tl_universality.core.errors import CorruptCacheError
from tl_universality.flow.graph import flow_graph
from tl_universality.flow.result import FlowGraph

PROMPT = [0, 5, 17, 3, 42, 9, 11]


@pytest.fixture(scope="module")
def graph():
    model = build_model().eval()
    table = pd.DataFrame({"layer": [1] * 64, "neuron": range(64), "excess_corr": [0.9] * 64})
    return flow_graph(model, PROMPT, position=4, correlation=table, heads=3, neurons=(4, 2))


def test_save_load_round_trip(graph, tmp_path):
    again = FlowGraph.load(graph.save(tmp_path / "flow"))
    pd.testing.assert_frame_equal(again.nodes, graph.nodes)
    pd.testing.assert_frame_equal(again.edges, graph.edges)
    pd.testing.assert_frame_equal(again.pruned, graph.pruned)
    assert again.meta == graph.meta
    assert again.summary() == graph.summary()
    assert isinstance(again.nodes.loc[0, "top_tokens"], list)


def test_a_damaged_folder_is_refused(graph, tmp_path):
    folder = graph.save(tmp_path / "flow")
    with open(folder / "edges.parquet", "ab") as f:
        f.write(b"x")
    with pytest.raises(CorruptCacheError, match="edges.parquet"):
        FlowGraph.load(folder)


def test_to_networkx_carries_the_tables(graph):
    g = graph.to_networkx()
    assert g.number_of_nodes() == len(graph.nodes)
    assert g.number_of_edges() == len(graph.edges)
    head = graph.nodes[graph.nodes["kind"] == "head"].iloc[0]
    assert g.nodes[head["id"]]["top_tokens"] == head["top_tokens"]
    assert g.edges[head["id"], "L0.attn_out"]["kind"] == "head"
    assert g.graph["position"] == 4


def test_summary_description_and_top_nodes(graph):
    s = graph.summary()
    assert s["n_nodes"] == len(graph.nodes) and s["n_edges"] == len(graph.edges)
    assert s["n_universal"] == 6 and s["position"] == 4  # every kept layer-1 neuron
    text = graph.describe(3)
    assert "position 4" in text and len(text.splitlines()) == 5
    assert list(graph.top_nodes(3)["score"].abs()) == sorted(graph.top_nodes(3)["score"].abs(),
                                                             reverse=True)  # fmt: skip


def test_plot_is_a_figure_that_saves_as_png(graph, tmp_path):
    from matplotlib.figure import Figure

    fig = graph.plot()
    assert isinstance(fig, Figure)
    fig.savefig(tmp_path / "flow.png", dpi=60)
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig2 = Figure()
    assert graph.plot(fig2.subplots()) is fig2


def body_attributes(dom: str) -> str:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, dom[:500]
    return match[1]


def test_html_is_self_contained(graph):
    page = graph.to_html()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<link" not in page and "src=" not in page


@needs_chromium
def test_html_draws_offline_without_script_errors(tmp_path):
    # Tokens that would break a careless page: markup, a closing script tag, quotes.
    model = build_model().eval()
    graph = flow_graph(model, PROMPT, heads=2, neurons=(3, 1))
    graph.meta["token_strings"][1] = "</script><b>x</b>'\""
    page = tmp_path / "flow.html"
    graph.to_html(page)
    dom = chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = body_attributes(dom.stdout)
    assert "data-flow-error" not in body, body
    assert f'data-flow="ok:{len(graph.nodes)}:{len(graph.edges)}"' in body
    assert "&lt;/script&gt;&lt;b&gt;" in dom.stdout  # shown as text, not markup


@needs_chromium
def test_the_browser_check_catches_a_broken_page(graph, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(graph.to_html().replace("const NS =", "nope(); const NS ="))
    dom = chromium(page, "--dump-dom")
    body = body_attributes(dom.stdout)
    assert "ReferenceError: nope is not defined" in body and 'data-flow="ok' not in body

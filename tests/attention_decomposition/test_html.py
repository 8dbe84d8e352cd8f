"""The trace's HTML view: self-contained; opens in headless Chromium with no script error."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import chromium, needs_chromium
from tl_universality.attention_decomposition.planted import planted_circuit
from tl_universality.attention_decomposition.trace import trace_circuit


def dump_dom(page: Path) -> subprocess.CompletedProcess:
    return chromium(page, "--dump-dom", budget_ms=5000)


@pytest.fixture(scope="module")
def trace():
    model, tokens = planted_circuit()
    return trace_circuit(model, tokens, ["L1H0"])


def test_page_is_self_contained(trace, tmp_path):
    page = trace.to_html(tmp_path / "trace.html")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing fetched
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert (tmp_path / "trace.html").read_text() == page


@needs_chromium
def test_page_renders_in_chromium_without_script_errors(trace, tmp_path):
    page = tmp_path / "trace.html"
    trace.to_html(page)
    dom = dump_dom(page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_nodes, n_edges = len(trace.nodes), len(trace.edges)
    assert f'data-status="ok:{n_nodes}:{n_edges}"' in dom.stdout, dom.stdout[:500]
    assert dom.stdout.count("<circle") == n_nodes and dom.stdout.count('class="edge') == n_edges
    assert "Uncaught" not in dom.stderr


@needs_chromium
def test_the_browser_check_catches_a_broken_page(trace, tmp_path):
    """Negative control: a script error shows up as the error marker, not as ok."""
    page = tmp_path / "broken.html"
    page.write_text(trace.to_html().replace("JSON.parse(", "JSON.parse(nope + "))
    dom = dump_dom(page)
    assert 'data-status="error:' in dom.stdout

"""The demo end to end (tiny family), and its report checked in a real headless Chromium."""

from __future__ import annotations

import json
import re

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
    return [line for line in stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]


def test_demo_writes_every_result_and_a_consistent_summary(demo_dir):
    for name in (report.NEURON_TABLE, report.FAMILIES, report.PREDICTION, report.ENTROPY_SCORES):
        assert (demo_dir / name).is_file(), name
    summary = json.loads((demo_dir / report.SUMMARY).read_text())
    table = CorrelationResult.load(demo_dir / report.CORRELATION_DIR).to_dataframe()
    assert summary["universal_share"] == pytest.approx(table["is_universal"].mean())
    assert summary["median_baseline"] == pytest.approx(table["mean_baseline"].median())
    assert summary["n_tokens"] == 12000 or summary["n_tokens"] <= 12000


@needs_chromium
def test_report_renders_in_chromium_without_script_errors(demo_dir):
    page = demo_dir / "report" / "index.html"
    n_images = len(re.findall(r"<img ", page.read_text()))
    assert n_images >= 5
    dom = chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-figures="ok:{n_images}"' in dom.stdout, "not every figure decoded"
    assert script_errors(dom.stderr) == []
    shot = demo_dir / "report" / "screenshot.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1200,2400")
    assert shot.is_file() and shot.stat().st_size > 10_000


@needs_chromium
def test_the_browser_check_catches_broken_pages(tmp_path):
    """Negative control: a broken image and a script error are both detected."""
    sections = [report.Section("broken", "x")]
    page_html = report.render_html("t", sections).replace(
        "<h1>t</h1>", "<h1>t</h1><img src='data:image/png;base64,AAAA'><script>nope();</script>"
    )
    page = tmp_path / "index.html"
    page.write_text(page_html)
    dom = chromium(page, "--dump-dom")
    assert 'data-figures="broken:0/1"' in dom.stdout
    assert script_errors(dom.stderr)

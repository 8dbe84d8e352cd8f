"""``tl-universality trace``: parsed by the real parser, run on the planted model."""

from __future__ import annotations

import networkx as nx

from tl_universality.attention_decomposition.cli import run_trace
from tl_universality.attention_decomposition.planted import planted_circuit
from tl_universality.attention_decomposition.trace import CircuitTrace
from tl_universality.cli import build_parser


def test_trace_subcommand_writes_the_trace_graphml_and_html(tmp_path, capsys):
    model, tokens = planted_circuit()
    args = build_parser().parse_args(
        ["trace", "--roots", "L1H0", "--out", str(tmp_path), "--quiet", "--n-prompts", "4",
         "--intervene"]
    )  # fmt: skip
    assert args.func.__name__ == "cmd_trace"
    assert run_trace(args, model, tokens) == 0
    trace = CircuitTrace.load(tmp_path / "trace")
    assert trace.head_edges() == {("L0H0", "L1H0")}
    assert set(nx.read_graphml(tmp_path / "trace.graphml").edges) == {
        ("L0H0", "L1H0"), ("embed", "L1H0"),
    }  # fmt: skip
    assert (tmp_path / "trace.html").is_file() and (tmp_path / "signal_effects").is_dir()
    assert '"n_head_edges": 1' in capsys.readouterr().out

"""``tl-universality flow`` on a saved model folder."""

from __future__ import annotations

import pytest

from tests.helpers import build_model, byte_level_tokenizer
from tl_universality.cli import main
from tl_universality.data.seeds import save_seed_model
from tl_universality.flow.result import FlowGraph

WORDS = ["<|endoftext|>", "Ġthe", "Ġof", "Ġriver", "Ġcat", "t", "h", "e", "r", "i", "v", " "]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    tokenizer = byte_level_tokenizer(WORDS)
    tokenizer.save_pretrained(str(root / "tokenizer"))
    save_seed_model(build_model(d_vocab=len(WORDS)), root / "seed0")
    return root / "seed0"


def test_flow_writes_the_graph_the_page_and_the_picture(model_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["flow", "the river", "--model", str(model_folder), "--position", "-2",
                 "--heads", "2", "--neurons", "3,1", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    graph = FlowGraph.load(out / "flow_graph")
    assert graph.summary()["n_heads"] == 4 and graph.summary()["n_neurons"] == 8
    assert graph.meta["position"] == len(graph.meta["tokens"]) - 2
    assert (out / "flow_graph.html").stat().st_size > 1000
    assert (out / "flow_graph.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "flow graph of" in printed and "saved flow_graph/" in printed


def test_flow_share_budget_and_clear_errors(model_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["flow", "the cat", "--model", str(model_folder), "--heads", "0.5",
                 "--neurons", "0.3", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    assert FlowGraph.load(out / "flow_graph").meta["budget"] == {"heads": 0.5, "neurons": 0.3}
    code = main(["flow", "the cat", "--model", str(model_folder), "--position", "9",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 2
    assert "position=9 is out of range" in capsys.readouterr().err

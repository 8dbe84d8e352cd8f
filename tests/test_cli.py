"""Each ``tl-universality`` subcommand end to end on the tiny family, outputs checked."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tl_universality.analyses.correlation import CorrelationResult
from tl_universality.cli import main
from tl_universality.outputs import report
from tl_universality.units.activations import collect_activations

MAX_TOKENS = 12_000


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_family):
    """One results folder written by correlate, stats, families and roles, in that order."""
    out = tmp_path_factory.mktemp("cli")
    common = ["--family", "tiny", "--out", str(out), "--quiet"]
    assert main(["correlate", *common, "--max-tokens", str(MAX_TOKENS)]) == 0
    assert main(["stats", *common, "--max-tokens", str(MAX_TOKENS)]) == 0
    assert main(["families", *common, "--max-tokens", str(MAX_TOKENS)]) == 0
    assert main(["roles", *common]) == 0
    return out


def test_help_reads_well():
    proc = subprocess.run(
        [sys.executable, "-m", "tl_universality", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    for command in ("train-seeds", "correlate", "stats", "families", "roles", "report", "demo"):
        assert command in proc.stdout


def test_train_seeds_prints_the_family(capsys, tiny_family):
    assert main(["train-seeds", "--family", "tiny", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for loss in tiny_family.held_out_loss:
        assert f"held-out loss {loss:.3f}" in printed


def test_correlate_matches_numpy(results, tiny_family):
    result = CorrelationResult.load(results / report.CORRELATION_DIR)
    ref, *others = tiny_family.models
    acts = collect_activations(
        tiny_family.models, tiny_family.held_out_tokens(), max_tokens=MAX_TOKENS, progress=False
    )
    a = acts[0].double().numpy()
    for m, other in enumerate(acts[1:]):
        b = other.double().numpy()
        corr = np.corrcoef(a, b, rowvar=False)[: a.shape[1], a.shape[1] :]
        expected = np.nanmax(np.where(np.isfinite(corr), corr, np.nan), axis=1)
        got = result.max_corr[m].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_stats_table(results, tiny_family):
    table = pd.read_parquet(results / report.NEURON_TABLE)
    model = tiny_family.models[0]
    n = model.cfg.n_layers * model.cfg.d_mlp
    assert len(table) == n
    assert {"excess_corr", "is_universal", "act_freq", "vocab_kurt", "w_out_norm"} <= set(table)
    assert table["act_freq"].between(0, 1).all()
    # The table uses processed weights: W_out rows centred over d_model (center_writing_weights).
    w_out = torch.cat([model.blocks[i].mlp.W_out for i in range(model.cfg.n_layers)]).double()
    centred = (w_out - w_out.mean(dim=1, keepdim=True)).detach().numpy()
    np.testing.assert_allclose(table["w_out_norm"], np.linalg.norm(centred, axis=1), rtol=1e-5)


def test_families_labels(results):
    labels = pd.read_parquet(results / report.FAMILIES)
    explanations = pd.read_parquet(results / report.EXPLANATIONS)
    assert {"layer", "neuron", "family"} <= set(labels)
    assert set(labels[["layer", "neuron"]].itertuples(index=False)) <= set(
        explanations[["layer", "neuron"]].itertuples(index=False)
    )
    assert explanations["variance_reduction"].dropna().between(-1e-9, 1 + 1e-9).all()


def test_roles_tables(results, tiny_family):
    roles = pd.read_parquet(results / report.PREDICTION)
    assert set(roles["role"]) <= {"prediction", "suppression", "partition", "none"}
    entropy = pd.read_parquet(results / report.ENTROPY_SCORES)
    assert entropy["null_space_norm"].is_monotonic_decreasing
    if tiny_family.models[0].cfg.n_layers > 1:
        attention = pd.read_parquet(results / report.ATTENTION_SCORES)
        assert (attention["head_layer"] > attention["layer"]).all()


def test_report_command(results):
    assert main(["report", str(results)]) == 0
    page = (results / "report" / "index.html").read_text()
    for title in ("Universality", "Neuron properties", "Families", "Prediction"):
        assert title in page
    assert len(list((results / "report" / "figures").glob("*.png"))) >= 4


def test_clear_errors(capsys, tmp_path):
    assert main(["correlate", "--out", str(tmp_path)]) == 2
    assert "argument MODELS: no model given" in capsys.readouterr().err

"""Each ``tl-universality`` subcommand end to end on the tiny family, outputs checked."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import tl_universality
from tl_universality.analyses.correlation import CorrelationResult
from tl_universality.analyses.correlation.fingerprint import weights_digest
from tl_universality.cli import main
from tl_universality.data.seeds import load_seed_model
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


def test_correlate_under_torchrun_equals_one_process(results, tmp_path):
    """``torchrun --nproc_per_node 2 -m tl_universality correlate`` (gloo): the same result as
    the one-process command, written once, by rank 0."""
    import os
    import shutil
    from pathlib import Path

    exe = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the session's cache: the family is trained
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [exe, "--standalone", "--nproc_per_node", "2", "-m", "tl_universality", "correlate",
           "--family", "tiny", "--out", str(tmp_path), "--max-tokens", str(MAX_TOKENS)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # rank 0 alone prints the plan, shows the progress and writes the outputs
    assert done.stderr.count("Correlation plan:") == 1 and done.stdout.count("saved to") == 1
    got = CorrelationResult.load(tmp_path / report.CORRELATION_DIR)
    want = CorrelationResult.load(results / report.CORRELATION_DIR)
    assert got.config["world_size"] == 2 and want.config.get("world_size", 1) == 1
    assert got.n_tokens == want.n_tokens
    for name in ("max_corr", "min_corr", "baseline_max"):
        g, w = getattr(got, name), getattr(want, name)
        assert torch.equal(g.isnan(), w.isnan()), name
        assert float((g - w).nan_to_num(0).abs().max()) <= 1e-9, name


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
    assert main(["report", str(results), "--quiet"]) == 0
    page = (results / "report" / "index.html").read_text()
    for title in ("Universality", "Neuron properties", "Families", "Prediction", "Neuron pages"):
        assert title in page
    assert page.count('class="plot"') >= 6
    neurons = list((results / "report" / "neurons").glob("*.html"))
    assert neurons and all(f'href="neurons/{p.name}"' in page for p in neurons)
    # The reference recorded in settings.json was reloaded: the pages show its contexts.
    assert 'class="tok top"' in neurons[0].read_text()


def test_clear_errors(capsys, tmp_path):
    assert main(["correlate", "--out", str(tmp_path)]) == 2
    assert "argument MODELS: no model given" in capsys.readouterr().err


# -- errors: one line, the argument, the value, the fix; exit 2 for usage, 1 for failures ----


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["corelate"], "Did you mean 'correlate'?"),
        (["train-seeds", "--preset", "tiny"], "--preset is now --family"),
        (["correlate", "--family", "tiny", "--max-tokns", "5"], "Did you mean '--max-tokens'"),
        (["correlate", "--family", "tinyy"], "argument --family: unknown value 'tinyy'. Did you"
                                             " mean 'tiny'?"),
        (["correlate", "--family", "tiny", "--memory-budget", "abc"],
         "argument --memory-budget: 'abc' is not a size"),
        (["correlate", "--family", "tiny", "--parallel", "tile"],
         "argument --parallel: invalid choice: 'tile'"),
        (["stats", "--family", "tiny", "--tokens", "nope.txt"],
         "argument --tokens: no such file 'nope.txt'"),
        (["correlate", "gpt2-smal", "gpt2-small"],
         "argument MODELS: unknown value 'gpt2-smal'. Did you mean 'gpt2-small'"),
        (["correlate", "--family", "tiny", "--units", "mlp.hook_psot", "--max-tokens", "300"],
         "did you mean 'blocks.0.mlp.hook_post'"),
        (["correlate", "--family", "tiny", "--tol", "0.01", "--max-tokens", "300"],
         "tol=0.01 only applies to the screened mode"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_with_exit_code_2(argv, expected, capsys, tmp_path, tiny_family):
    assert main([*argv, "--out", str(tmp_path)] if argv[0] != "corelate" else argv) == 2
    line = one_error_line(capsys)
    assert expected in line
    assert any(hint in line.lower() for hint in ("fix:", "did you mean", "is now"))


def test_screened_correlate_prints_certified_units(tmp_path, capsys, tiny_family):
    argv = ["correlate", "--family", "tiny", "--out", str(tmp_path), "--quiet", "--max-tokens",
            "4000", "--candidates", "4", "--screen-tokens", "1000", "--baseline-candidates",
            "3", "--certificate-sigmas", "3.5", "--product-dtype", "float64"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = CorrelationResult.load(tmp_path / report.CORRELATION_DIR)
    assert result.certified is not None and result.config["candidates"] == 4
    assert result.config["certificate_sigmas"] == 3.5
    assert result.config["product_dtype"] == "float64"
    assert f"screened: {result.n_certified} of" in printed
    assert result.config["baseline_candidates"] == 3 and result.baseline_certified is not None
    assert "followed baseline: certified for" in printed


def test_exhaustive_correlate_with_standard_errors(tmp_path, capsys, tiny_family):
    argv = ["correlate", "--family", "tiny", "--out", str(tmp_path), "--quiet", "--max-tokens",
            "2000", "--standard-errors"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = CorrelationResult.load(tmp_path / report.CORRELATION_DIR)
    assert result.certified is None and result.config["standard_errors"] is True
    se = result.max_corr_se[~result.max_corr.isnan()]
    assert se.numel() and bool((se > 0).all())
    assert f"median {float(se.median()):.2g}" in printed


def test_missing_input_folders_are_errors(capsys, tmp_path, tiny_family):
    missing = tmp_path / "runs" / "nope"
    assert main(["stats", "--family", "tiny", "--correlation", str(missing), "--out",
                 str(tmp_path), "--quiet"]) == 2  # fmt: skip
    assert f"argument --correlation: '{missing}' does not exist" in one_error_line(capsys)
    assert main(["report", str(missing)]) == 2
    assert "argument DIR" in one_error_line(capsys)
    assert not missing.exists()  # the old report created the folder and exited 0


def test_unavailable_device_is_a_usage_error(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["correlate", "--family", "tiny", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "argument --device: 'cuda' is not available" in one_error_line(capsys)


def test_the_device_defaults_to_cuda_when_there_is_one(monkeypatch):
    """No --device: cuda where torch sees a GPU (under torchrun the rank's own), else cpu."""
    from tl_universality.cli import commands

    seen = []
    monkeypatch.setattr(commands, "cmd_correlate", lambda args: seen.append(args.device) or 0)
    for cuda, want in ((False, "cpu"), (True, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert main(["correlate", "--family", "tiny", "--quiet"]) == 0
        assert seen.pop() == want
    assert main(["correlate", "--family", "tiny", "--device", "cpu", "--quiet"]) == 0
    assert seen.pop() == "cpu"  # given: kept, with CUDA too


def test_a_failure_exits_1_and_debug_shows_the_traceback(capsys, tmp_path, tiny_family):
    (tmp_path / report.CORRELATION_DIR).mkdir()  # a folder that is not a saved result
    argv = ["stats", "--family", "tiny", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 1
    assert "CorrelationResult" in one_error_line(capsys)
    assert main([*argv, "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# -- joining, tokens, causal tests, wandb ------------------------------------------------------


def test_stats_says_which_correlation_it_joined_and_checks_the_model(results, capsys, tmp_path):
    seed1 = tiny_seed_folder(1)
    assert main(["stats", str(tiny_seed_folder(0)), "--out", str(results), "--quiet",
                 "--max-tokens", "500"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"joining the correlation result {results / report.CORRELATION_DIR}" in printed
    assert "fingerprint checked" in printed
    code = main(["stats", str(seed1), "--correlation", str(results / report.CORRELATION_DIR),
                 "--out", str(tmp_path), "--quiet", "--max-tokens", "500"])  # fmt: skip
    assert code == 2
    assert "was computed for another reference model" in one_error_line(capsys)


def tiny_seed_folder(seed: int):
    from tl_universality.data.seeds import train_seed_family

    return train_seed_family("tiny", progress=False).folder / f"seed{seed}"


def test_tokens_default_gives_activation_statistics_without_family(tmp_path, tiny_family):
    """``--tokens default`` is the embedded corpus: the table of a model folder gets act_freq
    (it was skipped before), equal to the share of positive pre-activations on that corpus."""
    from tl_universality.data.tokens import resolve_tokens

    out = tmp_path / "out"
    assert main(["stats", str(tiny_seed_folder(0)), "--tokens", "default", "--max-tokens",
                 "2000", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    table = pd.read_parquet(out / report.NEURON_TABLE)
    model = tiny_family.models[0]
    source = resolve_tokens(None, model, max_tokens=2000)
    pre = collect_activations([model], source, units="mlp.hook_pre", progress=False)[0]
    np.testing.assert_allclose(table["act_freq"], (pre > 0).double().mean(0).numpy(), atol=1e-9)


def test_roles_causal_runs_the_entropy_intervention_and_path_ablation(tmp_path, tiny_family):
    from tl_universality.analyses.attention import PathAblationResult
    from tl_universality.analyses.entropy import EntropyInterventionResult

    out = tmp_path / "out"
    assert main(["roles", "--family", "tiny", "--causal", "--max-tokens", "1024", "--out",
                 str(out), "--quiet"]) == 0  # fmt: skip
    entropy = pd.read_parquet(out / report.ENTROPY_SCORES)
    result = EntropyInterventionResult.load(out / report.ENTROPY_INTERVENTION)
    top = entropy.iloc[0]
    assert (int(top.layer), int(top.neuron)) in {
        (int(a), int(b)) for a, b in result.to_dataframe()[["layer", "neuron"]].values
    }
    if tiny_family.models[0].cfg.n_layers > 1:
        ablation = PathAblationResult.load(out / report.PATH_ABLATION)
        assert ablation.summary()


def test_wandb_from_the_cli_has_settings_name_group_and_every_table(tmp_path, capsys, tiny_family):
    from tests.outputs.test_wandb import read_records

    out = tmp_path / "study"
    assert main(["roles", "--family", "tiny", "--out", str(out), "--quiet", "--wandb"]) == 0
    printed = capsys.readouterr().out
    (run_dir,) = list((out / "wandb").glob("offline-run-*"))
    assert f"wandb: offline run in {run_dir}; upload it with: wandb sync {run_dir}" in printed
    (record,) = [r.run for r in read_records(run_dir) if r.WhichOneof("record_type") == "run"]
    assert record.run_group == "study" and record.display_name.startswith("roles tiny")
    config = {i.key: json.loads(i.value_json) for i in record.config.update}
    fresh = load_seed_model(tiny_seed_folder(0))  # the session's family may have been processed
    assert [m["fingerprint"] for m in config["models"]] == [weights_digest(fresh)]
    assert config["versions"]["tl_universality"] == tl_universality.__version__
    media = run_dir / "files" / "media" / "table" / "table"
    names = {p.name.rsplit("_", 2)[0] for p in media.glob("*.json")}
    expected = {"prediction_neurons", "entropy_scores"}
    if tiny_family.models[0].cfg.n_layers > 1:
        expected.add("attention_deactivation")  # roles --wandb used to drop it
    assert names == expected


# -- the command line itself -------------------------------------------------------------------


def test_version_and_python_dash_m():
    from importlib import metadata

    proc = subprocess.run([sys.executable, "-m", "tl_universality", "--version"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.startswith(f"tl-universality {metadata.version('tl_universality')} (")
    assert f"transformer-lens {metadata.version('transformer-lens')}" in proc.stdout


def test_help_imports_neither_torch_nor_transformer_lens():
    """What makes --help take seconds is importing torch and TransformerLens: it must not."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tl_universality", "--help"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "tl_universality.cli.parser" in imported  # the check sees our imports
    assert not {"torch", "transformer_lens", "pandas"} & imported

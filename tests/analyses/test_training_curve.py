"""Universality across training: planted checkpoints and numpy float64 oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.training_curve import (
    COLUMNS,
    TrainingCurve,
    participation_ratios,
    universality_over_training,
)
from tl_universality.cli import main
from tl_universality.core.errors import CorruptCacheError
from tl_universality.data.seeds import PRESETS, family_folder, train_seed_family
from tl_universality.data.tokens import as_token_source
from tl_universality.units.activations import newline_token_id

QUIET = {"progress": False, "num_threads": 1}
BOS = 0


# -- oracles -------------------------------------------------------------------------------------


def mlp_acts(model, tokens, excluded):
    """``{layer: [positions, d_mlp]}`` float64 from ``run_with_cache``, excluded ids left out."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    keep = ~np.isin(tokens.numpy(), list(excluded))
    return {
        layer: cache[f"blocks.{layer}.mlp.hook_post"].double().numpy()[keep]
        for layer in range(model.cfg.n_layers)
    }


def max_corr_oracle(a, b):
    """Per unit of ``a``: max over units of ``b`` of the Pearson correlation (NaN if dead)."""
    corr = np.corrcoef(a, b, rowvar=False)[: a.shape[1], a.shape[1] :]
    corr = np.where(np.isfinite(corr), corr, -np.inf)
    best = corr.max(1)
    return np.where(np.isfinite(best), best, np.nan)


def participation_oracle(x):
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))
    return eig.sum() ** 2 / (eig**2).sum()


def loss_oracle(model, tokens):
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).double(), -1)
    return float(-logp[:, :-1].gather(-1, tokens[:, 1:, None]).mean())


# -- planted checkpoints (a stand-in for hub models) ----------------------------------------------


def permuted_copy(model, layers, seed=0):
    """The same function with the MLP neurons of ``layers`` permuted: those neurons have an exact
    match (correlation 1) in ``model``."""
    other = build_model(seed=99)
    other.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            mlp = other.blocks[layer].mlp
            perm = torch.randperm(mlp.W_in.shape[1], generator=gen)
            mlp.W_in.copy_(mlp.W_in[:, perm])
            mlp.b_in.copy_(mlp.b_in[perm])
            mlp.W_out.copy_(mlp.W_out[perm])
    return other


def planted_loader():
    """Checkpoint 0: unrelated seeds. 10: layer 0 of seed b is a permuted copy of seed a's and
    layer 1 is random. 20: seed b is a permuted copy of seed a. Counts the loads."""
    ref = build_model(seed=0)
    unrelated = build_model(seed=1)
    half = permuted_copy(ref, [0])
    with torch.no_grad():
        for name, param in build_model(seed=2).blocks[1].mlp.named_parameters():
            dict(half.blocks[1].mlp.named_parameters())[name].copy_(param)
    models = {
        ("a", 0): build_model(seed=3), ("b", 0): unrelated,
        ("a", 10): ref, ("b", 10): half,
        ("a", 20): ref, ("b", 20): permuted_copy(ref, [0, 1]),
    }  # fmt: skip
    calls = []

    def loader(name, *, device, checkpoint_value=None, checkpoint_index=None):
        step = checkpoint_value if checkpoint_value is not None else 10 * checkpoint_index
        calls.append((name, step))
        model = models[(name, step)]
        model.cfg.checkpoint_value = step
        model.cfg.checkpoint_label_type = "step"
        return model

    return loader, models, calls


@pytest.fixture(scope="module")
def planted():
    loader, models, calls = planted_loader()
    toks = random_tokens(24, 16, seed=1)
    source = as_token_source(toks, bos_token_id=BOS)
    curve = universality_over_training(
        ["a", "b"], [0, 10, 20], source, loader=loader, tokens_per_step=1000, n_draws=2
    )
    return curve, models, toks, calls


def test_planted_curve_matches_numpy(planted):
    curve, models, toks, calls = planted
    assert calls == [("a", 0), ("b", 0), ("a", 10), ("b", 10), ("a", 20), ("b", 20)]
    assert curve.steps == [0, 10, 20] and curve.tokens_seen == [0, 10_000, 20_000]
    assert curve.names == ("a", "b") and curve.config["exclude_token_ids"] == [BOS]
    for c, step in enumerate(curve.steps):
        a = mlp_acts(models[("a", step)], toks, {BOS})
        b = mlp_acts(models[("b", step)], toks, {BOS})
        # The max over all of b's units (every layer), as correlate takes it.
        both = np.concatenate([b[0], b[1]], 1)
        expected = np.concatenate([max_corr_oracle(a[layer], both) for layer in (0, 1)])
        got = curve.max_corr[c].double().numpy()
        assert np.allclose(got, expected, atol=2e-5, equal_nan=True)
        assert curve.loss[c] == pytest.approx(loss_oracle(models[("a", step)], toks), abs=1e-5)
        rows = curve.to_dataframe().query("step == @step").set_index("layer")
        for layer in (0, 1):
            pr = participation_oracle(a[layer])
            assert rows.loc[layer, "participation_ratio"] == pytest.approx(pr, rel=1e-6)
            assert rows.loc[layer, "n_units"] == 64


def test_planted_structure_is_found(planted):
    curve, *_ = planted
    table = curve.to_dataframe().set_index(["step", "layer"])
    assert list(curve.to_dataframe().columns) == list(COLUMNS)
    live = ~torch.isnan(curve.max_corr)
    # Exact copies: every live neuron of a copied layer has a match of 1.
    assert bool((curve.max_corr[1, :64][live[1, :64]] > 0.9999).all())
    assert bool((curve.max_corr[2][live[2]] > 0.9999).all())
    assert float(curve.max_corr[0][live[0]].max()) < 0.99
    assert float(curve.max_corr[1, 64:][live[1, 64:]].max()) < 0.99
    # Table vs the per-unit values: share and quantiles of excess > threshold per layer.
    excess = curve.excess_correlation.numpy()
    for c, step in enumerate(curve.steps):
        for layer, sl in ((0, slice(0, 64)), (1, slice(64, 128))):
            values = excess[c, sl]
            ok = values[~np.isnan(values)]
            row = table.loc[(step, layer)]
            assert row["universal_share"] == pytest.approx((ok > 0.5).sum() / 64)
            assert row["excess_p99"] == pytest.approx(np.quantile(ok, 0.99))
            assert row["excess_max"] == pytest.approx(ok.max())
    # (Random models have low-rank layers, so the baseline is high: not every copy is universal.)
    assert table.loc[(20, 1), "universal_share"] > table.loc[(10, 1), "universal_share"]


def test_tracking_neurons_through_training(planted):
    curve, *_ = planted
    first = curve.first_exceeds(0.99, column="max_corr")
    by_unit = first.set_index("unit")
    values = curve.max_corr.numpy()
    for flat, (layer, neuron) in enumerate(zip(*curve.units.to_frame().values.T, strict=True)):
        # A direct loop over checkpoints: the first whose value exceeds the threshold.
        expected = next(
            (s for s, v in zip(curve.steps, values[:, flat], strict=True) if v > 0.99), -1
        )
        row = by_unit.loc[f"L{layer}N{neuron}"]
        assert row["first_step"] == expected
        assert row["first_tokens"] == (-1 if expected < 0 else 1000 * expected)
    assert set(first.loc[first.layer == 0, "first_step"]) <= {10, -1}
    assert set(first.loc[first.layer == 1, "first_step"]) <= {20, -1}
    steps = first["first_step"].to_numpy()
    assert (np.diff(np.where(steps < 0, 10**9, steps)) >= 0).all()  # ordered, never last
    trajectory = curve.neuron_trajectory("L1N5")
    assert list(trajectory["step"]) == [0, 10, 20]
    assert np.allclose(trajectory["max_corr"], values[:, 64 + 5], equal_nan=True)
    assert np.allclose(
        trajectory["excess_corr"], trajectory["max_corr"] - trajectory["baseline"], equal_nan=True
    )
    with pytest.raises(ValueError, match="column"):
        curve.first_exceeds(column="loss")


def test_save_load_summary_plot(planted, tmp_path):
    curve, *_ = planted
    path = curve.save(tmp_path / "curve")
    again = TrainingCurve.load(path)
    assert again.steps == curve.steps and again.names == curve.names
    assert torch.equal(again.max_corr, curve.max_corr)
    assert again.to_dataframe().equals(curve.to_dataframe())
    summary = again.summary()
    assert summary["n_checkpoints"] == 3 and summary["last_step"] == 20
    assert all(isinstance(v, (int, float, str)) for v in summary.values())
    assert summary["first_universal_step"] in (10, 20)
    assert summary["final_universal_share"] == pytest.approx(
        float((curve.excess_correlation[-1] > 0.5).sum()) / 128
    )
    fig = again.plot()
    assert len(fig.axes) == 2 and fig.axes[1].get_xlabel() == "training tokens"
    (path / "units.safetensors").write_bytes(b"x" + (path / "units.safetensors").read_bytes()[1:])
    with pytest.raises(CorruptCacheError, match="units.safetensors"):
        TrainingCurve.load(path)


def test_checkpoint_index_and_bad_arguments():
    loader, _, calls = planted_loader()
    source = as_token_source(random_tokens(8, 16, seed=2), bos_token_id=BOS)
    curve = universality_over_training(
        ["a", "b"], [2], source, loader=loader, checkpoint_kind="index", n_draws=1
    )
    assert calls == [("a", 20), ("b", 20)] and curve.steps == [20]
    assert curve.tokens_seen == [-1]  # unknown tokens per step for these names
    with pytest.raises(ValueError, match="checkpoint_kind"):
        universality_over_training(["a", "b"], [0], source, loader=loader, checkpoint_kind="x")
    with pytest.raises(ValueError, match="Name the checkpoints"):
        universality_over_training(["a", "b"], "all", source, loader=loader)
    with pytest.raises(ValueError, match="at least two"):
        universality_over_training(["a"], [0], source, loader=loader)


def test_participation_ratio_of_a_rank_one_layer():
    """A layer with one varying neuron (the others constant) has ratio 1."""
    model = build_model(n_layers=1, d_mlp=8, act_fn="relu")
    with torch.no_grad():
        model.blocks[0].mlp.W_in.zero_()
        model.blocks[0].mlp.W_in[0, 0] = 1.0  # neuron 0 reads one residual coordinate
    pr = participation_ratios(model, random_tokens(16, 16, seed=3), exclude_token_ids=[BOS])
    assert pr[0] == pytest.approx(1.0, abs=1e-9)


# -- the token convention (issue 18, item 6) -----------------------------------------------------


def test_default_excludes_the_newline_token(tiny_family):
    tok = tiny_family.tokenizer
    newline = tok.convert_tokens_to_ids("Ċ")  # byte-level BPE spells "\n" as "Ċ"
    assert newline_token_id(tok) == newline
    held = tiny_family.held_out_tokens().limit(64 * 40)
    ref, other = tiny_family.models[:2]
    default = correlate(ref, other, held, n_draws=1, progress=False)
    bos_only = correlate(ref, other, held, n_draws=1, progress=False, exclude_token_ids=[BOS])
    assert default.config["exclude_token_ids"] == sorted({BOS, newline})
    assert bos_only.config["exclude_token_ids"] == [BOS]
    toks = held.to_tensor()
    assert bos_only.n_tokens - default.n_tokens == int((toks == newline).sum()) > 0
    # Both against numpy on the same positions.
    for result, excluded in ((default, {BOS, newline}), (bos_only, {BOS})):
        a = mlp_acts(ref, toks, excluded)
        b = mlp_acts(other, toks, excluded)
        both = np.concatenate([b[0], b[1]], 1)
        expected = np.concatenate([max_corr_oracle(a[layer], both) for layer in (0, 1)])
        assert np.allclose(result.max_corr[0].numpy(), expected, atol=1e-5, equal_nan=True)


# -- offline families with checkpoints -----------------------------------------------------------

CURVE = PRESETS["tiny"].replace(name="curve", steps=20, warmup=2, seeds=(0, 1))


@pytest.fixture(scope="module")
def curve_family(tmp_path_factory):
    cache = tmp_path_factory.mktemp("curve-cache")
    family = train_seed_family(CURVE, cache_dir=cache, checkpoints=[0, 10], **QUIET)
    return family, cache


def test_family_curve(curve_family):
    family, cache = curve_family
    curve = universality_over_training(CURVE, cache_dir=cache, max_tokens=64 * 30, n_draws=1)
    assert curve.steps == [0, 10, 20]
    assert curve.tokens_seen == [s * CURVE.batch_size * CURVE.n_ctx for s in (0, 10, 20)]
    assert curve.names == ("curve/seed0", "curve/seed1")
    newline = family.tokenizer.convert_tokens_to_ids("Ċ")
    assert curve.config["exclude_token_ids"] == sorted({BOS, newline})
    toks = family.held_out_tokens().limit(64 * 30).to_tensor()
    from tl_universality.data.seeds import load_seed_family

    mid = load_seed_family(CURVE, cache_dir=cache, checkpoint=10)
    a = mlp_acts(mid.models[0], toks, {BOS, newline})
    b = mlp_acts(mid.models[1], toks, {BOS, newline})
    both = np.concatenate([b[0], b[1]], 1)
    expected = np.concatenate([max_corr_oracle(a[layer], both) for layer in (0, 1)])
    assert np.allclose(curve.max_corr[1].double().numpy(), expected, atol=2e-5, equal_nan=True)
    assert curve.loss[1] == pytest.approx(loss_oracle(mid.models[0], toks), abs=1e-5)
    assert curve.loss[0] > curve.loss[1] > curve.loss[2]
    # A loaded family works too, and explicit steps pick a subset.
    sub = universality_over_training(family, [10], max_tokens=64 * 30, n_draws=1)
    assert sub.steps == [10] and torch.allclose(sub.max_corr[0], curve.max_corr[1], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="checkpoints"):
        universality_over_training(family, [5], max_tokens=640)


def test_missing_family_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_seed_family"):
        universality_over_training(CURVE, cache_dir=tmp_path)


def test_cli_training_curve(curve_family, tmp_path, capsys):
    family, cache = curve_family
    folder = family_folder(CURVE, cache_dir=cache)
    out = tmp_path / "out"
    argv = ["training-curve", str(folder), "--out", str(out), "--quiet", "--max-tokens", "1280"]
    assert main([*argv, "--n-draws", "1"]) == 0
    printed = capsys.readouterr().out
    assert "participation_ratio" in printed and (out / "training_curve.png").is_file()
    curve = TrainingCurve.load(out / "training_curve")
    assert curve.steps == [0, 10, 20] and not math.isnan(curve.loss[-1])
    assert main(["training-curve", "only-one-name", "--out", str(out), "--quiet"]) == 2


def test_accessor_training_curve():
    import tl_universality  # noqa: F401  (registers the accessor)

    loader, _, calls = planted_loader()
    ref = build_model(seed=0)
    ref.cfg.model_name = "a"
    source = as_token_source(random_tokens(8, 16, seed=2), bos_token_id=BOS)
    curve = ref.universality.training_curve(["b"], [0, 20], source, loader=loader, n_draws=1)
    assert curve.steps == [0, 20] and calls[0] == ("a", 0)


@pytest.mark.network
def test_stanford_checkpoints():  # pragma: no cover - needs the model hub
    curve = universality_over_training(
        ["stanford-gpt2-small-a", "stanford-gpt2-small-b"], [0, 1], None,
        checkpoint_kind="index", max_tokens=20_000, units=["blocks.0.mlp.hook_post"], n_draws=1,
    )  # fmt: skip
    assert curve.tokens_seen[1] == curve.steps[1] * 512 * 1024

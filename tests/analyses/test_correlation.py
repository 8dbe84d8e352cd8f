"""correlate() against numpy.corrcoef on explicitly cached activations, and every run mode."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import tl_universality  # noqa: F401  (registers model.universality)
from tests.helpers import build_model, permuted_copy, random_tokens
from tl_universality.analyses.correlation import (
    CorrelationResult,
    correlate,
    parse_bytes,
    plan_correlation,
)
from tl_universality.core.errors import (
    CheckpointMismatchError,
    CorruptCacheError,
    InvalidArgumentError,
    TokenizerMismatchError,
)
from tl_universality.stats.baselines import mixing_matrix
from tl_universality.units.activations import collect_activations

BOS = 0
QUIET = dict(bos_token_id=BOS, progress=False)


def tokens(n: int = 24, seq: int = 32, seed: int = 0) -> torch.Tensor:
    return random_tokens(n, seq, seed, bos=BOS)


def oracle_corr(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """float64 numpy corrcoef on cached activations; NaN for constant units."""
    x64, y64 = x.double().numpy(), y.double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        full = np.corrcoef(np.concatenate([x64, y64], 1).T)
    return full[: x.shape[1], x.shape[1] :]


def nan_argmax(m: np.ndarray) -> np.ndarray:
    return np.nan_to_num(m, nan=-np.inf).argmax(1)


@pytest.fixture(scope="module")
def family():
    return [build_model(seed=s) for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def toks():
    return tokens()


@pytest.fixture(scope="module")
def acts(family, toks):
    return collect_activations(family, toks, batch_size=8, **QUIET)


@pytest.fixture(scope="module")
def two(family, toks):
    return correlate(
        family[0], family[1], toks, batch_size=8, keep_matrix=torch.float64, n_draws=2, **QUIET
    )


def test_two_models_match_corrcoef_on_every_entry(two, acts):
    ref = oracle_corr(acts[0], acts[1])
    ours = two.matrix(0).numpy()
    assert np.nanmax(np.abs(ours - ref)) <= 1e-6
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(two.max_corr[0].numpy(), np.nanmax(ref, 1), atol=1e-6, rtol=0)
    np.testing.assert_allclose(two.min_corr[0].numpy(), np.nanmin(ref, 1), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(two.argmax[0].numpy(), nan_argmax(ref))
    top = np.sort(np.nan_to_num(ref, nan=-np.inf), 1)[:, ::-1][:, :10]
    np.testing.assert_allclose(two.top_corr[0].numpy(), top, atol=1e-6, rtol=0)
    assert two.n_tokens == acts[0].shape[0] == 24 * 31


def test_three_models_all_pairs_match_corrcoef(family, toks, acts):
    results = correlate(
        family[0], family[1:], toks, batch_size=8, all_pairs=True, keep_matrix=True, n_draws=1,
        **QUIET,
    )  # fmt: skip
    assert len(results) == 3
    for r, result in enumerate(results):
        others = [c for c in range(3) if c != r]
        assert result.names[0] == f"m{r}" and result.n_models == 2
        for m, c in enumerate(others):
            ref = oracle_corr(acts[r], acts[c])
            assert np.nanmax(np.abs(result.matrix(m).double().numpy() - ref)) <= 1e-6
            np.testing.assert_allclose(result.max_corr[m].numpy(), np.nanmax(ref, 1), atol=1e-6)
            np.testing.assert_array_equal(result.argmax[m].numpy(), nan_argmax(ref))
            assert not result.baseline_draws[m].isnan().any()


def test_reference_against_two_others_matches_pairwise_runs(family, toks, acts, two):
    three = correlate(family[0], family[1:], toks, batch_size=8, n_draws=2, **QUIET)
    assert three.max_corr.shape == (2, 128)
    torch.testing.assert_close(three.max_corr[0], two.max_corr[0], atol=1e-6, rtol=0)
    # The rotation baseline of model 1 does not depend on which other models ran alongside.
    torch.testing.assert_close(three.baseline_draws[0], two.baseline_draws[0], atol=1e-6, rtol=0)
    ref = oracle_corr(acts[0], acts[2])
    np.testing.assert_allclose(three.max_corr[1].numpy(), np.nanmax(ref, 1), atol=1e-6)


def test_permuted_copy_max_corr_is_one_and_argmax_recovers_the_permutation(family, toks):
    twin, perms = permuted_copy(family[0])
    result = correlate(family[0], twin, toks, batch_size=8, baseline=None, **QUIET)
    living = ~result.dead
    assert living.all()
    assert (result.max_corr[0][living] > 1 - 1e-6).all()
    d_mlp = 64
    expected = torch.cat([layer * d_mlp + torch.argsort(perm) for layer, perm in enumerate(perms)])
    assert torch.equal(result.argmax[0], expected)
    frame = result.argmax_units(0)
    assert (frame["layer"].to_numpy() == np.repeat([0, 1], d_mlp)).all()


def test_rotation_baseline_equals_correlation_with_explicitly_rotated_activations(
    family, toks, acts
):
    for kind in ("rotation", "gaussian_mix"):
        result = correlate(
            family[0], family[1], toks, batch_size=8, baseline=kind, n_draws=2, seed=5, **QUIET
        )
        for draw in range(2):
            mixed = []
            for hook in range(2):
                # correlate keys each matrix by (model index, layer, draw)
                mix = mixing_matrix(kind, 64, seed=5, key=(1, hook, draw))
                mixed.append(acts[1][:, hook * 64 : (hook + 1) * 64].double() @ mix.T)
            ref = oracle_corr(acts[0], torch.cat(mixed, 1))
            got = result.baseline_draws[0, draw].numpy()
            assert np.abs(got - np.nanmax(ref, 1)).max() <= 1e-6
        torch.testing.assert_close(
            result.baseline_max[0], result.baseline_draws[0].mean(0), atol=1e-12, rtol=0
        )


def test_tiled_equals_untiled(family, toks):
    few = toks[:8]  # one batch per pass: the plan below has 12 passes
    kw = dict(batch_size=8, all_pairs=True, keep_matrix=True, n_draws=1, **QUIET)
    whole = correlate(family[0], family[1:], few, **kw)
    plan = plan_correlation(
        family[0], family[1:], all_pairs=True, keep_matrix=True, n_draws=1, batch_size=8,
        memory_budget="1.2MB",
    )  # fmt: skip
    # Both sides split into single layers: 12 tiles, one pass each.
    assert plan.n_passes == 12 and len(plan.tiles) == 12 and plan.peak_bytes <= 1_200_000
    tiled = correlate(family[0], family[1:], few, memory_budget="1.2MB", **kw)
    for a, b in zip(whole, tiled, strict=True):
        torch.testing.assert_close(a.max_corr, b.max_corr, atol=1e-6, rtol=0, equal_nan=True)
        assert torch.equal(a.argmax, b.argmax) and torch.equal(a.argmin, b.argmin)
        torch.testing.assert_close(a.top_corr, b.top_corr, atol=1e-6, rtol=0, equal_nan=True)
        torch.testing.assert_close(a.baseline_draws, b.baseline_draws, atol=1e-6, rtol=0)
        for m in range(2):
            torch.testing.assert_close(a.matrix(m), b.matrix(m), atol=1e-6, rtol=0)


class Kill(RuntimeError):
    pass


def test_resumed_equals_uninterrupted(family, toks, tmp_path):
    # 12 sequences in batches of 4 (124 tokens each, a checkpoint after every batch), 2 passes.
    few = toks[:12]
    kw = dict(batch_size=4, n_draws=1, memory_budget="1.2MB", checkpoint_every=100, **QUIET)
    clean = correlate(family[0], family[1:], few, **{**kw, "checkpoint_every": 10**9})

    def kill_at(pass_index):
        def callback(info):
            if info.pass_index == pass_index and info.checkpointed:
                raise Kill

        return callback

    for where in (0, 1):  # killed mid-pass in the first pass, then after a pass boundary
        folder = tmp_path / f"ckpt{where}"
        with pytest.raises(Kill):
            correlate(
                family[0], family[1:], few, checkpoint_dir=folder, callback=kill_at(where), **kw
            )
        assert (folder / "state" / "correlation_state.safetensors").exists()
        resumed = correlate(family[0], family[1:], few, checkpoint_dir=folder, **kw)
        for name in CorrelationResult._ARRAYS:
            assert torch.equal(
                getattr(resumed, name).nan_to_num(9), getattr(clean, name).nan_to_num(9)
            ), name
    # A finished checkpoint returns the result without running anything.
    calls = []
    done = correlate(family[0], family[1:], few, checkpoint_dir=folder, callback=calls.append, **kw)
    assert calls == [] and torch.equal(done.argmax, clean.argmax)
    # Other arguments: a clear error, naming what differs.
    with pytest.raises(CheckpointMismatchError, match="seed"):
        correlate(family[0], family[1:], few, checkpoint_dir=folder, seed=1, **kw)
    with pytest.raises(CheckpointMismatchError, match="tokens"):
        correlate(family[0], family[1:], toks[:8], checkpoint_dir=folder, **kw)
    # A corrupt checkpoint names the file and the fix.
    (folder / "state" / "correlation_state.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptCacheError, match="correlation_state.safetensors.*delete"):
        correlate(family[0], family[1:], few, checkpoint_dir=folder, **kw)


def test_save_load_round_trip_and_corrupt_files(two, tmp_path):
    path = two.save(tmp_path / "result")
    assert sorted(p.name for p in path.iterdir()) == [
        "arrays.safetensors", "manifest.json", "neurons.parquet",
    ]  # fmt: skip
    back = CorrelationResult.load(path)
    for name in (*CorrelationResult._ARRAYS, "dead"):
        assert torch.equal(getattr(back, name).nan_to_num(9), getattr(two, name).nan_to_num(9))
    assert back.units == two.units and back.names == two.names
    torch.testing.assert_close(back.matrix(0), two.matrix(0), equal_nan=True)
    pd.testing.assert_frame_equal(back.to_dataframe(), two.to_dataframe())
    pd.testing.assert_frame_equal(pd.read_parquet(path / "neurons.parquet"), two.to_dataframe())
    (path / "arrays.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptCacheError, match="arrays.safetensors"):
        CorrelationResult.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CorruptCacheError, match="manifest.json is missing"):
        CorrelationResult.load(path)


def test_tables_and_plot(two):
    df = two.to_dataframe()
    assert list(df.columns[:11]) == [
        "layer", "neuron", "excess_corr", "mean_corr", "min_corr", "max_corr", "mean_baseline",
        "min_baseline", "max_baseline", "is_dead", "is_universal",
    ]  # fmt: skip
    assert len(df) == 128 and "max_sim_layer_m1" in df and "baseline_m1" in df
    np.testing.assert_allclose(df["excess_corr"], df["mean_corr"] - df["mean_baseline"])
    low = two.universal_neurons(threshold=-1.0)
    assert len(low) == 128 and "is_universal" not in low
    high = two.universal_neurons(threshold=0.5)
    assert (high["excess_corr"] > 0.5).all()
    share = two.universal_share()
    assert list(share["layer"]) == [0, 1] and share["n_units"].sum() == 128
    assert two.dead_units().empty
    import matplotlib

    matplotlib.use("Agg")
    fig = two.plot()
    assert len(fig.axes) == 2
    assert "universal" in repr(two)


def test_bad_and_unusual_inputs(family, toks):
    toks = toks[:8]
    other_vocab = build_model(seed=1, d_vocab=50)
    with pytest.raises(TokenizerMismatchError):
        correlate(family[0], other_vocab, toks, **QUIET)
    # A source shorter than one batch.
    short = toks[:3]
    result = correlate(family[0], family[1], short, batch_size=32, n_draws=1, **QUIET)
    a, b = collect_activations([family[0], family[1]], short, **QUIET)
    np.testing.assert_allclose(result.max_corr[0], np.nanmax(oracle_corr(a, b), 1), atol=1e-6)
    # Different layer counts.
    deep = build_model(seed=3, n_layers=3)
    result = correlate(family[0], deep, toks, batch_size=8, n_draws=1, **QUIET)
    assert result.other_units[0].n_units == 192 and set(result.argmax_units(0)["layer"]) <= {
        0,
        1,
        2,
    }
    a, c = collect_activations([family[0], deep], toks, **QUIET)
    np.testing.assert_allclose(result.max_corr[0], np.nanmax(oracle_corr(a, c), 1), atol=1e-6)
    with pytest.raises(ValueError, match="other model"):
        correlate(family[0], [], toks, **QUIET)
    with pytest.raises(ValueError, match="too small"):
        correlate(family[0], family[1], toks, memory_budget="10KB", **QUIET)
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30)


def test_dead_model_reports_dead_units(family, toks):
    toks = toks[:8]
    dead = build_model(seed=4, act_fn="relu")
    with torch.no_grad():
        for block in dead.blocks:
            block.mlp.W_in.zero_()
            block.mlp.b_in.zero_()
    result = correlate(family[0], [dead, family[1]], toks, batch_size=8, n_draws=1, **QUIET)
    assert result.other_dead[0].all() and not result.other_dead[1].any()
    assert result.max_corr[0].isnan().all() and (result.argmax[0] == -1).all()
    dead_rows = result.dead_units()
    assert len(dead_rows) == 128 and set(dead_rows["model"]) == {result.names[1]}
    # Excess correlation uses the models where it is defined.
    torch.testing.assert_close(result.mean_corr, result.max_corr[1])
    assert not result.excess_correlation.isnan().any()
    # Reversed: a dead reference has no correlations at all, and no universal neurons.
    back = correlate(dead, family[0], toks, batch_size=8, n_draws=1, **QUIET)
    assert back.dead.all() and back.excess_correlation.isnan().all()
    assert back.universal_neurons().empty


def test_gaussian_noise_baseline_and_accessor(family, toks, two):
    noise = family[0].universality.correlate(
        family[1], toks, baseline="gaussian_noise", n_draws=3, batch_size=8, **QUIET
    )
    torch.testing.assert_close(noise.max_corr, two.max_corr)
    # b = 128 noise units over n = 744 tokens: the max sits near 2.6 standard deviations.
    typical = 2.6 / np.sqrt(noise.n_tokens)
    assert 0.5 * typical < float(noise.baseline_max.mean()) < 1.5 * typical


def test_plan_is_reported(family, toks, capsys):
    correlate(family[0], family[1], toks[:4], bos_token_id=BOS, n_draws=1, progress=True)
    err = capsys.readouterr().err
    assert "Correlation plan" in err and "pass 0" in err


def test_float64_products_other_units_and_half_matrices(family, toks):
    few = toks[:8]
    result = correlate(
        family[0], family[1], few, units="mlp.hook_pre", product_dtype=torch.float64,
        keep_matrix=torch.float16, baseline=None, **QUIET,
    )  # fmt: skip
    a, b = collect_activations([family[0], family[1]], few, units="mlp.hook_pre", **QUIET)
    ref = oracle_corr(a, b)
    np.testing.assert_allclose(result.max_corr[0].numpy(), np.nanmax(ref, 1), atol=1e-10, rtol=0)
    assert result.matrix(0).dtype == torch.float16
    assert np.nanmax(np.abs(result.matrix(0).double().numpy() - ref)) < 1e-3
    assert result.baseline_draws.shape == (1, 0, 128) and result.excess_correlation.isnan().all()
    with pytest.raises(ValueError, match="no baseline"):
        result.universal_neurons()


def test_a_plan_beyond_the_device_memory_is_refused_before_any_batch(family, toks, monkeypatch):
    from tl_universality.analyses.correlation import capacity

    toks = toks[:8]
    plan = plan_correlation(family[0], family[1], batch_size=8, seq_len=toks.shape[1])
    room = int(plan.peak_bytes * 0.9)  # the one-pass plan needs more than the device has
    monkeypatch.setattr(capacity, "available_memory", lambda device: room)
    forwards = []
    hook = family[0].embed.register_forward_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(InvalidArgumentError, match="memory_budget=None") as err:
            correlate(family[0], family[1], toks, batch_size=8, n_draws=1, **QUIET)
        assert not forwards  # refused before the first batch
        assert "candidates=K" in str(err.value)
        with pytest.raises(InvalidArgumentError, match="the screening stage") as screening:
            correlate(family[0], family[1], toks, batch_size=8, n_draws=1, candidates=2, **QUIET)
        assert not forwards and "candidates=K" not in str(screening.value)
        suggested = str(err.value).split("memory_budget='")[1].split("'")[0]
        assert parse_bytes(suggested) <= room
        # the budget it names fits: tiles in several passes, the one-pass result
        tiled = correlate(family[0], family[1], toks, batch_size=8, n_draws=1,
                          memory_budget=suggested, **QUIET)  # fmt: skip
    finally:
        hook.remove()
    assert tiled.config["n_passes"] > 1
    monkeypatch.undo()
    whole = correlate(family[0], family[1], toks, batch_size=8, n_draws=1, **QUIET)
    np.testing.assert_allclose(tiled.max_corr, whole.max_corr, atol=1e-9)
    # An explicit budget above what the device has is the caller's choice: a warning, and it runs.
    monkeypatch.setattr(capacity, "available_memory", lambda device: room)
    with pytest.warns(ResourceWarning, match="may run out of memory"):
        correlate(family[0], family[1], toks, batch_size=8, n_draws=1,
                  memory_budget=plan.peak_bytes * 2, **QUIET)  # fmt: skip

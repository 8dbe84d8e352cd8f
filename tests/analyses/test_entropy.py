"""Entropy neurons on a planted example: a neuron writing a large vector into W_U's null space.

Oracles are computed here directly (numpy float64, explicit loops over positions and tokens), from
the construction of the model or from TransformerLens's own forward pass with hand-written hooks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.entropy import (
    EntropyInterventionResult,
    default_null_space_dim,
    entropy_intervention,
    entropy_neuron_scores,
    matched_random_neurons,
)
from tl_universality.core.errors import NoUnitsError
from tl_universality.units.hooks import FixNeuron, FreezeLNScale, run_with_interventions

BOS = 0
NEURON = (1, 3)  # last layer: no later layer can carry its effect around the final LayerNorm
NULL_DIM = 4
VALUES = [0.0, 1.0, 2.0, 4.0, 8.0]


def entropy_model(norm: float = 20.0, **overrides):
    """W_U loses NULL_DIM zero-mean directions; NEURON writes ``norm`` times one of them.

    Float64, so "no direct effect" can be checked far below 1e-5; W_U is scaled up so the
    next-token distribution is far from uniform and a change of temperature shows.
    """
    overrides.setdefault("dtype", torch.float64)
    overrides.setdefault("n_ctx", 16)
    m = build_model(**overrides)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(m.cfg.d_model, NULL_DIM, generator=g, dtype=torch.float64)
    null, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal, orthogonal to the all-ones vector
    with torch.no_grad():
        W_U = 5 * m.W_U
        m.unembed.W_U.copy_(W_U - null @ (null.T @ W_U))
        m.blocks[NEURON[0]].mlp.W_out[NEURON[1]] = norm * null[:, 0]
    return m, null


def tokens(n: int = 6, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return random_tokens(n, seq, seed, bos=BOS)


def oracle_metrics(logits: torch.Tensor, toks: torch.Tensor) -> dict[str, float]:
    """Mean entropy, loss and reciprocal rank over predicting positions, by explicit loops."""
    lg = logits.detach().double().numpy()
    ent, loss, rr = [], [], []
    for b in range(lg.shape[0]):
        for p in range(lg.shape[1] - 1):
            z = lg[b, p]
            logp = z - (z.max() + math.log(np.exp(z - z.max()).sum()))
            ent.append(-sum(math.exp(lp) * lp for lp in logp))
            target = int(toks[b, p + 1])
            loss.append(-logp[target])
            rr.append(1.0 / (1 + sum(1 for v in z if v > z[target])))
    return {"entropy": np.mean(ent), "loss": np.mean(loss), "reciprocal_rank": np.mean(rr)}


def test_planted_neuron_ranks_first_with_exact_null_share():
    m, null = entropy_model()
    table = entropy_neuron_scores(m, null_space_dim=NULL_DIM)
    top = table.iloc[0]
    assert (top["layer"], top["neuron"]) == NEURON and top["rank"] == 1
    assert top["null_space_share"] == pytest.approx(1.0, abs=1e-10)
    assert top["w_out_norm"] == pytest.approx(20.0)
    assert top["vocab_var"] == pytest.approx(0.0, abs=1e-20)  # orthogonal to every W_U column
    # Oracle for every neuron: share of ‖w_out‖² in the null space the model was built with.
    W_out = m.W_out.detach().double()
    by_unit = table.set_index(["layer", "neuron"])
    for layer in range(2):
        for n in range(64):
            w = W_out[layer, n].numpy()
            share = float(np.sum((null.numpy().T @ w) ** 2) / np.sum(w**2))
            got = by_unit.loc[(layer, n)]
            assert got["null_space_share"] == pytest.approx(share, abs=1e-9)
            assert got["w_out_norm"] == pytest.approx(float(np.linalg.norm(w)), rel=1e-12)
    assert table["null_space_norm"].is_monotonic_decreasing
    assert table.attrs["null_space_dim"] == NULL_DIM
    assert max(table.attrs["null_space_singular_values"]) < 1e-6
    # The accessor calls the same function.
    via_accessor = m.universality.entropy_neuron_scores(null_space_dim=NULL_DIM)
    assert via_accessor.iloc[0][["layer", "neuron"]].tolist() == list(NEURON)


def test_null_space_dim_default_and_validation():
    m, _ = entropy_model()
    assert default_null_space_dim(32) == 1
    assert entropy_neuron_scores(m).attrs["null_space_dim"] == 1
    with pytest.raises(ValueError, match="null_space_dim"):
        entropy_neuron_scores(m, null_space_dim=32)  # LayerNorm leaves 31 directions
    with pytest.raises(NoUnitsError):
        entropy_neuron_scores(build_model(attn_only=True))


def test_no_direct_effect_on_logits():
    m, _ = entropy_model()
    toks = tokens()
    clean, cache = run_with_interventions(m, toks, capture=["ln_final.hook_scale"])
    scale = cache["ln_final.hook_scale"]
    for value in (-3.0, 0.0, 5.0, 50.0):
        fixed, _ = run_with_interventions(
            m, toks, [FixNeuron(*NEURON, value), FreezeLNScale(scale)]
        )
        assert float((fixed - clean).abs().max()) <= 1e-5
        total, _ = run_with_interventions(m, toks, [FixNeuron(*NEURON, value)])
        assert float((total - clean).abs().max()) > 1e-2  # the LN scale path does change them


def test_total_effect_is_monotone_and_direct_effect_vanishes():
    m, _ = entropy_model()
    toks = tokens()
    result = entropy_intervention(m, [NEURON], VALUES, toks, n_random_baseline=3, seed=0)
    t = result.to_dataframe()
    cand = t[t["kind"] == "candidate"]
    total = cand[cand["effect"] == "total"].sort_values("value")
    direct = cand[cand["effect"] == "direct"].sort_values("value")
    assert np.all(np.diff(total["entropy"].to_numpy()) > 0)  # a hotter distribution
    assert np.all(np.diff(total["ln_scale"].to_numpy()) > 0)  # through a larger LN scale
    assert total["entropy"].iloc[-1] - total["entropy"].iloc[0] > 1.0
    np.testing.assert_allclose(direct["entropy"], result.clean["entropy"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(direct["loss"], result.clean["loss"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(direct["ln_scale"], result.clean["ln_scale"], atol=1e-12, rtol=0)
    # Temperature never reorders the logits: reciprocal ranks stay put even in total.
    np.testing.assert_allclose(total["reciprocal_rank"], result.clean["reciprocal_rank"])
    assert result.has_final_ln and "frozen" in result.note
    assert result.n_tokens == 6 * 11

    # Baseline: 3 other neurons of the same layer, closest in norm.
    rand = result.neurons[result.neurons["kind"] == "random"]
    assert len(rand) == 3 and set(rand["layer"]) == {1} and NEURON[1] not in set(rand["neuron"])
    summary = result.effects(["entropy"]).set_index(["value", "effect"])
    change = summary.loc[(8.0, "total"), "entropy_change"]
    assert abs(change) > 5 * abs(summary.loc[(8.0, "total"), "baseline_entropy_change"])


def test_metrics_match_hand_written_hooks():
    m, _ = entropy_model()
    toks = tokens(n=3, seq=8)
    value = 2.0
    result = entropy_intervention(m, NEURON, [value], toks, n_random_baseline=0)
    rows = result.to_dataframe().set_index("effect")

    def fix(act, hook):
        act = act.clone()
        act[:, :, NEURON[1]] = value
        return act

    scales = {}

    def keep_scale(scale, hook):
        scales["s"] = scale

    clean_logits, cache = m.run_with_cache(toks)
    clean_scale = cache["ln_final.hook_scale"]
    total_logits = m.run_with_hooks(
        toks,
        fwd_hooks=[(f"blocks.{NEURON[0]}.mlp.hook_post", fix), ("ln_final.hook_scale", keep_scale)],
    )
    direct_logits = m.run_with_hooks(
        toks,
        fwd_hooks=[
            (f"blocks.{NEURON[0]}.mlp.hook_post", fix),
            ("ln_final.hook_scale", lambda s, hook: clean_scale),
        ],
    )
    for effect, logits in (("total", total_logits), ("direct", direct_logits)):
        expected = oracle_metrics(logits, toks)
        for metric, value_expected in expected.items():
            assert rows.loc[effect, metric] == pytest.approx(value_expected, rel=1e-9, abs=1e-12)
    expected_scale = float(scales["s"][:, :-1].mean().detach())
    assert rows.loc["total", "ln_scale"] == pytest.approx(expected_scale)
    clean_expected = oracle_metrics(clean_logits, toks)
    for metric, value_expected in clean_expected.items():
        assert result.clean[metric] == pytest.approx(value_expected, rel=1e-9)
    acts = cache[f"blocks.{NEURON[0]}.mlp.hook_post"][:, :-1, NEURON[1]]
    assert result.neurons.iloc[0]["clean_mean_activation"] == pytest.approx(float(acts.mean()))


def test_model_without_final_layernorm_reports_direct_equals_total():
    m = build_model(normalization_type=None, n_ctx=16, dtype=torch.float64)
    toks = tokens(n=2, seq=6)
    result = entropy_intervention(m, (1, 0), [0.0, 3.0], toks, n_random_baseline=1)
    assert not result.has_final_ln
    assert "no final normalisation" in result.note and "equals the total" in result.note
    t = result.to_dataframe()
    for effect_columns in ("entropy", "loss", "reciprocal_rank"):
        total = t[t["effect"] == "total"][effect_columns].to_numpy()
        direct = t[t["effect"] == "direct"][effect_columns].to_numpy()
        np.testing.assert_array_equal(total, direct)
    assert t["ln_scale"].isna().all() and np.isnan(result.clean["ln_scale"])
    # The null-space score has nothing to centre here but still works.
    assert len(entropy_neuron_scores(m, null_space_dim=2)) == 128


def test_folded_layernorm_keeps_the_planted_neuron():
    m, _ = entropy_model()
    m.process_weights_()  # fold_ln -> LNPre, centred writing weights, centred unembedding
    assert m.cfg.normalization_type == "LNPre"
    table = entropy_neuron_scores(m, null_space_dim=NULL_DIM)
    assert tuple(table.iloc[0][["layer", "neuron"]]) == NEURON
    result = entropy_intervention(m, NEURON, [0.0, 8.0], tokens(n=2), n_random_baseline=0)
    t = result.to_dataframe()
    direct = t[t["effect"] == "direct"]["entropy"].to_numpy()
    total = t[t["effect"] == "total"]["entropy"].to_numpy()
    np.testing.assert_allclose(direct, result.clean["entropy"], atol=1e-5, rtol=0)
    assert total[1] > total[0]


def test_matched_random_neurons_are_close_in_norm_and_seeded():
    norms = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 50.0]])
    a = matched_random_neurons(norms, [(0, 9)], n=2, seed=3)
    b = matched_random_neurons(norms, [(0, 9)], n=2, seed=3)
    assert a == b and len(a[(0, 9)]) == 2
    assert all(j >= 1 for _, j in a[(0, 9)])  # from the 8 closest in log-norm: 2.0 .. 9.0
    assert matched_random_neurons(norms, [(0, 9)], n=0) == {(0, 9): []}


def test_result_round_trip_plot_and_bad_input(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    m, _ = entropy_model()
    result = entropy_intervention(m, NEURON, [0.0, 1.0], tokens(n=2), n_random_baseline=2)
    loaded = EntropyInterventionResult.load(result.save(tmp_path / "entropy"))
    assert loaded.clean == result.clean and loaded.note == result.note
    assert loaded.to_dataframe().equals(result.to_dataframe())
    fig = result.plot(metric="entropy")
    assert fig.axes[0].get_ylabel() == "entropy"
    with pytest.raises(ValueError):
        result.plot(metric="perplexity")
    with pytest.raises(IndexError):
        entropy_intervention(m, (2, 0), [0.0], tokens(n=1))
    with pytest.raises(ValueError, match="No values"):
        entropy_intervention(m, NEURON, [], tokens(n=1))


def test_corrupt_saved_results_are_a_clear_error(tmp_path):
    from tl_universality.analyses.attention import PathAblationResult
    from tl_universality.analyses.entropy import EntropyInterventionResult
    from tl_universality.core.errors import CorruptCacheError

    (tmp_path / "meta.json").write_text("{truncated")
    with pytest.raises(CorruptCacheError, match="not a saved EntropyInterventionResult"):
        EntropyInterventionResult.load(tmp_path)
    with pytest.raises(CorruptCacheError, match="not a saved PathAblationResult"):
        PathAblationResult.load(tmp_path)

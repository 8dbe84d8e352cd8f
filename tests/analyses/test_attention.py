"""Attention deactivation neurons on a planted example: a layer-0 neuron whose output W_Q maps
onto the BOS key of head 1.2, silent on BOS itself.

Oracles are computed here directly in float64 (explicit loops for the scores; the head's attention
rebuilt by hand from the clean cache for the path ablation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.attention import (
    AttentionDeactivationScores,
    PathAblationResult,
    attention_deactivation_scores,
    path_ablation,
)
from tl_universality.core.errors import NoUnitsError
from tl_universality.units.hooks import RemoveFromQueryInput, apply, split_qkv_input

BOS = 0
NEURON = (0, 5)
HEAD = (1, 2)


def deactivation_model(norm: float = 30.0):
    """Plant NEURON: off on BOS (so the BOS key does not depend on it), on elsewhere, with
    ``w_out`` along the (centred) direction ``W_Q[1, 2] k_BOS``."""
    m = build_model(act_fn="relu", n_ctx=16, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    d = torch.randn(m.cfg.d_model, generator=g, dtype=torch.float64)
    d = (d - d.mean()) / (d - d.mean()).norm()
    with torch.no_grad():
        m.embed.W_E[BOS] += 10 * d  # BOS stands out along d ...
        m.blocks[0].mlp.W_in[:, NEURON[1]] = -0.5 * d  # ... which switches the neuron off there
        m.blocks[0].mlp.b_in[NEURON[1]] = 1.0
        _, cache = m.run_with_cache(torch.tensor([[BOS]]))
        k_bos = cache["blocks.1.attn.hook_k"][0, 0, HEAD[1]]
        u = m.W_Q[HEAD[0], HEAD[1]] @ k_bos
        u = u - u.mean()
        m.blocks[0].mlp.W_out[NEURON[1]] = norm * u / u.norm()
    return m


def tokens(n: int = 6, seq: int = 12, seed: int = 2) -> torch.Tensor:
    return random_tokens(n, seq, seed, bos=BOS)


def oracle_scores(m) -> np.ndarray:
    """score[n, h] for every layer-0 neuron and layer-1 head, by explicit loops in float64."""
    _, cache = m.run_with_cache(torch.tensor([[BOS]]))
    k_bos = cache["blocks.1.attn.hook_k"][0, 0].detach().double().numpy()  # [head, d_head]
    W_out = m.W_out[0].detach().double().numpy()
    W_Q = m.W_Q[1].detach().double().numpy()  # [head, d_model, d_head]
    ln_w = m.blocks[1].ln1.w.detach().double().numpy()
    d_model, d_head = W_Q.shape[1], W_Q.shape[2]
    out = np.zeros((W_out.shape[0], W_Q.shape[0]))
    for n in range(W_out.shape[0]):
        w = W_out[n]
        mean = sum(w) / d_model
        w_eff = [(w[i] - mean) * ln_w[i] for i in range(d_model)]  # LayerNorm without its scale
        for h in range(W_Q.shape[0]):
            q = [sum(w_eff[i] * W_Q[h, i, j] for i in range(d_model)) for j in range(d_head)]
            out[n, h] = sum(q[j] * k_bos[h, j] for j in range(d_head)) / math.sqrt(d_head)
    return out


def test_scores_match_oracle_and_planted_neuron_ranks_first():
    m = deactivation_model()
    result = attention_deactivation_scores(m, n_random=2, seed=0, bos_token_id=BOS)
    assert result.scores.shape == (2, 64, 2, 4)
    assert result.random_scores.shape == (2, 2, 64, 2, 4)
    # Only heads in later layers are scored.
    assert torch.isnan(result.scores[:, :, 0]).all() and torch.isnan(result.scores[1]).all()
    assert torch.isnan(result.random_scores[:, 1]).all()
    expected = oracle_scores(m)
    np.testing.assert_allclose(
        result.scores[0, :, 1].double().numpy(), expected, rtol=1e-5, atol=1e-6
    )

    top = result.top(3, head=HEAD)
    assert (top.iloc[0]["layer"], top.iloc[0]["neuron"]) == NEURON
    assert top.iloc[0]["score"] > 10 * abs(top.iloc[1]["score"])
    assert top.iloc[0]["z_score"] > 4  # ~sqrt(d_model - 1) for a perfectly aligned direction
    table = result.to_dataframe()
    assert len(table) == 64 * 4 and table["score"].is_monotonic_decreasing
    assert tuple(table.iloc[0][["layer", "neuron", "head_layer", "head_index"]]) == (*NEURON, *HEAD)


@pytest.mark.parametrize("n_key_value_heads", [None, 2])
def test_score_is_the_bos_logit_change_per_unit_activation(n_key_value_heads):
    """Without LayerNorm the score is exact: adding one unit of activation at one query position
    moves that query's attention logit on BOS by exactly the score (grouped-query too)."""
    m = build_model(
        normalization_type=None, n_ctx=16, dtype=torch.float64, n_key_value_heads=n_key_value_heads
    )
    result = attention_deactivation_scores(m, bos_token_id=BOS)
    toks = tokens(n=1, seq=6)
    name = "blocks.1.attn.hook_attn_scores"
    clean = m.run_with_cache(toks, names_filter=name)[1][name]
    for n in (0, 17):

        def bump(act, hook, n=n):
            act = act.clone()
            act[:, 3, n] += 1.0  # one query position; BOS (position 0) untouched
            return act

        with m.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", bump)]):
            bumped = m.run_with_cache(toks, names_filter=name)[1][name]
        change = (bumped - clean)[0, :, 3, 0]  # every head, query 3, key BOS
        torch.testing.assert_close(change, result.scores[0, n, 1].double(), rtol=1e-5, atol=1e-6)


def test_single_layer_model_has_no_pairs():
    with pytest.raises(NoUnitsError, match="single layer"):
        attention_deactivation_scores(build_model(n_layers=1), bos_token_id=BOS)


def test_random_baseline_is_norm_matched_and_centred():
    m = deactivation_model()
    result = attention_deactivation_scores(m, n_random=8, seed=1, bos_token_id=BOS)
    mean, std = result.baseline()
    assert torch.isnan(mean[0]).all()  # no neuron before layer 0
    # Random directions: zero mean, spread about |g| / sqrt(d_model) per unit norm.
    g = result.bos_query_directions[1].double()
    expected_std = g.norm(dim=-1) / math.sqrt(m.cfg.d_model)
    torch.testing.assert_close(std[1].double(), expected_std, rtol=0.15, atol=0)
    assert (mean[1].abs() < 4 * std[1] / math.sqrt(8 * 64)).all()
    # Scaling with the neuron's norm: the planted neuron's baseline is 30 / |w_other| wider.
    table = result.to_dataframe().set_index(["layer", "neuron", "head_layer", "head_index"])
    planted = table.loc[(*NEURON, *HEAD)]
    assert planted["random_std"] == pytest.approx(30.0 * float(std[HEAD]), rel=1e-5)
    # Reproducible from the seed, different for another seed.
    again = attention_deactivation_scores(m, n_random=8, seed=1, bos_token_id=BOS)
    assert torch.equal(again.random_scores.nan_to_num(), result.random_scores.nan_to_num())
    other = attention_deactivation_scores(m, n_random=8, seed=2, bos_token_id=BOS)
    assert not torch.equal(other.random_scores.nan_to_num(), result.random_scores.nan_to_num())


def test_path_ablation_touches_only_the_query_path():
    m = deactivation_model()
    toks = tokens()
    names = [f"blocks.1.attn.hook_{x}" for x in ("q", "k", "v")]
    with split_qkv_input(m):  # both runs on the same numerical path
        _, clean = m.run_with_cache(toks, names_filter=names)
        with apply(m, RemoveFromQueryInput.from_model(m, NEURON, HEAD)):
            _, ablated = m.run_with_cache(toks, names_filter=names)
    assert torch.equal(ablated["blocks.1.attn.hook_k"], clean["blocks.1.attn.hook_k"])
    assert torch.equal(ablated["blocks.1.attn.hook_v"], clean["blocks.1.attn.hook_v"])
    q_clean, q_ablated = clean["blocks.1.attn.hook_q"], ablated["blocks.1.attn.hook_q"]
    others = [h for h in range(4) if h != HEAD[1]]
    assert torch.equal(q_ablated[:, :, others], q_clean[:, :, others])
    assert not torch.allclose(q_ablated[:, 1:, HEAD[1]], q_clean[:, 1:, HEAD[1]])
    # And against the model without the flag at all: the same keys and values.
    _, plain = m.run_with_cache(toks, names_filter=names)
    torch.testing.assert_close(plain["blocks.1.attn.hook_k"], clean["blocks.1.attn.hook_k"])
    assert not m.cfg.use_split_qkv_input


def oracle_ablated_head(m, toks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(activation, BOS attention, output norm) of HEAD with NEURON removed from its query,
    rebuilt by hand from the clean run: keys and values are the clean ones by construction."""
    _, cache = m.run_with_cache(toks)
    resid = cache["blocks.1.hook_resid_pre"].detach().double().numpy()
    act = cache["blocks.0.mlp.hook_post"][..., NEURON[1]].detach().double().numpy()
    k = cache["blocks.1.attn.hook_k"][:, :, HEAD[1]].detach().double().numpy()
    v = cache["blocks.1.attn.hook_v"][:, :, HEAD[1]].detach().double().numpy()
    w_out = m.W_out[NEURON].detach().double().numpy()
    ln = m.blocks[1].ln1
    ln_w, ln_b, eps = ln.w.detach().double().numpy(), ln.b.detach().double().numpy(), ln.eps
    W_Q = m.W_Q[HEAD].detach().double().numpy()
    b_Q = m.b_Q[HEAD].detach().double().numpy()
    W_O = m.W_O[HEAD].detach().double().numpy()
    d_head = W_Q.shape[1]
    n, seq = toks.shape
    bos_att = np.zeros((n, seq))
    out_norm = np.zeros((n, seq))
    for b in range(n):
        for p in range(seq):
            x = resid[b, p] - act[b, p] * w_out
            x = x - x.mean()
            x = x / math.sqrt((x**2).mean() + eps) * ln_w + ln_b
            q = x @ W_Q + b_Q
            logits = np.array([q @ k[b, j] / math.sqrt(d_head) for j in range(p + 1)])
            pattern = np.exp(logits - logits.max())
            pattern /= pattern.sum()
            bos_att[b, p] = pattern[0]
            z = sum(pattern[j] * v[b, j] for j in range(p + 1))
            out_norm[b, p] = np.linalg.norm(z @ W_O)
    return act, bos_att, out_norm


def test_path_ablation_lowers_bos_attention_where_the_neuron_fires():
    m = deactivation_model()
    toks = tokens()
    result = path_ablation(m, NEURON, HEAD, toks, batch_size=4)  # a partial last batch
    t = result.to_dataframe()
    assert len(t) == 6 * 11 and (t["position"] > 0).all()
    act, bos_att, out_norm = oracle_ablated_head(m, toks)
    np.testing.assert_allclose(t["activation"], act[:, 1:].reshape(-1), atol=1e-10)
    np.testing.assert_allclose(t["bos_attention_ablated"], bos_att[:, 1:].reshape(-1), atol=1e-8)
    np.testing.assert_allclose(t["output_norm_ablated"], out_norm[:, 1:].reshape(-1), atol=1e-8)

    active = t["activation"] > 0
    assert active.sum() > len(t) // 2
    # Lower on (nearly) every token where it fires: a few tokens the head would send to BOS
    # anyway, with a renormalised query, may go slightly up.
    assert (t.loc[active, "bos_attention_change"] < 0).mean() > 0.9
    assert (t.loc[~active, "bos_attention_change"].abs() < 1e-12).all()  # nothing to remove
    summary = result.summary()
    assert summary["mean_bos_attention_change_active"] < -0.1
    corr = result.correlations
    assert corr["bos_attention_change"] < 0
    expected_corr = np.corrcoef(t["activation"], t["bos_attention_change"])[0, 1]
    assert corr["bos_attention_change"] == pytest.approx(expected_corr)
    assert set(corr) == {"bos_attention_change", "output_norm_change"}
    assert not m.cfg.use_split_qkv_input


def test_results_round_trip_plot_and_bad_input(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    m = deactivation_model()
    scores = attention_deactivation_scores(m, bos_token_id=BOS)
    loaded = AttentionDeactivationScores.load(scores.save(tmp_path / "scores"))
    assert torch.equal(loaded.scores.nan_to_num(), scores.scores.nan_to_num())
    assert scores.plot(head=HEAD).axes[0].get_title().endswith("L1H2")
    ablation = path_ablation(m, NEURON, HEAD, tokens(n=2))
    loaded_ablation = PathAblationResult.load(ablation.save(tmp_path / "ablation"))
    assert loaded_ablation.to_dataframe().equals(ablation.to_dataframe())
    assert loaded_ablation.neuron == NEURON and loaded_ablation.head == HEAD
    assert len(ablation.plot().axes) == 2

    with pytest.raises(ValueError, match="later layer"):
        path_ablation(m, (1, 0), (1, 2), tokens(n=1))
    with pytest.raises(IndexError):
        path_ablation(m, (0, 0), (1, 9), tokens(n=1))
    with pytest.raises(ValueError, match="bos_token_id"):
        attention_deactivation_scores(m)  # no tokenizer: the BOS id must be given
    with pytest.raises(ValueError, match="head in a later layer|no earlier neurons"):
        scores.top(head=(0, 1))
    with pytest.raises(NoUnitsError):
        attention_deactivation_scores(build_model(attn_only=True), bos_token_id=BOS)

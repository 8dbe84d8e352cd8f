"""Projections, and interventions that touch what they should and nothing else."""

from __future__ import annotations

import pytest
import torch

from tl_universality.attention_decomposition.intervene import (
    ProjectSignal,
    SignalIntervention,
    intervene_on_signal,
    random_complement,
    subspace_projector,
)
from tl_universality.attention_decomposition.planted import planted_circuit
from tl_universality.attention_decomposition.trace import trace_circuit
from tl_universality.units.hooks import run_with_interventions, split_qkv_input


def test_projectors_are_idempotent_symmetric_and_complementary():
    g = torch.Generator().manual_seed(0)
    D = torch.randn(16, 3, generator=g, dtype=torch.float64)
    P = subspace_projector(D)
    torch.testing.assert_close(P @ P, P)
    torch.testing.assert_close(P, P.T)
    torch.testing.assert_close(P @ D, D)
    assert round(float(torch.trace(P))) == 3
    R = random_complement(P, 3, g, centred=True)
    torch.testing.assert_close(R @ R, R)
    torch.testing.assert_close(R, R.T)
    assert float((R @ P).abs().max()) < 1e-10  # orthogonal to the selected subspace
    assert float((R @ torch.ones(16, dtype=torch.float64)).abs().max()) < 1e-10
    assert round(float(torch.trace(R))) == 3


@pytest.mark.parametrize("side", ["query", "key"])
def test_a_local_intervention_changes_only_the_target_head(biased_model, tokens, side):
    P = subspace_projector(torch.randn(32, 4, dtype=torch.float64)).expand(3, 32, 32)
    change = ProjectSignal(("head", 0, 1), (2, 3), side, "local", "out", torch.tensor([4, 11, 6]),
                           P, W_O=biased_model.W_O[0, 1].detach())  # fmt: skip
    names = [f"blocks.{layer}.attn.hook_attn_scores" for layer in range(3)]
    with split_qkv_input(biased_model):
        _, clean = run_with_interventions(biased_model, tokens, capture=names)
        _, after = run_with_interventions(biased_model, tokens, [change], capture=names)
    for layer in range(3):
        for head in range(4):
            a, b = clean[names[layer]][:, head], after[names[layer]][:, head]
            same = torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
            assert same == ((layer, head) != (2, 3)), (layer, head)


def test_planted_edge_effects_against_the_random_control(tmp_path):
    model, tokens = planted_circuit()
    trace = trace_circuit(model, tokens, ["L1H0"])
    logit_tokens = torch.tensor([[1, 2]] * 4)
    effects = intervene_on_signal(model, tokens, trace, logit_tokens=logit_tokens)
    t = effects.by_edge().set_index(["source", "mode", "projection", "subspace"])
    for mode in ("local", "global"):
        # removing A's signal kills B's score; keeping only it changes nothing
        assert t.loc[("L0H0", mode, "out", "selected"), "mean_score_change"] < -2.0
        assert abs(t.loc[("L0H0", mode, "in", "selected"), "mean_score_change"]) < 0.5
        # a random subspace from the complement: the other way round
        assert abs(t.loc[("L0H0", mode, "out", "random"), "mean_score_change"]) < 0.5
        assert t.loc[("L0H0", mode, "in", "random"), "mean_score_change"] < -2.0
    # the key side (the marker's embedding) behaves the same
    assert t.loc[("embed", "local", "out", "selected"), "mean_score_change"] < -2.0
    table = effects.to_dataframe()
    assert table["logit_diff_change"].notna().all()
    assert len(table) == len(trace.contributions) * 8
    loaded = SignalIntervention.load(effects.save(tmp_path / "effects"))
    assert loaded.summary() == effects.summary()
    assert effects.plot().axes


def test_bad_intervention_inputs():
    model, tokens = planted_circuit()
    trace = trace_circuit(model, tokens, ["L1H0"])
    with pytest.raises(ValueError, match="not edges of the trace"):
        intervene_on_signal(model, tokens, trace, edges=[("L0H1", "L1H0")])
    with pytest.raises(ValueError, match="modes=.*pick from"):
        intervene_on_signal(model, tokens, trace, modes=["everywhere"])
    with pytest.raises(ValueError, match="trace was computed on 4"):
        intervene_on_signal(model, tokens[:2], trace)

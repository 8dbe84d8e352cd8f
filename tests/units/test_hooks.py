"""Interventions as hooks: what each one changes (checked against run_with_cache and hand-made
hooks), and that every analysis leaves the model exactly as it found it, also when it raises."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.attention import attention_deactivation_scores, path_ablation
from tl_universality.analyses.entropy import entropy_intervention, entropy_neuron_scores
from tl_universality.core.errors import HookError
from tl_universality.units.hooks import (
    FixNeuron,
    FreezeLNScale,
    Intervention,
    RemoveFromQueryInput,
    apply,
    run_with_interventions,
    split_qkv_input,
)

BOS = 0


def model(**overrides):
    overrides.setdefault("dtype", torch.float64)
    overrides.setdefault("n_ctx", 16)
    return build_model(**overrides)


def tokens(n: int = 4, seq: int = 10, seed: int = 0) -> torch.Tensor:
    return random_tokens(n, seq, seed, bos=BOS)


def assert_clean(m, split_qkv: bool = False) -> None:
    """No hook left on any hook point, and the config flag as it was."""
    lingering = [name for name, hp in m.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]
    assert lingering == []
    assert bool(m.cfg.use_split_qkv_input) is split_qkv


def test_fix_neuron_sets_every_position_and_nothing_else():
    m, toks = model(), tokens()
    fix = FixNeuron(1, 7, 3.25)
    assert isinstance(fix, Intervention)
    _, clean = m.run_with_cache(toks, names_filter=fix.hook_name)
    with m.hooks(fwd_hooks=fix.fwd_hooks()):
        _, fixed = m.run_with_cache(toks, names_filter=fix.hook_name)
    got, ref = fixed[fix.hook_name], clean[fix.hook_name]
    assert torch.all(got[..., 7] == 3.25)
    others = [i for i in range(64) if i != 7]
    torch.testing.assert_close(got[..., others], ref[..., others], rtol=0, atol=0)
    assert_clean(m)


def test_fix_neuron_works_with_run_with_hooks_and_validates():
    m, toks = model(), tokens()
    hooked = m.run_with_hooks(toks, fwd_hooks=FixNeuron(0, 2, 0.0).fwd_hooks())
    assert hooked.shape == (4, 10, 64)
    with pytest.raises(ValueError):
        FixNeuron(-1, 0, 1.0)
    with pytest.raises(HookError, match="cannot fix neuron 99"):
        run_with_interventions(m, toks, [FixNeuron(0, 99, 1.0)])
    assert_clean(m)


def test_freeze_ln_scale_replaces_the_scale():
    m, toks = model(), tokens()
    logits, cache = m.run_with_cache(toks, names_filter="ln_final.hook_scale")
    scale = cache["ln_final.hook_scale"]
    # Frozen to its own clean value: nothing changes.
    same, _ = run_with_interventions(m, toks, [FreezeLNScale(scale)])
    torch.testing.assert_close(same, logits, rtol=0, atol=1e-12)
    # Twice the scale halves the normalised residual; LN bias and b_U are zero at init, so the
    # logits halve exactly.
    assert not m.ln_final.b.detach().any() and not m.unembed.b_U.detach().any()
    halved, _ = run_with_interventions(m, toks, [FreezeLNScale(2 * scale)])
    torch.testing.assert_close(halved, logits / 2, rtol=1e-10, atol=1e-12)
    with pytest.raises(HookError, match="same batch"):
        run_with_interventions(m, toks[:2], [FreezeLNScale(scale)])
    assert_clean(m)


def test_remove_from_query_input_matches_a_hand_made_hook():
    m, toks = model(), tokens()
    w_out = m.W_out[0, 5].detach().clone()
    ablate = RemoveFromQueryInput.from_model(m, neuron=(0, 5), head=(1, 2))
    assert ablate.hook_name == "blocks.1.hook_q_input"
    torch.testing.assert_close(ablate.w_out, w_out)

    # Oracle: TransformerLens hooks written out by hand, under the same flag.
    _, cache = m.run_with_cache(toks, names_filter="blocks.0.mlp.hook_post")
    act = cache["blocks.0.mlp.hook_post"][..., 5]

    def by_hand(q_input, hook):
        q_input = q_input.clone()
        for b in range(q_input.shape[0]):
            for p in range(q_input.shape[1]):
                q_input[b, p, 2] -= act[b, p] * w_out
        return q_input

    names = ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v"]
    m.set_use_split_qkv_input(True)
    try:
        with m.hooks(fwd_hooks=[("blocks.1.hook_q_input", by_hand)]):
            expected, exp_cache = m.run_with_cache(toks, names_filter=names)
    finally:
        m.set_use_split_qkv_input(False)
    with apply(m, ablate):
        got, got_cache = m.run_with_cache(toks, names_filter=names)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for name in names:
        torch.testing.assert_close(got_cache[name], exp_cache[name], rtol=0, atol=1e-12)
    assert_clean(m)


def test_remove_from_query_input_needs_a_later_head_and_the_split_flag():
    m, toks = model(), tokens()
    with pytest.raises(ValueError, match="later layer"):
        RemoveFromQueryInput(1, 0, 1, 0, torch.zeros(32))
    # Added by hand without the flag, the query-input hook silently never runs: the run helper
    # says so instead.
    with pytest.raises(HookError, match="never fired"):
        run_with_interventions(m, toks, capture=["blocks.1.hook_q_input"])
    assert_clean(m)


def test_split_qkv_input_restores_the_flag_even_on_error():
    m = model()
    with pytest.raises(RuntimeError, match="boom"):
        with split_qkv_input(m):
            assert m.cfg.use_split_qkv_input
            raise RuntimeError("boom")
    assert_clean(m)
    m.set_use_split_qkv_input(True)  # a user's own setting is kept
    with split_qkv_input(m):
        pass
    assert m.cfg.use_split_qkv_input
    m.set_use_split_qkv_input(False)


def test_run_with_interventions_captures_intervened_values():
    m, toks = model(), tokens()
    _, got = run_with_interventions(
        m, toks, [FixNeuron(1, 3, -2.0)], capture=["blocks.1.mlp.hook_post"]
    )
    assert torch.all(got["blocks.1.mlp.hook_post"][..., 3] == -2.0)
    with pytest.raises(HookError, match="never fired"):  # beyond stop_at_layer
        run_with_interventions(m, toks, [FixNeuron(1, 3, 0.0)], stop_at_layer=1)
    assert_clean(m)


def _analyses(m, toks):
    yield lambda: entropy_neuron_scores(m, null_space_dim=2)
    yield lambda: entropy_intervention(m, (1, 3), [0.0, 1.0], toks, n_random_baseline=1)
    yield lambda: attention_deactivation_scores(m, bos_token_id=BOS)
    yield lambda: path_ablation(m, (0, 5), (1, 2), toks)


def test_analyses_leave_the_model_clean_and_keep_user_hooks():
    m, toks = model(), tokens()
    seen = []
    m.add_hook("blocks.0.hook_resid_pre", lambda act, hook: seen.append(hook.name))
    user_handles = list(m.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks)
    for run in _analyses(m, toks):
        run()
        assert m.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks == user_handles
        assert not m.cfg.use_split_qkv_input
        others = [
            n for n, hp in m.hook_dict.items() if hp.fwd_hooks and n != "blocks.0.hook_resid_pre"
        ]
        assert others == []
    assert seen  # the user's hook kept firing during the analyses
    m.hook_dict["blocks.0.hook_resid_pre"].remove_hooks()
    assert_clean(m)


def test_analyses_leave_the_model_clean_when_they_raise(monkeypatch):
    m, toks = model(), tokens()

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    # Fails in the middle of a hooked forward pass (the second one: the neuron is fixed, the
    # logits not yet computed).
    calls = []
    unembed = m.unembed.forward

    def boom_second(*args, **kwargs):
        calls.append(1)
        return boom() if len(calls) == 2 else unembed(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(m.unembed, "forward", boom_second)
        with pytest.raises(RuntimeError, match="boom"):
            entropy_intervention(m, (1, 3), [0.0, 1.0], toks, n_random_baseline=1)
    assert_clean(m)
    # Fails inside the head whose query is ablated, with use_split_qkv_input switched on.
    with monkeypatch.context() as patch:
        patch.setattr(m.blocks[1].attn, "forward", boom)
        with pytest.raises(RuntimeError, match="boom"):
            path_ablation(m, (0, 5), (1, 2), toks)
    assert_clean(m)
    # A hook itself raises (a frozen scale recorded on another batch).
    scale = torch.ones(1, 3, 1, dtype=torch.float64)
    with pytest.raises(HookError):
        run_with_interventions(m, toks, [FixNeuron(1, 3, 1.0), FreezeLNScale(scale)])
    assert_clean(m)
    # And the user's `with apply(...)` block raising.
    with pytest.raises(KeyError):
        with apply(m, RemoveFromQueryInput.from_model(m, (0, 1), (1, 0))):
            raise KeyError("user error")
    assert_clean(m)

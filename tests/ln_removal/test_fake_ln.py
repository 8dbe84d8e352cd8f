"""Fake LayerNorms against the real LayerNorm (torch's layer_norm in float64) and the hooks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import build_model
from tests.ln_removal.builders import EOT, tokens
from tl_universality.ln_removal import fake_layernorms, fake_paths, install_fake_layernorms
from tl_universality.ln_removal.fake_ln import FakeLayerNorm, get_path


def _randomise_ln(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b")) and ("ln" in name):
                p.copy_(
                    torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name.endswith("w") else 0)
                )
    return model


def test_installed_all_real_model_is_unchanged():
    model = _randomise_ln(build_model())
    toks = tokens(4, 12)
    fake = install_fake_layernorms(copy.deepcopy(model))
    assert set(fake_paths(fake).values()) == {False}
    assert torch.equal(fake(toks), model(toks))


def test_fake_with_sigma_equal_to_live_std_is_the_real_layernorm():
    model = _randomise_ln(build_model())
    ln = fake_layernorms(install_fake_layernorms(copy.deepcopy(model)))["ln_final"]
    # Every position with the same std s: live scale sqrt(s² + eps) is one number.
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    x = x - x.mean(-1, keepdim=True)
    x = 2.5 * x / x.std(-1, unbiased=False, keepdim=True) + torch.randn(
        3, 7, 1, dtype=torch.float64
    )
    eps = model.cfg.eps
    sigma = (2.5**2 + eps) ** 0.5
    ln.set_sigma(sigma)
    ln.make_fake()
    oracle = F.layer_norm(x, (32,), ln.w.double(), ln.b.double(), eps)
    torch.testing.assert_close(ln(x.float()).double(), oracle, atol=1e-5, rtol=1e-5)


def test_whole_model_fake_with_live_bos_std_reproduces_logits():
    # One-token sequences: every LayerNorm sees only position 0, whose live std is known.
    model = _randomise_ln(build_model())
    toks = torch.tensor([[0], [0]])
    _, cache = model.run_with_cache(toks)
    fake = install_fake_layernorms(copy.deepcopy(model))
    for name, module in fake_layernorms(fake).items():
        live = float(cache[f"{name}.hook_scale"][0, 0, 0])
        module.set_sigma(123.0, bos=live)  # ordinary σ irrelevant: only BOS positions here
        module.make_fake()
    torch.testing.assert_close(fake(toks), model(toks), atol=1e-5, rtol=1e-5)


def test_only_value_path_fake_leaves_q_and_k_unchanged():
    model = _randomise_ln(build_model())
    toks = tokens(3, 10)
    _, clean = model.run_with_cache(toks)
    fake = install_fake_layernorms(copy.deepcopy(model))
    module, path = get_path(fake, "blocks.0.ln1.v")
    module.set_sigma(3.0)
    module.make_fake(path)
    _, cache = fake.run_with_cache(toks)
    for hook in ("hook_q", "hook_k"):
        assert torch.equal(cache[f"blocks.0.attn.{hook}"], clean[f"blocks.0.attn.{hook}"])
    assert not torch.allclose(cache["blocks.0.attn.hook_v"], clean["blocks.0.attn.hook_v"])
    assert float(cache["blocks.0.ln1.hook_is_fake_v"]) == 1.0
    assert float(cache["blocks.0.ln1.hook_is_fake_qk"]) == 0.0
    # And the other way round: Q/K fake, values unchanged.
    module.make_fake("v", fake=False)
    module.make_fake("qk")
    _, cache = fake.run_with_cache(toks)
    assert torch.equal(cache["blocks.0.attn.hook_v"], clean["blocks.0.attn.hook_v"])
    assert not torch.allclose(cache["blocks.0.attn.hook_q"], clean["blocks.0.attn.hook_q"])


def test_split_qkv_input_still_separates_the_paths():
    model = _randomise_ln(build_model())
    toks = tokens(2, 8)
    _, clean = model.run_with_cache(toks)
    fake = install_fake_layernorms(copy.deepcopy(model))
    fake.set_use_split_qkv_input(True)
    module, _ = get_path(fake, "blocks.0.ln1.v")
    module.set_sigma(3.0)
    module.make_fake("v")
    _, cache = fake.run_with_cache(toks)
    torch.testing.assert_close(cache["blocks.0.attn.hook_q"], clean["blocks.0.attn.hook_q"])
    assert not torch.allclose(cache["blocks.0.attn.hook_v"], clean["blocks.0.attn.hook_v"])


@pytest.mark.parametrize("seq", [5, 9, 32])
def test_bos_and_eot_sigma_apply_per_position_for_any_length(seq):
    fake = install_fake_layernorms(build_model(), eot_token_id=EOT)
    ln = fake_layernorms(fake)["ln_final"]
    ln.set_sigma(2.0, bos=5.0, eot=7.0)
    ln.make_fake()
    toks = torch.full((2, seq), 4)
    toks[:, 0] = 0
    toks[0, 3] = EOT
    toks[1, seq - 1] = EOT
    expected = torch.full((2, seq), 2.0)
    expected[:, 0] = 5.0
    expected[0, 3] = 7.0
    expected[1, seq - 1] = 7.0
    _, cache = fake.run_with_cache(toks)
    assert torch.equal(cache["ln_final.hook_scale"][..., 0], expected)
    assert torch.equal(cache["ln_final.hook_sigma"][..., 0], expected)
    # The output is centred / σ(position) * w + b, computed directly in float64.
    resid = cache[f"blocks.{fake.cfg.n_layers - 1}.hook_resid_post"].double()
    centred = resid - resid.mean(-1, keepdim=True)
    oracle = centred / expected[..., None].double() * ln.w.double() + ln.b.double()
    torch.testing.assert_close(
        cache["ln_final.hook_normalized"].double() * ln.w.double() + ln.b.double(),
        oracle,
        atol=1e-5,
        rtol=1e-5,
    )
    ln.drop_special(eot=True)
    _, cache = fake.run_with_cache(toks)
    expected[expected == 7.0] = 2.0
    assert torch.equal(cache["ln_final.hook_scale"][..., 0], expected)
    ln.drop_special(bos=True)
    _, cache = fake.run_with_cache(toks)
    assert torch.equal(cache["ln_final.hook_scale"][..., 0], torch.full((2, seq), 2.0))


def test_hook_points_are_registered_and_fire():
    fake = install_fake_layernorms(build_model())
    _, cache = fake.run_with_cache(tokens(1, 6))
    for name in (
        "blocks.0.ln1.hook_sigma_qk",
        "blocks.0.ln1.hook_sigma_v",
        "blocks.1.ln2.hook_sigma",
        "ln_final.hook_is_fake",
        "blocks.1.ln2.hook_scale",
    ):
        assert name in fake.hook_dict and name in cache


def test_deepcopy_and_state_dict_keep_the_state():
    fake = install_fake_layernorms(build_model())
    ln = fake_layernorms(fake)["blocks.0.ln2"]
    ln.set_sigma(4.0)
    ln.make_fake()
    clone = copy.deepcopy(fake)
    toks = tokens(2, 8)
    assert torch.equal(clone(toks), fake(toks))
    fresh = install_fake_layernorms(build_model())
    fresh.load_state_dict(fake.state_dict())
    assert fake_paths(fresh) == fake_paths(fake)
    assert torch.equal(fresh(toks), fake(toks))


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="normalization_type=None.*normalization_type='LN'"):
        install_fake_layernorms(build_model(normalization_type=None))
    fake = install_fake_layernorms(build_model())
    with pytest.raises(ValueError, match="already has fake LayerNorms"):
        install_fake_layernorms(fake)
    with pytest.raises(ValueError, match="path='blocks.0.ln3'.*Its paths are"):
        get_path(fake, "blocks.0.ln3")
    ln = fake_layernorms(fake)["blocks.0.ln1"]
    assert isinstance(ln, FakeLayerNorm)
    with pytest.raises(ValueError, match="path='q'.*'qk' or 'v'"):
        ln.make_fake("q")

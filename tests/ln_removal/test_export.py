"""Export: the folded LN-free model computes the all-fake model's logits."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import build_model
from tests.ln_removal.builders import tokens
from tl_universality.ln_removal import (
    export_layernorm,
    export_ln_free,
    fake_layernorms,
    install_fake_layernorms,
)


def _all_fake(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    fake = install_fake_layernorms(copy.deepcopy(model))
    with torch.no_grad():
        for module in fake_layernorms(fake).values():
            module.w.copy_(1 + 0.3 * torch.randn(module.w.shape, generator=gen))
            module.b.copy_(0.3 * torch.randn(module.b.shape, generator=gen))
            for path in module.paths:
                module.set_sigma(float(torch.rand((), generator=gen)) * 3 + 0.5, path)
            module.make_fake()
            module.drop_special(bos=True, eot=True)
    return fake


@pytest.mark.parametrize("overrides", [{}, {"attn_only": True}, {"n_layers": 3, "d_mlp": 16}])
def test_export_reproduces_the_all_fake_logits(overrides):
    fake = _all_fake(build_model(**overrides))
    plain = export_ln_free(fake)
    assert plain.cfg.normalization_type is None
    assert not any("ln" in name for name in plain.state_dict())
    toks = tokens(4, 20)
    with torch.no_grad():
        assert float((plain(toks) - fake(toks)).abs().max()) <= 1e-5


def test_export_refuses_a_model_that_is_not_all_fake():
    fake = _all_fake(build_model())
    fake_layernorms(fake)["blocks.1.ln1"].make_fake("v", fake=False)
    with pytest.raises(ValueError, match=r"real paths \['blocks.1.ln1.v'\].*Fix: finish"):
        export_ln_free(fake)
    fake = _all_fake(build_model())
    fake_layernorms(fake)["ln_final"].bos_special.fill_(True)
    with pytest.raises(ValueError, match="BOS/end-of-text special σ in \\['ln_final'\\]"):
        export_ln_free(fake)
    with pytest.raises(ValueError, match="no fake LayerNorms"):
        export_ln_free(build_model())


def test_export_layernorm_of_an_all_real_model_is_the_model():
    model = build_model()
    fake = install_fake_layernorms(copy.deepcopy(model))
    plain = export_layernorm(fake)
    toks = tokens(2, 10)
    assert plain.cfg.normalization_type == "LN"
    assert torch.equal(plain(toks), model(toks))
    with pytest.raises(ValueError, match="no longer a LayerNorm model"):
        export_layernorm(_all_fake(model))


def test_folded_layernorm_pre_models_are_supported():
    model = build_model(normalization_type="LNPre")
    toks = tokens(2, 10)
    fake = install_fake_layernorms(copy.deepcopy(model))
    assert torch.equal(fake(toks), model(toks))  # weight 1, bias 0: the same model
    fake = _all_fake(model)
    with torch.no_grad():
        assert float((export_ln_free(fake)(toks) - fake(toks)).abs().max()) <= 1e-5

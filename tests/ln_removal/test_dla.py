"""Direct logit attribution: exact on LN-free models, approximate with a final LayerNorm."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import build_model
from tests.ln_removal.builders import tokens
from tl_universality.ln_removal import (
    DirectLogitAttribution,
    direct_logit_attribution,
    export_ln_free,
    fake_layernorms,
    install_fake_layernorms,
)


def ln_free(seed=0):
    fake = install_fake_layernorms(copy.deepcopy(build_model(seed=seed)))
    for module in fake_layernorms(fake).values():
        module.set_sigma(1.3)
        module.make_fake()
        module.drop_special(bos=True, eot=True)
    return export_ln_free(fake)


def test_dla_is_exact_on_an_ln_free_model(tmp_path):
    model = ln_free()
    toks = tokens(4, 12)
    dla = direct_logit_attribution(model, toks, batch_size=3)
    # Oracle: the mean true-token logit from the model itself equals the sum of mean shares.
    with torch.no_grad():
        logits = model(toks).double()
    true = logits[:, :-1].gather(-1, toks[:, 1:, None])[..., 0].mean()
    table = dla.to_dataframe()
    total = table["dla"].sum() + float(model.b_U.detach().double()[toks[:, 1:]].mean())
    assert total == pytest.approx(float(true), abs=1e-4)
    s = dla.summary()
    assert s["exact"] and s["max_sum_error"] < 1e-4 and s["max_ablation_gap"] < 1e-4
    n = model.cfg.n_layers
    assert len(table) == 2 + n * (model.cfg.n_heads + 2)
    assert DirectLogitAttribution.load(dla.save(tmp_path / "dla")).summary() == s
    assert dla.plot().axes


def test_dla_is_only_approximate_with_a_final_layernorm():
    dla = direct_logit_attribution(build_model(), tokens(4, 12))
    s = dla.summary()
    assert not s["exact"]
    assert s["max_sum_error"] < 1e-4  # the shares still add up with the scale frozen ...
    assert s["max_ablation_gap"] > 1e-3  # ... but no share is what its removal changes


def test_dla_bad_tokens():
    with pytest.raises(ValueError, match=r"tokens must be \[batch, pos\] with pos >= 2"):
        direct_logit_attribution(ln_free(), torch.tensor([[0], [0]]))

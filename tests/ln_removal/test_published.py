"""The published LN-free format (LN weights × 1e6/σ, ε = 1e12), offline on a random GPT-2."""

from __future__ import annotations

import pytest
import torch

from tests.ln_removal.builders import tokens
from tl_universality.ln_removal import from_hf_ln_free, load_published_ln_free


def _published_gpt2(seed=0):
    """A random HF GPT-2 exported the published way: every LN weight × 1e6/σ, ε = 1e12."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32, layer_norm_epsilon=1e12
    )
    hf = GPT2LMHeadModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, torch.nn.LayerNorm):
                sigma = float(torch.rand((), generator=gen)) * 2 + 0.5
                module.weight.copy_((1 + 0.2 * torch.randn(32, generator=gen)) * 1e6 / sigma)
                module.bias.copy_(0.1 * torch.randn(32, generator=gen))
    return hf


def test_published_format_round_trips_through_a_saved_folder(tmp_path):
    hf = _published_gpt2()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = load_published_ln_free(str(tmp_path))
    assert model.cfg.normalization_type is None
    toks = tokens(3, 12)
    with torch.no_grad():
        oracle = hf.double()(toks).logits  # the stock HF class running the published weights
        logits = model(toks).double()
    torch.testing.assert_close(logits, oracle, atol=1e-4, rtol=1e-4)


def test_from_hf_refuses_models_that_are_not_in_the_published_format():
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8))
    with pytest.raises(ValueError, match="layer_norm_epsilon=1e-05.*Fix: load an ordinary GPT-2"):
        from_hf_ln_free(hf)

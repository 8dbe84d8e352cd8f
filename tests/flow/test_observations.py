"""VISIT's observations: the LayerNorm filter and always-on neurons, against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import build_model, byte_level_tokenizer, saved
from tl_universality.flow.observations import (
    always_on_neurons,
    filter_masses,
    layernorm_filter,
    word_class_masks,
)

WORDS = ["<|endoftext|>", "Ġthe", "Ġof", "Ġand", "Ġriver", "Ġcat", "Ġbank", "ing", ".", ",", "a"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tokenizer = saved(byte_level_tokenizer(WORDS), tmp_path_factory.mktemp("tok"))
    return build_model(tokenizer=tokenizer).eval()


def stream() -> torch.Tensor:
    tokens = torch.randint(1, len(WORDS), (6, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0
    return tokens


def test_word_classes_follow_the_vocabulary(model):
    function, content = word_class_masks(model)
    assert np.flatnonzero(function).tolist() == [1, 2, 3, 10]  # the, of, and, a
    assert np.flatnonzero(content).tolist() == [4, 5, 6, 7]  # river, cat, bank, ing


def test_filter_masses_match_a_direct_computation(model):
    function, content = word_class_masks(model)
    v = torch.randn(5, model.cfg.d_model) * 3
    table = filter_masses(model, v)
    with torch.no_grad():
        raw = (v @ model.W_U + model.b_U).softmax(-1)
        ln = (model.ln_final(v) @ model.W_U + model.b_U).softmax(-1)
    np.testing.assert_allclose(table["function_raw"], raw[:, function].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(table["function_ln"], ln[:, function].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(table["content_ln"], ln[:, content].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(table["content_delta"], table["content_ln"] - table["content_raw"])


def test_layernorm_filter_averages_over_the_stream(model):
    tokens = stream()
    table = layernorm_filter(model, tokens, batch_size=4, progress=False)
    assert table["layer"].tolist() == [0, 1] and (table["n_tokens"] == 6 * 11).all()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        resid = cache[f"blocks.{layer}.hook_resid_post"][:, 1:].reshape(-1, model.cfg.d_model)
        want = filter_masses(model, resid).mean()
        for column in want.index:
            assert table.loc[layer, column] == pytest.approx(want[column], rel=1e-5, abs=1e-8)


def test_always_on_neurons_find_a_planted_one():
    model = build_model(normalization_type=None, act_fn="relu").eval()
    with torch.no_grad():
        u = torch.randn(model.cfg.d_model)
        u /= u.norm()
        # W_U blind to u and no unembedding bias: u reads as the uniform distribution.
        model.unembed.W_U -= torch.outer(u, u @ model.unembed.W_U)
        model.unembed.b_U.zero_()
        mlp = model.blocks[1].mlp
        mlp.b_in[5] = 100.0  # fires on every token
        mlp.W_out[5] = 3 * u
        mlp.b_in[6] = -100.0  # never fires
    table = always_on_neurons(model, stream(), progress=False, bos_token_id=0).set_index(
        ["layer", "neuron"]
    )
    planted = table.loc[(1, 5)]
    assert planted["act_freq"] == 1.0 and planted["vocab_entropy"] == pytest.approx(1.0)
    assert planted["always_on"] and planted["w_out_norm"] == pytest.approx(3.0)
    assert table.loc[(1, 6), "act_freq"] == 0.0 and not table.loc[(1, 6), "always_on"]
    assert table["act_freq"].between(0, 1).all() and len(table) == 2 * model.cfg.d_mlp

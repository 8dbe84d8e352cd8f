"""The Ω̃ SVD and the per-direction terms against independent oracles (numpy, run_with_cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.attention_decomposition.conftest import randomise_biases
from tests.helpers import build_model
from tl_universality.attention_decomposition.decompose import decompose_attention, select_prefix
from tl_universality.attention_decomposition.svd import attention_svd


def omega_numpy(model, layer, head):
    """Ω̃ built by hand from the block's parameters, LayerNorm affine applied to the input."""
    attn, ln = model.blocks[layer].attn, model.blocks[layer].ln1
    f = lambda t: t.detach().double().numpy()
    W_Q, W_K, b_Q, b_K = f(attn.W_Q[head]), f(attn.W_K[head]), f(attn.b_Q[head]), f(attn.b_K[head])
    w, b = f(ln.w), f(ln.b)
    # (x w + b) W + c = x (w W) + (b W + c); then [[A, A b'], [b A', b b']]
    WQ, WK, bQ, bK = w[:, None] * W_Q, w[:, None] * W_K, b @ W_Q + b_Q, b @ W_K + b_K
    top = np.concatenate([WQ @ WK.T, (WQ @ bK)[:, None]], axis=1)
    bottom = np.concatenate([bQ @ WK.T, [bQ @ bK]])[None]
    return np.concatenate([top, bottom], axis=0)


@pytest.mark.parametrize("normalization", ["LN", "LNPre", None])
def test_svd_reconstructs_omega(normalization):
    model = randomise_biases(build_model(normalization_type=normalization))
    for layer in range(2):
        for head in range(4):
            svd = attention_svd(model, layer, head)
            assert svd.rank == 8 and bool((svd.S[:-1] >= svd.S[1:]).all())
            rebuilt = svd.omega().numpy()
            if normalization == "LN":
                np.testing.assert_allclose(rebuilt, omega_numpy(model, layer, head), atol=1e-10)
            # orthonormal singular vectors
            np.testing.assert_allclose(svd.U.T @ svd.U, np.eye(8), atol=1e-10)
            np.testing.assert_allclose(svd.V.T @ svd.V, np.eye(8), atol=1e-10)


def test_svd_cache_follows_the_weights(biased_model):
    svd = attention_svd(biased_model, 1, 2)
    assert attention_svd(biased_model, 1, 2) is svd
    with torch.no_grad():
        biased_model.blocks[1].attn.b_K[2] += 1.0
    try:
        fresh = attention_svd(biased_model, 1, 2)
        assert fresh is not svd and not torch.allclose(fresh.S, svd.S)
    finally:
        with torch.no_grad():
            biased_model.blocks[1].attn.b_K[2] -= 1.0


@pytest.mark.parametrize("normalization", ["LN", "LNPre", None])
def test_terms_sum_to_hook_attn_scores_everywhere(normalization):
    model = randomise_biases(build_model(n_layers=3, normalization_type=normalization), seed=2)
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    for layer in range(3):
        for head in range(4):
            dec = decompose_attention(model, tokens, layer, head)
            assert len(dec.prompt) == 2 * 10 * 11 // 2  # every src <= dest
            scores = cache[f"blocks.{layer}.attn.hook_attn_scores"][:, head].double()
            expected = scores[dec.prompt, dec.dest, dec.src] * dec.attn_scale
            torch.testing.assert_close(dec.total, expected, atol=1e-4, rtol=1e-4)
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, head].double()
            torch.testing.assert_close(dec.attention, pattern[dec.prompt, dec.dest, dec.src])


def test_per_prompt_positions_and_the_table(biased_model, tokens):
    dec = decompose_attention(biased_model, tokens, 2, 1, dest=[11, 5, 7], src=[3, 5, 0])
    assert dec.dest.tolist() == [11, 5, 7] and dec.src.tolist() == [3, 5, 0]
    table = dec.to_dataframe()
    assert (table["n_selected"] == table["directions"].map(len)).all()
    assert 1 <= dec.summary()["mean_selected"] <= 8


def brute_force_prefix(terms, threshold):
    """The smallest k such that the k terms of largest signed value reach the share."""
    total = sum(terms)
    if total == 0:
        return set()
    s = np.sign(total)
    order = sorted(range(len(terms)), key=lambda i: -s * terms[i])
    for k in range(1, len(terms) + 1):
        if s * sum(terms[i] for i in order[:k]) >= threshold * abs(total) - 1e-9:
            return set(order[:k])
    raise AssertionError("no prefix")


def test_prefix_rule_positive_negative_and_no_strict_prefix():
    rng = np.random.default_rng(0)
    for _ in range(200):
        terms = rng.normal(size=6) * rng.choice([0.1, 1, 10], size=6)
        threshold = float(rng.choice([1.0, 0.7, 0.3]))
        got = set(np.flatnonzero(select_prefix(torch.tensor(terms), threshold).numpy()))
        assert got == brute_force_prefix(list(terms), threshold)
    # negative total: the most negative terms carry it
    assert select_prefix(torch.tensor([1.0, -4.0, -2.0, 0.5])).tolist() == [
        False,
        True,
        True,
        False,
    ]
    # no strict prefix reaches the total: all terms of one sign, so all are needed ...
    assert select_prefix(torch.tensor([0.1, 0.2, 0.3, 0.4])).all()
    assert select_prefix(-torch.tensor([0.1, 0.2, 0.3, 0.4])).all()
    # ... even when rounding leaves the sorted cumulative sum below the unsorted total
    terms = torch.tensor([1e16, 1.0, -1e16, 1.0, 1.0], dtype=torch.float64)
    mask = select_prefix(terms, total=torch.tensor(3.0, dtype=torch.float64))
    assert mask.any()
    # a zero total selects nothing; batches are handled row by row
    assert not select_prefix(torch.tensor([1.0, -1.0])).any()
    batch = select_prefix(torch.tensor([[3.0, 1.0], [-1.0, -3.0]]), 0.7)
    assert batch.tolist() == [[True, False], [False, True]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer=5, head=0), "layer=5 .* 0 <= layer < 3"),
        (dict(layer=0, head=-1), "head=-1"),
        (dict(layer=1, head=0, dest=40), "dest=40 .* positions in"),
        (dict(layer=1, head=0, dest=[1, 2]), "dest has 2 positions for 3 prompts"),
        (dict(layer=1, head=0, dest=2, src=5), "src <= dest"),
        (dict(layer=1, head=0, threshold=1.5), r"threshold=1.5 must be in \(0, 1\]"),
    ],
)
def test_bad_inputs_name_argument_value_and_fix(biased_model, tokens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        decompose_attention(biased_model, tokens, **kwargs)


def test_bad_tokens_and_unsupported_models(biased_model):
    with pytest.raises(ValueError, match="holds id 99.*d_vocab=64"):
        decompose_attention(biased_model, torch.tensor([[0, 99]]), 0, 0)
    with pytest.raises(ValueError, match="integer ids"):
        decompose_attention(biased_model, torch.zeros(1, 3), 0, 0)
    with pytest.raises(ValueError, match="more than .* n_ctx=32"):
        decompose_attention(biased_model, torch.zeros(1, 40, dtype=torch.long), 0, 0)
    rotary = build_model(positional_embedding_type="rotary", rotary_dim=8)
    with pytest.raises(ValueError, match="positional_embedding_type='rotary'.*'standard'"):
        attention_svd(rotary, 0, 0)

"""Vocabulary composition and its moments against direct numpy / scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from tests.helpers import build_model
from tl_universality.analyses.vocab import (
    top_tokens,
    vocab_composition,
    vocab_moments,
    weight_processing_notes,
)
from tl_universality.core.errors import NoUnitsError


@pytest.fixture(scope="module")
def model():
    return build_model(d_vocab=50)


def direct(model, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, logit effects) of every neuron of ``layer`` by brute force in numpy."""
    W_out = model.W_out[layer].detach().double().numpy()
    W_U = model.W_U.detach().double().numpy()
    logits = W_out @ W_U
    cos = np.empty_like(logits)
    for n in range(W_out.shape[0]):
        for v in range(W_U.shape[1]):
            a, b = W_out[n], W_U[:, v]
            cos[n, v] = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return cos, logits


def test_composition_matches_direct(model):
    cos0, logit0 = direct(model, 0)
    cos1, logit1 = direct(model, 1)
    full = vocab_composition(model, dtype=torch.float64).numpy()
    np.testing.assert_allclose(full, np.concatenate([cos0, cos1]), rtol=1e-10, atol=1e-12)
    logits = vocab_composition(model, layers=[1], kind="logit", dtype=torch.float64).numpy()
    np.testing.assert_allclose(logits, logit1, rtol=1e-10, atol=1e-12)
    assert vocab_composition(model, layers=1).dtype == torch.float32
    # layer order follows the request
    swapped = vocab_composition(model, layers=[1, 0], dtype=torch.float64).numpy()
    np.testing.assert_allclose(swapped[:64], cos1, rtol=1e-10, atol=1e-12)


def test_moments_match_scipy(model):
    table = vocab_moments(model)
    assert list(table.columns) == [
        "layer", "neuron", "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt",
    ]  # fmt: skip
    assert len(table) == 2 * 64 and table["layer"].tolist() == [0] * 64 + [1] * 64
    cos = np.concatenate([direct(model, 0)[0], direct(model, 1)[0]])
    np.testing.assert_allclose(table["vocab_mean"], cos.mean(1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(table["vocab_var"], cos.var(1), rtol=1e-10)  # population
    np.testing.assert_allclose(table["vocab_skew"], scipy.stats.skew(cos, axis=1), rtol=1e-8)
    np.testing.assert_allclose(
        table["vocab_kurt"], scipy.stats.kurtosis(cos, axis=1, fisher=False), rtol=1e-8
    )
    logit = vocab_moments(model, layers=0, kind="logit")
    np.testing.assert_allclose(
        logit["vocab_kurt"],
        scipy.stats.kurtosis(direct(model, 0)[1], axis=1, fisher=False),
        rtol=1e-8,
    )


def test_blocks_do_not_change_results(model):
    """Neuron blocks of any size give the same numbers as one block."""
    whole = vocab_moments(model, chunk_size=10_000)
    for size in (1, 7):
        np.testing.assert_allclose(
            vocab_moments(model, chunk_size=size).to_numpy(), whole.to_numpy(), rtol=1e-10
        )
    np.testing.assert_allclose(
        vocab_composition(model, chunk_size=5).numpy(), vocab_composition(model).numpy()
    )


def test_zero_output_weight_gives_undefined_shape_not_nan_everywhere():
    model = build_model(d_vocab=20)
    with torch.no_grad():
        model.blocks[0].mlp.W_out[3] = 0
    table = vocab_moments(model, layers=0)
    row = table.iloc[3]
    assert row["vocab_mean"] == 0 and row["vocab_var"] == 0
    assert np.isnan(row["vocab_skew"]) and np.isnan(row["vocab_kurt"])
    assert table.drop(index=3)[["vocab_skew", "vocab_kurt"]].notna().all().all()


def test_top_tokens_match_argsort(model):
    strings = [f"tok{i}" for i in range(50)]
    top = top_tokens(model, 1, 7, k=3, tokenizer=strings)
    cos = direct(model, 1)[0][7]
    order = np.argsort(cos)
    assert top[top.side == "top"]["token_id"].tolist() == order[::-1][:3].tolist()
    assert top[top.side == "bottom"]["token_id"].tolist() == order[:3].tolist()
    assert top["token"].iloc[0] == f"tok{order[-1]}"
    np.testing.assert_allclose(top["value"].iloc[0], cos[order[-1]], rtol=1e-10)
    logit = top_tokens(model, 1, 7, k=2, kind="logit")  # no tokenizer: ids as text
    assert logit["token"].iloc[0] == str(np.argmax(direct(model, 1)[1][7]))
    with pytest.raises(IndexError):
        top_tokens(model, 1, 64)
    with pytest.raises(IndexError):
        top_tokens(model, 2, 0)


def test_processing_notes():
    model = build_model()
    assert len(weight_processing_notes(model)) == 3  # LN unfolded, W_out and W_U uncentred
    model.process_weights_()
    assert weight_processing_notes(model) == []
    ln_free = build_model(normalization_type=None)
    notes = weight_processing_notes(ln_free)
    assert len(notes) == 1 and "W_U" in notes[0]  # no LayerNorm: only centring W_U matters


def test_attention_only_model_has_no_neurons():
    model = build_model(attn_only=True)
    with pytest.raises(NoUnitsError):
        vocab_moments(model)

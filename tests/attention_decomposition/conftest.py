"""Fixtures: small random models whose biases and LayerNorm weights are all non-zero."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_model


def randomise_biases(model, seed: int = 0, size: float = 0.3):
    """Add noise to every bias and LayerNorm parameter (a fresh model has them at 0 or 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b") or leaf == "w":
                p.add_(size * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def biased_model():
    """3 layers, 4 heads, d_model 32, LN with non-zero weights and biases."""
    return randomise_biases(build_model(n_layers=3))


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))

"""Shared fixtures (the session cache and thread settings live in the root ``conftest.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_family():
    """The ``tiny`` seed family (3 seeds), trained once per session into the session cache."""
    from tl_universality.data.seeds import train_seed_family

    # One thread: the tiny models gain nothing from a second one, and on a busy machine waiting
    # OpenMP threads spin (a training step went from 26 ms to 1 s with two threads).
    return train_seed_family("tiny", progress=False, num_threads=1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The default tokenizer at the tiny preset's size (byte-level BPE, BOS = ``<|endoftext|>``).

    The same vocabulary as ``tiny_family.tokenizer``, without training the family.
    """
    from tl_universality.data.corpus import load_default_tokenizer
    from tl_universality.data.seeds import PRESETS

    return load_default_tokenizer(PRESETS["tiny"].vocab_size)


@pytest.fixture(scope="session")
def random_family():
    """Three small random models (``tests.helpers.build_model``, seeds 0, 1, 2)."""
    from tests.helpers import build_model

    return [build_model(seed=s) for s in (0, 1, 2)]


@pytest.fixture(scope="session")
def random_stream():
    """400 random sequences of 32 tokens (BOS 0 first), seed 1."""
    from tests.helpers import random_tokens

    return random_tokens(400, 32, seed=1)

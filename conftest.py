"""Session-wide test settings, for the tests and the package's doctests alike.

The cache (corpus, tokenizers, seed families, SAEs) goes to a fresh temporary folder for the whole
session, set before anything touches it, so a run never reads or pollutes the user's cache and
behaves the same on a clean CI machine. Set ``TL_UNIVERSALITY_TEST_CACHE`` to a folder to keep that
cache between local runs instead (the tiny family is then trained only once).

Torch runs single-threaded in tests: the test models are tiny, and on a busy two-core machine the
spinning OpenMP threads of a second worker made small steps ~40x slower.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

_KEEP = os.environ.get("TL_UNIVERSALITY_TEST_CACHE")
_SESSION_CACHE = _KEEP or tempfile.mkdtemp(prefix="tl_universality_test_cache_")
# Set at import (collection time), before anything calls cache_root().
os.environ["TL_UNIVERSALITY_CACHE"] = _SESSION_CACHE
# wandb: never prompt, never reach the network from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _KEEP:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``network`` need a model/dataset hub: run them only with
    ``TL_UNIVERSALITY_NETWORK=1`` (CI and this project's machines have no such access)."""
    if os.environ.get("TL_UNIVERSALITY_NETWORK") == "1":
        return
    skip = pytest.mark.skip(reason="needs the network; set TL_UNIVERSALITY_NETWORK=1 to run")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)

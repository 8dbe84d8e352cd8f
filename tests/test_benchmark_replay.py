"""benchmarks/replay.py, the helpers of the screened benchmark: a permuted copy with no noise
computes the same neurons (each unit's twin correlates at 1, checked with numpy), and the replayed
stream yields exactly what ``stream_activations`` yields, also for a sub-stream and a resume."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tl_universality.units import activations as acts_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
replay = pytest.importorskip("replay")


def model(seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_mlp=32, n_heads=2, d_head=8,
                                  d_vocab=50, n_ctx=12, act_fn="gelu_new", seed=seed)  # fmt: skip
    return HookedTransformer(cfg).eval()


def tokens(n: int = 6) -> torch.Tensor:
    t = torch.randint(1, 50, (n, 12), generator=torch.Generator().manual_seed(1))
    t[:, 0] = 0
    return t


def test_permuted_copy_without_noise_has_twins_at_one() -> None:
    base, twin = replay.related_family(model(), 2, noise=0.0)
    a, b = acts_module.collect_activations([base, twin], tokens(), bos_token_id=0, progress=False)
    corr = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[: a.shape[1], a.shape[1] :]
    best = np.nan_to_num(corr, nan=-1).max(1)
    assert np.all(best > 1 - 1e-6)
    # and a noised copy is no longer identical
    _, noisy = replay.related_family(model(), 2, noise=0.3)
    c = acts_module.collect_activations([noisy], tokens(), bos_token_id=0, progress=False)[0]
    assert not torch.allclose(torch.sort(c, 1).values, torch.sort(a, 1).values, atol=1e-3)


def test_replay_equals_the_stream() -> None:
    models = [model(0), model(1)]
    toks = tokens()
    real = list(acts_module.stream_activations(models, toks, batch_size=4, bos_token_id=0,
                                               progress=False))  # fmt: skip
    from tl_universality.analyses.correlation import engine

    restore = replay.replay_activations(models, toks, 4, "cpu", 0)
    try:
        assert engine.stream_activations is acts_module.stream_activations  # patched there too
        check_replay(models, toks, real)
    finally:
        restore()
    assert engine.stream_activations is real_stream


real_stream = acts_module.stream_activations


def check_replay(models, toks, real) -> None:
    again = list(acts_module.stream_activations(models, toks, batch_size=4, progress=False))
    assert len(again) == len(real)
    for x, y in zip(real, again, strict=True):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.keep, y.keep)
        assert all(torch.equal(p, q) for p, q in zip(x.acts, y.acts, strict=True))
    # one model, resumed inside the first batch
    part = list(acts_module.stream_activations([models[1]], toks, batch_size=4, start_sequence=2))
    assert torch.equal(
        torch.cat([b.acts[0] for b in part]), torch.cat([b.acts[1] for b in real])[22:]
    )

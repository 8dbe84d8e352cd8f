"""Trust in correlate (issue 12): float64 models computed in float64, mixed-dtype families, and
checkpoints that refuse other data (changed tail tokens, swapped embedding rows, changed settings)
at the first difference. Oracles: numpy float64 corrcoef on run_with_cache activations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.correlation import CorrelationConfig, correlate
from tl_universality.core.errors import CheckpointMismatchError, InvalidArgumentError

BOS = 0
QUIET = dict(bos_token_id=BOS, progress=False)


def cached_acts(model, toks: torch.Tensor) -> np.ndarray:
    """``[tokens, layers * d_mlp]`` of mlp.hook_post from run_with_cache, BOS positions out."""
    _, cache = model.run_with_cache(toks)
    keep = (toks != BOS).numpy()
    layers = [cache[f"blocks.{i}.mlp.hook_post"] for i in range(model.cfg.n_layers)]
    return torch.cat(layers, -1).detach().double().numpy()[keep]


def oracle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        full = np.corrcoef(np.concatenate([x, y], 1).T)
    return full[: x.shape[1], x.shape[1] :]


def test_float64_models_with_float64_products_match_the_oracle_to_1e12():
    a, b = (build_model(seed=s, dtype=torch.float64) for s in (0, 1))
    toks = random_tokens(12, 16, seed=1)
    result = correlate(a, b, toks, keep_matrix=torch.float64, product_dtype=torch.float64, **QUIET)
    ref = oracle(cached_acts(a, toks), cached_acts(b, toks))
    assert np.nanmax(np.abs(result.matrix(0).numpy() - ref)) <= 1e-12


def test_units_below_float32_resolution_are_not_reported_dead_in_float64_models():
    a, b = (build_model(seed=s, dtype=torch.float64, act_fn="relu") for s in (0, 1))
    with torch.no_grad():  # neuron 0 of layer 0: a huge bias, a tiny input weight
        a.blocks[0].mlp.b_in[0] = 1e3
        a.blocks[0].mlp.W_in[:, 0] *= 1e-9
    toks = random_tokens(8, 16, seed=2)
    x = cached_acts(a, toks)
    assert np.float32(x[:, 0]).std() == 0 and x[:, 0].std() > 0  # constant in float32 only
    result = correlate(a, b, toks, keep_matrix=torch.float64, product_dtype=torch.float64, **QUIET)
    assert not bool(result.dead[0])
    ref = oracle(x, cached_acts(b, toks))
    # its spread is 1e-9 of its mean: float64 itself resolves it to ~1e-4, hence 1e-6 here
    assert np.nanmax(np.abs(result.matrix(0).numpy()[0] - ref[0])) <= 1e-6


def test_mixed_dtype_families_work():
    a = build_model(seed=0)
    b = build_model(seed=1, dtype=torch.float64)
    toks = random_tokens(12, 16, seed=3)
    result = correlate(a, b, toks, keep_matrix=torch.float64, **QUIET)
    ref = oracle(cached_acts(a, toks), cached_acts(b, toks))
    assert np.nanmax(np.abs(result.matrix(0).numpy() - ref)) <= 1e-6


@pytest.fixture
def pair():
    return [build_model(seed=s) for s in (0, 1)]


def _interrupted(models, toks, folder, **kw):
    class Stop(RuntimeError):
        pass

    def stop_after_checkpoint(info):
        if info.checkpointed:
            raise Stop

    with pytest.raises(Stop):
        correlate(
            models[0], models[1:], toks, checkpoint_dir=folder, checkpoint_every=1,
            callback=stop_after_checkpoint, **kw,
        )  # fmt: skip


def test_resume_refuses_tokens_changed_after_the_first_rows(pair, tmp_path):
    toks = random_tokens(24, 16, seed=4)
    kw = dict(batch_size=12, n_draws=1, **QUIET)
    _interrupted(pair, toks, tmp_path / "ckpt", **kw)  # one batch of 12 sequences consumed
    changed = toks.clone()
    changed[10:, 5] = (changed[10:, 5] % 60) + 1  # rows 10 on: inside the consumed batch
    with pytest.raises(CheckpointMismatchError, match="sequences 0-11"):
        correlate(pair[0], pair[1:], changed, checkpoint_dir=tmp_path / "ckpt", **kw)
    # The same tokens resume.
    resumed = correlate(pair[0], pair[1:], toks, checkpoint_dir=tmp_path / "ckpt", **kw)
    clean = correlate(pair[0], pair[1:], toks, **kw)
    assert torch.equal(resumed.argmax, clean.argmax)


def test_resume_refuses_swapped_embedding_rows(pair, tmp_path):
    toks = random_tokens(24, 16, seed=5)
    kw = dict(batch_size=12, n_draws=1, **QUIET)
    _interrupted(pair, toks, tmp_path / "ckpt", **kw)
    other = build_model(seed=1)
    with torch.no_grad():  # same sums and norms per tensor: only a byte hash tells
        other.embed.W_E[[3, 7]] = other.embed.W_E[[7, 3]]
    with pytest.raises(CheckpointMismatchError, match=r"weights of model 1"):
        correlate(pair[0], [other], toks, checkpoint_dir=tmp_path / "ckpt", **kw)


def test_settings_object_is_the_recorded_config_and_conflicts_are_errors(pair):
    toks = random_tokens(8, 16, seed=6)
    config = CorrelationConfig(n_draws=2, top_k=3, batch_size=4)
    result = correlate(pair[0], pair[1], toks, config=config, **QUIET)
    assert result.top_corr.shape[-1] == 3
    recorded = {k: result.config[k] for k in ("n_draws", "top_k", "batch_size", "baseline")}
    assert recorded == {"n_draws": 2, "top_k": 3, "batch_size": 4, "baseline": "rotation"}
    same = correlate(pair[0], pair[1], toks, n_draws=2, top_k=3, batch_size=4, **QUIET)
    assert torch.equal(same.max_corr, result.max_corr)
    with pytest.raises(InvalidArgumentError, match="top_k"):
        correlate(pair[0], pair[1], toks, config=config, top_k=5, **QUIET)
    with pytest.raises(InvalidArgumentError, match="memory_budget"):
        correlate(pair[0], pair[1], toks, memory_budget=float("nan"), **QUIET)
    with pytest.raises(InvalidArgumentError, match="checkpoint_dir"):
        file = pytest.importorskip("pathlib").Path(__file__)
        correlate(pair[0], pair[1], toks, checkpoint_dir=file, **QUIET)

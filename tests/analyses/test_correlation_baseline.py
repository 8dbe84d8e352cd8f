"""The mixing baselines of tiled, multi-pass runs: what each (model, layer, draw) costs, and that
the numbers equal an untiled run and numpy on explicitly rotated activations."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch

import tl_universality.analyses.correlation.rows as rows_module
import tl_universality.analyses.correlation.run as run_module
from tests.helpers import build_model, random_tokens
from tl_universality.analyses.correlation import correlate, plan_correlation
from tl_universality.analyses.correlation.run import CorrelationRun
from tl_universality.stats.baselines import mixing_matrix
from tl_universality.units.activations import collect_activations

BOS = 0
QUIET = dict(bos_token_id=BOS, progress=False)
D_MLP = 64
MATRIX_BYTES = 8 * D_MLP * D_MLP


@pytest.fixture(scope="module")
def family():
    return [build_model(seed=s) for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def toks():
    return random_tokens(8, 32, 0, bos=BOS)


def mixed_layer_passes(plan, all_pairs: bool) -> dict[tuple[int, int], set[int]]:
    """(model, layer) -> the passes whose tiles hold that layer on a mixed side."""
    out: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
    for p, tiles in enumerate(plan.passes):
        for t in tiles:
            tile = plan.tiles[t]
            for m, h0, h1 in tile.b_parts:
                for h in range(h0, h1):
                    out[(m, h)].add(p)
            if all_pairs:  # the reverse direction mixes the reference's layers
                for h in range(*tile.a_hooks):
                    out[(tile.reference, h)].add(p)
    return out


@pytest.fixture
def counted(monkeypatch):
    """Counts, per (model, layer, draw), the mixing matrices made and the d x d x d products
    that give the variances of the mixed units (also those done inside mixed_correlation)."""
    made: collections.Counter = collections.Counter()
    variances: collections.Counter = collections.Counter()
    key_of: dict[int, tuple[int, ...]] = {}
    make, correlation = run_module.mixing_matrix, run_module.mixed_correlation

    def counting_mixing_matrix(kind, d, *, seed=0, key=(), device=None):
        made[tuple(key)] += 1
        mix = make(kind, d, seed=seed, key=key, device=device)
        key_of[mix.data_ptr()] = tuple(key)
        return mix

    def counting_correlation(cov_xy, var_x, cov_yy, mix, **kw):
        if kw.get("var_z") is None:  # it computes the variances itself
            variances[key_of[mix.data_ptr()]] += 1
        return correlation(cov_xy, var_x, cov_yy, mix, **kw)

    monkeypatch.setattr(run_module, "mixing_matrix", counting_mixing_matrix)
    monkeypatch.setattr(run_module, "mixed_correlation", counting_correlation)
    if hasattr(run_module, "mixed_variance"):
        variance = run_module.mixed_variance

        def counting_variance(cov_yy, mix):
            variances[key_of[mix.data_ptr()]] += 1
            return variance(cov_yy, mix)

        monkeypatch.setattr(run_module, "mixed_variance", counting_variance)
    # Row chunks of 16 rows: many chunks per tile, as at scale.
    monkeypatch.setattr(rows_module, "FINAL_CHUNK", 16 * D_MLP)
    return made, variances


@pytest.mark.parametrize(
    ("k", "all_pairs", "budget"), [(2, False, "700KB"), (3, True, "1050KB")], ids=["k2", "k3"]
)
def test_tiled_run_computes_each_mixed_variance_once(family, toks, counted, k, all_pairs, budget):
    made, variances = counted
    kw = dict(all_pairs=all_pairs, n_draws=2, batch_size=8, memory_budget=budget)
    plan = plan_correlation(family[0], family[1:k], seq_len=32, **kw)
    layers = mixed_layer_passes(plan, all_pairs)
    assert plan.n_passes >= 4 and max(map(len, layers.values())) >= 2
    correlate(family[0], family[1:k], toks, **kw, **QUIET)
    expected = {(m, h, draw) for m, h in layers for draw in range(2)}
    assert set(variances) == expected
    assert set(variances.values()) == {1}  # whatever the tiles, passes and row chunks
    assert set(made) == expected


@pytest.mark.parametrize(
    ("k", "all_pairs", "budget"), [(2, False, "675KB"), (3, True, "1550KB")], ids=["k2", "k3"]
)
def test_mixing_matrices_are_made_once_when_the_budget_leaves_room(
    family, toks, counted, monkeypatch, k, all_pairs, budget
):
    made, _ = counted
    kw = dict(all_pairs=all_pairs, n_draws=1, batch_size=8, memory_budget=budget)
    plan = plan_correlation(family[0], family[1:k], seq_len=32, **kw)
    layers = mixed_layer_passes(plan, all_pairs)
    room = plan.budget - plan.peak_bytes
    # Layers mixed in several passes, and room next to the peak for the matrices that must be
    # kept across each pass boundary (a layer mixed both before and after it).
    across = [
        sum(min(passes) <= b < max(passes) for passes in layers.values())
        for b in range(plan.n_passes - 1)
    ]
    assert max(across) >= 1 and room >= max(across) * MATRIX_BYTES

    kept = []
    keep = CorrelationRun._keep_mixing

    def recording_keep(self, key, mix):
        out = keep(self, key, mix)
        kept.append(sum(m.numel() * m.element_size() for m, _ in self._mix_cache.values()))
        return out

    monkeypatch.setattr(CorrelationRun, "_keep_mixing", recording_keep)
    correlate(family[0], family[1:k], toks, **kw, **QUIET)
    assert made == {(m, h, 0): 1 for m, h in layers}
    assert 0 < max(kept) <= room  # kept between passes, inside the budget


def oracle_baseline(acts, r: int, c: int, n_draws: int, seed: int) -> np.ndarray:
    """[draws, units of r]: max correlation of r's units with c's layers rotated as correlate
    keys them, (model, layer, draw), by numpy in float64 on the cached activations."""
    x = acts[r].double().numpy()
    out = []
    for draw in range(n_draws):
        z = [
            acts[c][:, h * D_MLP : (h + 1) * D_MLP].double().numpy()
            @ mixing_matrix("rotation", D_MLP, seed=seed, key=(c, h, draw)).numpy().T
            for h in range(2)
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            full = np.corrcoef(np.concatenate([x, *z], 1).T)[: x.shape[1], x.shape[1] :]
        out.append(np.nanmax(full, 1))
    return np.stack(out)


def test_tiled_baseline_without_room_equals_untiled_and_numpy(family, toks, counted):
    made, variances = counted
    kw = dict(all_pairs=True, n_draws=2, seed=3, batch_size=8, product_dtype=torch.float64, **QUIET)
    plan = plan_correlation(
        family[0], family[1:], all_pairs=True, n_draws=2, batch_size=8, seq_len=32,
        product_dtype=torch.float64, memory_budget="1075KB",
    )  # fmt: skip
    layers = mixed_layer_passes(plan, all_pairs=True)
    # No room to keep a matrix between passes: each is made again, but only in the passes that
    # mix its layer, and its variances are still computed once.
    assert plan.budget - plan.peak_bytes < MATRIX_BYTES and plan.n_passes == 12
    assert max(map(len, layers.values())) >= 3
    tiled = correlate(family[0], family[1:], toks, memory_budget="1075KB", **kw)
    assert made == {(m, h, d): len(p) for (m, h), p in layers.items() for d in range(2)}
    assert set(variances.values()) == {1}
    whole = correlate(family[0], family[1:], toks, **kw)
    acts = collect_activations(family, toks, batch_size=8, **QUIET)
    for r, (a, b) in enumerate(zip(tiled, whole, strict=True)):
        others = [c for c in range(3) if c != r]
        for i, c in enumerate(others):
            oracle = oracle_baseline(acts, r, c, n_draws=2, seed=3)
            np.testing.assert_allclose(a.baseline_draws[i].numpy(), oracle, atol=1e-10, rtol=0)
            np.testing.assert_allclose(b.baseline_draws[i].numpy(), oracle, atol=1e-10, rtol=0)

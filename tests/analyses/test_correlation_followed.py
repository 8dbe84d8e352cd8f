"""correlate(..., candidates=K, baseline_candidates=B): the baseline followed over every token,
against numpy on explicitly rotated activations; and the exact noise baseline of a screened run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.analyses.test_correlation_baseline import oracle_baseline
from tl_universality.analyses.correlation import CorrelationResult, correlate
from tl_universality.core.errors import InvalidArgumentError
from tl_universality.units.activations import collect_activations

KW = dict(bos_token_id=0, progress=False, batch_size=8, product_dtype="float64")
SCREEN = dict(candidates=6, screen_tokens=3100)
N_UNITS = 128  # 2 layers x 64 neurons


def screened(models, stream, **extra) -> CorrelationResult:
    """The screened run of these tests (2 draws unless ``extra`` says otherwise)."""
    return correlate(models[0], models[1:], stream, **{"n_draws": 2, **SCREEN, **KW, **extra})


@pytest.fixture(scope="module")
def oracle(random_family, random_stream) -> np.ndarray:
    """[models, draws, units]: the baseline over every token (2 draws, seed 0), by numpy."""
    acts = collect_activations(
        random_family, random_stream, batch_size=8, bos_token_id=0, progress=False
    )
    return np.stack([oracle_baseline(acts, 0, c, n_draws=2, seed=0) for c in (1, 2)])


def test_following_every_mixed_unit_gives_the_exhaustive_baseline(
    random_family, random_stream, oracle
):
    """B = every mixed unit: nothing is left to rival the followed ones, so every draw is
    certified and equals numpy; the universal set then equals the exhaustive run's where the
    screening tokens' baseline moves it."""
    got = screened(random_family, random_stream, baseline_candidates=N_UNITS)
    live = ~got.dead
    assert got.baseline_certified[:, live].all()
    np.testing.assert_allclose(got.baseline_draws.numpy(), oracle, atol=1e-9, rtol=0)
    exhaustive = correlate(random_family[0], random_family[1:], random_stream, n_draws=2, **KW)
    unfollowed = screened(random_family, random_stream)
    assert unfollowed.baseline_certified is None
    # a threshold at the median excess: the screening baseline (higher) moves units across it;
    # compared where the max-correlations are certified (the rest differ for that reason)
    threshold = float(exhaustive.excess_correlation.nanmedian())
    cert = got.certified.all(0) & unfollowed.certified.all(0)
    want = exhaustive.is_universal(threshold)[cert]
    assert not torch.equal(unfollowed.is_universal(threshold)[cert], want)
    assert torch.equal(got.is_universal(threshold)[cert], want)


def test_followed_values_are_lower_bounds_and_certified_ones_exact(
    random_family, random_stream, oracle
):
    got = screened(random_family, random_stream, baseline_candidates=8)
    diff = got.baseline_draws.numpy() - oracle
    assert np.nanmax(diff) < 1e-12  # the best followed unit: never above the best of all
    held = got.baseline_certified.numpy()  # [models, units], for every draw
    assert 0 < held.mean() < 1, "the test needs certified and uncertified units"
    assert np.abs(diff.transpose(0, 2, 1)[held]).max() < 1e-9
    # following 8 of 128 already lands closer to the whole stream than the screening tokens
    unfollowed = screened(random_family, random_stream)
    assert np.nanmean(np.abs(diff)) < 0.5 * np.nanmean(
        np.abs(unfollowed.baseline_draws.numpy() - oracle)
    )


def test_bounds_hold_and_certified_universal_decisions_are_the_exhaustive_ones(
    random_family, random_stream, oracle, tmp_path
):
    """max_corr and the followed baseline are lower bounds, their ceilings upper bounds, of the
    exhaustive values (numpy for the baseline); every decision universal_certified calls
    certified is the exhaustive run's, at thresholds across the excess correlations."""
    got = screened(random_family, random_stream, baseline_candidates=8)
    exhaustive = correlate(random_family[0], random_family[1:], random_stream, n_draws=2, **KW)
    live = ~exhaustive.max_corr.isnan()
    assert (got.max_corr[live] <= exhaustive.max_corr[live] + 1e-12).all()
    assert (got.max_corr_ceiling[live] >= exhaustive.max_corr[live] - 1e-12).all()
    uncertified = live & ~got.certified
    assert (
        uncertified.any() and (got.max_corr_ceiling[uncertified] > got.max_corr[uncertified]).all()
    )
    ceiling = got.baseline_ceiling.numpy()
    assert (
        np.nanmin(ceiling - oracle) > -1e-12
        and np.nanmax(got.baseline_draws.numpy() - oracle) < 1e-12
    )
    excess = exhaustive.excess_correlation
    decided_share = []
    for threshold in excess.nanquantile(torch.tensor([0.1, 0.5, 0.9], dtype=excess.dtype)):
        decided = got.universal_certified(float(threshold))
        want = exhaustive.is_universal(float(threshold))
        assert torch.equal(got.is_universal(float(threshold))[decided], want[decided])
        decided_share.append(float(decided[~got.dead].float().mean()))
    assert 0.0 < min(decided_share) and max(decided_share) < 1.0  # some of each, at each
    got.save(tmp_path / "r")  # the bounds round-trip, and the summary counts the decisions
    back = CorrelationResult.load(tmp_path / "r")
    assert torch.equal(back.max_corr_ceiling, got.max_corr_ceiling)
    assert torch.equal(back.baseline_ceiling, got.baseline_ceiling)
    share = float(got.universal_certified()[~got.dead].float().mean())
    assert back.summary()["universal_certified_share"] == pytest.approx(share)
    # the screening tokens' baseline has no bound: its decisions are not certified
    assert screened(random_family, random_stream).universal_certified() is None
    assert exhaustive.universal_certified() is None


def test_universal_certified_by_hand() -> None:
    """Two models, four units, two draws: each unit's excess interval worked out by hand."""
    from tl_universality.units.activations import UnitIndex

    units = UnitIndex(("blocks.0.mlp.hook_post",), (4,), (0,))
    nan = float("nan")

    def t(*rows: float) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.float64)

    # per unit: max_corr and its ceiling (the same for both models), baseline draws and ceilings
    max_corr, ceiling = t(0.9, 0.6, 0.72, nan), t(0.95, 0.62, 0.82, nan)
    base = torch.stack([t(0.1, 0.1, 0.1, nan), t(0.3, 0.3, 0.3, nan)])  # draw means 0.2
    base_top = torch.stack([t(0.2, 0.15, 0.2, nan), t(0.4, 0.35, 0.4, nan)])  # 0.3, 0.25, 0.3
    zeros = dict(dtype=torch.long)
    result = CorrelationResult(
        units=units, other_units=(units, units), names=("a", "b", "c"), n_tokens=100,
        max_corr=torch.stack([max_corr, max_corr]), argmax=torch.zeros(2, 4, **zeros),
        min_corr=torch.zeros(2, 4, dtype=torch.float64), argmin=torch.zeros(2, 4, **zeros),
        top_corr=torch.zeros(2, 4, 1, dtype=torch.float64), top_index=torch.zeros(2, 4, 1, **zeros),
        baseline_draws=torch.stack([base, base]), dead=torch.tensor([False, False, False, True]),
        other_dead=(torch.zeros(4, dtype=torch.bool),) * 2,
        max_corr_ceiling=torch.stack([ceiling, ceiling]),
        baseline_ceiling=torch.stack([base_top, base_top]),
    )  # fmt: skip
    # excess in [0.9 - 0.3, 0.95 - 0.2] = [0.6, 0.75]: universal, certified;
    # [0.6 - 0.25, 0.62 - 0.2] = [0.35, 0.42]: not universal, certified;
    # [0.72 - 0.3, 0.82 - 0.2] = [0.42, 0.62]: straddles 0.5, not certified; the dead unit: neither
    assert result.universal_certified().tolist() == [True, True, False, False]
    assert result.is_universal().tolist() == [True, False, True, False]
    assert result.universal_certified(0.38).tolist() == [True, False, True, False]


def test_float32_products_follow_within_1e_6(random_family, random_stream, oracle):
    got = screened(random_family, random_stream, baseline_candidates=N_UNITS, product_dtype=None)
    live = ~got.dead
    assert got.baseline_certified[:, live].all()
    np.testing.assert_allclose(got.baseline_draws.numpy(), oracle, atol=1e-6, rtol=0)


def test_killed_followed_run_resumes_and_round_trips(random_family, random_stream, tmp_path):
    class Killed(Exception):
        pass

    calls = []

    def kill(progress):
        calls.append(progress)
        if progress.pass_index == 1 and sum(p.pass_index == 1 for p in calls) == 4:
            raise Killed

    args = dict(n_draws=1, baseline_candidates=5, **SCREEN, **KW)
    want = correlate(random_family[0], random_family[1:], random_stream, **args)
    ckpt = dict(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=256)
    with pytest.raises(Killed):
        correlate(random_family[0], random_family[1:], random_stream, callback=kill, **ckpt, **args)
    got = correlate(random_family[0], random_family[1:], random_stream, **ckpt, **args)
    for name in ("baseline_draws", "max_corr", "max_corr_se"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g - w).nan_to_num(0).abs().max() < 1e-12, name
    assert torch.equal(got.baseline_certified, want.baseline_certified)
    got.save(tmp_path / "r")
    back = CorrelationResult.load(tmp_path / "r")
    assert torch.equal(back.baseline_certified, want.baseline_certified)
    share = back.summary()["baseline_certified_share"]
    live = ~want.dead
    assert share == pytest.approx(float(want.baseline_certified.all(0)[live].float().mean()))


def test_stage_2_takes_the_mixing_rows_of_stage_1(random_family, random_stream, monkeypatch):
    """The followed mixed units reuse the screening stage's matrices (a QR of d x d each) instead
    of making them again (the values are checked against numpy above)."""
    import tl_universality.analyses.correlation.followed as followed
    from tl_universality.stats.baselines import mixing_matrix

    made = []

    def counted(*args, **kwargs):
        made.append(kwargs["key"])
        return mixing_matrix(*args, **kwargs)

    monkeypatch.setattr(followed, "mixing_matrix", counted)
    got = screened(random_family, random_stream, baseline_candidates=4, n_draws=1)
    assert got.baseline_certified is not None and made == []
    # without the screening stage's matrices (a resumed stage 2) they are made by key
    followed.MixedUnits(torch.tensor([0, 70]), (0, 64, 128), "rotation", 0, model=1, draw=0)
    assert made == [(1, 0, 0), (1, 1, 0)]


def test_all_pairs_follow_every_direction(random_family, random_stream) -> None:
    """With all_pairs every model is a reference: each direction's followed baseline (every mixed
    unit followed) equals the exhaustive all-pairs run's, which is checked against numpy above."""
    kw = dict(n_draws=1, all_pairs=True, **KW)
    want = correlate(random_family[0], random_family[1:], random_stream, **kw)
    got = correlate(
        random_family[0], random_family[1:], random_stream, baseline_candidates=N_UNITS,
        **SCREEN, **kw,
    )  # fmt: skip
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert g.names == w.names
        assert g.baseline_certified[:, ~g.dead].all()
        np.testing.assert_allclose(
            g.baseline_draws.numpy(), w.baseline_draws.numpy(), atol=1e-9, rtol=0
        )


def test_screened_noise_baseline_is_the_exhaustive_one(random_family, random_stream) -> None:
    """The gaussian_noise baseline depends on the token count only: a screened run gives it for
    every token it read, not for the screening tokens."""
    kw = dict(baseline="gaussian_noise", n_draws=3, **KW)
    exhaustive = correlate(random_family[0], random_family[1:], random_stream, **kw)
    sc = correlate(random_family[0], random_family[1:], random_stream, **SCREEN, **kw)
    assert sc.n_tokens == exhaustive.n_tokens
    d = (sc.baseline_draws - exhaustive.baseline_draws).nan_to_num(0).abs().max()
    assert d < 1e-15


def test_bad_follow_settings_are_refused(random_family, random_stream) -> None:
    with pytest.raises(InvalidArgumentError, match="only applies to the screened mode"):
        correlate(random_family[0], random_family[1], random_stream, baseline_candidates=4, **KW)
    with pytest.raises(InvalidArgumentError, match="baseline='gaussian_noise'"):
        correlate(
            random_family[0], random_family[1], random_stream, baseline="gaussian_noise",
            baseline_candidates=4, **SCREEN, **KW,
        )  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="baseline_candidates=0"):
        correlate(
            random_family[0], random_family[1], random_stream, baseline_candidates=0, **SCREEN, **KW
        )

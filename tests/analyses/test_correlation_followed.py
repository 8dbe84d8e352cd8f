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

"""correlate(..., candidates=K): the screened exact mode against the exhaustive run and planted
structure."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import noisy_permuted_pair, permuted_copy, random_tokens
from tl_universality.analyses.correlation import CorrelationResult, correlate
from tl_universality.core.errors import CheckpointMismatchError, InvalidArgumentError

KW = dict(bos_token_id=0, progress=False, n_draws=1, batch_size=8, product_dtype="float64")


@pytest.fixture(scope="module")
def family(random_family):
    return random_family


@pytest.fixture(scope="module")
def tokens(random_stream):
    return random_stream


@pytest.fixture(scope="module")
def exhaustive(family, tokens) -> CorrelationResult:
    return correlate(family[0], family[1:], tokens, keep_matrix=torch.float64, **KW)


@pytest.fixture(scope="module")
def screened(family, tokens) -> CorrelationResult:
    return correlate(family[0], family[1:], tokens, candidates=6, screen_tokens=3100, **KW)


def test_permuted_copy_is_recovered_and_every_unit_certified(family, tokens) -> None:
    ref = family[0]
    other, perms = permuted_copy(ref)
    result = correlate(ref, [other, family[1]], tokens, candidates=4, screen_tokens=600, **KW)
    d = ref.cfg.d_mlp
    # reference neuron p[j] of layer l sits at position j of the copy: argmax maps back
    want = torch.cat([layer * d + p.argsort() for layer, p in enumerate(perms)])
    live = ~result.dead
    assert torch.equal(result.argmax[0][live], want[live])
    assert (result.max_corr[0][live] > 1 - 1e-9).all()
    assert result.certified[0][live].all()
    assert result.max_corr_se[0][live].max() < 1e-6  # identical units: no sampling error


def test_certified_units_equal_exhaustive(screened, exhaustive) -> None:
    cert = screened.certified
    assert screened.n_tokens == exhaustive.n_tokens
    assert cert.float().mean() > 0.2, "the test needs certified units to say anything"
    diff = (screened.max_corr - exhaustive.max_corr).abs()
    assert diff[cert].max() < 1e-9
    assert torch.equal(screened.argmax[cert], exhaustive.argmax[cert])
    # every unit: the screened max is over a subset of the units, so never above the exhaustive
    assert (screened.max_corr - exhaustive.max_corr).nan_to_num(0).max() < 1e-12
    assert (exhaustive.min_corr - screened.min_corr).nan_to_num(0).max() < 1e-12
    # the baseline is the screening stage's: computed on fewer tokens, same kind
    assert screened.baseline_draws.shape == exhaustive.baseline_draws.shape


def test_candidate_values_are_exact_full_stream_correlations(screened, exhaustive) -> None:
    for m in range(2):
        full = exhaustive.matrix(m)
        idx = screened.top_index[m]
        want = full.gather(1, idx.clamp_min(0))
        ok = idx >= 0
        assert (screened.top_corr[m][ok] - want[ok]).abs().max() < 1e-9


def test_float32_pair_products_are_within_1e_6_of_float64(family, tokens, exhaustive) -> None:
    """The default product_dtype: float32 sampled products, float64 sums."""
    kw = {**KW, "product_dtype": None}
    got = correlate(family[0], family[1:], tokens, candidates=6, screen_tokens=3100, **kw)
    assert got.config["product_dtype"] is None
    cert = got.certified
    assert cert.float().mean() > 0.2
    assert (got.max_corr - exhaustive.max_corr).abs()[cert].max() < 1e-6
    for m in range(2):
        idx = got.top_index[m]
        want = exhaustive.matrix(m).gather(1, idx.clamp_min(0))
        ok = idx >= 0
        assert (got.top_corr[m][ok] - want[ok]).abs().max() < 1e-6


def test_result_round_trip_keeps_errors_and_certificates(screened, tmp_path) -> None:
    screened.save(tmp_path / "r")
    back = CorrelationResult.load(tmp_path / "r")
    assert torch.equal(back.certified, screened.certified)
    assert torch.equal(back.max_corr_se.isnan(), screened.max_corr_se.isnan())
    df = back.to_dataframe()
    assert {"max_corr_se", "certified"} <= set(df.columns)
    assert back.summary()["n_certified"] == screened.n_certified
    assert screened.config["candidates"] == 6 and screened.config["screen_tokens_used"] > 0
    with pytest.raises(ValueError, match="no standard errors"):
        CorrelationResult.load(tmp_path / "r").__class__.converged(
            CorrelationResult(**{**back.__dict__, "max_corr_se": None}), 0.1
        )


def test_killed_run_resumes_to_the_uninterrupted_result(family, tokens, screened, tmp_path):
    class Killed(Exception):
        pass

    seen = []

    def kill(progress):
        seen.append(progress)
        if progress.pass_index == 1 and len([p for p in seen if p.pass_index == 1]) == 4:
            raise Killed

    args = dict(candidates=6, screen_tokens=3100, checkpoint_dir=tmp_path, checkpoint_every=256)
    with pytest.raises(Killed):
        correlate(family[0], family[1:], tokens, callback=kill, **args, **KW)
    resumed = correlate(family[0], family[1:], tokens, **args, **KW)
    for name in ("max_corr", "min_corr", "top_corr", "max_corr_se", "baseline_draws"):
        got, want = getattr(resumed, name), getattr(screened, name)
        assert (got - want).nan_to_num(0).abs().max() < 1e-12, name
    assert torch.equal(resumed.certified, screened.certified)
    other = tokens.clone()
    other[-1, 5] = (other[-1, 5] + 1) % 60 + 1
    with pytest.raises(CheckpointMismatchError):
        correlate(family[0], family[1:], other, **args, **KW)


def test_all_pairs_screened(family, tokens) -> None:
    results = correlate(
        family[0], family[1:], tokens, candidates=6, screen_tokens=3100, all_pairs=True, **KW
    )
    exhaustive = correlate(family[0], family[1:], tokens, all_pairs=True, **KW)
    assert len(results) == 3
    for got, want in zip(results, exhaustive, strict=True):
        cert = got.certified
        assert (got.max_corr - want.max_corr).abs()[cert].max() < 1e-9


def test_early_stop_when_stable() -> None:
    ref, other = noisy_permuted_pair()  # clear best matches with a sampling error
    long = random_tokens(600, 32, seed=5)
    args = dict(candidates=3, screen_tokens=256, **KW)
    full = correlate(ref, other, long, **args)
    assert full.config["stopped_early"] is False and full.n_tokens == 600 * 31
    result = correlate(ref, other, long, tol=0.1, **args)
    assert result.config["stopped_early"] is True
    assert result.n_tokens < full.n_tokens
    assert result.converged(0.1)
    assert not result.converged(0.01)
    assert not full.converged(1e-4)
    # what the stop promises: the max-correlations within tol of the whole stream's, and the
    # same universal set
    assert float((result.max_corr - full.max_corr).nan_to_num(0).abs().max()) <= 0.1
    assert torch.equal(result.is_universal(), full.is_universal())


def test_max_corr_se_matches_the_spread_of_independent_streams() -> None:
    """End to end: over 30 independent token streams, the max_corr of every unit whose best
    match is the same in all of them spreads as its reported max_corr_se says (the median over
    units of mean(se) / std(max_corr) is within 0.8-1.25; tokens of a sequence are correlated
    through attention, which the batch means over sequences account for)."""
    ref, other = noisy_permuted_pair(1.0)
    runs = [
        correlate(
            ref,
            other,
            random_tokens(48, 32, seed=100 + s),
            candidates=3,
            screen_tokens=12 * 32,
            **KW,
        )  # fmt: skip
        for s in range(30)
    ]
    maxes = torch.stack([r.max_corr[0] for r in runs])
    ses = torch.stack([r.max_corr_se[0] for r in runs])
    argmax = torch.stack([r.argmax[0] for r in runs])
    stable = (argmax == argmax[0]).all(0) & ~maxes.isnan().any(0)
    assert int(stable.sum()) >= 30, "the test needs units with one clear best match"
    ratio = ses[:, stable].mean(0) / maxes[:, stable].std(0)
    assert 0.8 < float(ratio.median()) < 1.25


def test_bad_settings_are_refused(family, tokens) -> None:
    with pytest.raises(InvalidArgumentError, match="keep_matrix"):
        correlate(family[0], family[1], tokens, candidates=3, keep_matrix=True, **KW)
    with pytest.raises(InvalidArgumentError, match="only applies to the screened mode"):
        correlate(family[0], family[1], tokens, tol=0.01, **KW)
    with pytest.raises(InvalidArgumentError, match="candidates=70 keeps 140"):
        correlate(family[0], family[1], tokens, candidates=70, **KW)
    with pytest.raises(InvalidArgumentError, match="tol"):
        correlate(family[0], family[1], tokens, candidates=3, tol=0.0, **KW)
    with pytest.raises(InvalidArgumentError, match="parallel='tiles' cannot be combined"):
        correlate(family[0], family[1], tokens, candidates=3, parallel="tiles", **KW)


def test_a_screen_covering_the_stream_is_the_exhaustive_run(family) -> None:
    toks = random_tokens(24, 32, seed=8)
    ex = correlate(family[0], family[1:], toks, **KW)
    sc = correlate(family[0], family[1:], toks, candidates=6, screen_tokens=10**6, **KW)
    live = ~sc.max_corr.isnan()
    assert sc.certified[live].all()
    assert (sc.max_corr - ex.max_corr).nan_to_num(0).abs().max() < 1e-12
    assert torch.equal(sc.argmax[live], ex.argmax[live])
    assert sc.max_corr_se[live].isnan().all()  # no second stage: no blocks to estimate from


def test_two_gloo_ranks_equal_one_process(tmp_path) -> None:
    """The screening stage is data-parallel, and so is the exact stage (sums additive about the
    screening shift); every rank returns the single-process result."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tests.analyses import screened_worker as worker

    root = Path(__file__).resolve().parents[2]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = root / "tests" / "analyses" / "screened_worker.py"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    want = worker.run(worker.family())
    for name in ("rank0", "rank1", "ckpt.rank0", "ckpt.rank1", "again.rank0", "again.rank1",
                 "lost.rank0", "lost.rank1"):  # fmt: skip
        got = CorrelationResult.load(tmp_path / name)
        assert got.config["world_size"] == 2 and got.n_tokens == want.n_tokens
        for field in ("max_corr", "min_corr", "top_corr", "max_corr_se", "baseline_draws"):
            g, w = getattr(got, field), getattr(want, field)
            assert torch.equal(g.isnan(), w.isnan()), field
            assert (g - w).nan_to_num(0).abs().max() < 1e-12, (name, field)
        assert torch.equal(got.certified, want.certified)
    # float32 products: the per-sequence products do not depend on the shard, only the order of
    # the float64 sums does
    want32 = worker.run(worker.family(), product_dtype=None)
    for name in ("f32.rank0", "f32.rank1"):
        got = CorrelationResult.load(tmp_path / name)
        for field in ("max_corr", "min_corr", "top_corr", "max_corr_se", "baseline_draws"):
            g, w = getattr(got, field), getattr(want32, field)
            assert torch.equal(g.isnan(), w.isnan()), field
            assert (g - w).nan_to_num(0).abs().max() < 1e-9, (name, field)
        assert torch.equal(got.certified, want32.certified)
    # the followed baseline: its pair sums merge like the candidates'
    want_follow = worker.run(worker.family(), baseline_candidates=4)
    for name in ("follow.rank0", "follow.rank1"):
        got = CorrelationResult.load(tmp_path / name)
        g, w = got.baseline_draws, want_follow.baseline_draws
        assert torch.equal(g.isnan(), w.isnan())
        assert (g - w).nan_to_num(0).abs().max() < 1e-12, name
        assert torch.equal(got.baseline_certified, want_follow.baseline_certified)
    # the early stop: the ranks check the summed statistics once a round and stop together, with
    # the result of one process over the sequences they read
    ref, other = noisy_permuted_pair()
    rounds = []
    for name in ("tol.rank0", "tol.rank1"):
        got = CorrelationResult.load(tmp_path / name)
        assert got.config["stopped_early"] is True and got.converged(0.1)
        n_seq = got.n_tokens // (worker.SEQ - 1)
        assert got.n_tokens == n_seq * (worker.SEQ - 1) < worker.N_LONG * (worker.SEQ - 1)
        rounds.append(n_seq - got.config["screen_sequences"])  # stage 2's sequences
        want = worker.early(ref, other, worker.long_tokens()[:n_seq], tol=None)
        assert want.config["stopped_early"] is False and want.n_tokens == got.n_tokens
        for field in ("max_corr", "min_corr", "top_corr", "max_corr_se", "baseline_draws"):
            g, w = getattr(got, field), getattr(want, field)
            assert torch.equal(g.isnan(), w.isnan()), field
            assert (g - w).nan_to_num(0).abs().max() < 1e-12, (name, field)
        assert torch.equal(got.certified, want.certified)
    assert rounds[0] == rounds[1] and rounds[0] % (2 * worker.BATCH) == 0  # in whole rounds


@pytest.mark.parametrize("vocab_first", [8, 16])
def test_a_screening_prefix_unlike_the_rest_certifies_no_wrong_unit(vocab_first) -> None:
    """The screen is the stream's first sequences; here they use 7 or 15 of the 63 token ids
    and the rest all of them, so the correlations move after the screen by more than their
    noise. Every certified unit still has the exhaustive max_corr (the certificate's margin
    widens to the candidates' own change). Before the margin took that change into account,
    the 8-id prefix certified a unit off by 0.02."""
    ref, other = noisy_permuted_pair(2.0)
    toks = torch.cat(
        [random_tokens(40, 32, seed=0, vocab=vocab_first), random_tokens(160, 32, 100)]
    )
    exhaustive = correlate(ref, other, toks, **KW)
    screened = correlate(ref, other, toks, candidates=4, screen_tokens=40 * 32, **KW)
    cert = screened.certified[0]
    assert cert.any(), "the test needs certified units to say anything"
    diff = (screened.max_corr[0] - exhaustive.max_corr[0]).abs()
    assert float(diff[cert].max()) <= 1e-9
    assert bool((screened.max_corr_ceiling[0] >= exhaustive.max_corr[0] - 1e-9).all())


def test_a_batch_float32_cannot_hold_is_multiplied_in_float64() -> None:
    """Screened.add: units with spreads of 1e-21 (float32 products would underflow) make that
    batch float64; the others stay float32. Both against numpy float64."""
    import numpy as np

    from tl_universality.analyses.correlation.screened import Screened
    from tl_universality.stats.pair_moments import PairMoments

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 320, 3, generator=g, dtype=torch.float64)
    normal = [z[0].float(), (z[0] + 0.7 * z[1]).float()]
    tiny = [v.double() * 1e-21 for v in normal]
    cols = torch.tensor([[0, 1], [1, 2], [2, 0]])
    for acts, fallback in ((normal, 0), (tiny, 1)):
        screen = Screened(n1=0, k=1)
        screen.pairs[(0, 1)] = PairMoments.fresh(cols, n_b=3)
        screen.add(acts, [32] * 10)
        assert screen.float64_batches == fallback
        x, y = (a.double().numpy() for a in acts)
        want = np.take_along_axis(np.corrcoef(x.T, y.T)[:3, 3:], cols.numpy(), 1)
        bound = 1e-6 if fallback == 0 else 1e-12
        assert np.abs(screen.pairs[(0, 1)].corr().numpy() - want).max() < bound

"""correlate(..., standard_errors=True): batch-means standard errors of an exhaustive run,
against the estimator written out in numpy on explicitly collected activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_universality.analyses.correlation import CorrelationResult, correlate
from tl_universality.core.errors import CheckpointMismatchError
from tl_universality.data.tokens import TensorTokenSource
from tl_universality.units.activations import collect_activations

KW = dict(bos_token_id=0, progress=False, batch_size=8, n_draws=1)
PER_SEQUENCE = 31  # 32 tokens, BOS left out


def oracle_se(x: np.ndarray, y: np.ndarray, r0: float, block: int) -> float:
    """Batch-means standard error of corr(x, y), blocks of ``block`` tokens, with the influence
    function of Pearson's r at the full-stream means, scales and ``r0`` (float64 numpy)."""
    xt = (x - x.mean()) / x.std()
    yt = (y - y.mean()) / y.std()
    psi = (xt * yt - r0 / 2 * (xt * xt + yt * yt)).reshape(-1, block).sum(1)
    m, n = psi.shape[0], x.shape[0]
    lam = m / (m - 1) * ((psi - block * psi.sum() / n) ** 2).sum() / n
    return float(np.sqrt(lam / n))


def oracle(acts: list[torch.Tensor], result: CorrelationResult, ref: int, others: list[int]):
    """``[models, units, 2]``: numpy's standard errors of each unit's argmax and argmin pair."""
    x = acts[ref].double().numpy()
    out = np.full((len(others), x.shape[1], 2), np.nan)
    for m, c in enumerate(others):
        y = acts[c].double().numpy()
        for i in range(x.shape[1]):
            for s, (val, idx) in enumerate(
                ((result.max_corr, result.argmax), (result.min_corr, result.argmin))
            ):
                j = int(idx[m, i])
                if j >= 0 and not bool(val[m, i].isnan()):
                    r0 = float(np.corrcoef(x[:, i], y[:, j])[0, 1])
                    out[m, i, s] = oracle_se(x[:, i], y[:, j], r0, PER_SEQUENCE)
    return out


@pytest.fixture(scope="module")
def acts(random_family, random_stream) -> list[torch.Tensor]:
    got = collect_activations(
        random_family, random_stream, batch_size=8, bos_token_id=0, progress=False
    )
    assert got[0].shape[0] == random_stream.shape[0] * PER_SEQUENCE
    return got


@pytest.fixture(scope="module")
def plain(random_family, random_stream) -> CorrelationResult:
    return correlate(random_family[0], random_family[1:], random_stream, **KW)


@pytest.mark.parametrize("product", ["float64", None])
def test_standard_errors_match_numpy_and_leave_the_values_alone(
    random_family, random_stream, acts, plain, product, tmp_path
):
    got = correlate(
        random_family[0], random_family[1:], random_stream, standard_errors=True,
        product_dtype=product, **KW,
    )  # fmt: skip
    want = oracle(acts, got, 0, [1, 2])
    np.testing.assert_allclose(got.max_corr_se.numpy(), want[..., 0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got.min_corr_se.numpy(), want[..., 1], rtol=1e-6, atol=1e-12)
    assert np.isfinite(want[..., 0][~got.dead.numpy()[None, :].repeat(2, 0)]).all()
    # the pass's own values of the followed pairs agree with the exhaustive ones
    assert got.config["standard_errors_check"] < (1e-12 if product == "float64" else 1e-6)
    if product is None:  # the same exhaustive run as without standard errors
        assert torch.equal(got.max_corr, plain.max_corr) and torch.equal(got.argmax, plain.argmax)
    assert got.certified is None and got.n_certified is None
    # converged() now applies: errors here are ~1e-2 for 12,400 tokens
    largest = float(got.max_corr_se[~got.max_corr.isnan()].max())
    assert got.converged(largest * 1.01) and not got.converged(largest * 0.99)
    with pytest.raises(ValueError, match="standard_errors=True"):
        plain.converged(0.1)
    assert "max_corr_se" in got.to_dataframe() and "max_corr_se" not in plain.to_dataframe()
    back = CorrelationResult.load(got.save(tmp_path / "r"))
    assert torch.equal(back.max_corr_se, got.max_corr_se)


def test_all_pairs_gives_every_reference_its_errors(random_family, random_stream, acts):
    got = correlate(
        random_family[0], random_family[1:], random_stream, standard_errors=True,
        all_pairs=True, product_dtype="float64", **KW,
    )  # fmt: skip
    for ref, res in enumerate(got):
        others = [c for c in range(3) if c != ref]
        want = oracle(acts, res, ref, others)
        np.testing.assert_allclose(res.max_corr_se.numpy(), want[..., 0], rtol=1e-6, atol=1e-12)


def test_killed_error_pass_resumes_to_the_uninterrupted_result(
    random_family, random_stream, tmp_path
):
    kw = dict(standard_errors=True, checkpoint_every=8 * 32, **KW)
    whole = correlate(random_family[0], random_family[1:], random_stream, **kw)

    def kill(progress):
        if progress.pass_index == 1 and progress.sequences >= 200:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        correlate(
            random_family[0], random_family[1:], random_stream, checkpoint_dir=tmp_path,
            callback=kill, **kw,
        )  # fmt: skip
    assert (tmp_path / "errors" / "state").exists()
    seen: list[int] = []
    again = correlate(
        random_family[0], random_family[1:], random_stream, checkpoint_dir=tmp_path,
        callback=lambda p: seen.append(p.sequences), **kw,
    )  # fmt: skip
    assert seen and min(seen) > 200  # only the rest of the error pass was read
    assert torch.equal(again.max_corr_se, whole.max_corr_se)
    assert torch.equal(again.min_corr_se, whole.min_corr_se)


class Shuffled(TensorTokenSource):
    """A source whose rows come in another order every time it is read (not replayable)."""

    reads = 0

    def sequences(self):
        Shuffled.reads += 1
        g = torch.Generator().manual_seed(self.reads)
        order = torch.randperm(self._rows.shape[0], generator=g)
        yield from self._rows[order]


def test_a_source_that_reads_differently_the_second_time_is_refused(random_family, random_stream):
    source = Shuffled(random_stream, 0)
    with pytest.raises(CheckpointMismatchError, match="other tokens"):
        correlate(random_family[0], random_family[1:], source, standard_errors=True, **KW)

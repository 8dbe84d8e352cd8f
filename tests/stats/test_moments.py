"""Streaming moments against scipy.stats in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from tl_universality.core.errors import EmptyTokenSourceError
from tl_universality.stats.moments import Moments


def adversarial(n: int = 5000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = [
        rng.normal(size=n),
        1e3 + 1e-2 * rng.normal(size=n),  # mean far larger than spread
        np.where(np.arange(n) == 1234, 5.0, 0.0),  # active on one token only
        rng.exponential(size=n) ** 3,  # heavy tail
        np.full(n, 7.0),  # constant
    ]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("chunk", [1, 7, 500, 5000])
def test_streaming_matches_scipy(chunk):
    x = adversarial()
    m = Moments.zeros(x.shape[1])
    for part in torch.from_numpy(x).split(chunk):
        m.update(part)
    live = slice(0, 4)
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.var.numpy()[live], x.var(0)[live], rtol=1e-9)
    np.testing.assert_allclose(m.skew.numpy()[live], stats.skew(x[:, live]), rtol=1e-7)
    np.testing.assert_allclose(
        m.kurt.numpy()[live], stats.kurtosis(x[:, live], fisher=False), rtol=1e-7
    )
    np.testing.assert_allclose(m.freq.numpy(), (x > 0).mean(0))
    assert m.var[4] == 0 and torch.isnan(m.skew[4]) and torch.isnan(m.kurt[4])


def test_merge_equals_whole_and_round_trips():
    x = torch.from_numpy(adversarial())
    a, b = Moments.of(x[:1700]), Moments.of(x[1700:])
    a.merge_(b)
    whole = Moments.of(x)
    for name in ("mean", "m2", "m3", "m4"):
        torch.testing.assert_close(getattr(a, name), getattr(whole, name), rtol=1e-9, atol=1e-9)
    again = Moments.from_state_dict(a.state_dict())
    torch.testing.assert_close(again.kurt, a.kurt, equal_nan=True)


def test_empty_statistics_raise():
    with pytest.raises(EmptyTokenSourceError):
        _ = Moments.zeros(3).var

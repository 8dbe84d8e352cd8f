"""Growing a run (issue 17, item 2): a larger ``max_tokens`` on the same checkpoint continues
from where the run stopped, reads only the new tokens and merges the statistics; a smaller one is
refused with a clear message. Waits on the engine change (the lead's)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import build_model, random_tokens
from tl_universality.analyses.correlation import correlate
from tl_universality.core.errors import UniversalityError
from tl_universality.units.activations import collect_activations

SEQ = 16
FIRST, GROWN = 8 * SEQ, 20 * SEQ  # tokens: 8 sequences, then 20


class SequenceCounter:
    """Counts the sequences that go through the reference model's embedding."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, act, hook):
        self.n += act.shape[0]


def test_a_larger_max_tokens_continues_and_reads_only_the_new_tokens(tmp_path):
    models = [build_model(seed=s) for s in range(2)]
    tokens = random_tokens(32, SEQ, seed=3)
    kwargs = dict(bos_token_id=0, progress=False, batch_size=4, checkpoint_dir=tmp_path / "ckpt")
    correlate(models[0], models[1:], tokens, max_tokens=FIRST, **kwargs)

    counter = SequenceCounter()
    models[0].add_hook("hook_embed", counter)
    try:
        grown = correlate(models[0], models[1:], tokens, max_tokens=GROWN, **kwargs)
    finally:
        models[0].reset_hooks()
    assert counter.n == (GROWN - FIRST) // SEQ  # only the 12 new sequences were read

    # Oracle: numpy on the activations of the first GROWN tokens (BOS positions excluded).
    acts = collect_activations(models, tokens[: GROWN // SEQ], bos_token_id=0, progress=False)
    a, b = (x.double().numpy() for x in acts)
    corr = np.corrcoef(a, b, rowvar=False)[: a.shape[1], a.shape[1] :]
    expected = np.nanmax(np.where(np.isfinite(corr), corr, np.nan), axis=1)
    np.testing.assert_allclose(grown.max_corr[0].numpy(), expected, atol=1e-6)
    assert grown.n_tokens == a.shape[0]


def test_a_smaller_max_tokens_on_the_checkpoint_is_refused_clearly(tmp_path):
    models = [build_model(seed=s) for s in range(2)]
    tokens = random_tokens(32, SEQ, seed=3)
    kwargs = dict(bos_token_id=0, progress=False, batch_size=4, checkpoint_dir=tmp_path / "ckpt")
    correlate(models[0], models[1:], tokens, max_tokens=GROWN, **kwargs)
    with pytest.raises(UniversalityError, match=r"max_tokens=128 .*smaller.* 320"):
        correlate(models[0], models[1:], tokens, max_tokens=FIRST, **kwargs)

"""Every analysis of the plugin runs on LN-free models (exported tiny models)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ln_removal.builders import tokens
from tests.ln_removal.test_dla import ln_free
from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.entropy import entropy_intervention, entropy_neuron_scores
from tl_universality.analyses.neuron_stats import neuron_stats


def test_correlation_and_entropy_run_on_ln_free_models():
    a, b = ln_free(seed=0), ln_free(seed=1)
    toks = tokens(16, 16)
    result = correlate(a, b, toks, bos_token_id=0, n_draws=1, progress=False)
    assert np.isfinite(result.max_corr.numpy()).any()
    share = result.universal_share()
    assert set(share["layer"]) == {0, 1}
    scores = entropy_neuron_scores(a)
    assert len(scores) == a.cfg.n_layers * a.cfg.d_mlp
    effect = entropy_intervention(a, (1, 3), [0.0, 2.0], toks[:4], n_random_baseline=1)
    assert not effect.has_final_ln and "no final normalisation" in effect.note
    table = effect.to_dataframe()
    total = table[table["effect"] == "total"]["entropy"].to_numpy()
    direct = table[table["effect"] == "direct"]["entropy"].to_numpy()
    np.testing.assert_array_equal(total, direct)  # no LayerNorm scale: direct = total
    # Export keeps the logits exactly, so W_U is not centred over the vocabulary: the table says so.
    with pytest.warns(UserWarning, match="W_U is not centred"):
        stats = neuron_stats(a, toks[:4], bos_token_id=0, progress=False)
    assert len(stats) == a.cfg.n_layers * a.cfg.d_mlp

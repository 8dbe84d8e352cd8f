"""The removal schedule: the papers' steps, and events happening at the configured steps."""

from __future__ import annotations

import pytest

from tests.helpers import build_model
from tests.ln_removal.builders import FAST, tokens
from tl_universality.ln_removal import LNRemovalConfig, RemovalSchedule, remove_layernorm


def test_default_schedule_is_the_papers_for_gpt2_small():
    events = RemovalSchedule().events(n_layers=12)
    steps = {
        kind: [e.step for e in events if e.kind == kind]
        for kind in ("ln2", "ln1_qk", "ln1_v", "ln_final", "eot", "bos")
    }
    assert steps["ln2"] == list(range(20, 43, 2))
    assert steps["ln1_qk"] == list(range(44, 67, 2))
    assert steps["ln1_v"] == list(range(68, 102, 3))
    assert (steps["ln_final"], steps["eot"], steps["bos"]) == ([104], [106], [116])


def test_attention_only_models_have_no_ln2_events():
    kinds = {e.kind for e in RemovalSchedule().events(2, has_mlp=False)}
    assert "ln2" not in kinds and "ln1_v" in kinds


def test_events_happen_at_the_configured_steps():
    seen = []
    result = remove_layernorm(
        build_model(),
        tokens(40, 16),
        held_out=tokens(4, 16, seed=1),
        steps=14,
        lr_warmup=2,
        batch_size=4,
        schedule=FAST,
        progress=False,
        callback=seen.append,
    )
    expected = {e.step: e.label for e in FAST.events(2)}
    history = result.history.set_index("step")
    for step in range(14):
        assert history.loc[step, "events"] == expected.get(step, "")
        assert seen[step].events == ((expected[step],) if step in expected else ())
    # Paths made fake: 2 ln2 + 2 Q/K + 2 V + ln_final = 7, one at a time from step 2 to 8.
    n_fake = history["n_fake"].tolist()
    assert n_fake[:2] == [0, 0] and n_fake[2:9] == list(range(1, 8)) and set(n_fake[9:]) == {7}
    fake = result.fake_model
    ln_final = dict(fake.named_modules())["ln_final"]
    assert not bool(ln_final.bos_special) and not bool(ln_final.eot_special)


def test_schedule_and_settings_errors_name_the_fix():
    with pytest.raises(ValueError, match="gap_qk must be an integer >= 1, got 0"):
        RemovalSchedule(gap_qk=0)
    with pytest.raises(ValueError, match=r"steps=12 ends before .* Fix: pass steps="):
        remove_layernorm(build_model(), tokens(8, 8), steps=12, lr_warmup=2, progress=False)
    with pytest.raises(TypeError, match="'step' is not a setting.*Did you mean 'steps'"):
        remove_layernorm(build_model(), tokens(8, 8), step=12)
    with pytest.raises(ValueError, match="lr_warmup must be an integer in \\[0, steps=5\\)"):
        LNRemovalConfig(steps=5)
    with pytest.raises(ValueError, match="aux_loss_weight must be a number >= 0"):
        LNRemovalConfig(aux_loss_weight=-1.0)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive.*got 0"):
        remove_layernorm(build_model(), tokens(8, 8), steps=60, checkpoint_every=0)
    with pytest.raises(ValueError, match="rows of 40 tokens but n_ctx=32"):
        remove_layernorm(build_model(), tokens(8, 40), steps=60)

"""Unit specs without traps: raw SAEs accepted, "every model" and "per model" spelled apart, and a
wrong shape refused with a message that names the argument, the value and the fix."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers import build_model, build_sae, random_tokens
from tl_universality.analyses.correlation import correlate
from tl_universality.core.errors import InvalidArgumentError
from tl_universality.units import PerModel, SAEUnits, per_model
from tl_universality.units.activations import collect_activations, unit_index
from tl_universality.units.specs import check_spec, is_per_model

pytest.importorskip("sae_lens")

BOS = 0
QUIET = dict(bos_token_id=BOS, progress=False)
HOOK = "blocks.0.hook_resid_post"


def tokens() -> torch.Tensor:
    return random_tokens(4, 10, 0, bos=BOS)


# --- A raw SAELens SAE is a unit spec ------------------------------------------------------------


def test_a_raw_sae_is_accepted_wherever_saeunits_is():
    model = build_model()
    sae = build_sae(32, 48, HOOK)
    assert unit_index(model, sae) == unit_index(model, SAEUnits(sae))
    assert unit_index(model, sae).hook_names == (f"{HOOK}.hook_sae_acts_post",)
    (raw,) = collect_activations(model, tokens(), units=sae, **QUIET)
    (wrapped,) = collect_activations(model, tokens(), units=SAEUnits(sae), **QUIET)
    torch.testing.assert_close(raw, wrapped, rtol=0, atol=0)
    # ... inside a list, beside hook names
    mixed = unit_index(model, [sae, "blocks.1.mlp.hook_post"])
    assert mixed.widths == (48, 64)


def test_correlate_takes_raw_saes_per_model():
    a, b = build_model(seed=0), build_model(seed=1)
    sae_a, sae_b = build_sae(32, 24, HOOK, seed=0), build_sae(32, 24, HOOK, seed=1)
    kwargs = dict(baseline=None, batch_size=4, **QUIET)
    raw = correlate(a, b, tokens(), units=PerModel([sae_a, sae_b]), **kwargs)
    wrapped = correlate(
        a, b, tokens(), units=PerModel([SAEUnits(sae_a), SAEUnits(sae_b)]), **kwargs
    )
    assert raw.units.n_units == 24
    torch.testing.assert_close(raw.max_corr, wrapped.max_corr, equal_nan=True)


def test_a_non_sae_object_is_a_clear_error_not_a_difflib_crash():
    model = build_model()
    for bad in ({"hook": HOOK}, 3, object()):
        with pytest.raises(InvalidArgumentError, match=r"units=.* is not a unit spec\. Fix:"):
            unit_index(model, bad)
    with pytest.raises(InvalidArgumentError, match=r"item 1, 3, is not a hook name"):
        unit_index(model, [HOOK, 3])
    with pytest.raises(InvalidArgumentError, match="not a sae-lens SAE"):
        SAEUnits("blocks.0.hook_resid_post")


# --- One spec for every model vs one spec per model -----------------------------------------------


def test_a_plain_list_means_these_hooks_on_every_model():
    a, b = build_model(seed=0), build_model(seed=1)
    hooks = ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    assert not is_per_model(hooks, 2)
    assert per_model(hooks, 2) == [hooks, hooks]
    acts_a, acts_b = collect_activations([a, b], tokens(), units=hooks, **QUIET)
    assert acts_a.shape[1] == acts_b.shape[1] == 128  # two hooks of each model


def test_per_model_gives_each_model_its_own_spec():
    a, b = build_model(seed=0), build_model(seed=1)
    units = PerModel(
        ["blocks.0.mlp.hook_post", ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]]
    )
    assert is_per_model(units, 2)
    acts_a, acts_b = collect_activations([a, b], tokens(), units=units, **QUIET)
    assert (acts_a.shape[1], acts_b.shape[1]) == (64, 32 + 64)
    result = correlate(a, b, tokens(), units=units, baseline=None, batch_size=4, **QUIET)
    assert (result.units.n_units, result.other_units[0].n_units) == (64, 96)


def test_the_old_list_of_lists_still_works_with_a_deprecation_warning():
    a, b = build_model(seed=0), build_model(seed=1)
    legacy = [["blocks.0.mlp.hook_post"], ["blocks.1.mlp.hook_post"]]
    with pytest.warns(DeprecationWarning, match=r"Fix: write units=PerModel\(") as record:
        old = collect_activations([a, b], tokens(), units=legacy, **QUIET)
    assert record[0].filename == __file__  # points at the caller, not inside the package
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = collect_activations([a, b], tokens(), units=PerModel(legacy), **QUIET)
    for x, y in zip(old, new, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_a_per_model_spec_of_the_wrong_length_names_the_argument_value_and_fix():
    a, b = build_model(seed=0), build_model(seed=1)
    units = PerModel(["mlp.hook_post", "mlp.hook_pre", "hook_resid_post"])
    message = (
        r"units=PerModel\(\['mlp.hook_post', 'mlp.hook_pre', 'hook_resid_post'\]\) has 3 specs"
        r" for 2 models\. Fix: give PerModel one spec per model"
    )
    with pytest.raises(InvalidArgumentError, match=message):
        collect_activations([a, b], tokens(), units=units, **QUIET)
    with pytest.raises(InvalidArgumentError, match=message):
        correlate(a, b, tokens(), units=units, baseline=None, **QUIET)
    with pytest.raises(InvalidArgumentError, match="has 1 spec for 2 models"):
        per_model(PerModel(["mlp.hook_post"]), 2)


def test_other_wrong_shapes_say_which_was_meant():
    model = build_model()
    with pytest.raises(InvalidArgumentError, match="3 items for 2 models.*PerModel"):
        per_model([["mlp.hook_post"], ["mlp.hook_pre"], None], 2)
    with pytest.raises(InvalidArgumentError, match="one spec per model, but here units describes"):
        unit_index(model, PerModel(["mlp.hook_post"]))
    with pytest.raises(InvalidArgumentError, match=r"PerModel\(specs='mlp.hook_post'\).*a list"):
        PerModel("mlp.hook_post")
    with pytest.raises(InvalidArgumentError, match=r"PerModel\(...\)\[1\]=.*a list inside a list"):
        PerModel(["mlp.hook_post", [["blocks.0.mlp.hook_post"]]])
    with pytest.raises(InvalidArgumentError, match=r"PerModel\(...\)\[0\]="):
        PerModel([PerModel(["mlp.hook_post"])])
    check_spec(None)
    check_spec(build_sae(32, 8, HOOK))

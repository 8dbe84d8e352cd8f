"""The ``model.universality`` accessor on every supported model class."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
from transformer_lens import HookedTransformer, HookedTransformerConfig

import tl_universality
from tl_universality.accessor import UniversalityAccessor, register_model_accessor
from tl_universality.core.errors import AccessorError

CFG = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50,
           act_fn="gelu_new", normalization_type="LN", seed=0)  # fmt: skip


def hooked() -> HookedTransformer:
    return HookedTransformer(HookedTransformerConfig(**CFG))


def sae_hooked():
    sae_lens = pytest.importorskip("sae_lens")
    return sae_lens.HookedSAETransformer(HookedTransformerConfig(**CFG))


def bridge():
    from transformer_lens.model_bridge import TransformerBridge

    cfg = {k: v for k, v in CFG.items() if k != "seed"}
    return TransformerBridge.boot_native(cfg)


@pytest.mark.parametrize("build", [hooked, sae_hooked, bridge], ids=["hooked", "sae", "bridge"])
def test_accessor_on_every_model_class(build):
    model = build()
    acc = model.universality
    assert isinstance(acc, UniversalityAccessor)
    idx = acc.unit_index()
    assert idx.widths == (64, 64) and idx.layers == (0, 1)
    # The method is the free function with the model as first argument.
    assert idx == tl_universality.unit_index(model)


def test_accessor_is_not_state():
    model = hooked()
    keys = set(model.state_dict())
    _ = model.universality
    assert set(model.state_dict()) == keys
    assert "universality" not in model.__dict__ and "universality" not in dict(
        model.named_modules()
    )


def test_model_still_saves_loads_copies_and_moves():
    model = hooked()
    toks = torch.randint(0, 50, (2, 8))
    before = model(toks)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = HookedTransformer(HookedTransformerConfig(**{**CFG, "seed": 1}))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # noqa: TID251
    torch.testing.assert_close(fresh(toks), before)

    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(toks), before)
    assert clone.universality._model is clone

    model.to(torch.float64)
    assert model.universality._model.W_in.dtype == torch.float64
    model.to("cpu")


def test_error_while_building_reaches_user_as_itself(monkeypatch):
    def broken_init(self, model):
        raise AttributeError("cfg.d_mlp is missing on this model")

    monkeypatch.setattr(UniversalityAccessor, "__init__", broken_init)
    model = hooked()
    with pytest.raises(AccessorError, match="cfg.d_mlp is missing"):
        _ = model.universality


def test_non_attribute_errors_are_not_wrapped():
    class NotAModel(nn.Module):
        pass

    register_model_accessor("universality_test", NotAModel)(UniversalityAccessor)
    with pytest.raises(TypeError, match="not a TransformerLens hooked model"):
        _ = NotAModel().universality_test


def test_registering_over_an_existing_name_warns():
    class Toy(nn.Module):
        def taken(self):
            return 1

    class Acc:
        def __init__(self, model):
            self.model = model

    with pytest.warns(UserWarning, match="overrides an existing attribute"):
        register_model_accessor("taken", Toy)(Acc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_model_accessor("taken", Toy)(Acc)  # same accessor again: silent
    assert isinstance(Toy().taken, Acc)


def test_class_access_returns_accessor_type():
    assert HookedTransformer.universality is UniversalityAccessor


def test_every_accessor_method_is_a_free_function_of_the_same_name():
    import inspect

    from tl_universality.accessor import ACCESSOR_METHODS

    model = HookedTransformer(
        HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu")
    )
    assert len(ACCESSOR_METHODS) > 15
    for name in ACCESSOR_METHODS:
        method = getattr(model.universality, name)
        # the free function of the same name, in the module the method says it wraps
        module = inspect.getmodule(getattr(UniversalityAccessor, name))
        free = getattr(module, name)
        assert free.__module__.startswith("tl_universality.") and free.__name__ == name
        params = list(inspect.signature(free).parameters.values())
        assert params[0].name.startswith("model"), name
        expected = inspect.signature(free).replace(parameters=params[1:])
        assert inspect.signature(method) == expected, name
        assert method.__doc__ == free.__doc__ and free.__doc__, name

"""SAE latents as units, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import build_model, build_sae, random_tokens
from tl_universality.analyses.sae import SAEUnits, attached_sae_units
from tl_universality.core.errors import HookError
from tl_universality.units import PerModel
from tl_universality.units.activations import collect_activations, unit_index

sae_lens = pytest.importorskip("sae_lens")

BOS = 0


def tokens(n: int = 6, seq: int = 10) -> torch.Tensor:
    return random_tokens(n, seq, 0, bos=BOS)


def make_sae(d_in: int, d_sae: int, hook: str, seed: int = 0):
    return build_sae(d_in, d_sae, hook, seed)


def identity_sae(d: int, hook: str):
    sae = make_sae(d, d, hook)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_identity_sae_latents_are_relu_of_the_units():
    model = build_model()
    hook = "blocks.1.mlp.hook_pre"
    sae = identity_sae(64, hook)
    latents, pre = collect_activations(
        [model, model],
        tokens(),
        units=PerModel([SAEUnits(sae), [hook]]),
        bos_token_id=BOS,
        progress=False,
    )
    np.testing.assert_allclose(latents.numpy(), np.maximum(pre.numpy(), 0), atol=1e-6)


def test_latents_match_a_direct_encode():
    model = build_model()
    hook = "blocks.0.hook_resid_post"
    sae = make_sae(32, 80, hook)
    (latents,) = collect_activations(model, tokens(), units=SAEUnits(sae), bos_token_id=BOS,
                                     progress=False)  # fmt: skip
    _, cache = model.run_with_cache(tokens())
    keep = tokens() != BOS
    direct = sae.encode(cache[hook])[keep].detach()
    np.testing.assert_allclose(latents.numpy(), direct.numpy(), atol=1e-6)
    assert unit_index(model, SAEUnits(sae)).widths == (80,)


def test_observing_leaves_outputs_unchanged_and_splicing_changes_them():
    model = build_model()
    hook = "blocks.0.hook_resid_post"
    sae = make_sae(32, 80, hook)
    toks = tokens()
    clean = model(toks)
    _, cache = model.run_with_cache(toks)
    keep = toks != BOS

    # Observed: the next block reads the clean residual stream.
    _, downstream = collect_activations(
        [model, model], toks, units=[SAEUnits(sae), ["blocks.1.hook_resid_pre"]],
        bos_token_id=BOS, progress=False,
    )  # fmt: skip
    torch.testing.assert_close(downstream, cache["blocks.1.hook_resid_pre"][keep])
    torch.testing.assert_close(model(toks), clean)

    # Spliced: the next block reads the SAE reconstruction instead.
    _, spliced = collect_activations(
        model, toks, units=[SAEUnits(sae, splice=True), "blocks.1.hook_resid_pre"],
        bos_token_id=BOS, progress=False,
    )[0].split([80, 32], dim=1)  # fmt: skip
    recon = sae.decode(sae.encode(cache[hook])).detach()[keep]
    torch.testing.assert_close(spliced, recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(toks), clean)  # no hook left behind


def test_sae_with_the_wrong_width_is_a_clear_error():
    model = build_model()
    sae = make_sae(48, 80, "blocks.0.hook_resid_post")
    with pytest.raises(HookError, match="d_in=48"):
        unit_index(model, SAEUnits(sae))


def test_attached_saes_are_units_of_a_hooked_sae_transformer():
    from transformer_lens import HookedTransformerConfig

    from tests.helpers import SMALL_MODEL

    model = sae_lens.HookedSAETransformer(HookedTransformerConfig(**SMALL_MODEL))
    with pytest.raises(HookError, match="no attached SAE"):
        attached_sae_units(model)
    hook = "blocks.0.hook_resid_post"
    sae = make_sae(32, 40, hook)
    model.add_sae(sae)
    names = attached_sae_units(model)
    assert names == [f"{hook}.hook_sae_acts_post"]
    (latents,) = collect_activations(model, tokens(), units=names, bos_token_id=BOS, progress=False)
    _, cache = model.run_with_cache(tokens())
    keep = tokens() != BOS
    torch.testing.assert_close(latents, cache[names[0]][keep])

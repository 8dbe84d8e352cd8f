"""Activation streaming against ``run_with_cache`` as the oracle, and every bad input."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tests.helpers import random_tokens
from tl_universality.core.errors import (
    EmptyTokenSourceError,
    HookError,
    NonFiniteActivationError,
    NoUnitsError,
    SequenceTooLongError,
    TokenizerMismatchError,
)
from tl_universality.units.activations import collect_activations, stream_activations, unit_index

BOS = 0


def model(seed: int = 0, **overrides) -> HookedTransformer:
    cfg = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50,
               act_fn="gelu_new", normalization_type="LN", seed=seed)  # fmt: skip
    cfg.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**cfg))


def tokens(n: int = 10, seq: int = 12, seed: int = 0) -> torch.Tensor:
    toks = random_tokens(n, seq, seed, vocab=50, bos=BOS)
    toks[3, 5] = BOS  # a BOS/EOS in the middle of a sequence is excluded too
    return toks


def oracle(m: HookedTransformer, toks: torch.Tensor, names: list[str]) -> torch.Tensor:
    _, cache = m.run_with_cache(toks)
    keep = toks != BOS
    return torch.cat([cache[n].reshape(*toks.shape, -1)[keep] for n in names], dim=-1)


def stream(models, toks, **kw):
    kw.setdefault("bos_token_id", BOS)
    kw.setdefault("progress", False)
    return collect_activations(models, toks, **kw)


def test_matches_run_with_cache_for_two_models():
    a, b = model(0), model(1)
    toks = tokens()
    acts = stream([a, b], toks, batch_size=3)  # 10 sequences: a partial last batch
    names = [f"blocks.{i}.mlp.hook_post" for i in range(2)]
    assert acts[0].shape == ((toks != BOS).sum().item(), 128)
    torch.testing.assert_close(acts[0], oracle(a, toks, names), rtol=0, atol=1e-6)
    torch.testing.assert_close(acts[1], oracle(b, toks, names), rtol=0, atol=1e-6)


def test_other_units_and_flattening():
    a = model(0)
    toks = tokens()
    pre = stream(a, toks, units="mlp.hook_pre")[0]
    torch.testing.assert_close(
        pre, oracle(a, toks, ["blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_pre"])
    )
    z = stream(a, toks, units=["blocks.1.attn.hook_z"])[0]  # [b, p, heads, d_head] -> 32 units
    assert z.shape[1] == 32
    torch.testing.assert_close(z, oracle(a, toks, ["blocks.1.attn.hook_z"]))
    idx = unit_index(a, ["blocks.1.attn.hook_z"])
    assert idx.layers == (1,) and idx.widths == (32,)


def test_models_with_different_layer_counts():
    a, b = model(0), model(1, n_layers=3)
    acts = stream([a, b], tokens())
    assert acts[0].shape[1] == 128 and acts[1].shape[1] == 192


def test_token_metadata_and_resume():
    a = model(0)
    toks = tokens()
    batches = list(stream_activations(a, toks, batch_size=4, bos_token_id=BOS, progress=False))
    keep = toks != BOS
    ids = torch.cat([b.token_ids for b in batches])
    assert torch.equal(ids, toks[keep])
    prev = torch.cat([b.prev_token_ids for b in batches])
    assert torch.equal(prev, torch.roll(toks, 1, dims=1)[keep])
    pos = torch.cat([b.positions for b in batches])
    assert torch.equal(pos, torch.arange(12).expand(10, 12)[keep])
    # Resuming from sequence 6 yields exactly the remaining rows, even mid-batch.
    resumed = list(
        stream_activations(
            a, toks, batch_size=4, start_sequence=6, bos_token_id=BOS, progress=False
        )  # fmt: skip
    )
    assert resumed[0].first_sequence == 6
    full = torch.cat([b.acts[0] for b in batches])
    n_before = int(keep[:6].sum())
    torch.testing.assert_close(torch.cat([b.acts[0] for b in resumed]), full[n_before:])


def test_mismatched_vocabularies_fail_before_compute():
    with pytest.raises(TokenizerMismatchError, match="different tokenizers"):
        stream([model(0), model(1, d_vocab=60)], tokens())


def test_unknown_hook_names_the_closest():
    with pytest.raises(HookError, match="did you mean 'blocks.0.mlp.hook_post'"):
        stream(model(0), tokens(), units=["blocks.0.mlp.hook_pots"])


def test_hook_that_never_fires():
    # hook_result exists but only fires with cfg.use_attn_result=True.
    with pytest.raises(HookError, match="never fired"):
        stream(model(0), tokens(), units=["blocks.0.attn.hook_result"])


def test_attention_only_model_has_no_mlp_units():
    with pytest.raises(NoUnitsError, match="no MLP layers"):
        stream(model(0, attn_only=True), tokens())


def test_empty_token_source():
    with pytest.raises(EmptyTokenSourceError):
        stream(model(0), torch.zeros(0, 12, dtype=torch.long))


def test_sequences_longer_than_context():
    with pytest.raises(SequenceTooLongError):
        stream(model(0), tokens(seq=20))


def test_nan_activations_are_reported():
    m = model(0)
    with torch.no_grad():
        m.blocks[1].mlp.W_in[0, 3] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="blocks.1.mlp.hook_post"):
        stream(m, tokens())


def test_no_hooks_left_behind_even_after_an_error():
    m = model(0)
    with torch.no_grad():
        m.blocks[1].mlp.W_in[0, 3] = float("nan")
    with pytest.raises(NonFiniteActivationError):
        stream(m, tokens())
    stream(model(1), tokens())
    assert all(len(hp._forward_hooks) == 0 for hp in m.hook_dict.values())


def test_activations_that_overflow_the_requested_dtype_are_reported():
    # Finite in the model's float32, beyond float16's 65504 once stored: the check looks at the
    # values as stored, so an overflow to inf is an error, not an inf in the statistics.
    m = model(0)
    with torch.no_grad():
        m.blocks[0].mlp.W_in.mul_(1e6)
    assert stream(m, tokens(), units="mlp.hook_pre")[0].abs().max() > 1e5  # finite in float32
    with pytest.raises(NonFiniteActivationError, match="blocks.0.mlp.hook_pre"):
        stream(m, tokens(), units="mlp.hook_pre", dtype=torch.float16)


def test_irregular_exclusions_gather_the_right_rows():
    # Excluding a common token drops scattered positions (the gathered path, not the view).
    a = model(0)
    toks = tokens()
    drop = int(toks[0, 3])
    acts = stream(a, toks, batch_size=4, exclude_token_ids=[BOS, drop])[0]
    _, cache = a.run_with_cache(toks)
    keep = (toks != BOS) & (toks != drop)
    names = [f"blocks.{i}.mlp.hook_post" for i in range(2)]
    want = torch.cat([cache[n][keep] for n in names], dim=-1)
    torch.testing.assert_close(acts, want, rtol=0, atol=1e-6)

"""Export: fold the fixed σ's into the weights and return a model with no LayerNorm at all.

A fake LayerNorm computes ``y = C x / σ * w + b`` with ``C`` the centring over ``d_model``. A
linear map reading ``y`` (``W_Q``, ``W_K``, ``W_V``, ``W_in``, ``W_U``) computes
``y W + b_W = x · C diag(w) W / σ + (b W + b_W)``, so the LayerNorm disappears exactly when

- ``W ← C (diag(w) W / σ)`` (scale each input row by ``w / σ``, then centre the rows: ``C`` is
  symmetric, so centring the input equals centring the reading weights; no assumption about the
  writing weights is needed), and
- ``b_W ← b_W + b W``.

Query and key weights take ``ln1``'s Q/K σ, value weights its V σ. The result is a plain
``HookedTransformer`` with ``normalization_type=None`` whose logits equal the all-fake model's.

Examples:
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> from tl_universality.ln_removal.fake_ln import install_fake_layernorms, fake_layernorms
    >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
    ...                               act_fn="relu", seed=0)
    >>> fake = install_fake_layernorms(HookedTransformer(cfg))
    >>> for ln in fake_layernorms(fake).values():
    ...     ln.set_sigma(1.5); ln.make_fake(); ln.drop_special(bos=True, eot=True)
    >>> plain = export_ln_free(fake)
    >>> plain.cfg.normalization_type is None
    True
    >>> toks = torch.tensor([[0, 3, 5, 7]])
    >>> bool((plain(toks) - fake(toks)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tl_universality.core.protocol import model_name
from tl_universality.ln_removal.fake_ln import FakeLayerNorm, fake_layernorms, fake_paths

_LN_KEYS = ("w", "b")


def _check_ready(model: Any) -> None:
    real = [p for p, fake in fake_paths(model).items() if not fake]
    special = [
        name
        for name, m in fake_layernorms(model).items()
        if bool(m.bos_special) or bool(m.eot_special)
    ]
    if not fake_layernorms(model):
        raise ValueError(
            f"{model_name(model)} has no fake LayerNorms to fold. Pass the model that"
            " remove_layernorm fine-tuned (result.fake_model), or install_fake_layernorms first."
        )
    if real or special:
        what = f"real paths {real[:4]}" if real else f"BOS/end-of-text special σ in {special[:4]}"
        raise ValueError(
            f"model has {what}{' and more' if len(real or special) > 4 else ''}, so its"
            " normalisation is not a fixed linear map and cannot be folded. Fix: finish the"
            " removal schedule (remove_layernorm), or call make_fake() and"
            " drop_special(bos=True, eot=True) on every FakeLayerNorm."
        )


def _fold(
    weight: Tensor, bias: Tensor, ln: FakeLayerNorm, sigma: Tensor, d_axis: int
) -> tuple[Tensor, Tensor]:
    """Fold ``ln`` (with divisor ``sigma``) into a reading ``weight``/``bias`` (float64)."""
    w = weight.to(torch.float64)
    shape = [1] * w.ndim
    shape[d_axis] = -1
    gain = (ln.w.detach().to(torch.float64) / sigma.to(torch.float64)).reshape(shape)
    folded = w * gain
    folded = folded - folded.mean(d_axis, keepdim=True)
    b_ln = ln.b.detach().to(torch.float64)
    new_bias = bias.to(torch.float64) + torch.tensordot(b_ln, w, dims=([0], [d_axis]))
    return folded.to(weight.dtype), new_bias.to(bias.dtype)


@torch.no_grad()
def export_ln_free(model: Any) -> Any:
    """A ``normalization_type=None`` copy of an all-fake model, σ's folded into the weights.

    Args:
        model: A model with :class:`~tl_universality.ln_removal.fake_ln.FakeLayerNorm` modules,
            every path fake and the BOS/end-of-text special cases dropped.

    Returns:
        A new ``HookedTransformer`` in eval mode (same tokenizer) whose logits equal ``model``'s.

    Raises:
        ValueError: A path is still real or a special σ is still in use.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    _check_ready(model)
    if getattr(model.cfg, "n_key_value_heads", None) is not None:
        raise ValueError(
            f"{model_name(model)} uses grouped-query attention (n_key_value_heads="
            f"{model.cfg.n_key_value_heads}); export supports GPT-2-style attention only."
        )
    lns = fake_layernorms(model)
    state = {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not any(k.startswith(f"{name}.") for name in lns)
    }
    for layer in range(model.cfg.n_layers):
        ln1 = lns[f"blocks.{layer}.ln1"]
        pre = f"blocks.{layer}.attn"
        for kind, sigma in (("Q", ln1.sigma[0]), ("K", ln1.sigma[0]), ("V", ln1.sigma[1])):
            state[f"{pre}.W_{kind}"], state[f"{pre}.b_{kind}"] = _fold(
                state[f"{pre}.W_{kind}"], state[f"{pre}.b_{kind}"], ln1, sigma, d_axis=1
            )
        if f"blocks.{layer}.ln2" in lns:
            ln2 = lns[f"blocks.{layer}.ln2"]
            pre = f"blocks.{layer}.mlp"
            state[f"{pre}.W_in"], state[f"{pre}.b_in"] = _fold(
                state[f"{pre}.W_in"], state[f"{pre}.b_in"], ln2, ln2.sigma[0], d_axis=0
            )
    if "ln_final" in lns:
        ln_f = lns["ln_final"]
        state["unembed.W_U"], state["unembed.b_U"] = _fold(
            state["unembed.W_U"], state["unembed.b_U"], ln_f, ln_f.sigma[0], d_axis=0
        )
    cfg_dict = dict(model.cfg.to_dict())
    cfg_dict["normalization_type"] = None
    name = cfg_dict.get("model_name") or "model"
    cfg_dict["model_name"] = name if str(name).endswith("-noLN") else f"{name}-noLN"
    cfg = HookedTransformerConfig(**cfg_dict)
    plain = HookedTransformer(
        cfg, tokenizer=getattr(model, "tokenizer", None), move_to_device=False
    )
    plain.load_state_dict(state, strict=True)
    return plain.to(next(model.parameters()).device, print_details=False).eval()


@torch.no_grad()
def export_layernorm(model: Any) -> Any:
    """A plain LayerNorm ``HookedTransformer`` from a model whose fake LayerNorms are all real.

    Used for the control run (fine-tuned with the same recipe, LayerNorms kept).

    Raises:
        ValueError: A path is fake, so the model is not a LayerNorm model any more.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    fake = [p for p, is_fake in fake_paths(model).items() if is_fake]
    if fake:
        raise ValueError(
            f"model has fake paths {fake[:4]}, so it is no longer a LayerNorm model. Fix: use"
            " export_ln_free once every path is fake, or keep_layernorm=True for the control."
        )
    lns = fake_layernorms(model)
    state = {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not any(k.startswith(f"{name}.") for name in lns) or k.rsplit(".", 1)[1] in _LN_KEYS
    }
    cfg = HookedTransformerConfig(**dict(model.cfg.to_dict()))
    plain = HookedTransformer(
        cfg, tokenizer=getattr(model, "tokenizer", None), move_to_device=False
    )
    plain.load_state_dict(state, strict=True)
    return plain.to(next(model.parameters()).device, print_details=False).eval()


__all__ = ["export_layernorm", "export_ln_free"]

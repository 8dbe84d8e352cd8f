"""Load the published LayerNorm-free GPT-2 checkpoints as ``normalization_type=None`` models.

The published LN-free GPT-2 models (Heimersheim 2024: ``apollo-research/gpt2_noLN``; Baroni et
al. 2025: ``schaeff/gpt2-small_LNFree300``, ``schaeff/gpt2-medium_LNFree500``,
``schaeff/gpt2-large_LNFree600``, ``schaeff/gpt2-xl_LNFree800``) are stored so that the stock
Hugging Face GPT-2 class runs them: every LayerNorm weight is multiplied by ``1e6 / σ`` and
``layer_norm_epsilon`` is ``1e12``. The live std is then negligible next to ``sqrt(1e12) = 1e6``,
so each LayerNorm computes ``(x − mean) · w / σ + b``: a fake LayerNorm.

:func:`from_hf_ln_free` undoes the trick (weights divided by 1e6, σ = 1) and folds the result into
the following weights (:func:`~tl_universality.ln_removal.export.export_ln_free`), giving a plain
TransformerLens model with no LayerNorm at all. :func:`load_published_ln_free` downloads a
checkpoint by name first (needs the internet; safetensors or ``weights_only`` loading only).
"""

from __future__ import annotations

from typing import Any

import torch

from tl_universality.ln_removal.export import export_ln_free
from tl_universality.ln_removal.fake_ln import fake_layernorms, install_fake_layernorms

PUBLISHED_LN_FREE = (
    "apollo-research/gpt2_noLN",
    "schaeff/gpt2-small_LNFree300",
    "schaeff/gpt2-medium_LNFree500",
    "schaeff/gpt2-large_LNFree600",
    "schaeff/gpt2-xl_LNFree800",
)
"""The published LN-free GPT-2 checkpoints (any repository in the same format also loads)."""

TRICK_SCALE = 1e6
"""The published checkpoints' LayerNorm weights are ``w · TRICK_SCALE / σ`` (ε = TRICK_SCALE²)."""


def _tl_config(hf_config: Any, name: str) -> Any:
    from transformer_lens import HookedTransformerConfig

    d_model = int(hf_config.n_embd)
    return HookedTransformerConfig(
        n_layers=int(hf_config.n_layer),
        d_model=d_model,
        n_heads=int(hf_config.n_head),
        d_head=d_model // int(hf_config.n_head),
        d_mlp=int(hf_config.n_inner or 4 * d_model),
        n_ctx=int(hf_config.n_positions),
        d_vocab=int(hf_config.vocab_size),
        act_fn=str(hf_config.activation_function),
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        model_name=name,
        default_prepend_bos=True,
    )


@torch.no_grad()
def from_hf_ln_free(
    hf_model: Any, tokenizer: Any = None, *, name: str | None = None, device: str = "cpu"
) -> Any:
    """A ``normalization_type=None`` ``HookedTransformer`` from a Hugging Face GPT-2 in the
    published LN-free format (LayerNorm weights ``× 1e6/σ``, ``layer_norm_epsilon`` ≥ 1e6).

    Args:
        hf_model: A ``GPT2LMHeadModel`` (e.g. ``AutoModelForCausalLM.from_pretrained(...)``).
        tokenizer: Its tokenizer, attached to the result.
        name: The model name (default ``hf_model.config.name_or_path``).
        device: Where to put the result.

    Raises:
        ValueError: The model is not a GPT-2, or its LayerNorms are real (a small epsilon).
    """
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf_config = hf_model.config
    if getattr(hf_config, "model_type", None) != "gpt2":
        raise ValueError(
            f"hf_model is a {getattr(hf_config, 'model_type', type(hf_model).__name__)!r} model;"
            " the published LN-free checkpoints are GPT-2s. Fix: pass a GPT2LMHeadModel."
        )
    eps = float(hf_config.layer_norm_epsilon)
    if eps < TRICK_SCALE:
        raise ValueError(
            f"hf_model has layer_norm_epsilon={eps:g}, so its LayerNorms are real, not the"
            f" published LN-free format (epsilon {TRICK_SCALE**2:g}). Fix: load an ordinary GPT-2"
            " with HookedTransformer.from_pretrained, or remove its LayerNorms with"
            " remove_layernorm."
        )
    name = name or str(getattr(hf_config, "name_or_path", "") or "gpt2-noLN")
    cfg = _tl_config(hf_config, name)
    state = convert_gpt2_weights(hf_model, cfg)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    full = model.state_dict()  # buffers (masks) and GPT-2's absent unembedding bias (zeros)
    unknown = set(state) - set(full)
    if unknown:
        raise ValueError(
            f"hf_model has weights TransformerLens's GPT-2 lacks: {sorted(unknown)[:4]}."
        )
    full.update({k: v.detach().float().clone() for k, v in state.items()})
    model.load_state_dict(full, strict=True)
    # A published LayerNorm divides by sqrt(var + eps) ≈ sqrt(eps): fold that into its weight.
    divisor = eps**0.5
    install_fake_layernorms(model)
    for ln in fake_layernorms(model).values():
        ln.w.data /= divisor
        ln.set_sigma(1.0)
        ln.make_fake()
        ln.drop_special(bos=True, eot=True)
    return export_ln_free(model).to(device, print_details=False)


def load_published_ln_free(name: str, *, device: str = "cpu", **hf_kwargs: Any) -> Any:
    """Download a published LN-free GPT-2 by name and load it as an LN-free TransformerLens model.

    Args:
        name: A Hugging Face repository (see :data:`PUBLISHED_LN_FREE`) or a local folder saved
            with ``save_pretrained``.
        device: Where to put the model.
        **hf_kwargs: Passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``revision=``).

    Returns:
        A ``HookedTransformer`` with ``normalization_type=None`` and the repository's tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(name, **hf_kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError:  # a repository without tokenizer files: GPT-2's own
        tokenizer = AutoTokenizer.from_pretrained("gpt2")
    return from_hf_ln_free(hf_model, tokenizer, name=name, device=device)


__all__ = ["PUBLISHED_LN_FREE", "TRICK_SCALE", "from_hf_ln_free", "load_published_ln_free"]

"""A hand-built model with one known head-to-head channel, to check a tracer against.

Two layers, two heads each, attention only, LayerNorm with non-zero biases. In an orthonormal basis
of the centred residual space (so the LayerNorm's centring leaves every feature alone):

- every token embedding has a constant feature ``e_c``; the marker token (id 1) also has a large
  key feature ``e_k``; the other tokens have random features elsewhere;
- head ``L0H0`` (**A**) reads ``e_c`` as its value and writes ``e_a``, a direction nothing else
  writes;
- head ``L1H0`` (**B**) reads ``e_a`` on its query side and ``e_k`` on its key side: from every
  position it attends to the marker token. Its biases and its LayerNorm's bias are orthogonal to
  what it reads, so its QK form is rank one, ``Ω̃ ∝ [e_a; 0][e_k; 0]ᵀ``;
- head ``L0H1`` writes ``e_o``, which only ``L1H1`` reads.

So the query-side signal of B comes from A alone and its key-side signal from the token
embedding alone: a tracer started at B must find the head-to-head edge A → B and no other.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

MARKER = 1
"""The token B's key side reads."""


def planted_circuit(
    n_prompts: int = 4, n_pos: int = 8, seed: int = 0, sender: int = 0
) -> tuple[Any, Int[Tensor, "batch pos"]]:
    """``(model, tokens)``: the planted model and prompts with one marker token each.

    Every prompt starts with BOS (id 0) and holds the marker at a position in ``[2, n_pos - 2]``;
    tracing ``L1H0`` at the last position must give exactly the head edge ``L0H0 → L1H0``.
    ``sender=1`` swaps the roles of ``L0H0`` and ``L0H1`` (B then reads ``e_o``), a control.

    Examples:
        >>> model, tokens = planted_circuit()
        >>> tokens.shape, int((tokens == MARKER).sum())
        (torch.Size([4, 8]), 4)
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if sender not in (0, 1):
        raise ValueError(f"sender={sender!r} must be 0 or 1: the layer-0 head that B reads.")
    d_model, d_head, d_vocab = 12, 4, 16
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=d_model, n_heads=2, d_head=d_head, d_vocab=d_vocab, n_ctx=max(n_pos, 8),
        attn_only=True, normalization_type="LN", act_fn="relu", seed=seed,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(d_model, d_model - 1, generator=g)
    basis, _ = torch.linalg.qr(raw - raw.mean(0, keepdim=True))  # orthonormal, centred columns
    e_c, e_k, e_a, e_o = (basis[:, i] for i in range(4))
    noise = basis[:, 4:]  # features nobody's QK reads
    f = torch.tensor([1.0, 0.0, 0.0, 0.0])

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        embed = 0.5 * torch.randn(d_vocab, noise.shape[1], generator=g) @ noise.T
        embed += e_c
        embed[MARKER] += 3.0 * e_k
        model.W_E.copy_(embed)
        model.W_pos.copy_(0.3 * torch.randn(cfg.n_ctx, noise.shape[1], generator=g) @ noise.T)
        for block in model.blocks:
            block.ln1.w.fill_(1.0)
            block.ln1.b.copy_(0.2 * noise[:, 0] - 0.1 * noise[:, 1])
        model.ln_final.w.fill_(1.0)
        attn0, attn1 = model.blocks[0].attn, model.blocks[1].attn
        # Layer 0: A = L0H0 writes e_a, L0H1 writes e_o; both read e_c as their value.
        for head, target in ((0, e_a), (1, e_o)):
            attn0.W_V[head].copy_(torch.outer(e_c, f))
            attn0.W_O[head].copy_(3.0 * torch.outer(f, target))
            attn0.b_Q[head].copy_(torch.tensor([0.0, 0.5, 0.0, 0.0]))
            attn0.b_K[head].copy_(torch.tensor([0.0, 0.3, 0.0, 0.0]))  # uniform attention
            attn0.b_V[head].copy_(torch.tensor([0.2, 0.0, 0.1, 0.0]))
        attn0.b_O.copy_(0.1 * noise[:, 2])
        # Layer 1: B = L1H0 reads e_a (query) and e_k (key); L1H1 reads e_o and e_c.
        read = (e_a, e_o) if sender == 0 else (e_o, e_a)
        for head, query, key in ((0, read[0], e_k), (1, read[1], e_c)):
            attn1.W_Q[head].copy_(2.0 * torch.outer(query, f))
            attn1.W_K[head].copy_(2.0 * torch.outer(key, f))
            attn1.b_Q[head].copy_(torch.tensor([0.0, 0.4, 0.0, 0.0]))  # ⊥ f and ⊥ b_K
            attn1.b_K[head].copy_(torch.tensor([0.0, 0.0, 0.3, 0.0]))
            attn1.W_V[head].copy_(torch.outer(noise[:, 3], f))
            attn1.W_O[head].copy_(torch.outer(f, noise[:, 4]))
        attn1.b_O.copy_(0.1 * noise[:, 5])
        model.W_U.copy_(torch.randn(d_model, d_vocab, generator=g) / d_model**0.5)
        model.b_U.copy_(0.1 * torch.randn(d_vocab, generator=g))

    tokens = torch.randint(2, d_vocab, (n_prompts, n_pos), generator=g)
    tokens[:, 0] = 0
    where = torch.randint(2, n_pos - 1, (n_prompts,), generator=g)
    tokens[torch.arange(n_prompts), where] = MARKER
    return model, tokens


__all__ = ["MARKER", "planted_circuit"]

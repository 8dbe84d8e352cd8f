"""Entropy-neuron candidates from the weights: output norm, vocabulary variance and the share of
``w_out`` in the unembedding's near-null space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.protocol import HookedModel, mlp_hook_names, model_name

LN_SCALE_HOOK = "ln_final.hook_scale"
"""The final LayerNorm's scale, ``[batch, pos, 1]``: what an entropy neuron acts through."""

METRICS = ("entropy", "loss", "reciprocal_rank", "ln_scale")
"""What :func:`entropy_intervention` measures, each averaged over predicted positions."""

NeuronSpec = tuple[int, int] | Sequence[tuple[int, int]] | pd.DataFrame
"""One ``(layer, neuron)``, a list of them, or a table with ``layer`` and ``neuron`` columns
(e.g. the top rows of :func:`entropy_neuron_scores`)."""


# ---------------------------------------------------------------------------------------------
# Weight scores
# ---------------------------------------------------------------------------------------------


def default_null_space_dim(d_model: int) -> int:
    """``max(1, d_model // 20)``: about 5% of the residual width.

    That is 38 directions for GPT-2 small (d_model 768) and 51 for GPT-2 medium (1024), close to
    the bottom ~40 singular directions of GPT-2 small's ``W_U`` that follow-up work on entropy
    neurons treats as its effective null space.

    Examples:
        >>> default_null_space_dim(768), default_null_space_dim(32)
        (38, 1)
    """
    return max(1, int(d_model) // 20)


def _readout_gram(model: HookedModel) -> tuple[Float[Tensor, "d_model d_model"], bool]:
    """``R Rᵀ`` of the readout ``R`` (module docstring) in float64, and whether the final norm
    centres. Built a slice of the vocabulary at a time, so no ``[d_model, d_vocab]`` float64 copy of
    ``W_U`` is ever held."""
    W_U = model.W_U.detach()  # type: ignore[attr-defined]
    d_model, d_vocab = W_U.shape
    gram = torch.zeros(d_model, d_model, dtype=torch.float64)
    total = torch.zeros(d_model, dtype=torch.float64)
    step = max(1, 2**22 // d_model)
    for start in range(0, d_vocab, step):
        block = W_U[:, start : start + step].to("cpu", torch.float64)
        gram += block @ block.T
        total += block.sum(dim=1)
    # Centring over the vocabulary (a shift of every logit changes no probability):
    # W C_V Wᵀ = W Wᵀ - V μ μᵀ with μ the mean over the vocabulary.
    mean = total / d_vocab
    gram -= d_vocab * torch.outer(mean, mean)
    norm_type = getattr(model.cfg, "normalization_type", None)
    ln_final = getattr(model, "ln_final", None)
    if norm_type is None or ln_final is None:
        return gram, False
    weight = getattr(ln_final, "w", None)
    if isinstance(weight, Tensor):
        w = weight.detach().to("cpu", torch.float64)
        gram = w[:, None] * gram * w[None, :]
    centres = norm_type in ("LN", "LNPre") and not getattr(model.cfg, "final_rms", False)
    return gram, centres


def null_space_basis(
    model: HookedModel, null_space_dim: int | None = None
) -> tuple[Float[Tensor, "d_model k"], Float[Tensor, " k"]]:
    """Orthonormal basis of the readout's near-null space, with its singular values (ascending).

    The directions are the left singular vectors of the readout ``R`` (module docstring) with the
    ``null_space_dim`` smallest singular values. When the final norm centres the residual
    (LayerNorm), they are taken inside the zero-mean subspace, so the all-ones direction, which the
    LayerNorm removes before ``W_U`` sees anything, is not counted as "invisible to ``W_U``".
    They are eigenvectors of ``R Rᵀ`` (float64), so a singular value below about ``1e-8`` times the
    largest reads as 0.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu", seed=0))
        >>> basis, sv = null_space_basis(model, 2)
        >>> basis.shape, bool(torch.allclose(basis.T @ basis, torch.eye(2, dtype=basis.dtype)))
        (torch.Size([8, 2]), True)
    """
    gram, centres = _readout_gram(model)  # eigenvectors of R Rᵀ = left singular vectors of R
    d_model = gram.shape[0]
    k = default_null_space_dim(d_model) if null_space_dim is None else int(null_space_dim)
    available = d_model - 1 if centres else d_model
    if not 1 <= k <= available:
        raise ValueError(
            f"null_space_dim must be between 1 and {available} for {model_name(model)}"
            f" (d_model={d_model}{', minus the all-ones direction LayerNorm removes' * centres});"
            f" got {k}."
        )
    if centres:
        # Orthonormal basis of the zero-mean subspace: eigenvectors of the centring matrix with
        # eigenvalue 1 (the one eigenvalue 0 belongs to the all-ones direction).
        centring = torch.eye(d_model, dtype=torch.float64) - 1.0 / d_model
        _, vecs = torch.linalg.eigh(centring)
        sub = vecs[:, 1:]
        evals, evecs = torch.linalg.eigh(sub.T @ gram @ sub)
        basis = sub @ evecs[:, :k]
    else:
        evals, evecs = torch.linalg.eigh(gram)
        basis = evecs[:, :k]
    return basis, evals[:k].clamp_min(0).sqrt()


def entropy_neuron_scores(model: HookedModel, null_space_dim: int | None = None) -> pd.DataFrame:
    """Rank every MLP neuron as a candidate entropy neuron, from its weights.

    Columns: ``layer, neuron, w_out_norm`` (‖W_out[n]‖), ``vocab_var`` (variance over the vocabulary
    of cos(w_out, W_U[:, v]), from :func:`~tl_universality.analyses.vocab.vocab_moments`),
    ``null_space_share`` (share of ‖w_out‖² in the near-null space of the unembedding, see
    :func:`null_space_basis`), ``null_space_norm`` (= ``w_out_norm * sqrt(null_space_share)``,
    the norm of the part of ``w_out`` the unembedding cannot see) and ``rank`` (1 = best).
    Rows are sorted by ``null_space_norm``, descending: an entropy neuron writes a lot, and writes
    it where ``W_U`` is blind. Anti-entropy neurons rank the same way; the sign of their effect
    shows in :func:`entropy_intervention`. ``table.attrs`` records ``null_space_dim`` and the
    near-null singular values.

    Args:
        model: Any TransformerLens model with MLPs.
        null_space_dim: How many of the smallest singular directions span the near-null space
            (default :func:`default_null_space_dim`, about 5% of ``d_model``).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu", seed=0))
        >>> table = entropy_neuron_scores(model, null_space_dim=2)
        >>> list(table.columns)[:5], len(table)
        (['layer', 'neuron', 'w_out_norm', 'vocab_var', 'null_space_share'], 32)
    """
    from tl_universality.analyses.vocab import vocab_moments

    mlp_hook_names(model)  # clear NoUnitsError for attention-only models
    basis, singular_values = null_space_basis(model, null_space_dim)
    W_out = model.W_out.detach().to("cpu", torch.float64)  # type: ignore[attr-defined]
    n_layers, d_mlp, _ = W_out.shape
    norm2 = W_out.pow(2).sum(-1)
    null2 = (W_out @ basis).pow(2).sum(-1)
    share = torch.where(norm2 > 0, null2 / norm2.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    table = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers, dtype=np.int64), d_mlp),
            "neuron": np.tile(np.arange(d_mlp, dtype=np.int64), n_layers),
            "w_out_norm": norm2.sqrt().reshape(-1).numpy(),
            "null_space_share": share.reshape(-1).numpy(),
            "null_space_norm": null2.sqrt().reshape(-1).numpy(),
        }
    )
    vocab = vocab_moments(model)[["layer", "neuron", "vocab_var"]]
    table = table.merge(vocab, on=["layer", "neuron"], how="left")
    table = table[
        ["layer", "neuron", "w_out_norm", "vocab_var", "null_space_share", "null_space_norm"]
    ]
    table = table.sort_values("null_space_norm", ascending=False, kind="stable")
    table = table.reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    table.attrs["null_space_dim"] = int(basis.shape[1])
    table.attrs["null_space_singular_values"] = singular_values.tolist()
    return table

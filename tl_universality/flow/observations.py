"""VISIT's two observations as measurements over a token stream.

**LayerNorm as a semantic filter.** Read a residual vector ``v`` twice: *raw*, straight through
the unembedding (``softmax(v @ W_U + b_U)``), and *normalised*, through the final LayerNorm first
(``softmax(LN_final(v) @ W_U + b_U)``). VISIT saw function words (articles, prepositions,
pronouns, auxiliaries) lose probability in the second reading and content words gain it. For a
token set ``S`` the measure is the probability mass on ``S`` in each reading and its change
``mass_ln - mass_raw``; :func:`layernorm_filter` averages it over every non-BOS position of a token
stream, per layer. Function words are the closed-class list :data:`FUNCTION_WORDS`; content words
are the other alphabetic tokens of three letters or more. For a model without LayerNorm the two
readings are the same and the change is 0.

**Always-on neurons.** Some late neurons fire on almost every token and write a vector whose
vocabulary reading is close to uniform (a bias-like, regularising role rather than a token-specific
one). :func:`always_on_neurons` measures per neuron the activation frequency (share of tokens with
``act > 0``), the mean activation, ``‖W_out[n]‖`` and the normalised entropy of the reading of
``W_out[n]`` through the final LN and ``W_U`` (own scale; 1 = uniform), and flags neurons above
both thresholds.

Examples:
    >>> function, content = word_class_masks([" the", " of", " river", "ing", " cat", "."])
    >>> function.tolist(), content.tolist()
    ([True, True, False, False, False, False], [False, False, True, True, True, False])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_universality.core.protocol import HookedModel, mlp_hook_names
from tl_universality.flow.readout import token_strings, vector_logits

FUNCTION_WORDS = frozenset(
    """a an the this that these those some any each every no all both either neither
    of in on at by for with from to into onto upon over under about above below between among
    through during before after since until against without within along across behind beyond
    and or but nor so yet if then than because although though while whereas unless whether
    as like not
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves who whom whose
    which what where when why how there here
    is am are was were be been being have has had having do does did doing will would shall
    should can could may might must""".split()
)
"""Closed-class English words: determiners, prepositions, conjunctions, pronouns, auxiliaries."""


def word_class_masks(
    model_or_strings: HookedModel | Sequence[str],
) -> tuple[Bool[np.ndarray, " d_vocab"], Bool[np.ndarray, " d_vocab"]]:
    """``(function, content)`` masks over the vocabulary (module docstring for the rule).

    A token counts by its stripped, lower-cased string: " The" is a function word, "ing" (a
    word piece of letters) a content token.
    """
    if isinstance(model_or_strings, Sequence) and not hasattr(model_or_strings, "cfg"):
        strings = list(model_or_strings)
    else:
        strings = token_strings(model_or_strings)  # type: ignore[arg-type]
    words = [s.strip().lower() for s in strings]
    function = np.array([w in FUNCTION_WORDS for w in words], dtype=bool)
    content = np.array(
        [w.isascii() and w.isalpha() and len(w) >= 3 and w not in FUNCTION_WORDS for w in words],
        dtype=bool,
    )
    return function, content


def filter_masses(
    model: HookedModel,
    vectors: Float[Tensor, "n d_model"],
    masks: tuple[Bool[np.ndarray, " d_vocab"], Bool[np.ndarray, " d_vocab"]] | None = None,
) -> pd.DataFrame:
    """Per vector: probability mass on function and content words, raw and after the final LN.

    Returns columns ``function_raw, function_ln, function_delta, content_raw, content_ln,
    content_delta`` (``delta = ln - raw``).
    """
    function, content = masks if masks is not None else word_class_masks(model)
    W_U = model.W_U  # type: ignore[attr-defined]
    b_U = getattr(model, "b_U", None)
    with torch.no_grad():
        vectors = vectors.detach().to(W_U.dtype)
        raw = vectors @ W_U + (b_U if b_U is not None else 0.0)
        normed = vector_logits(model, vectors, mode="own")
        p_raw, p_ln = raw.float().softmax(-1), normed.float().softmax(-1)
    out = {}
    for name, mask in (("function", function), ("content", content)):
        m = torch.as_tensor(mask, device=p_raw.device)
        out[f"{name}_raw"] = p_raw[:, m].sum(-1).cpu().numpy().astype(float)
        out[f"{name}_ln"] = p_ln[:, m].sum(-1).cpu().numpy().astype(float)
        out[f"{name}_delta"] = out[f"{name}_ln"] - out[f"{name}_raw"]
    return pd.DataFrame(out)


def layernorm_filter(
    model: HookedModel,
    tokens: Any = None,
    *,
    hook: str = "hook_resid_post",
    batch_size: int = 32,
    max_tokens: int | None = None,
    progress: bool = True,
    bos_token_id: int | None = None,
) -> pd.DataFrame:
    """The LayerNorm filter per layer, averaged over a token stream (module docstring).

    Args:
        model: The model whose residuals are read.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` accepts
            (``None``: the embedded corpus).
        hook: The residual hook of every block to read (``hook_resid_pre``, ``hook_resid_mid``
            or ``hook_resid_post``).
        batch_size, max_tokens, progress, bos_token_id: As for
            :func:`~tl_universality.units.activations.stream_activations`.

    Returns:
        One row per layer: ``layer, hook, n_tokens`` and the means of the
        :func:`filter_masses` columns.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=8, d_head=4, d_vocab=10,
        ...                               act_fn="relu", seed=0, normalization_type=None)
        >>> toks = torch.randint(1, 10, (4, 8)); toks[:, 0] = 0
        >>> table = layernorm_filter(HookedTransformer(cfg), toks, bos_token_id=0,
        ...                          progress=False)
        >>> table["n_tokens"].tolist(), float(table["function_delta"].abs().max())
        ([28, 28], 0.0)
    """
    from tl_universality.units.activations import stream_activations

    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    units = [f"blocks.{layer}.{hook}" for layer in range(n_layers)]
    masks = word_class_masks(model)
    sums: np.ndarray | None = None
    n_tokens = 0
    columns: list[str] = []
    for batch in stream_activations(
        model, tokens, units=units, batch_size=batch_size, max_tokens=max_tokens,
        progress=progress, bos_token_id=bos_token_id,
    ):  # fmt: skip
        acts = batch.acts[0].reshape(-1, n_layers, d_model)
        per_layer = []
        for layer in range(n_layers):
            frame = filter_masses(model, acts[:, layer], masks)
            columns = list(frame.columns)
            per_layer.append(frame.to_numpy().sum(0))
        block = np.stack(per_layer)
        sums = block if sums is None else sums + block
        n_tokens += acts.shape[0]
    if sums is None or n_tokens == 0:
        raise ValueError("tokens gave no position to read. Pass a non-empty token stream.")
    table = pd.DataFrame(sums / n_tokens, columns=columns)
    table.insert(0, "n_tokens", n_tokens)
    table.insert(0, "hook", hook)
    table.insert(0, "layer", range(n_layers))
    return table


def always_on_neurons(
    model: HookedModel,
    tokens: Any = None,
    *,
    freq_threshold: float = 0.9,
    uniformity_threshold: float = 0.9,
    batch_size: int = 32,
    max_tokens: int | None = None,
    progress: bool = True,
    bos_token_id: int | None = None,
) -> pd.DataFrame:
    """Activation frequency and vocabulary uniformity of every MLP neuron (module docstring).

    Args:
        model: The model.
        tokens: The token stream (as for :func:`layernorm_filter`).
        freq_threshold: Activation frequency at or above which a neuron is "on" almost always.
        uniformity_threshold: Normalised entropy of ``W_out[n]``'s reading at or above which
            its projection counts as near-uniform.
        batch_size, max_tokens, progress, bos_token_id: As for
            :func:`~tl_universality.units.activations.stream_activations`.

    Returns:
        One row per neuron: ``layer, neuron, act_freq, mean_act, w_out_norm, vocab_entropy``
        (entropy / log d_vocab) and ``always_on``.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=10,
        ...                               d_mlp=16, act_fn="relu", seed=0)
        >>> toks = torch.randint(1, 10, (4, 8)); toks[:, 0] = 0
        >>> table = always_on_neurons(HookedTransformer(cfg), toks, bos_token_id=0,
        ...                           progress=False)
        >>> len(table), bool(table["act_freq"].between(0, 1).all())
        (16, True)
    """
    from tl_universality.units.activations import stream_activations

    mlp_hook_names(model)  # a clear error for attention-only models
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    fired = torch.zeros(n_layers * d_mlp, dtype=torch.float64)
    total = torch.zeros(n_layers * d_mlp, dtype=torch.float64)
    n_tokens = 0
    for batch in stream_activations(
        model, tokens, batch_size=batch_size, max_tokens=max_tokens, progress=progress,
        bos_token_id=bos_token_id,
    ):  # fmt: skip
        acts = batch.acts[0].double().cpu()
        fired += (acts > 0).sum(0)
        total += acts.sum(0)
        n_tokens += acts.shape[0]
    if n_tokens == 0:
        raise ValueError("tokens gave no position to read. Pass a non-empty token stream.")
    W_out = model.W_out.detach()  # type: ignore[attr-defined]  # [layers, d_mlp, d_model]
    with torch.no_grad():
        entropy = []
        for layer in range(n_layers):
            logits = vector_logits(model, W_out[layer], mode="own").float()
            log_p = logits.log_softmax(-1)
            entropy.append(-(log_p.exp() * log_p).sum(-1))
        vocab_entropy = torch.cat(entropy).cpu().numpy() / math.log(int(model.cfg.d_vocab))
    table = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers), d_mlp),
            "neuron": np.tile(np.arange(d_mlp), n_layers),
            "act_freq": (fired / n_tokens).numpy(),
            "mean_act": (total / n_tokens).numpy(),
            "w_out_norm": W_out.norm(dim=-1).flatten().cpu().numpy().astype(float),
            "vocab_entropy": vocab_entropy.astype(float),
        }
    )
    table["always_on"] = (table["act_freq"] >= freq_threshold) & (
        table["vocab_entropy"] >= uniformity_threshold
    )
    return table

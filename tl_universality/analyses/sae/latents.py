"""Analyses with SAE latents as units: latent universality, neuron-latent correlation,
decoder similarity and the unit table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.protocol import HookedModel
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.units.sae import SAEUnits
from tl_universality.units.specs import PerModel

# -- analyses that only make sense with SAEs -----------------------------------------------------

SAELike = Any
"""A sae-lens ``SAE`` (read at its own hook, observed) or an :class:`SAEUnits`."""

#: Hooks whose activations live in the residual stream basis, so an SAE decoder direction there
#: can be read through the unembedding.
_RESIDUAL_SITE = re.compile(r"(hook_resid_(pre|mid|post)|hook_mlp_out|hook_attn_out|hook_embed)$")


def _as_units(sae: SAELike) -> SAEUnits:
    return sae if isinstance(sae, SAEUnits) else SAEUnits(sae)


def _sae_of(sae: SAELike) -> Any:
    return sae.sae if isinstance(sae, SAEUnits) else sae


def latent_universality(
    models: Sequence[HookedModel],
    saes: Sequence[SAELike],
    tokens: Tokens = None,
    **correlate_kwargs: Any,
) -> Any:
    """Universality of SAE latents: every latent of ``models[0]``'s SAE against each other seed's.

    Each model reads its own SAE's latents as its units (``saes[i]`` belongs to ``models[i]``) and
    :func:`~tl_universality.analyses.correlation.correlate` does the rest, exactly as for neurons:
    per
    reference latent and other model the max correlation, the chance baseline (by default the
    other SAE's latents mixed by a random rotation) and ``excess_corr``; with the paper's
    threshold, ``result.is_universal(0.5)`` marks the universal latents. In the result's tables
    ``layer`` is the SAE hook's block and ``neuron`` the latent index.

    Args:
        models: the seed models, reference first (at least two).
        saes: one SAE (or :class:`SAEUnits`) per model, in the same order.
        tokens: anything :func:`~tl_universality.data.tokens.as_token_source` accepts.
        **correlate_kwargs: passed on to :func:`~tl_universality.analyses.correlation.correlate`
            (``baseline``, ``n_draws``, ``keep_matrix``, ``max_tokens``, ``bos_token_id``, ...).

    Returns:
        A :class:`~tl_universality.analyses.correlation.CorrelationResult` over latents.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               act_fn="relu", seed=0)
        >>> a, b = HookedTransformer(cfg), HookedTransformer(cfg)  # same weights
        >>> _ = torch.manual_seed(0)
        >>> sae = SAEUnits(StandardSAE(StandardSAEConfig(d_in=16, d_sae=32)),
        ...                "blocks.0.hook_resid_post")
        >>> toks = torch.randint(1, 20, (16, 8)); toks[:, 0] = 0
        >>> result = latent_universality([a, b], [sae, sae], toks, bos_token_id=0, n_draws=1,
        ...                              progress=False)
        >>> result.units.widths, bool((result.max_corr.nan_to_num(1.0) > 0.999).all())
        ((32,), True)
    """
    from tl_universality.analyses.correlation import correlate

    models = list(models)
    if len(models) < 2 or len(saes) != len(models):
        raise ValueError(
            f"latent_universality needs at least two models and one SAE per model; got"
            f" {len(models)} models and {len(saes)} SAEs."
        )
    units = PerModel([_as_units(sae) for sae in saes])
    return correlate(models[0], models[1:], tokens, units=units, **correlate_kwargs)


def _top_matches(result: Any, row: int) -> pd.DataFrame:
    """The top-k matches of reference unit ``row`` in ``result``'s (only) other unit set."""
    corr = result.top_corr[0, row].numpy()
    flat = result.top_index[0, row].numpy()
    ok = flat >= 0
    located = [result.other_units[0].locate(int(f)) for f in flat[ok]]
    return pd.DataFrame(
        {
            "rank": np.arange(int(ok.sum()), dtype=np.int64),
            "layer": np.array([loc[0] for loc in located], dtype=np.int64),
            "neuron": np.array([loc[1] for loc in located], dtype=np.int64),
            "corr": corr[ok],
        }
    )


@dataclass
class NeuronLatentCorrelation:
    """Neuron ↔ latent correlations inside one model, read from either side.

    Attributes:
        by_latent: a ``CorrelationResult`` whose rows are the SAE's latents and whose other units
            are the neurons: a latent's best matches (``top_corr``/``top_index``,
            ``max_corr``/``argmax``) are the neurons it is made of.
        by_neuron: rows are the neurons, other units the latents: a neuron's best matches are the
            features it carries.

    Both come from the same statistics, accumulated in one pass over the tokens.
    """

    by_latent: Any
    by_neuron: Any

    def neurons_of_latent(self, latent: int) -> pd.DataFrame:
        """The neurons most correlated with ``latent``: ``rank, layer, neuron, corr``."""
        return _top_matches(self.by_latent, int(latent))

    def latents_of_neuron(self, layer: int, neuron: int) -> pd.DataFrame:
        """The latents most correlated with neuron ``(layer, neuron)``: ``rank, layer, neuron,
        corr``, where ``neuron`` is the latent index and ``layer`` the SAE hook's block."""
        return _top_matches(self.by_neuron, self.by_neuron.units.flat(layer, neuron))


def neuron_latent_correlation(
    model: HookedModel,
    sae: SAELike,
    tokens: Tokens = None,
    *,
    neurons: Any = None,
    **correlate_kwargs: Any,
) -> NeuronLatentCorrelation:
    """Correlate an SAE's latents with the neurons of the model it reads.

    Which neurons is a feature made of, and which features does a (universal) neuron carry? Every
    latent is correlated with every neuron over ``tokens`` by
    :func:`~tl_universality.analyses.correlation.correlate` (``all_pairs=True``, so both
    directions, each
    with its own chance baseline, come from one set of statistics).

    Args:
        model: the model.
        sae: its SAE (or :class:`SAEUnits`), observed only.
        tokens: anything :func:`~tl_universality.data.tokens.as_token_source` accepts.
        neurons: the neuron units (any :data:`~tl_universality.units.activations.UnitsSpec`; default
            every layer's ``mlp.hook_post``).
        **correlate_kwargs: passed on to ``correlate`` (``top_k``, ``baseline``, ``n_draws``,
            ``keep_matrix``, ``max_tokens``, ``bos_token_id``, ...).

    Returns:
        A :class:`NeuronLatentCorrelation`.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="relu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=32))
        >>> with torch.no_grad():  # latents = the neurons themselves
        ...     _ = sae.W_enc.copy_(torch.eye(32)), sae.W_dec.copy_(torch.eye(32))
        >>> toks = torch.randint(1, 20, (16, 8)); toks[:, 0] = 0
        >>> nl = neuron_latent_correlation(model, SAEUnits(sae, "blocks.0.mlp.hook_pre"), toks,
        ...                                bos_token_id=0, n_draws=1, progress=False)
        >>> top = nl.neurons_of_latent(3)
        >>> int(top.loc[0, "neuron"]), round(float(top.loc[0, "corr"]), 4)
        (3, 1.0)
    """
    from tl_universality.analyses.correlation import correlate

    if correlate_kwargs.pop("all_pairs", True) is not True:
        raise ValueError("neuron_latent_correlation always correlates both ways (all_pairs).")
    names = correlate_kwargs.pop("names", ("latents", "neurons"))
    # The engine takes one unit set per model, so the model is passed twice; it runs two forward
    # passes per batch (one per unit set), observing only.
    by_latent, by_neuron = correlate(
        model,
        [model],
        tokens,
        units=PerModel([_as_units(sae), neurons]),
        all_pairs=True,
        names=names,
        **correlate_kwargs,
    )
    return NeuronLatentCorrelation(by_latent, by_neuron)


def _unit_rows(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    from tl_universality.analyses.vocab import safe_inverse

    return x * safe_inverse(x.norm(dim=1))[:, None]


def _decoder_space(sae: Any, model: HookedModel | None) -> Float[Tensor, "d_sae space"]:
    """Decoder rows in float64, read through ``model``'s unembedding when a model is given."""
    w_dec = sae.W_dec.detach().to("cpu", torch.float64)
    if model is None:
        return w_dec
    from tl_universality.analyses.vocab import unembed

    logits = w_dec @ unembed(model)
    # A shift of every logit by the same amount changes no prediction: compare the rest.
    return logits - logits.mean(dim=1, keepdim=True)


def decoder_similarity(
    sae_a: SAELike,
    sae_b: SAELike,
    matches: Any,
    *,
    models: tuple[HookedModel, HookedModel] | None = None,
    other: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Cosine of the decoder directions of matched latents, next to random pairs' (a baseline).

    A weight-based second view of a match found by correlating activations: if latent ``i`` of
    ``sae_a`` and latent ``j`` of ``sae_b`` are the same feature, their decoder rows ``W_dec[i]``
    and ``W_dec[j]`` should point the same way.

    Raw decoder rows are only comparable when both SAEs read the same space (two SAEs of one
    model). SAEs of *different* models (seeds) write into residual streams with unrelated bases;
    pass ``models=(model_a, model_b)`` to compare the directions' direct effects on the logits
    instead, ``W_dec[i] @ W_U`` centred over the vocabulary, which live in the shared vocabulary
    (meaningful for SAEs on the residual stream or an MLP/attention output).

    Args:
        sae_a: the SAE whose latents are the rows (the reference, ``models[0]``'s).
        sae_b: the SAE they are matched in.
        matches: a ``CorrelationResult`` over ``sae_a``'s latents (from
            :func:`latent_universality`; its ``argmax`` for model ``other`` gives the match), an
            ``[n, 2]`` array of ``(latent_a, latent_b)`` pairs, or a 1-D array giving the match
            of every latent of ``sae_a`` (-1 for none).
        models: ``(model_a, model_b)`` to compare through the unembeddings (see above).
        other: which other model of a ``CorrelationResult`` ``sae_b`` belongs to.
        seed: seed of the random pairs.

    Returns:
        One row per pair: ``latent_a, latent_b, dec_cos`` (cosine of the matched directions, NaN
        without a match), ``random_dec_cos`` (cosine of ``latent_a`` with a random latent of
        ``sae_b``: what an unrelated pair gives), and with a ``CorrelationResult`` also
        ``max_corr`` and ``excess_corr``.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> _ = torch.manual_seed(0)
        >>> a = StandardSAE(StandardSAEConfig(d_in=16, d_sae=8))
        >>> sims = decoder_similarity(a, a, torch.arange(8))  # every latent matched to itself
        >>> sims["dec_cos"].round(6).tolist() == [1.0] * 8
        True
    """
    sae_a, sae_b = _sae_of(sae_a), _sae_of(sae_b)
    model_a, model_b = models if models is not None else (None, None)
    dir_a, dir_b = _decoder_space(sae_a, model_a), _decoder_space(sae_b, model_b)
    if dir_a.shape[1] != dir_b.shape[1]:
        raise ValueError(
            f"The decoders live in spaces of different widths ({dir_a.shape[1]} and"
            f" {dir_b.shape[1]}); compare SAEs of the same site, or pass models= to compare"
            " through the unembeddings (models sharing a vocabulary)."
        )
    extra: dict[str, np.ndarray] = {}
    if hasattr(matches, "argmax") and hasattr(matches, "max_corr"):
        n_ref, n_other = matches.units.n_units, matches.other_units[other].n_units
        if (n_ref, n_other) != (dir_a.shape[0], dir_b.shape[0]):
            raise ValueError(
                f"The correlation result has {n_ref} reference units and {n_other} units in model"
                f" {other}, but the SAEs have {dir_a.shape[0]} and {dir_b.shape[0]} latents; pass"
                " the result of latent_universality for these SAEs."
            )
        pairs = np.stack([np.arange(n_ref), matches.argmax[other].numpy()], axis=1)
        extra = {
            "max_corr": matches.max_corr[other].numpy(),
            "excess_corr": matches.excess_correlation.numpy(),
        }
    else:
        arr = np.asarray(matches.numpy() if isinstance(matches, Tensor) else matches)
        if arr.ndim == 1:
            pairs = np.stack([np.arange(arr.shape[0]), arr], axis=1)
        elif arr.ndim == 2 and arr.shape[1] == 2:
            pairs = arr
        else:
            raise ValueError(
                f"matches must be a CorrelationResult, [n, 2] pairs or a 1-D match per latent,"
                f" not an array of shape {arr.shape}."
            )
    pairs = pairs.astype(np.int64)
    la, lb = pairs[:, 0], pairs[:, 1]
    if (
        (la < 0).any()
        or la.max(initial=-1) >= dir_a.shape[0]
        or lb.max(initial=-1) >= dir_b.shape[0]
    ):
        raise IndexError("A latent index is out of range of its SAE.")
    unit_a, unit_b = _unit_rows(dir_a), _unit_rows(dir_b)
    matched = lb >= 0
    cos = np.full(len(pairs), np.nan)
    idx_a, idx_b = torch.from_numpy(la[matched]), torch.from_numpy(lb[matched])
    cos[matched] = (unit_a[idx_a] * unit_b[idx_b]).sum(1).numpy()
    generator = torch.Generator().manual_seed(seed)
    random_b = torch.randint(0, dir_b.shape[0], (len(pairs),), generator=generator)
    random_cos = (unit_a[torch.from_numpy(la)] * unit_b[random_b]).sum(1).numpy()
    # Zero decoder rows have no direction: NaN rather than a misleading 0.
    zero_a = (dir_a.norm(dim=1) == 0).numpy()[la]
    cos[zero_a] = np.nan
    random_cos[zero_a] = np.nan
    table = pd.DataFrame(
        {"latent_a": la, "latent_b": lb, "dec_cos": cos, "random_dec_cos": random_cos}
    )
    for name, values in extra.items():
        table[name] = values
    return table


def sae_unit_stats(
    model: HookedModel,
    sae: SAELike,
    tokens: Tokens = None,
    *,
    correlation: Any = None,
    batch_size: int = 32,
    progress: bool = False,
    **stream_kwargs: Any,
) -> pd.DataFrame:
    """The unit table for SAE latents: one row per latent, the neuron table's columns where they
    mean something.

    Columns (latents are addressed like neurons: ``layer`` is the SAE hook's block, ``neuron``
    the latent index, so correlation results join on them):

    - weights: ``dec_norm`` = ‖W_dec[i]‖, ``enc_norm`` = ‖W_enc[:, i]‖, ``enc_bias`` = b_enc[i]
      (NaN for architectures without one), ``enc_dec_sim`` = cos(W_enc[:, i], W_dec[i]);
    - vocabulary composition of the decoder direction, c_v = cos(W_dec[i], W_U[:, v]):
      ``vocab_mean, vocab_var, vocab_skew, vocab_kurt`` (population moments, kurtosis not
      excess). Only defined for SAEs that read the residual stream or an MLP/attention output
      (the decoder then writes in the residual basis); NaN elsewhere. As for neurons, this
      assumes processed weights (``W_U`` with the final LayerNorm folded in);
    - with ``tokens``: ``post_mean, post_var, post_skew, post_kurt`` of the latent activation and
      ``act_freq``, the share of tokens on which it fires (> 0), exact streaming moments
      (:class:`~tl_universality.stats.moments.Moments`); ``table.attrs["n_tokens"]`` is the count;
    - with ``correlation`` (e.g. from :func:`latent_universality`): its columns joined on
      ``layer, neuron`` (``excess_corr, is_universal, max_corr, ...``).

    Args:
        model: the model the SAE reads.
        sae: the SAE (or :class:`SAEUnits`).
        tokens: token source for activation statistics (``None`` skips them).
        correlation: a correlation result over these latents to join.
        batch_size, progress: streaming settings.
        **stream_kwargs: passed to ``stream_activations`` (``max_tokens``, ``bos_token_id``, ...).

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               act_fn="relu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> sae = SAEUnits(StandardSAE(StandardSAEConfig(d_in=16, d_sae=24)),
        ...                "blocks.0.hook_mlp_out")
        >>> toks = torch.randint(1, 20, (4, 8)); toks[:, 0] = 0
        >>> table = sae_unit_stats(model, sae, toks, bos_token_id=0)
        >>> table.shape, table.attrs["n_tokens"]
        ((24, 15), 28)
    """
    from tl_universality.analyses.neuron_stats import join_correlation
    from tl_universality.analyses.vocab import direction_vocab_moments, safe_inverse
    from tl_universality.stats.moments import Moments
    from tl_universality.units.activations import stream_activations

    units = _as_units(sae)
    raw = units.sae
    layer = int(units_layer(units))
    w_dec = raw.W_dec.detach().to("cpu", torch.float64)
    w_enc = raw.W_enc.detach().to("cpu", torch.float64)
    d_sae = w_dec.shape[0]
    dec_norm, enc_norm = w_dec.norm(dim=1), w_enc.norm(dim=0)
    b_enc = getattr(raw, "b_enc", None)
    table = pd.DataFrame(
        {
            "layer": np.full(d_sae, layer, dtype=np.int64),
            "neuron": np.arange(d_sae, dtype=np.int64),
            "dec_norm": dec_norm.numpy(),
            "enc_norm": enc_norm.numpy(),
            "enc_bias": (
                b_enc.detach().to("cpu", torch.float64).numpy()
                if isinstance(b_enc, Tensor) and b_enc.shape == (d_sae,)
                else np.full(d_sae, np.nan)
            ),
            "enc_dec_sim": (
                (w_enc.T * w_dec).sum(1) * safe_inverse(enc_norm) * safe_inverse(dec_norm)
            ).numpy(),
        }
    )
    vocab = {name: np.full(d_sae, np.nan) for name in _VOCAB_COLUMNS}
    if _RESIDUAL_SITE.search(units.hook_name) and w_dec.shape[1] == int(model.cfg.d_model):
        moments = direction_vocab_moments(model, w_dec)
        vocab = {name: moments[name].to_numpy() for name in _VOCAB_COLUMNS}
    for name, values in vocab.items():
        table[name] = values
    if tokens is not None:
        moments = Moments.zeros(d_sae)
        for batch in stream_activations(
            model, tokens, units=units, batch_size=batch_size, progress=progress, **stream_kwargs
        ):
            moments.update(batch.acts[0].to("cpu"))
        columns = {
            "post_mean": moments.mean,
            "post_var": moments.var,
            "post_skew": moments.skew,
            "post_kurt": moments.kurt,
            "act_freq": moments.freq,
        }
        for name, values in columns.items():
            table[name] = values.numpy()
        table.attrs["n_tokens"] = int(moments.n)
    table.attrs["hook_name"] = units.hook_name
    if correlation is not None:
        table = join_correlation(table, correlation)
    return table


_VOCAB_COLUMNS = ("vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")


def units_layer(units: SAEUnits) -> int:
    """The block an SAE's hook belongs to (its ``layer`` in unit tables; -1 outside blocks).

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> units_layer(SAEUnits(StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)),
        ...                      "blocks.3.hook_mlp_out"))
        3
    """
    match = re.match(r"^blocks\.(\d+)\.", units.hook_name)
    return int(match.group(1)) if match else -1

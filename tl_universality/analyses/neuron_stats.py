"""The neuron table: one row of weight, vocabulary and activation statistics per MLP neuron.

This is the paper's second step (docs/concepts.md, "The neuron table"): characterise every neuron
so that universal
neurons can be compared with the rest (they fire more sparsely, have heavier-tailed activations
and larger weight norms). :func:`neuron_stats` builds the table, optionally streaming exact
activation moments over a token source and joining a correlation result;
:func:`weight_cosines` gives neuron-to-neuron weight similarities between two layers.

Weight conventions: statistics are read from the weights as the model holds them and assume
TransformerLens's processed weights, the defaults of ``HookedTransformer.from_pretrained``:

- ``fold_ln=True``: the LayerNorm before the MLP is folded into ``W_in``/``b_in`` (so
  ``w_in_norm`` and ``input_bias`` are those of the map from the normalised residual) and the
  final LayerNorm into ``W_U`` (vocabulary composition);
- ``center_writing_weights=True``: each ``W_out`` row has zero mean over ``d_model``, the part of
  ``w_out`` the next LayerNorm would remove anyway (``w_out_norm``, ``in_out_sim``);
- ``center_unembed=True``: ``W_U`` has zero mean over the vocabulary (vocabulary moments).

A model that breaks them (``normalization_type="LN"``, uncentred weights) gets a warning saying
which; call ``model.process_weights_()`` first. Activations do not depend on the processing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.analyses.vocab import (
    LayersSpec,
    block_weight,
    resolve_layers,
    safe_inverse,
    vocab_moments,
    w_in,
    w_out,
    warn_if_unprocessed,
)
from tl_universality.core.errors import HookError
from tl_universality.core.protocol import HookedModel, check_hooks_exist, model_name
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.stats.moments import Moments

WEIGHT_COLUMNS = ("w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty")
VOCAB_COLUMNS = ("vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")
ACTIVATION_COLUMNS = (
    "mean",
    "var",
    "skew",
    "kurt",
    "act_freq",
    "post_mean",
    "post_var",
    "post_skew",
    "post_kurt",
)
"""``mean, var, skew, kurt`` are the pre-activation's (``mlp.hook_pre``) population moments,
kurtosis not excess; ``act_freq`` the share of tokens with pre-activation > 0; ``post_*`` the
same moments of the post-activation (``mlp.hook_post``)."""


def weight_stats(model: HookedModel, layers: LayersSpec = None) -> pd.DataFrame:
    """Per-neuron weight statistics (float64), one row per (layer, neuron).

    Columns: ``w_in_norm`` = ‖W_in[:, n]‖, ``input_bias`` = b_in[n], ``w_out_norm`` = ‖W_out[n]‖,
    ``in_out_sim`` = cos(W_in[:, n], W_out[n]), ``l2_penalty`` = ‖w_in‖² + ‖w_out‖²; for gated
    MLPs also ``w_gate_norm`` (the gate computes the pre-activation there). No processing check
    here: :func:`neuron_stats` warns.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", seed=0)
        >>> weight_stats(HookedTransformer(cfg)).shape
        (64, 7)
    """
    frames = []
    for layer in resolve_layers(model, layers):
        W_in, W_out = w_in(model, layer), w_out(model, layer)
        b_in = block_weight(model, layer, "mlp", "b_in").detach().to("cpu", torch.float64)
        in_norm, out_norm = W_in.norm(dim=0), W_out.norm(dim=1)
        cos = (W_in.T * W_out).sum(dim=1) * safe_inverse(in_norm) * safe_inverse(out_norm)
        columns: dict[str, Any] = {
            "layer": np.full(W_out.shape[0], layer, dtype=np.int64),
            "neuron": np.arange(W_out.shape[0], dtype=np.int64),
            "w_in_norm": in_norm.numpy(),
            "input_bias": b_in.numpy(),
            "w_out_norm": out_norm.numpy(),
            "in_out_sim": cos.numpy(),
            "l2_penalty": (in_norm**2 + out_norm**2).numpy(),
        }
        if getattr(model.cfg, "gated_mlp", False):
            W_gate = block_weight(model, layer, "mlp", "W_gate").detach().to("cpu", torch.float64)
            columns["w_gate_norm"] = W_gate.norm(dim=0).numpy()
        frames.append(pd.DataFrame(columns))
    return pd.concat(frames, ignore_index=True)


def activation_moments(
    model: HookedModel,
    tokens: Tokens,
    layers: LayersSpec = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
    **stream_kwargs: Any,
) -> tuple[Moments, Moments]:
    """Exact streaming moments of every neuron's pre- and post-activation, one forward per batch.

    The pre-activations come from :func:`~tl_universality.units.activations.stream_activations`
    (which
    handles the token source, BOS/padding exclusion and hook checks); the post-activations of the
    same forward pass are read by extra scoped hooks on ``mlp.hook_post`` and masked the same way.

    Args:
        model: the model.
        tokens: anything ``stream_activations`` accepts (a ``[n_seq, seq]`` tensor whose rows start
            with BOS, a file, ``None`` for the default corpus, a ``TokenSource``).
        layers: layer(s) to include (default all); units are ordered layer by layer.
        batch_size, progress: passed to ``stream_activations``.
        **stream_kwargs: further ``stream_activations`` arguments (``max_tokens``,
            ``exclude_token_ids``, ``seq_len``, ``device``, ...).

    Returns:
        ``(pre, post)`` :class:`~tl_universality.stats.moments.Moments` over ``[layers × d_mlp]``
        units;
        ``pre.freq`` is the share of tokens with pre-activation > 0.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", seed=0)
        >>> toks = torch.randint(1, 20, (3, 8)); toks[:, 0] = 0
        >>> pre, post = activation_moments(HookedTransformer(cfg), toks, bos_token_id=0,
        ...                                progress=False)
        >>> pre.n, tuple(post.mean.shape)  # 3 sequences x 7 non-BOS tokens; 2 layers x 32
        (21, (64,))
    """
    from tl_universality.units.activations import stream_activations

    chosen = resolve_layers(model, layers)
    pre_names = [f"blocks.{layer}.mlp.hook_pre" for layer in chosen]
    post_names = [f"blocks.{layer}.mlp.hook_post" for layer in chosen]
    check_hooks_exist(model, post_names)
    n_units = len(chosen) * int(model.cfg.d_mlp)
    pre = Moments.zeros(n_units, threshold=0.0)
    post = Moments.zeros(n_units)
    captured: dict[str, Tensor] = {}

    def capture(act: Tensor, hook: Any, name: str) -> None:
        # keyed by the name we asked for: a bridge may report an alias as hook.name
        captured[name] = act.detach()

    bos = stream_kwargs.pop("bos_token_id", None)
    if bos is not None:
        # a tensor read by a model without tokenizer needs its BOS id: build the source here;
        # stream_activations then leaves out the source's BOS (and the tokenizer's padding)
        from tl_universality.data.tokens import as_token_source

        tokens = as_token_source(
            tokens,
            getattr(model, "tokenizer", None),
            bos_token_id=bos,
            seq_len=stream_kwargs.pop("seq_len", None) or min(128, int(model.cfg.n_ctx)),
            max_tokens=stream_kwargs.pop("max_tokens", None),
        )
    # stream_activations cannot yet read two hooks of one layer in one pass (UnitIndex keys units
    # by layer), so the post-activations ride along on hooks of an enclosing scoped context.
    with model.hooks(fwd_hooks=[(n, partial(capture, name=n)) for n in post_names]):
        for batch in stream_activations(
            model,
            tokens,
            units=pre_names,
            batch_size=batch_size,
            progress=progress,
            **stream_kwargs,
        ):
            pre.update(batch.acts[0])
            missing = [n for n in post_names if n not in captured]
            if missing:
                raise HookError(
                    f"Hook(s) {missing} of {model_name(model)} never fired; the model's MLP skips"
                    " them, so post-activation moments cannot be computed."
                )
            post.update(torch.cat([_rows(captured.pop(n), batch.keep) for n in post_names], 1))
    return pre, post


def _rows(act: Tensor, keep: Tensor) -> Float[Tensor, "tok d_mlp"]:
    return act.reshape(act.shape[0], act.shape[1], -1)[keep.to(act.device)].to("cpu")


def neuron_stats(
    model: HookedModel,
    tokens: Tokens = None,
    *,
    correlation: Any = None,
    layers: LayersSpec = None,
    batch_size: int = 32,
    progress: bool = True,
    activations: bool | None = None,
    **stream_kwargs: Any,
) -> pd.DataFrame:
    """The neuron table: one row per (layer, neuron) with the paper's columns.

    Always: ``layer, neuron`` and the weight statistics ``w_in_norm, input_bias, w_out_norm,
    in_out_sim, l2_penalty`` (see :func:`weight_stats`) and the vocabulary-composition moments
    ``vocab_mean, vocab_var, vocab_skew, vocab_kurt`` (see
    :func:`~tl_universality.analyses.vocab.vocab_moments`). With ``tokens``, also the exact
    streaming
    moments of the pre-activation ``mean, var, skew, kurt`` (population moments, kurtosis not
    excess), ``act_freq`` (share of tokens with pre-activation > 0) and the post-activation's
    ``post_mean, post_var, post_skew, post_kurt`` (one forward pass per batch for both); the
    token count is in ``table.attrs["n_tokens"]``. With ``correlation`` (a ``CorrelationResult``
    or a DataFrame with ``layer, neuron`` columns), its columns (``excess_corr, is_universal,
    max_corr, ...``) are joined on ``layer, neuron``.

    The weight columns assume TransformerLens's processed weights (``fold_ln``,
    ``center_writing_weights``, ``center_unembed``; see the module docstring); an unprocessed
    model gets a ``UserWarning`` naming what is off, and ``table.attrs["weight_notes"]`` keeps it.

    Args:
        model: any TransformerLens model with MLP layers.
        tokens: token source for activation statistics (a ``[n_seq, seq]`` tensor whose rows
            start with BOS, a file, a ``TokenSource``, ...). ``None`` skips them, unless
            ``activations=True``, which streams the default corpus.
        correlation: a correlation result to join (duck-typed: ``.to_dataframe()`` or a table).
        layers: layer(s) to include (default all).
        batch_size, progress: streaming settings.
        activations: force (``True``) or skip (``False``) activation statistics.
        **stream_kwargs: passed to ``stream_activations`` (``max_tokens``, ``exclude_token_ids``,
            ``bos_token_id`` for a tensor and a model without tokenizer, ...).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> model.process_weights_()  # fold LayerNorm, centre weights (from_pretrained does)
        >>> toks = torch.randint(1, 20, (3, 8)); toks[:, 0] = 0
        >>> table = neuron_stats(model, toks, bos_token_id=0, progress=False)
        >>> table.shape, table.attrs["n_tokens"]
        ((64, 20), 21)
        >>> table.loc[0, ["w_out_norm", "vocab_kurt", "kurt", "act_freq"]].notna().all()
        np.True_
    """
    notes = warn_if_unprocessed(model, "The neuron table's weight statistics")
    table = weight_stats(model, layers)
    table = table.merge(vocab_moments(model, layers), on=["layer", "neuron"], validate="1:1")
    want_acts = tokens is not None if activations is None else activations
    if want_acts:
        pre, post = activation_moments(
            model, tokens, layers, batch_size=batch_size, progress=progress, **stream_kwargs
        )
        columns = {
            "mean": pre.mean,
            "var": pre.var,
            "skew": pre.skew,
            "kurt": pre.kurt,
            "act_freq": pre.freq,
            "post_mean": post.mean,
            "post_var": post.var,
            "post_skew": post.skew,
            "post_kurt": post.kurt,
        }
        for name, values in columns.items():
            table[name] = values.cpu().numpy()
        table.attrs["n_tokens"] = int(pre.n)
    table.attrs["weight_notes"] = notes
    if correlation is not None:
        table = join_correlation(table, correlation)
    return table


def _correlation_frame(correlation: Any) -> pd.DataFrame:
    if isinstance(correlation, pd.DataFrame):
        frame = correlation
    elif hasattr(correlation, "to_dataframe"):
        frame = correlation.to_dataframe()
    else:
        raise TypeError(
            f"correlation must be a CorrelationResult (with .to_dataframe()) or a DataFrame with"
            f" layer and neuron columns, not {type(correlation).__name__}."
        )
    if "layer" not in frame.columns or "neuron" not in frame.columns:
        # a result indexed by (layer, neuron) is fine too
        frame = frame.reset_index()
    missing = {"layer", "neuron"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"The correlation table lacks the column(s) {sorted(missing)}; it needs one row per"
            f" reference unit with layer and neuron (has {list(frame.columns)})."
        )
    if frame.duplicated(["layer", "neuron"]).any():
        raise ValueError(
            "The correlation table has several rows for some (layer, neuron); it must have one"
            " row per reference unit (CorrelationResult.to_dataframe())."
        )
    return frame


def join_correlation(table: pd.DataFrame, correlation: Any) -> pd.DataFrame:
    """Left-join a correlation result onto a neuron table by ``layer, neuron``.

    Every column of the correlation table is added (``excess_corr, is_universal, max_corr, ...``);
    a name the neuron table already has gets the suffix ``_corr``. Rows the correlation result does
    not cover get NaN; if it covers none, it belongs to another model and ``ValueError`` is raised.

    Examples:
        >>> table = pd.DataFrame({"layer": [0, 0], "neuron": [0, 1], "kurt": [3.0, 9.0]})
        >>> corr = pd.DataFrame({"layer": [0, 0], "neuron": [1, 0], "excess_corr": [0.6, 0.1],
        ...                      "is_universal": [True, False]})
        >>> join_correlation(table, corr).to_dict("list")  # doctest: +NORMALIZE_WHITESPACE
        {'layer': [0, 0], 'neuron': [0, 1], 'kurt': [3.0, 9.0], 'excess_corr': [0.1, 0.6],
         'is_universal': [False, True]}
    """
    frame = _correlation_frame(correlation)
    frame = frame.astype({"layer": np.int64, "neuron": np.int64})
    keys = pd.MultiIndex.from_frame(table[["layer", "neuron"]])
    other = pd.MultiIndex.from_frame(frame[["layer", "neuron"]])
    if len(keys.intersection(other)) == 0:
        raise ValueError(
            "The correlation result shares no (layer, neuron) with the neuron table: it was"
            " computed for other units or another model. Pass the result whose reference model"
            " is this model."
        )
    out = table.merge(frame, on=["layer", "neuron"], how="left", suffixes=("", "_corr"))
    out.attrs = dict(table.attrs)
    return out


WeightCosineKind = Literal["in_in", "in_out", "out_in", "out_out"]


def weight_cosines(
    model: HookedModel,
    layer_a: int,
    layer_b: int | None = None,
    kind: WeightCosineKind = "out_in",
) -> Float[Tensor, "d_mlp_a d_mlp_b"]:
    """Cosines between the weight vectors of the neurons of two layers, ``[d_mlp, d_mlp]``.

    ``kind="x_y"`` compares neuron ``i``'s ``w_x`` in ``layer_a`` with neuron ``j``'s ``w_y`` in
    ``layer_b`` (default ``layer_b = layer_a``), where ``w_in = W_in[:, n]`` is the direction a
    neuron reads and ``w_out = W_out[n]`` the direction it writes. ``"out_in"`` with
    ``layer_a < layer_b`` is the direct (virtual-weight) connection from i to j; ``"in_in"`` and
    ``"out_out"`` find neurons that read or write the same direction. Float64; processed weights
    assumed (module docstring).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="gelu", seed=0)
        >>> cos = weight_cosines(HookedTransformer(cfg), 0, kind="out_out")
        >>> cos.shape, bool(torch.allclose(cos.diagonal(), torch.ones(32, dtype=cos.dtype)))
        (torch.Size([32, 32]), True)
    """
    if kind not in ("in_in", "in_out", "out_in", "out_out"):
        raise ValueError(f"kind must be one of in_in, in_out, out_in, out_out; got {kind!r}.")
    layer_b = layer_a if layer_b is None else layer_b

    def vectors(layer: int, which: str) -> Tensor:
        resolve_layers(model, layer)
        vecs = w_in(model, layer).T if which == "in" else w_out(model, layer)
        return vecs * safe_inverse(vecs.norm(dim=1))[:, None]

    first, second = kind.split("_")
    return vectors(layer_a, first) @ vectors(layer_b, second).T


#: Neuron properties the paper contrasts between universal and other neurons
#: (docs/concepts.md, "The neuron table").
CONTRAST_PROPERTIES = (
    "act_freq",
    "post_kurt",
    "kurt",
    "skew",
    "input_bias",
    "w_in_norm",
    "w_out_norm",
    "l2_penalty",
    "vocab_kurt",
)


def contrast_group(table: pd.DataFrame, min_count: int = 10) -> tuple[pd.Series, str]:
    """The neurons contrasted with the rest, and what they are: the universal neurons
    (``is_universal``), or, when there are fewer than ``min_count``, the
    ``max(min_count, 5 %)`` neurons of highest ``excess_corr``. The one rule the demo, the report
    and its neuron pages use.

    Examples:
        >>> t = pd.DataFrame({"excess_corr": [0.9, 0.1, 0.3], "is_universal": [True, False, False]})
        >>> mask, what = contrast_group(t, min_count=1)
        >>> mask.tolist(), what
        ([True, False, False], 'universal neurons (excess_corr > 0.5)')
        >>> contrast_group(t, min_count=2)[0].tolist()
        [True, False, True]
    """
    universal = table["is_universal"].fillna(False).astype(bool)
    if int(universal.sum()) >= min_count:
        return universal, "universal neurons (excess_corr > 0.5)"
    n = min(len(table), max(min_count, int(round(0.05 * len(table)))))
    top = table["excess_corr"].nlargest(n).index
    return pd.Series(table.index.isin(top), index=table.index), (
        f"the {n} most universal neurons (top 5% by excess_corr)"
    )


def compare_universal(
    table: pd.DataFrame,
    columns: Sequence[str] | None = None,
    universal: str = "is_universal",
) -> pd.DataFrame:
    """Mean and median of each property for universal vs other neurons (the paper's comparison).

    Args:
        table: a neuron table joined with a correlation result.
        columns: properties to compare (default: the weight, vocabulary and activation columns
            present).
        universal: the boolean column that marks universal neurons.

    Returns:
        One row per property: ``property, universal_mean, other_mean, universal_median,
        other_median, n_universal, n_other``.

    Examples:
        >>> t = pd.DataFrame({"kurt": [10.0, 12.0, 3.0, 4.0], "is_universal": [1, 1, 0, 0]})
        >>> compare_universal(t, ["kurt"])[["property", "universal_mean", "other_mean"]].values
        array([['kurt', 11.0, 3.5]], dtype=object)
    """
    if universal not in table.columns:
        raise KeyError(
            f"The table has no {universal!r} column: pass correlation=... to neuron_stats (or"
            " join_correlation) first."
        )
    mask = table[universal].fillna(False).astype(bool).to_numpy()
    if columns is None:
        candidates = WEIGHT_COLUMNS + VOCAB_COLUMNS + ACTIVATION_COLUMNS
        columns = [c for c in candidates if c in table.columns]
    rows = []
    for col in columns:
        values = pd.to_numeric(table[col], errors="coerce")
        rows.append(
            {
                "property": col,
                "universal_mean": values[mask].mean(),
                "other_mean": values[~mask].mean(),
                "universal_median": values[mask].median(),
                "other_median": values[~mask].median(),
                "n_universal": int(mask.sum()),
                "n_other": int((~mask).sum()),
            }
        )
    return pd.DataFrame(rows)

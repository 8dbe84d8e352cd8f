"""Functional roles read from the vocabulary: prediction, suppression and partition neurons.

docs/concepts.md, "Circuit roles": a neuron whose ``w_out`` has a heavy-tailed vocabulary
composition singles out a
small token set. With positive skew it raises those tokens' logits (a *prediction* neuron), with
negative skew it lowers them (a *suppression* neuron); a neuron whose composition has a large
variance without a heavy tail splits the vocabulary in two (a *partition* neuron, e.g. tokens with
and without a leading space). :func:`prediction_neurons` labels every neuron from its vocabulary
moments; :func:`token_set_scores` says *which* named token set a neuron's logit effect separates
(difference of means, Welch t, variance reduction), with the best set per neuron.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_universality.analyses.vocab import (
    CompositionKind,
    LayersSpec,
    composition_blocks,
    resolve_layers,
)
from tl_universality.core.protocol import HookedModel
from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder

ROLES = ("prediction", "suppression", "partition", "none")
"""The labels of :func:`prediction_neurons`, in order of precedence."""

_VOCAB_COLUMNS = ("vocab_var", "vocab_skew", "vocab_kurt")


def _robust_z(values: pd.Series) -> pd.Series:
    """(x - median) / (1.4826 * MAD): a z-score that a few outliers cannot inflate."""
    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    if not np.isfinite(mad) or mad == 0:
        return pd.Series(np.nan, index=values.index)
    return (values - median) / mad


def prediction_neurons(
    model_or_table: HookedModel | pd.DataFrame,
    kurt_threshold: float = 10.0,
    *,
    partition_z: float = 3.0,
    partition_var: float | None = None,
    layers: LayersSpec = None,
    table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Label every neuron prediction / suppression / partition / none from its vocabulary moments.

    Rules, in order (the paper's defaults, docs/concepts.md, "Circuit roles"):

    1. ``vocab_kurt > kurt_threshold`` (default 10; a Gaussian has 3) and ``vocab_skew > 0``:
       ``"prediction"``; with ``vocab_skew < 0``: ``"suppression"``.
    2. Otherwise, a high ``vocab_var``: ``"partition"``. The paper gives no number, so the default
       is relative to the model: the robust z-score of ``log10(vocab_var)`` over all neurons in the
       table (median and 1.4826 × median absolute deviation) above ``partition_z`` (default 3,
       i.e. an outlier in variance). Pass ``partition_var`` for an absolute threshold instead.
    3. Otherwise ``"none"`` (also for a zero ``w_out``, whose moments are undefined).

    Args:
        model_or_table: a model (its :func:`~tl_universality.analyses.vocab.vocab_moments` are
            computed) or a table with ``vocab_var, vocab_skew, vocab_kurt`` (e.g. the neuron
            table).
        kurt_threshold: kurtosis (not excess) above which a neuron predicts or suppresses.
        partition_z: robust z-score of log10 vocabulary variance above which a neuron partitions.
        partition_var: absolute ``vocab_var`` threshold; overrides ``partition_z`` when given.
        layers: layers to compute for a model (ignored for a table).
        table: a table to label in place of the model's own moments; this is how the accessor
            takes one: ``model.universality.prediction_neurons(table=neuron_table)``.

    Returns:
        The table with ``vocab_var_z`` (the robust z-score) and ``role`` (categorical, categories
        :data:`ROLES`) added.

    Examples:
        >>> table = pd.DataFrame({"layer": [0, 0, 1, 1, 1], "neuron": [0, 1, 0, 1, 2],
        ...                       "vocab_var": [1e-3, 1.1e-3, 0.9e-3, 1e-3, 0.5],
        ...                       "vocab_skew": [3.0, -4.0, 0.1, 0.0, 0.0],
        ...                       "vocab_kurt": [25.0, 30.0, 3.0, 3.2, 1.5]})
        >>> prediction_neurons(table)["role"].tolist()
        ['prediction', 'suppression', 'none', 'none', 'partition']
    """
    if isinstance(kurt_threshold, pd.DataFrame):
        raise TypeError(
            "prediction_neurons got a table as kurt_threshold; with the accessor, pass it as"
            " model.universality.prediction_neurons(table=...)."
        )
    if table is None and isinstance(model_or_table, pd.DataFrame):
        table = model_or_table
    if table is not None:
        table = table.copy()
        missing = [c for c in _VOCAB_COLUMNS if c not in table.columns]
        if missing:
            raise KeyError(
                f"The table lacks {missing}: pass a model, or a table from vocab_moments /"
                " neuron_stats."
            )
    else:
        from tl_universality.analyses.vocab import vocab_moments

        table = vocab_moments(model_or_table, layers)
    kurt, skew = table["vocab_kurt"], table["vocab_skew"]
    var = table["vocab_var"].astype(float)
    log_var = np.log10(var.where(var > 0))
    table["vocab_var_z"] = _robust_z(log_var)
    heavy = kurt > kurt_threshold
    if partition_var is not None:
        wide = var > partition_var
    else:
        wide = table["vocab_var_z"] > partition_z
    role = np.select(
        [heavy & (skew > 0), heavy & (skew < 0), ~heavy & wide],
        ["prediction", "suppression", "partition"],
        default="none",
    )
    table["role"] = pd.Categorical(role, categories=list(ROLES))
    return table


def role_counts(roles: pd.DataFrame) -> pd.DataFrame:
    """Neurons per layer and role (a ``layer × role`` count table) from :func:`prediction_neurons`.

    Examples:
        >>> roles = pd.DataFrame({"layer": [0, 1, 1],
        ...                       "role": pd.Categorical(["none", "prediction", "prediction"],
        ...                                              categories=list(ROLES))})
        >>> role_counts(roles).loc[1, "prediction"]
        np.int64(2)
    """
    counts = pd.crosstab(roles["layer"], roles["role"], dropna=False)
    return counts.reindex(columns=list(ROLES), fill_value=0)


TokenSetsSpec = Sequence[str] | dict[str, Any] | None
"""Which token sets: ``None`` (every registered set), a list of registered names, or a dict of
``{name: boolean mask over the vocabulary, or predicate on the token string}``."""


@dataclass(repr=False)
class TokenSetScores(Result):
    """Per neuron and token set: how the neuron's logit effect separates the set from the rest.

    Attributes:
        scores: long table, one row per (layer, neuron, token_set) with ``n_in, mean_in,
            mean_out, mean_diff, t, var_reduction``.
        best: one row per neuron with its ``best_set`` (largest variance reduction) and that set's
            ``n_in, mean_diff, t, var_reduction``.
        kind: ``"logit"`` (W_U·w_out) or ``"cosine"``.
        skipped: sets left out because fewer than ``min_set_size`` tokens were in (or out of) them.
    """

    FORMAT = "tl_universality.token_set_scores"

    scores: pd.DataFrame
    best: pd.DataFrame
    kind: str = "logit"
    skipped: list[str] = field(default_factory=list)

    def to_dataframe(self) -> pd.DataFrame:
        """The long table (one row per neuron and set)."""
        return self.scores

    def summary(self) -> dict[str, Any]:
        """How many neurons each token set explains best (``best_<set>``), and the largest
        variance reduction."""
        out: dict[str, Any] = {
            "n_neurons": int(len(self.best)),
            "n_sets": int(self.scores["token_set"].nunique()) if len(self.scores) else 0,
            "kind": self.kind,
            "max_var_reduction": float(self.best["var_reduction"].max())
            if len(self.best)
            else float("nan"),
        }
        for name, count in self.best["best_set"].value_counts().items():
            out[f"best_{name}"] = int(count)
        return out

    def plot(self, ax: Any = None) -> Any:
        """Bar chart: how many neurons each token set explains best."""
        fig, ax = new_axes(ax, figsize=(6, 4))
        counts = self.best["best_set"].value_counts()
        ax.bar(range(len(counts)), counts.to_numpy())
        ax.set_xticks(range(len(counts)), [str(c) for c in counts.index], rotation=45, ha="right")
        ax.set_ylabel("neurons (best token set)")
        return fig

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_table("scores", self.scores.reset_index(drop=True))
        out.write_table("best", self.best.reset_index(drop=True))
        meta.update(kind=self.kind, skipped=list(self.skipped))

    @classmethod
    def _read(cls, saved: SavedFolder) -> TokenSetScores:
        return cls(
            saved.table("scores"),
            saved.table("best"),
            str(saved.meta["kind"]),
            [str(x) for x in saved.meta["skipped"]],
        )

    @classmethod
    def _load_fix(cls) -> str:
        return "run token_set_scores(...) again and save it, or point to the right folder."

    def __repr__(self) -> str:
        n_sets = self.scores["token_set"].nunique() if len(self.scores) else 0
        return f"TokenSetScores({len(self.best)} neurons x {n_sets} token sets, kind={self.kind!r})"


def _resolve_sets(
    model: HookedModel,
    token_sets: TokenSetsSpec,
    tokenizer: Any,
    d_vocab: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({name: mask}, universe)``; the universe is every id the tokenizer knows."""
    from tl_universality.data.token_sets import token_set_masks, vocab_strings

    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    arrays: dict[str, np.ndarray] = {}
    predicates: dict[str, Callable[[str], bool]] = {}
    names: list[str] | None = None
    if isinstance(token_sets, dict):
        for name, value in token_sets.items():
            if callable(value):
                predicates[name] = value
            else:
                arrays[name] = np.asarray(value, dtype=bool)
        names = []
    elif token_sets is not None:
        names = list(token_sets)
    needs_strings = names is None or bool(names) or bool(predicates)
    if needs_strings and tok is None:
        raise ValueError(
            "Named token sets are built from the token strings, but the model has no tokenizer."
            " Pass tokenizer=..., or token_sets={name: boolean mask} over the vocabulary."
        )
    masks: dict[str, np.ndarray] = {}
    if needs_strings:
        masks = token_set_masks(tok, names, d_vocab=d_vocab, extra=predicates)
        universe = np.array([bool(s) for s in vocab_strings(tok, d_vocab)])
    else:
        universe = np.ones(d_vocab, dtype=bool)
    for name, mask in arrays.items():
        if mask.shape != (d_vocab,):
            raise ValueError(
                f"Token set {name!r} has shape {mask.shape}; a mask over the vocabulary must have"
                f" shape ({d_vocab},)."
            )
        masks[name] = mask
    # order: as given
    order = list(token_sets) if isinstance(token_sets, dict) else list(masks)
    return {name: masks[name] for name in order}, universe


def token_set_scores(
    model: HookedModel,
    token_sets: TokenSetsSpec = None,
    layers: LayersSpec = None,
    *,
    tokenizer: Any = None,
    kind: CompositionKind = "logit",
    min_set_size: int = 2,
    chunk_size: int | None = None,
) -> TokenSetScores:
    """Which token set each neuron's output raises or lowers, and how cleanly.

    For every neuron, ``x_v = W_U[:, v] · w_out`` over the vocabulary (``kind="logit"``, the
    direct logit effect of a unit activation; or the cosine) is split into tokens in the set ``S``
    and the rest, and scored by

    - ``mean_diff`` = mean(x | S) − mean(x | ¬S), with ``mean_in`` and ``mean_out``;
    - ``t``: Welch's t statistic, ``mean_diff / sqrt(s²_in / n_in + s²_out / n_out)`` (sample
      variances); positive when the neuron raises the set;
    - ``var_reduction`` = (Var(x) − [p_S Var(x | S) + p_¬S Var(x | ¬S)]) / Var(x), the share of
      the variance over the vocabulary that membership explains (1 = perfectly separated).

    A neuron's best set is the one with the largest variance reduction. The vocabulary is the
    tokens the tokenizer knows (padding ids of a larger ``d_vocab`` are left out); special tokens
    are in no set but count as "rest".

    Args:
        model: the model.
        token_sets: see :data:`TokenSetsSpec` (default: every registered token set).
        layers: layer(s) to score (default all).
        tokenizer: tokenizer for the token strings (default ``model.tokenizer``).
        kind: ``"logit"`` (default) or ``"cosine"``.
        min_set_size: sets with fewer tokens in them, or outside them, are skipped.
        chunk_size: neurons per block (default: ~64 MiB blocks).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=6,
        ...                               d_mlp=4, act_fn="gelu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> evens = np.arange(6) % 2 == 0
        >>> result = token_set_scores(model, {"even": evens, "low": np.arange(6) < 3})
        >>> result.scores.shape, list(result.best.columns[:3])
        ((8, 9), ['layer', 'neuron', 'best_set'])
    """
    chosen = resolve_layers(model, layers)
    d_vocab = int(model.cfg.d_vocab)
    masks, universe = _resolve_sets(model, token_sets, tokenizer, d_vocab)
    n_total = int(universe.sum())
    kept, skipped = [], []
    for name, mask in masks.items():
        n_in = int((mask & universe).sum())
        (kept if min_set_size <= n_in <= n_total - min_set_size else skipped).append(name)
    if not kept:
        raise ValueError(
            f"No token set has at least {min_set_size} tokens in and out of it over this"
            f" vocabulary ({n_total} tokens); skipped: {skipped}."
        )
    M = torch.from_numpy(np.stack([masks[n][universe] for n in kept]).astype(np.float64))
    n_in = M.sum(dim=1)
    n_out = n_total - n_in
    cols = torch.from_numpy(universe)

    frames = []
    for layer, start, values in composition_blocks(model, chosen, kind, chunk_size):
        x = values[:, cols]
        # centring per neuron keeps the sums of squares well conditioned
        mu = x.mean(dim=1, keepdim=True)
        xc = x - mu
        s1_in, s2_in = xc @ M.T, (xc * xc) @ M.T
        s1, s2 = xc.sum(dim=1, keepdim=True), (xc * xc).sum(dim=1, keepdim=True)
        mean_in, mean_out = s1_in / n_in, (s1 - s1_in) / n_out
        var_in = (s2_in / n_in - mean_in**2).clamp_min(0)  # population variances
        var_out = ((s2 - s2_in) / n_out - mean_out**2).clamp_min(0)
        var_all = s2 / n_total
        diff = mean_in - mean_out
        # Welch: sample variance / n = population variance / (n - 1)
        se = torch.sqrt(var_in / (n_in - 1) + var_out / (n_out - 1))
        t = torch.where(se > 0, diff / se, torch.sign(diff) * torch.inf)
        within = (n_in * var_in + n_out * var_out) / n_total
        vr = torch.where(var_all > 0, 1 - within / var_all, torch.nan)
        n_rows, n_sets = x.shape[0], len(kept)
        frames.append(
            pd.DataFrame(
                {
                    "layer": np.full(n_rows * n_sets, layer, dtype=np.int64),
                    "neuron": np.repeat(np.arange(start, start + n_rows, dtype=np.int64), n_sets),
                    "token_set": np.tile(np.array(kept, dtype=object), n_rows),
                    "n_in": np.tile(n_in.numpy().astype(np.int64), n_rows),
                    "mean_in": (mean_in + mu).reshape(-1).numpy(),
                    "mean_out": (mean_out + mu).reshape(-1).numpy(),
                    "mean_diff": diff.reshape(-1).numpy(),
                    "t": t.reshape(-1).numpy(),
                    "var_reduction": vr.reshape(-1).numpy(),
                }
            )
        )
    scores = pd.concat(frames, ignore_index=True)
    scores["token_set"] = pd.Categorical(scores["token_set"], categories=kept)
    best_idx = (
        scores.assign(_vr=scores["var_reduction"].fillna(-np.inf))
        .groupby(["layer", "neuron"], sort=True)["_vr"]
        .idxmax()
    )
    best = (
        scores.loc[best_idx.to_numpy(), ["layer", "neuron", "token_set", "n_in", "mean_diff", "t"]]
        .assign(var_reduction=scores.loc[best_idx.to_numpy(), "var_reduction"].to_numpy())
        .rename(columns={"token_set": "best_set"})
        .reset_index(drop=True)
    )
    best["best_set"] = best["best_set"].astype(str)
    return TokenSetScores(scores, best, kind, skipped)

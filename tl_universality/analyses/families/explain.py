"""Explain neurons by features and label their families (docs/concepts.md, "Neuron families")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tl_universality.analyses.families.variance import (
    NeuronsSpec,
    VarianceReductionStats,
    variance_reduction_stream,
)
from tl_universality.analyses.features import (
    NO_FAMILY,
    FeatureSet,
    default_features,
    family_thresholds,
    get_family,
)
from tl_universality.core.protocol import HookedModel, mlp_hook_names
from tl_universality.data.tokens.resolve import Tokens

# ---------------------------------------------------------------------------------------------
# On a model


def neuron_frame(model: HookedModel, neurons: NeuronsSpec = None) -> pd.DataFrame:
    """``layer, neuron`` of the requested MLP neurons, checked, unique and sorted.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu"))
        >>> neuron_frame(model, [(1, 5), (0, 2), (1, 5)]).values.tolist()
        [[0, 2], [1, 5]]
    """
    mlp_hook_names(model)  # a clear error for models without MLPs
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    if neurons is None:
        frame = pd.DataFrame(
            {
                "layer": np.repeat(np.arange(n_layers), d_mlp),
                "neuron": np.tile(np.arange(d_mlp), n_layers),
            }
        )
    elif isinstance(neurons, pd.DataFrame):
        missing = {"layer", "neuron"} - set(neurons.columns)
        if missing:
            raise ValueError(f"The neurons DataFrame lacks column(s) {sorted(missing)}.")
        frame = neurons[["layer", "neuron"]].astype(np.int64)
    else:
        pairs = [tuple(int(v) for v in p) for p in neurons]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("neurons must be (layer, neuron) pairs.")
        frame = pd.DataFrame(pairs, columns=["layer", "neuron"], dtype=np.int64)
    if frame.empty:
        raise ValueError("No neurons requested (an empty list or DataFrame).")
    bad = frame[
        (frame.layer < 0) | (frame.layer >= n_layers) | (frame.neuron < 0) | (frame.neuron >= d_mlp)
    ]
    if not bad.empty:
        raise IndexError(
            f"Neuron(s) {bad.head(3).values.tolist()} do not exist: the model has {n_layers}"
            f" layers of {d_mlp} neurons."
        )
    return frame.drop_duplicates().sort_values(["layer", "neuron"]).reset_index(drop=True)


def token_source(
    model: HookedModel, tokens: Tokens, max_tokens: int | None, bos_token_id: int | None
) -> Any:
    from tl_universality.data.tokens import as_token_source

    return as_token_source(
        tokens,
        getattr(model, "tokenizer", None),
        seq_len=min(512, int(model.cfg.n_ctx)),
        max_tokens=max_tokens,
        bos_token_id=bos_token_id,
    )


def variance_reduction(
    model: HookedModel,
    tokens: Tokens = None,
    neurons: NeuronsSpec = None,
    *,
    features: FeatureSet | None = None,
    vocab: Any = None,
    n_unigrams: int = 500,
    batch_size: int = 32,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = True,
) -> VarianceReductionStats:
    """Exact variance reduction of every (feature, neuron) pair of ``model`` over ``tokens``.

    Args: as :func:`explain`.

    Returns:
        The :class:`VarianceReductionStats` (``.variance_reduction()``, ``.top_features(k)``,
        ``.position_mutual_information()``, ``.to_dataframe()``).
    """
    from tl_universality.units.activations import stream_activations, unit_index

    frame = neuron_frame(model, neurons)
    source = token_source(model, tokens, max_tokens, bos_token_id)
    if features is None:
        if vocab is None and getattr(model, "tokenizer", None) is None:
            raise ValueError(
                "The model has no tokenizer, so the token features are unknown. Pass"
                " vocab=<tokenizer or list of token strings>, or features=FeatureSet(...)."
            )
        features = default_features(
            model if vocab is None else vocab,
            source,
            d_vocab=int(model.cfg.d_vocab),
            n_unigrams=n_unigrams,
            bos_token_id=bos_token_id,
        )
    hooks = [f"blocks.{layer}.mlp.hook_post" for layer in sorted(frame.layer.unique())]
    index = unit_index(model, hooks)
    columns = [
        index.flat(int(layer), int(n)) for layer, n in zip(frame.layer, frame.neuron, strict=True)
    ]
    batches = stream_activations(
        model,
        source,
        units=hooks,
        batch_size=batch_size,
        bos_token_id=bos_token_id,
        progress=progress,
    )
    return variance_reduction_stream(batches, features, columns=columns, neurons=frame)


def explain(
    model: HookedModel,
    tokens: Tokens = None,
    neurons: NeuronsSpec = None,
    *,
    features: FeatureSet | None = None,
    top_k: int = 5,
    vocab: Any = None,
    n_unigrams: int = 500,
    batch_size: int = 32,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The ``top_k`` features that best explain each neuron, by exact variance reduction.

    Args:
        model: Any TransformerLens hooked model with MLPs.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` accepts (``None``: the
            default corpus).
        neurons: See :data:`NeuronsSpec` (default: every MLP neuron).
        features: A :class:`~tl_universality.analyses.features.FeatureSet` (default:
            :func:`~tl_universality.analyses.features.default_features` of the model and the
            stream).
        top_k: Features kept per neuron.
        vocab: Token strings for the default features when the model has no tokenizer (a
            tokenizer or a list of strings).
        n_unigrams: Unigram features of the default features (the most frequent tokens).
        batch_size: Sequences per forward pass.
        max_tokens: Stop after this many tokens.
        bos_token_id: BOS id of a token tensor when the model has no tokenizer.
        progress: Show a progress bar.

    Returns:
        A long DataFrame, ``top_k`` rows per neuron, best first: ``layer, neuron, rank,
        feature, family, variance_reduction, p_feature`` (share of tokens with the feature),
        ``mean_in, mean_out`` (the neuron's mean activation with / without it) and
        ``position_mi`` (bits shared by "fires" and the position bin).
    """
    stats = variance_reduction(
        model,
        tokens,
        neurons,
        features=features,
        vocab=vocab,
        n_unigrams=n_unigrams,
        batch_size=batch_size,
        max_tokens=max_tokens,
        bos_token_id=bos_token_id,
        progress=progress,
    )
    return stats.top_features(top_k)


def label_families(
    explanations: pd.DataFrame, thresholds: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """One family label per neuron from a table of :func:`explain`.

    A neuron's label is the family of its highest-VR feature among those that pass their own
    family's threshold (so when the best feature passes, it is the best feature's family), else
    ``"none"``. ``feature`` and ``variance_reduction`` are the labelling feature's, or for
    ``"none"`` the best feature's (the near miss).

    Args:
        explanations: Rows with ``layer, neuron, feature, family, variance_reduction``.
        thresholds: Per-family thresholds overriding the catalogue's.

    Examples:
        >>> expl = pd.DataFrame({"layer": [0, 0, 0], "neuron": [1, 1, 2],
        ...                      "feature": ["token:'a'", "token_set:first_letter_a", "x"],
        ...                      "family": ["unigram", "alphabet", "unigram"],
        ...                      "variance_reduction": [0.45, 0.40, 0.2]})
        >>> label_families(expl)[["neuron", "family", "feature"]].values.tolist()
        [[1, 'alphabet', 'token_set:first_letter_a'], [2, 'none', 'x']]
    """
    thr = family_thresholds(thresholds)
    df = explanations.copy()
    for family in df["family"].dropna().unique():
        get_family(family)  # an unknown family is an error, not a silent "none"
    df["threshold"] = df["family"].map(thr)
    df["_passes"] = (df["variance_reduction"] > df["threshold"]).fillna(False)
    df = df.sort_values(
        ["layer", "neuron", "_passes", "variance_reduction"],
        ascending=[True, True, False, False],
        na_position="last",
        kind="stable",
    )
    best = df.groupby(["layer", "neuron"], sort=True).head(1).copy()
    best["family"] = np.where(best["_passes"], best["family"], NO_FAMILY)
    columns = ["layer", "neuron", "family", "feature", "variance_reduction"]
    columns += [c for c in ("position_mi",) if c in best.columns]
    return best[columns].reset_index(drop=True)


def families(
    model_or_explanations: HookedModel | pd.DataFrame,
    tokens: Tokens = None,
    neurons: NeuronsSpec = None,
    *,
    thresholds: Mapping[str, float] | None = None,
    **explain_kwargs: Any,
) -> pd.DataFrame:
    """One family label per neuron: ``layer, neuron, family, feature, variance_reduction``.

    Pass a model (then :func:`explain` runs first, with ``tokens``, ``neurons`` and
    ``explain_kwargs``) or the DataFrame :func:`explain` returned. Thresholds default to the
    catalogue's (VR > 0.5; alphabet 0.35); see :func:`label_families` for the rule.
    """
    if isinstance(model_or_explanations, pd.DataFrame):
        if tokens is not None or neurons is not None or explain_kwargs:
            raise TypeError("Given explanations, families() takes only `thresholds`.")
        explanations = model_or_explanations
    else:
        explanations = explain(model_or_explanations, tokens, neurons, **explain_kwargs)
    return label_families(explanations, thresholds)


def family_counts(labels: pd.DataFrame) -> pd.DataFrame:
    """Neurons per family (columns, catalogue order, then ``none``) and layer (rows), + total.

    Examples:
        >>> labels = pd.DataFrame({"layer": [0, 0, 1], "family": ["unigram", "none", "unigram"]})
        >>> family_counts(labels).to_dict("index")
        {0: {'unigram': 1, 'none': 1, 'total': 2}, 1: {'unigram': 1, 'none': 0, 'total': 1}}
    """
    from tl_universality.analyses.features import list_families

    counts = pd.crosstab(labels["layer"], labels["family"])
    order = [f for f in list_families()["family"] if f in counts.columns]
    order += sorted(c for c in counts.columns if c not in order and c != NO_FAMILY)
    counts = counts.reindex(columns=[*order, NO_FAMILY], fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts.columns.name = None
    return counts

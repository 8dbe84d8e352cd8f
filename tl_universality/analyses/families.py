"""Neuron families: which token-level feature explains each neuron (docs/concepts.md, "Neuron
families").

A neuron is explained by the binary feature that accounts for most of its activation variance,

    VR = (Var(a) - [p_F Var(a | not F) + p_T Var(a | F)]) / Var(a),

and belongs to that feature's family when VR passes the family's threshold (0.5; alphabet 0.35).
VR is computed exactly, streaming, for every (feature, neuron) pair. By the law of total variance
the numerator is the between-group variance p_T p_F (mean_in - mean_out)^2, so it needs, per
feature, only the count of tokens with the feature and the in-feature sum of each neuron; with the
totals n, Σa and Σa² that gives

    VR = [c (n - c) / n] (mean_in - mean_out)^2 / (Σa² - (Σa)² / n).

Sums are accumulated in float64 on activations shifted by a per-neuron constant (the first batch's
mean), so a neuron whose mean dwarfs its spread loses no precision. In-feature sums are one matrix
product of the ``[tokens, features]`` indicator matrix with the ``[tokens, neurons]`` activations
for overlapping features, and one scatter-add for partitions (unigrams, position bins, labels),
whatever their number. The mutual information between "the neuron fires" (activation > 0) and
the position bin is accumulated alongside, for position neurons.

Entry points: :func:`explain` (top features per neuron), :func:`families` (one label per neuron),
:func:`family_counts` (labels per layer), :func:`top_activations` (the contexts a neuron fires on,
with an HTML view), and :func:`variance_reduction_stream`, the engine under all of them, which takes
any stream of activation batches.

Examples:
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=6,
    ...                               act_fn="relu", seed=0)
    >>> model = HookedTransformer(cfg)
    >>> vocab = ["<s>", " the", "The", " cat", " a", ","]
    >>> toks = torch.randint(1, 6, (4, 8), generator=torch.Generator().manual_seed(0))
    >>> toks[:, 0] = 0
    >>> table = explain(model, toks, [(0, 3)], vocab=vocab, bos_token_id=0, progress=False)
    >>> table.columns.tolist()[:6]
    ['layer', 'neuron', 'rank', 'feature', 'family', 'variance_reduction']
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.analyses.features import (
    NO_FAMILY,
    FeatureSet,
    IndicatorGroup,
    default_features,
    family_thresholds,
    get_family,
)
from tl_universality.core.protocol import HookedModel, mlp_hook_names

NeuronsSpec = Sequence[tuple[int, int]] | pd.DataFrame | None
"""Which neurons: ``None`` (every MLP neuron), a list of ``(layer, neuron)`` pairs, or a DataFrame
with ``layer`` and ``neuron`` columns (e.g. ``CorrelationResult.universal_neurons()``)."""

# Column blocks of the float64 working copy hold at most this many numbers (128 MiB), so a batch
# of many tokens times many neurons never needs one huge float64 temporary.
_CHUNK_ELEMENTS = 2**24


# ---------------------------------------------------------------------------------------------
# The streaming engine


class VarianceReductionStats:
    """Exact streaming statistics for the variance reduction of every (feature, neuron) pair.

    Accumulates, in float64 on activations shifted by the first batch's mean: the token count
    ``n``, per neuron ``Σy``, ``Σy²``, min and max, and per feature its token count and in-feature
    ``Σy``; for the position bins of ``features.position_group`` also the firing counts per bin.

    Args:
        features: The features to explain with.
        n_neurons: Width of the activations passed to :meth:`update`.
        neurons: ``layer, neuron`` label of each activation column (default layer 0, 0..n-1).

    Examples:
        >>> from tl_universality.analyses.features import PositionFeatures
        >>> from tl_universality.units.activations import ActivationBatch
        >>> toks = torch.zeros(2, 6, dtype=torch.long)
        >>> keep = torch.ones(2, 6, dtype=torch.bool)
        >>> acts = torch.arange(6.0).repeat(2)[:, None]  # a neuron equal to the position
        >>> stats = VarianceReductionStats(FeatureSet([PositionFeatures([0, 3])]), 1)
        >>> _ = stats.update(acts, ActivationBatch([acts], toks, keep))
        >>> stats.variance_reduction().round(3).ravel().tolist()  # [0,3) and >=3: 2 groups
        [0.771, 0.771]
        >>> float(stats.position_mutual_information()[0].round(3))  # fires (> 0) vs bin, bits
        0.191
    """

    def __init__(
        self, features: FeatureSet, n_neurons: int, *, neurons: pd.DataFrame | None = None
    ) -> None:
        self.features = features
        self.n_neurons = int(n_neurons)
        if neurons is None:
            neurons = pd.DataFrame({"layer": 0, "neuron": np.arange(self.n_neurons)})
        if len(neurons) != self.n_neurons:
            raise ValueError(f"{len(neurons)} neuron labels for {self.n_neurons} columns.")
        self.neurons = neurons.reset_index(drop=True)[["layer", "neuron"]]
        self.n = 0
        self.shift: Float[Tensor, " neurons"] | None = None
        pos = features.position_group
        self._position_partition = None if pos is None else features.partitions.index(pos)

    def _allocate(self, device: torch.device) -> None:
        n, f64 = self.n_neurons, {"dtype": torch.float64, "device": device}
        k = sum(len(g) for g in self.features.indicator_groups)
        self.total_sum = torch.zeros(n, **f64)
        self.total_sq = torch.zeros(n, **f64)
        self.min = torch.full((n,), math.inf, **f64)
        self.max = torch.full((n,), -math.inf, **f64)
        self.indicator_count = torch.zeros(k, dtype=torch.long, device=device)
        self.indicator_sum = torch.zeros(k, n, **f64)
        cells = [len(g.cell_names) for g in self.features.partitions]
        self.cell_count = [torch.zeros(c, dtype=torch.long, device=device) for c in cells]
        self.cell_sum = [torch.zeros(c, n, **f64) for c in cells]
        n_bins = 0 if self._position_partition is None else cells[self._position_partition]
        self.position_fires = torch.zeros(n_bins, n, **f64)  # exact counts below 2**53

    def update(self, acts: Float[Tensor, "tok neurons"], batch: Any) -> VarianceReductionStats:
        """Add one batch: ``acts`` for the kept tokens of ``batch`` (an ``ActivationBatch`` or a
        :class:`~tl_universality.analyses.features.FeatureContext`). Returns ``self``."""
        ctx = self.features.context(batch)
        if acts.shape != (ctx.n_tokens, self.n_neurons):
            raise ValueError(
                f"Activations of shape {tuple(acts.shape)} for {ctx.n_tokens} kept tokens and"
                f" {self.n_neurons} neurons."
            )
        if ctx.n_tokens == 0:
            return self
        # float64 accumulators stay on the activations' device, except where it has no float64.
        device = acts.device if acts.device.type != "mps" else torch.device("cpu")
        if self.shift is None:
            self._allocate(device)
            self.shift = acts.to(device, torch.float64).mean(0)
        fb = self.features.evaluate(ctx)
        self.n += ctx.n_tokens
        x = fb.indicators.to(device)
        self.indicator_count += x.sum(0)
        x = x.to(torch.float64)
        cells = []
        for g, c in enumerate(fb.cells):
            c = c.to(device)
            valid = (c >= 0).nonzero().squeeze(1)
            idx = c[valid]
            self.cell_count[g] += torch.bincount(idx, minlength=self.cell_count[g].shape[0])
            cells.append((valid, idx))
        width = max(1, _CHUNK_ELEMENTS // ctx.n_tokens)
        for lo in range(0, self.n_neurons, width):
            cols = slice(lo, min(lo + width, self.n_neurons))
            a = acts[:, cols].to(device, torch.float64)
            y = a - self.shift[cols]
            self.total_sum[cols] += y.sum(0)
            self.total_sq[cols] += (y * y).sum(0)
            self.min[cols] = torch.minimum(self.min[cols], a.amin(0))
            self.max[cols] = torch.maximum(self.max[cols], a.amax(0))
            if x.shape[1]:
                self.indicator_sum[:, cols] += x.T @ y
            for g, (valid, idx) in enumerate(cells):
                block = torch.zeros(
                    self.cell_sum[g].shape[0], y.shape[1], dtype=y.dtype, device=device
                )
                self.cell_sum[g][:, cols] += block.index_add_(0, idx, y[valid])
                if g == self._position_partition:
                    fires = (a[valid] > 0).to(torch.float64)
                    block = torch.zeros_like(block)
                    self.position_fires[:, cols] += block.index_add_(0, idx, fires)
        return self

    # -- results -------------------------------------------------------------------------------

    def _require_data(self) -> None:
        if self.shift is None:
            from tl_universality.core.errors import EmptyTokenSourceError

            raise EmptyTokenSourceError(
                "No token was accumulated, so the variance reduction is undefined. Check that the"
                " token source is not empty and that not every position was excluded."
            )

    def _per_feature(self, indicator: Tensor, cells: list[Tensor]) -> Tensor:
        """Stack per-feature statistics in feature order; partition features sum their cells."""
        parts, i, j = [], 0, 0
        for g in self.features.groups:
            if isinstance(g, IndicatorGroup):
                parts.append(indicator[i : i + len(g)].to(torch.float64))
                i += len(g)
            else:
                member = torch.from_numpy(g.membership).to(torch.float64).to(indicator.device)
                parts.append(member @ cells[j].to(torch.float64))
                j += 1
        return torch.cat(parts)

    def feature_counts(self) -> Int[np.ndarray, " features"]:
        """Tokens with each feature."""
        self._require_data()
        counts = self._per_feature(
            self.indicator_count[:, None], [c[:, None] for c in self.cell_count]
        )
        return counts[:, 0].round().to(torch.long).cpu().numpy()

    def _sums(self) -> Tensor:
        return self._per_feature(self.indicator_sum, self.cell_sum)

    @property
    def constant(self) -> np.ndarray:
        """Neurons with the same activation on every token (dead): their VR is undefined (NaN)."""
        self._require_data()
        return (self.max <= self.min).cpu().numpy()

    def mean(self) -> Float[np.ndarray, " neurons"]:
        self._require_data()
        assert self.shift is not None
        return (self.shift + self.total_sum / self.n).cpu().numpy()

    def variance(self) -> Float[np.ndarray, " neurons"]:
        """Population variance of each neuron."""
        self._require_data()
        return ((self.total_sq - self.total_sum**2 / self.n) / self.n).cpu().numpy()

    def _means(self) -> tuple[Tensor, Tensor, Tensor]:
        counts = torch.from_numpy(self.feature_counts()).to(self.total_sum.device)
        c = counts.to(torch.float64)[:, None]
        sums = self._sums()
        mean_in = sums / c  # NaN where c = 0
        mean_out = (self.total_sum - sums) / (self.n - c)  # NaN where c = n
        return c, mean_in, mean_out

    def feature_means(self) -> tuple[Float[np.ndarray, "features neurons"], ...]:
        """``(mean_in, mean_out)``: each neuron's mean on tokens with / without each feature."""
        self._require_data()
        assert self.shift is not None
        _, mean_in, mean_out = self._means()
        return (mean_in + self.shift).cpu().numpy(), (mean_out + self.shift).cpu().numpy()

    def variance_reduction(self) -> Float[np.ndarray, "features neurons"]:
        """VR of every (feature, neuron) pair: 0 for a feature on no token or on every token,
        NaN for a constant neuron."""
        self._require_data()
        c, mean_in, mean_out = self._means()
        n = float(self.n)
        between = c * (n - c) / n * (mean_in - mean_out) ** 2
        total = self.total_sq - self.total_sum**2 / n
        vr = between / total
        vr = torch.where((c > 0) & (c < n), vr, torch.zeros_like(vr))
        vr[:, torch.from_numpy(self.constant).to(vr.device)] = torch.nan
        return vr.cpu().numpy()

    def position_mutual_information(self) -> Float[np.ndarray, " neurons"]:
        """Mutual information (bits) between "fires" (activation > 0) and the position bin.

        NaN for every neuron when the features have no position bins.
        """
        self._require_data()
        if self._position_partition is None:
            return np.full(self.n_neurons, np.nan)
        bins = self.cell_count[self._position_partition].to(torch.float64)[:, None]
        n = bins.sum()
        on = self.position_fires
        off = bins - on
        fire_rate = on.sum(0) / n

        def term(joint: Tensor, marginal: Tensor) -> Tensor:
            # Σ p(b, f) log2 p(b, f) / (p(b) p(f)), with 0 log 0 = 0
            ratio = joint * n / (bins * marginal)
            return torch.where(joint > 0, joint / n * torch.log2(ratio), torch.zeros_like(joint))

        mi = (term(on, fire_rate * n) + term(off, (1 - fire_rate) * n)).sum(0)
        return mi.clamp_min(0.0).cpu().numpy()

    def top_features(self, k: int = 5) -> pd.DataFrame:
        """The ``k`` features with the largest VR per neuron, as a long table.

        Columns: ``layer, neuron, rank, feature, family, variance_reduction, p_feature,
        mean_in, mean_out, position_mi``. Ties (equal to 12 decimals) go to the earlier feature.
        A constant (dead) neuron gets one row with no feature and NaN variance reduction.
        """
        vr = self.variance_reduction()
        counts = self.feature_counts()
        mean_in, mean_out = self.feature_means()
        mi = self.position_mutual_information()
        k = max(1, min(int(k), vr.shape[0]))
        # Rounded for ranking, so that features with mathematically equal VR (a feature and its
        # complement, two features equal on this stream) tie exactly and go to the earlier one,
        # whatever the float noise of the batching.
        ranked = np.where(np.isnan(vr), -np.inf, np.round(vr, 12))
        top = np.empty((k, vr.shape[1]), dtype=np.int64)
        step = max(1, _CHUNK_ELEMENTS // max(1, vr.shape[0]))
        for lo in range(0, vr.shape[1], step):
            top[:, lo : lo + step] = np.argsort(-ranked[:, lo : lo + step], 0, kind="stable")[:k]
        dead = self.constant
        keep_rank = np.where(dead[None, :], np.arange(k)[:, None] == 0, True)  # one row if dead
        rank, col = np.nonzero(keep_rank)
        order = np.lexsort((rank, col))
        rank, col = rank[order], col[order]
        feat = top[rank, col]
        names = np.asarray(self.features.names, dtype=object)
        families = np.asarray(self.features.families, dtype=object)
        is_dead = dead[col]
        return pd.DataFrame(
            {
                "layer": self.neurons["layer"].to_numpy()[col],
                "neuron": self.neurons["neuron"].to_numpy()[col],
                "rank": rank + 1,
                "feature": np.where(is_dead, None, names[feat]),
                "family": np.where(is_dead, None, families[feat]),
                "variance_reduction": vr[feat, col],
                "p_feature": np.where(is_dead, np.nan, counts[feat] / self.n),
                "mean_in": np.where(is_dead, np.nan, mean_in[feat, col]),
                "mean_out": np.where(is_dead, np.nan, mean_out[feat, col]),
                "position_mi": mi[col],
            }
        )

    def to_dataframe(self) -> pd.DataFrame:
        """Every (neuron, feature) pair: ``layer, neuron, feature, family, variance_reduction``.

        Features × neurons rows: for small analyses; :meth:`top_features` is the usual view.
        """
        vr = self.variance_reduction()
        f, n = vr.shape
        return pd.DataFrame(
            {
                "layer": np.tile(self.neurons["layer"].to_numpy(), f),
                "neuron": np.tile(self.neurons["neuron"].to_numpy(), f),
                "feature": np.repeat(np.asarray(self.features.names, dtype=object), n),
                "family": np.repeat(np.asarray(self.features.families, dtype=object), n),
                "variance_reduction": vr.ravel(),
            }
        )


def variance_reduction_stream(
    batches: Iterable[Any],
    features: FeatureSet,
    *,
    columns: Sequence[int] | Tensor | None = None,
    neurons: pd.DataFrame | None = None,
    model_index: int = 0,
) -> VarianceReductionStats:
    """Accumulate :class:`VarianceReductionStats` over a stream of activation batches.

    The engine under :func:`explain`; it reads any batches with ``acts``, ``tokens``, ``keep``
    and ``first_sequence`` (:class:`~tl_universality.units.activations.ActivationBatch`), so
    precomputed or synthetic activations can be explained too.

    Args:
        batches: The stream (e.g. :func:`~tl_universality.units.activations.stream_activations`).
        features: What to explain with.
        columns: Which activation columns (units) to explain (default: all).
        neurons: ``layer, neuron`` label of each explained column.
        model_index: Which model's activations in ``batch.acts``.

    Examples:
        >>> from tl_universality.units.activations import ActivationBatch
        >>> from tl_universality.analyses.features import UnigramFeatures
        >>> toks = torch.tensor([[0, 1, 2, 1, 2]])
        >>> keep = toks != 0
        >>> acts = (toks[keep] == 1).float()[:, None]  # fires exactly on token 1
        >>> fs = FeatureSet([UnigramFeatures(["<s>", "a", "b"], ["a", "b"])])
        >>> stats = variance_reduction_stream([ActivationBatch([acts], toks, keep)], fs)
        >>> stats.variance_reduction().ravel().tolist()
        [1.0, 1.0]
    """
    stats: VarianceReductionStats | None = None
    index = None if columns is None else torch.as_tensor(columns, dtype=torch.long)
    for batch in batches:
        acts = batch.acts[model_index]
        if index is not None:
            acts = acts[:, index.to(acts.device)]
        if stats is None:
            stats = VarianceReductionStats(features, acts.shape[1], neurons=neurons)
        stats.update(acts, batch)
    if stats is None:
        from tl_universality.core.errors import EmptyTokenSourceError

        raise EmptyTokenSourceError("The activation stream yielded no batch.")
    return stats


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


def _token_source(
    model: HookedModel, tokens: Any, max_tokens: int | None, bos_token_id: int | None
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
    tokens: Any = None,
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
    source = _token_source(model, tokens, max_tokens, bos_token_id)
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
    tokens: Any = None,
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
    tokens: Any = None,
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


# ---------------------------------------------------------------------------------------------
# Top-activating contexts


@dataclass
class ActivatingExample:
    """One top-activating token and its context."""

    activation: float
    sequence: int
    position: int
    tokens: list[str]
    activations: list[float]  # NaN at excluded (BOS/padding) positions
    center: int  # index of the activating token in ``tokens``


@dataclass
class TopActivations:
    """The contexts on which one neuron fires most, best first.

    Examples:
        >>> ex = ActivatingExample(2.0, 0, 1, ["<s>", "<b>"], [math.nan, 2.0], 1)
        >>> top = TopActivations(0, 3, [ex])
        >>> top.to_dataframe()[["rank", "activation", "token"]].values.tolist()
        [[1, 2.0, '<b>']]
        >>> "&lt;b&gt;" in top.to_html() and "<b>" not in top.to_html().split("<body>")[1]
        True
    """

    layer: int
    neuron: int
    examples: list[ActivatingExample] = field(default_factory=list)

    def to_dataframe(self) -> pd.DataFrame:
        """``rank, activation, sequence, position, token, left, right`` (context strings)."""
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(self.examples) + 1),
                "activation": [e.activation for e in self.examples],
                "sequence": [e.sequence for e in self.examples],
                "position": [e.position for e in self.examples],
                "token": [e.tokens[e.center] for e in self.examples],
                "left": ["".join(e.tokens[: e.center]) for e in self.examples],
                "right": ["".join(e.tokens[e.center + 1 :]) for e in self.examples],
            }
        )

    def to_html(self) -> str:
        """A self-contained HTML page: one row per example, tokens shaded by activation (red
        positive, blue negative, relative to the largest magnitude shown) and the activating
        token outlined; hover a token for its activation. Token text is escaped."""
        finite = [abs(a) for e in self.examples for a in e.activations if math.isfinite(a)]
        scale = max(finite, default=0.0) or 1.0
        rows = []
        for rank, e in enumerate(self.examples, 1):
            spans = []
            for j, (s, a) in enumerate(zip(e.tokens, e.activations, strict=True)):
                if math.isfinite(a):
                    alpha = min(1.0, abs(a) / scale)
                    rgb = "220,40,40" if a >= 0 else "40,90,220"
                    style = f"background-color: rgba({rgb},{alpha:.3f})"
                    title = f"{a:.4g}"
                else:
                    style, title = "color: #999", "excluded (BOS/padding)"
                cls = "tok top" if j == e.center else "tok"
                text = html.escape(s).replace("\n", "\u21b5")
                attrs = f'class="{cls}" style="{style}" title="{html.escape(title)}"'
                spans.append(f"<span {attrs}>{text}</span>")
            rows.append(
                f"<tr><td>{rank}</td><td>{e.activation:.4g}</td>"
                f"<td>{e.sequence}:{e.position}</td><td class='ctx'>{''.join(spans)}</td></tr>"
            )
        title = html.escape(f"Layer {self.layer} neuron {self.neuron}: top activations")
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>"
            "body{font-family:sans-serif} table{border-collapse:collapse}"
            " td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}"
            " .ctx{font-family:monospace;white-space:pre}"
            " .tok{border-radius:2px} .top{outline:2px solid #000;font-weight:bold}"
            f"</style></head><body><h3>{title}</h3><table>"
            "<tr><th>#</th><th>activation</th><th>seq:pos</th><th>context</th></tr>"
            + "".join(rows)
            + "</table></body></html>\n"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def save_html(self, path: str | Path) -> Path:
        """Write :meth:`to_html` to ``path``; returns the path."""
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def _display_vocab(model: HookedModel, vocab: Any) -> list[str] | None:
    from tl_universality.data.token_sets import vocab_strings

    source = vocab if vocab is not None else model
    if vocab is None and getattr(model, "tokenizer", None) is None:
        return None
    return vocab_strings(source, int(model.cfg.d_vocab))


def top_activations(
    model: HookedModel,
    tokens: Any,
    layer: int,
    neuron: int,
    *,
    k: int = 20,
    context: int = 10,
    after: int = 3,
    vocab: Any = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> TopActivations:
    """The ``k`` tokens of the stream on which neuron ``(layer, neuron)`` is most active.

    Args:
        model: Any TransformerLens hooked model with MLPs.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` accepts.
        layer, neuron: The MLP neuron (``blocks.{layer}.mlp.hook_post``).
        k: Examples kept.
        context: Tokens shown before the activating token.
        after: Tokens shown after it.
        vocab: Token strings when the model has no tokenizer (else ids are shown).
        batch_size, max_tokens, bos_token_id, progress: As for :func:`explain`.

    Returns:
        :class:`TopActivations` (``to_dataframe()``, ``to_html()``, ``save_html(path)``).
    """
    from tl_universality.units.activations import stream_activations

    frame = neuron_frame(model, [(layer, neuron)])
    layer, neuron = int(frame.layer[0]), int(frame.neuron[0])
    strings = _display_vocab(model, vocab)
    source = _token_source(model, tokens, max_tokens, bos_token_id)
    best: list[ActivatingExample] = []
    for batch in stream_activations(
        model,
        source,
        units=[f"blocks.{layer}.mlp.hook_post"],
        batch_size=batch_size,
        bos_token_id=bos_token_id,
        progress=progress,
    ):
        dense = torch.full(batch.tokens.shape, math.nan, dtype=torch.float64)
        dense[batch.keep.cpu()] = batch.acts[0][:, neuron].cpu().to(torch.float64)
        flat = torch.nan_to_num(dense.flatten(), nan=-math.inf)
        n_valid = int(batch.keep.sum())
        if n_valid == 0:
            continue
        values, where = torch.topk(flat, min(k, n_valid))
        ids = batch.tokens.cpu()
        seq = ids.shape[1]
        for value, i in zip(values.tolist(), where.tolist(), strict=True):
            row, pos = divmod(i, seq)
            lo, hi = max(0, pos - context), min(seq, pos + after + 1)
            window = ids[row, lo:hi].tolist()
            best.append(
                ActivatingExample(
                    activation=float(value),
                    sequence=int(batch.first_sequence) + row,
                    position=pos,
                    tokens=[strings[t] if strings is not None else f"<{t}>" for t in window],
                    activations=dense[row, lo:hi].tolist(),
                    center=pos - lo,
                )
            )
        best = sorted(best, key=lambda e: (-e.activation, e.sequence, e.position))[:k]
    return TopActivations(layer, neuron, best)


__all__ = [
    "ActivatingExample",
    "NeuronsSpec",
    "TopActivations",
    "VarianceReductionStats",
    "explain",
    "families",
    "family_counts",
    "label_families",
    "neuron_frame",
    "top_activations",
    "variance_reduction",
    "variance_reduction_stream",
]

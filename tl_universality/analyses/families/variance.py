"""Exact streaming variance reduction of every neuron by every binary feature."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.analyses.features import (
    FeatureSet,
    IndicatorGroup,
)

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

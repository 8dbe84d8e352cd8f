"""The result of :func:`~tl_universality.analyses.correlation.correlate`: max-correlation of every
reference unit with each other model, its chance baseline and the paper's excess correlation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_universality.analyses.correlation.plan import FORMAT_PREFIX, FORMAT_VERSION
from tl_universality.core.errors import (
    CorruptCacheError,
)
from tl_universality.core.saving import atomic_dir
from tl_universality.units.activations import (
    UnitIndex,
)

# -- the result -----------------------------------------------------------------------------------


@dataclass
class CorrelationResult:
    """Max-correlation of every reference unit with each other model, and its chance baseline.

    Per reference unit (flat index over ``units``) and other model ``m`` (in ``others`` order):

    Attributes:
        units: The reference model's units.
        other_units: Each other model's units.
        names: Labels of the reference and the other models.
        n_tokens: Tokens the statistics were accumulated over (BOS/padding excluded).
        max_corr: ``[models, units]`` largest correlation with any unit of model m (NaN if none).
        argmax: Flat index (in ``other_units[m]``) of that unit, -1 where undefined.
        min_corr: Smallest (most negative) correlation with model m, and ``argmin`` its unit.
        top_corr: ``[models, units, k]`` the k largest correlations, descending; ``top_index``
            their units.
        baseline_draws: ``[models, draws, units]`` the baseline max-correlation of each draw.
        dead: Reference units with zero variance; their correlations are NaN.
        other_dead: Dead units of each other model.
        baseline: The baseline kind (or None); ``config`` the run's other settings.
        matrices: With ``keep_matrix``, the full ``[units, other units]`` correlation per model.

    The table view (:meth:`to_dataframe`) uses the paper's names: ``max_corr``, ``mean_corr`` and
    ``min_corr`` are the max, mean and min *over models* of the per-model max correlation (likewise
    ``*_baseline``), and ``excess_corr = mean_corr - mean_baseline``.
    """

    units: UnitIndex
    other_units: tuple[UnitIndex, ...]
    names: tuple[str, ...]
    n_tokens: int
    max_corr: Float[Tensor, "models units"]
    argmax: Int[Tensor, "models units"]
    min_corr: Float[Tensor, "models units"]
    argmin: Int[Tensor, "models units"]
    top_corr: Float[Tensor, "models units k"]
    top_index: Int[Tensor, "models units k"]
    baseline_draws: Float[Tensor, "models draws units"]
    dead: Bool[Tensor, " units"]
    other_dead: tuple[Bool[Tensor, " _"], ...]
    baseline: str | None = "rotation"
    config: dict[str, Any] = field(default_factory=dict)
    matrices: tuple[Float[Tensor, "units _"], ...] | None = None

    # -- per unit ------------------------------------------------------------------------------

    @property
    def n_models(self) -> int:
        """Number of other models."""
        return len(self.other_units)

    @property
    def baseline_max(self) -> Float[Tensor, "models units"]:
        """Baseline max-correlation per model, averaged over draws (NaN without a baseline)."""
        if self.baseline_draws.shape[1] == 0:
            return torch.full_like(self.max_corr, torch.nan)
        return self.baseline_draws.nanmean(1)

    def _valid_baseline(self) -> Tensor:
        # A model whose max-correlation is undefined (all its units dead) counts on neither side.
        return self.baseline_max.masked_fill(self.max_corr.isnan(), torch.nan)

    @property
    def mean_corr(self) -> Float[Tensor, " units"]:
        """Mean over models of ``max_corr``."""
        return self.max_corr.nanmean(0)

    @property
    def mean_baseline(self) -> Float[Tensor, " units"]:
        """Mean over models of the baseline max-correlation."""
        return self._valid_baseline().nanmean(0)

    @property
    def excess_correlation(self) -> Float[Tensor, " units"]:
        """``mean_corr - mean_baseline``: the paper's excess correlation (NaN for dead units)."""
        return self.mean_corr - self.mean_baseline

    excess_corr = excess_correlation

    def is_universal(self, threshold: float = 0.5) -> Bool[Tensor, " units"]:
        """Units whose excess correlation exceeds ``threshold`` (the paper's 0.5)."""
        if self.baseline is None:
            raise ValueError(
                "This result has no baseline (baseline=None), so excess correlation is undefined."
                " Run correlate(..., baseline='rotation')."
            )
        return self.excess_correlation > threshold

    # -- tables --------------------------------------------------------------------------------

    def other_labels(self) -> list[str]:
        return list(self.names[1:])

    def _locate(self, m: int, flat: Tensor) -> tuple[np.ndarray, np.ndarray]:
        idx = self.other_units[m]
        f = flat.numpy()
        ok = f >= 0
        layer = np.full(f.shape, -1, dtype=np.int64)
        neuron = np.full(f.shape, -1, dtype=np.int64)
        layer[ok] = idx.layer_of_unit[f[ok]]
        neuron[ok] = idx.neuron_of_unit[f[ok]]
        return layer, neuron

    def to_dataframe(self, threshold: float = 0.5) -> pd.DataFrame:
        """One row per reference unit, in unit order.

        Columns: ``layer, neuron, excess_corr, mean_corr, min_corr, max_corr, mean_baseline,
        min_baseline, max_baseline, is_dead, is_universal``, then per other model ``<label>``:
        ``max_corr_<label>, max_sim_layer_<label>, max_sim_neuron_<label>, min_corr_<label>,
        min_sim_layer_<label>, min_sim_neuron_<label>, baseline_<label>`` (here ``min_corr_`` is
        that model's most negative correlation, as in the paper's per-pair summaries).
        """
        df = self.units.to_frame()
        base = self._valid_baseline()
        with np.errstate(all="ignore"):
            df["excess_corr"] = self.excess_correlation.numpy()
            df["mean_corr"] = self.mean_corr.numpy()
            df["min_corr"] = _nan_reduce(self.max_corr, "min")
            df["max_corr"] = _nan_reduce(self.max_corr, "max")
            df["mean_baseline"] = self.mean_baseline.numpy()
            df["min_baseline"] = _nan_reduce(base, "min")
            df["max_baseline"] = _nan_reduce(base, "max")
        df["is_dead"] = self.dead.numpy()
        df["is_universal"] = (
            (self.excess_correlation > threshold).numpy() if self.baseline else False
        )
        for m, label in enumerate(self.other_labels()):
            df[f"max_corr_{label}"] = self.max_corr[m].numpy()
            df[f"max_sim_layer_{label}"], df[f"max_sim_neuron_{label}"] = self._locate(
                m, self.argmax[m]
            )
            df[f"min_corr_{label}"] = self.min_corr[m].numpy()
            df[f"min_sim_layer_{label}"], df[f"min_sim_neuron_{label}"] = self._locate(
                m, self.argmin[m]
            )
            df[f"baseline_{label}"] = self.baseline_max[m].numpy()
        return df

    def universal_neurons(self, threshold: float = 0.5) -> pd.DataFrame:
        """The universal units (``excess_corr > threshold``), same columns as
        :meth:`to_dataframe` without ``is_universal``, in unit order."""
        universal = self.is_universal(threshold).numpy()
        df = self.to_dataframe(threshold)
        return df[universal].drop(columns="is_universal").reset_index(drop=True)

    def universal_share(self, threshold: float = 0.5) -> pd.DataFrame:
        """Per layer: units, dead units, universal units and their share, median max-corr and
        median baseline (means over models)."""
        df = self.to_dataframe(threshold)
        grouped = df.groupby("layer", sort=True)
        out = pd.DataFrame(
            {
                "n_units": grouped.size(),
                "n_dead": grouped["is_dead"].sum(),
                "n_universal": grouped["is_universal"].sum(),
                "median_corr": grouped["mean_corr"].median(),
                "median_baseline": grouped["mean_baseline"].median(),
            }
        )
        out["universal_share"] = out["n_universal"] / out["n_units"]
        return out.reset_index()

    def dead_units(self) -> pd.DataFrame:
        """Every dead unit, reference and others: columns ``model, layer, neuron``."""
        frames = []
        for name, idx, dead in zip(
            self.names, (self.units, *self.other_units), (self.dead, *self.other_dead), strict=True
        ):
            frame = idx.to_frame()[dead.numpy()]
            frame.insert(0, "model", name)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def argmax_units(self, other: int | str = 0) -> pd.DataFrame:
        """``layer, neuron`` of each reference unit's best match in model ``other`` (-1 if none)."""
        m = self._model(other)
        layer, neuron = self._locate(m, self.argmax[m])
        return pd.DataFrame({"layer": layer, "neuron": neuron})

    def matrix(self, other: int | str = 0) -> Float[Tensor, "units _"]:
        """The full correlation matrix with model ``other`` (only with ``keep_matrix``)."""
        if self.matrices is None:
            raise ValueError("The full matrix was not kept: run correlate(..., keep_matrix=True).")
        return self.matrices[self._model(other)]

    def _model(self, other: int | str) -> int:
        if isinstance(other, str):
            if other not in self.other_labels():
                raise KeyError(f"No other model named {other!r}; models: {self.other_labels()}.")
            return self.other_labels().index(other)
        return int(other)

    def __repr__(self) -> str:
        head = f"CorrelationResult({self.names[0]} vs {', '.join(self.other_labels())}"
        head += f": {self.units.n_units} units, {self.n_tokens} tokens, baseline={self.baseline!r}"
        if self.baseline:
            head += f", {int(self.is_universal().sum())} universal"
        return head + ")"

    # -- persistence ---------------------------------------------------------------------------

    _ARRAYS = (
        "max_corr",
        "argmax",
        "min_corr",
        "argmin",
        "top_corr",
        "top_index",
        "baseline_draws",
    )

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``arrays.safetensors``, ``result.json`` and ``neurons.parquet`` (the table) to
        the folder ``path``, atomically (a crash leaves the old folder or none)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {name: getattr(self, name).contiguous() for name in self._ARRAYS}
        tensors["dead"] = self.dead.to(torch.uint8)
        for m, dead in enumerate(self.other_dead):
            tensors[f"other_dead.{m}"] = dead.to(torch.uint8)
        for m, mat in enumerate(self.matrices or ()):
            tensors[f"matrix.{m}"] = mat.contiguous()
        meta = {
            "format": FORMAT_PREFIX + ".result",
            "version": FORMAT_VERSION,
            "units": self.units.to_dict(),
            "other_units": [u.to_dict() for u in self.other_units],
            "names": list(self.names),
            "n_tokens": self.n_tokens,
            "baseline": self.baseline,
            "config": self.config,
            "has_matrices": self.matrices is not None,
        }
        with atomic_dir(path) as tmp:
            save_file(tensors, tmp / "arrays.safetensors")
            (tmp / "result.json").write_text(json.dumps(meta, indent=2, default=str))
            self.to_dataframe().to_parquet(tmp / "neurons.parquet")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CorrelationResult:
        """Read a folder written by :meth:`save`.

        Raises:
            CorruptCacheError: A file is missing or unreadable; the message names it.
        """
        from safetensors.torch import load_file

        path = Path(path)
        fix = "Fix: run correlate(...) again and save the result, or point to the right folder."
        meta_file, array_file = path / "result.json", path / "arrays.safetensors"
        for f in (meta_file, array_file):
            if not f.is_file():
                raise CorruptCacheError(
                    f"{f} is missing: {path} is not a saved CorrelationResult. {fix}"
                )
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("format") != FORMAT_PREFIX + ".result":
                raise ValueError(f"format is {meta.get('format')!r}")
            units = UnitIndex.from_dict(meta["units"])
            others = tuple(UnitIndex.from_dict(u) for u in meta["other_units"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptCacheError(f"{meta_file} is corrupt ({err}). {fix}") from err
        try:
            t = load_file(array_file)
            arrays = {name: t[name] for name in cls._ARRAYS}
            result = cls(
                units=units,
                other_units=others,
                names=tuple(meta["names"]),
                n_tokens=int(meta["n_tokens"]),
                dead=t["dead"].bool(),
                other_dead=tuple(t[f"other_dead.{m}"].bool() for m in range(len(others))),
                baseline=meta["baseline"],
                config=meta.get("config", {}),
                matrices=(
                    tuple(t[f"matrix.{m}"] for m in range(len(others)))
                    if meta.get("has_matrices")
                    else None
                ),
                **arrays,
            )
        except Exception as err:  # safetensors raises its own error types
            raise CorruptCacheError(
                f"{array_file} is corrupt or incomplete ({err}). {fix}"
            ) from err
        return result

    # -- plots ---------------------------------------------------------------------------------

    def plot(self, threshold: float = 0.5) -> Any:
        """The paper's views: per layer, the distribution of max-correlation (mean over models)
        against the baseline's, and the share of universal units. Returns a matplotlib Figure."""
        from matplotlib.figure import Figure

        df = self.to_dataframe(threshold)
        share = self.universal_share(threshold) if self.baseline else None
        layers = sorted(df["layer"].unique())
        pos = np.arange(len(layers), dtype=float)
        fig = Figure(figsize=(max(6.0, 0.5 * len(layers) + 3), 7), layout="constrained")
        ax_dist, ax_share = fig.subplots(2, 1, sharex=True)
        for column, offset, color, label in (
            ("mean_corr", -0.2, "tab:blue", "max correlation (mean over models)"),
            ("mean_baseline", 0.2, "tab:gray", f"baseline ({self.baseline})"),
        ):
            data = [df.loc[df["layer"] == layer, column].dropna().to_numpy() for layer in layers]
            where = [i for i, d in enumerate(data) if len(d)]
            if where:
                parts = ax_dist.violinplot(
                    [data[i] for i in where], positions=pos[where] + offset, widths=0.35,
                    showmedians=True,
                )  # fmt: skip
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_alpha(0.6)
                ax_dist.plot([], [], color=color, lw=6, alpha=0.6, label=label)
        ax_dist.axhline(0, color="black", lw=0.5)
        ax_dist.set_ylabel("correlation")
        ax_dist.set_title(
            f"{self.names[0]} vs {', '.join(self.other_labels())} ({self.n_tokens} tokens)"
        )
        ax_dist.legend(loc="lower right", fontsize="small")
        if share is not None:
            percent = 100 * share["universal_share"].to_numpy()
            bars = ax_share.bar(pos, percent, color="tab:green")
            ax_share.bar_label(bars, labels=[f"{p:.1f}%" for p in percent], fontsize="small")
            # A share of zero everywhere is a result, not an empty plot: keep the axis from 0.
            ax_share.set_ylim(0, max(1.0, 1.2 * float(percent.max())))
            ax_share.set_ylabel(f"universal (excess > {threshold}) %")
        ax_share.set_xticks(pos, [str(layer) for layer in layers])
        ax_share.set_xlabel("layer")
        return fig


def _nan_reduce(x: Tensor, how: str) -> np.ndarray:
    a = x.numpy()
    if a.shape[0] == 0:
        return np.full(a.shape[1:], np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (dead units)
            return np.nanmin(a, 0) if how == "min" else np.nanmax(a, 0)

"""The result of :func:`~tl_universality.analyses.correlation.correlate`: max-correlation of every
reference unit with each other model, its chance baseline and the paper's excess correlation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder
from tl_universality.units.activations import (
    UnitIndex,
)

# -- the result -----------------------------------------------------------------------------------


@dataclass(repr=False)
class CorrelationResult(Result):
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
        max_corr_se: Screened runs (``candidates=K``) and exhaustive runs with
            ``standard_errors=True``: ``[models, units]`` batch-means standard error of
            ``max_corr`` (and ``min_corr_se`` of ``min_corr``); None otherwise.
        certified: Screened runs: ``[models, units]`` whether the unit's exact max-correlation
            beats the screening value of its best non-candidate by ``certificate_sigmas``
            standard errors (so no unit outside the candidates can hold the maximum).
        baseline_certified: Screened runs with ``baseline_candidates``: ``[models, units]``
            whether every draw's baseline, followed over all tokens, is certified the same way
            (then it is the exhaustive run's; otherwise it is a lower bound of it).
        max_corr_ceiling: Screened runs: ``[models, units]`` an upper bound of the exhaustive
            max-correlation at the certificate's margin (``max_corr`` where certified, else
            the best non-candidate's screening value plus ``certificate_sigmas`` deviations of
            its error); ``max_corr`` is the lower bound.
        baseline_ceiling: Screened runs whose baseline holds over all tokens (followed with
            ``baseline_candidates``, or ``"gaussian_noise"``): ``[models, draws, units]`` the
            same upper bound of each draw's baseline (``baseline_draws`` is the lower bound).
            See :meth:`universal_certified`.

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
    max_corr_se: Float[Tensor, "models units"] | None = None
    min_corr_se: Float[Tensor, "models units"] | None = None
    certified: Bool[Tensor, "models units"] | None = None
    baseline_certified: Bool[Tensor, "models units"] | None = None
    max_corr_ceiling: Float[Tensor, "models units"] | None = None
    baseline_ceiling: Float[Tensor, "models draws units"] | None = None

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
        return self._excess(self.max_corr, self.baseline_draws)

    def _excess(self, maxima: Tensor, draws: Tensor) -> Tensor:
        """Mean over models of ``maxima`` minus that of the ``draws``' means (``[models, draws,
        units]``); a model whose max-correlation is undefined counts on neither side."""
        base = draws.nanmean(1) if draws.shape[1] else torch.full_like(maxima, torch.nan)
        return maxima.nanmean(0) - base.masked_fill(self.max_corr.isnan(), torch.nan).nanmean(0)

    excess_corr = excess_correlation

    def is_universal(self, threshold: float = 0.5) -> Bool[Tensor, " units"]:
        """Units whose excess correlation exceeds ``threshold`` (the paper's 0.5)."""
        if self.baseline is None:
            raise ValueError(
                "This result has no baseline (baseline=None), so excess correlation is undefined."
                " Run correlate(..., baseline='rotation')."
            )
        return self.excess_correlation > threshold

    # -- precision -----------------------------------------------------------------------------

    @property
    def n_certified(self) -> int | None:
        """Live units certified for every other model (None for an exhaustive run)."""
        if self.certified is None:
            return None
        return int((self.certified.all(0) & ~self.dead).sum())

    def universal_certified(self, threshold: float = 0.5) -> Bool[Tensor, " units"] | None:
        """Screened runs: units whose universal decision (``excess_corr > threshold``) is the
        same for every max-correlation and baseline within their bounds, so an exhaustive run
        over the same tokens decides it alike, up to the certificate's margin. None where a
        bound is missing: exhaustive runs, and screened runs whose baseline comes from the
        screening tokens (it then differs from the exhaustive run's by definition).

        The excess correlation lies between ``mean(max_corr) - mean(baseline ceiling)`` and
        ``mean(max_corr ceiling) - mean(baseline)`` (means over draws, then over models, as in
        :attr:`excess_correlation`); the decision is certified where both ends fall on the same
        side of ``threshold``. Dead units are not certified.
        """
        if self.baseline is None or self.max_corr_ceiling is None or self.baseline_ceiling is None:
            return None
        low = self._excess(self.max_corr, self.baseline_ceiling)
        high = self._excess(self.max_corr_ceiling, self.baseline_draws)
        return ((low > threshold) | (high <= threshold)) & ~self.dead

    def converged(self, tol: float) -> bool:
        """Whether every live unit's max-correlation has a standard error below ``tol``.

        Screened runs (``candidates=K``) and exhaustive runs with ``standard_errors=True``
        carry standard errors (see :func:`correlate`).
        """
        if self.max_corr_se is None:
            raise ValueError(
                "This result has no standard errors (an exhaustive run without them). Fix: run"
                " correlate(..., standard_errors=True), which reads the tokens once more to"
                " follow each unit's best pair, or correlate(..., candidates=K)."
            )
        live = ~self.max_corr.isnan()
        se = self.max_corr_se[live]
        return bool(se.numel() == 0 or (se.nan_to_num(torch.inf) < tol).all())

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
        if self.max_corr_se is not None:
            with np.errstate(all="ignore"):
                df["max_corr_se"] = _nan_reduce(self.max_corr_se, "max")
        if self.certified is not None:
            df["certified"] = self.certified.all(0).numpy()
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

    _SCREENED = (
        "max_corr_se",
        "min_corr_se",
        "certified",
        "baseline_certified",
        "max_corr_ceiling",
        "baseline_ceiling",
    )

    FORMAT = "tl_universality.correlation_result"
    VERSION = 2

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        tensors = {name: getattr(self, name) for name in self._ARRAYS}
        tensors["dead"] = self.dead.to(torch.uint8)
        for m, dead in enumerate(self.other_dead):
            tensors[f"other_dead.{m}"] = dead.to(torch.uint8)
        for m, mat in enumerate(self.matrices or ()):
            tensors[f"matrix.{m}"] = mat
        for name in self._SCREENED:
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value.to(torch.uint8) if value.dtype == torch.bool else value
        out.write_tensors("arrays", tensors)
        out.write_table("neurons", self.to_dataframe())
        meta.update(
            units=self.units.to_dict(),
            other_units=[u.to_dict() for u in self.other_units],
            names=list(self.names),
            n_tokens=self.n_tokens,
            baseline=self.baseline,
            config=self.config,
            has_matrices=self.matrices is not None,
            summary=self.summary(),
        )

    @classmethod
    def _load_fix(cls) -> str:
        return "run correlate(...) again and save the result, or point to the right folder."

    @classmethod
    def _read(cls, saved: SavedFolder) -> CorrelationResult:
        meta = saved.meta
        units = UnitIndex.from_dict(meta["units"])
        others = tuple(UnitIndex.from_dict(u) for u in meta["other_units"])
        t = saved.tensors("arrays")
        k = len(others)
        result = cls(
            units=units,
            other_units=others,
            names=tuple(str(n) for n in meta["names"]),
            n_tokens=int(meta["n_tokens"]),
            dead=t["dead"].bool(),
            other_dead=tuple(t[f"other_dead.{m}"].bool() for m in range(k)),
            baseline=meta["baseline"],
            config=dict(meta.get("config") or {}),
            matrices=tuple(t[f"matrix.{m}"] for m in range(k)) if meta["has_matrices"] else None,
            max_corr_se=t.get("max_corr_se"),
            min_corr_se=t.get("min_corr_se"),
            certified=t["certified"].bool() if "certified" in t else None,
            baseline_certified=(
                t["baseline_certified"].bool() if "baseline_certified" in t else None
            ),
            max_corr_ceiling=t.get("max_corr_ceiling"),
            baseline_ceiling=t.get("baseline_ceiling"),
            **{name: t[name] for name in cls._ARRAYS},
        )
        result.check_consistent()
        return result

    def check_consistent(self) -> None:
        """Raise ``ValueError`` unless every array has the shape and dtype its units imply."""
        k, n = self.n_models, self.units.n_units
        if len(self.names) != k + 1:
            raise ValueError(f"{len(self.names)} names for {k + 1} models")
        expect = {
            "max_corr": ((k, n), "float"),
            "argmax": ((k, n), torch.int64),
            "min_corr": ((k, n), "float"),
            "argmin": ((k, n), torch.int64),
            "dead": ((n,), torch.bool),
        }
        for name, (shape, dtype) in expect.items():
            value = getattr(self, name)
            ok = value.is_floating_point() if dtype == "float" else value.dtype == dtype
            if tuple(value.shape) != shape or not ok:
                raise ValueError(
                    f"{name} is {tuple(value.shape)} {value.dtype}, expected {shape} {dtype}"
                )
        if self.top_corr.shape[:2] != (k, n) or self.top_index.shape != self.top_corr.shape:
            raise ValueError(
                f"top_corr/top_index are {tuple(self.top_corr.shape)}, not ({k}, {n}, _)"
            )
        if self.baseline_draws.shape[0] != k or self.baseline_draws.shape[2] != n:
            raise ValueError(f"baseline_draws is {tuple(self.baseline_draws.shape)}")
        for m, (idx, dead) in enumerate(zip(self.other_units, self.other_dead, strict=True)):
            if tuple(dead.shape) != (idx.n_units,):
                raise ValueError(f"other_dead[{m}] has {dead.shape[0]} units, not {idx.n_units}")
            for name in ("argmax", "argmin"):
                flat = getattr(self, name)[m]
                if bool(((flat < -1) | (flat >= idx.n_units)).any()):
                    raise ValueError(f"{name}[{m}] points outside model {m}'s {idx.n_units} units")

    def summary(self, threshold: float = 0.5) -> dict[str, Any]:
        """The headline numbers: units, tokens, universal count and share, median max-correlation
        and baseline (means over models), excess-correlation quantiles, and the universal share
        of every layer (``universal_share_L{layer}``). NaN where there is no baseline."""
        df = self.to_dataframe(threshold)
        live = df[~df["is_dead"]]
        excess = live["excess_corr"].dropna()
        out: dict[str, Any] = {
            "reference": self.names[0],
            "others": ", ".join(self.other_labels()),
            "n_units": int(len(df)),
            "n_dead": int(df["is_dead"].sum()),
            "n_tokens": int(self.n_tokens),
            "baseline": self.baseline or "none",
            "n_universal": int(df["is_universal"].sum()) if self.baseline else 0,
            "universal_share": float(df["is_universal"].mean()) if self.baseline else float("nan"),
            "median_max_corr": float(live["mean_corr"].median()),
            "median_baseline": float(live["mean_baseline"].median()),
            "excess_p50": float(excess.quantile(0.5)) if len(excess) else float("nan"),
            "excess_p99": float(excess.quantile(0.99)) if len(excess) else float("nan"),
            "excess_max": float(excess.max()) if len(excess) else float("nan"),
            "threshold": float(threshold),
        }
        if self.certified is not None:
            out["n_certified"] = self.n_certified
            out["certified_share"] = self.n_certified / max(1, int((~self.dead).sum()))
        if self.baseline_certified is not None:
            live = int((~self.dead).sum())
            held = int((self.baseline_certified.all(0) & ~self.dead).sum())
            out["baseline_certified_share"] = held / max(1, live)
        decided = self.universal_certified(threshold)
        if decided is not None:
            out["universal_certified_share"] = int(decided.sum()) / max(1, int((~self.dead).sum()))
        if self.baseline:
            for row in self.universal_share(threshold).itertuples():
                out[f"universal_share_L{int(row.layer)}"] = float(row.universal_share)
        return out

    def wandb_payload(self, threshold: float = 0.5) -> dict[str, Any]:
        """What wandb logs of this result: the ``summary()`` numbers (per-layer shares as
        ``layer_{l}/universal_share``), the universal-neuron and per-layer tables, histograms of
        max correlation, baseline and excess, and the figure."""
        summary = self.summary(threshold)
        scalars = {}
        for key, value in summary.items():
            if key.startswith("universal_share_L"):
                key = f"layer_{key.removeprefix('universal_share_L')}/universal_share"
            scalars[key] = value
        table = self.to_dataframe(threshold)
        tables = {"per_layer": self.universal_share(threshold)} if self.baseline else {}
        if self.baseline:
            tables["universal_neurons"] = self.universal_neurons(threshold)
        return {
            "scalars": scalars,
            "tables": tables,
            "histograms": {
                "max_corr": table["mean_corr"].to_numpy(),
                "baseline_max_corr": table["mean_baseline"].to_numpy(),
                "excess_corr": table["excess_corr"].to_numpy(),
            },
            "figures": {"figure": self.plot(threshold=threshold)},
        }

    # -- plots ---------------------------------------------------------------------------------

    def plot(self, ax: Any = None, threshold: float = 0.5) -> Any:
        """The paper's views: per layer, the distribution of max-correlation (mean over models)
        against the baseline's, and the share of universal units. Returns a matplotlib Figure;
        ``ax`` may be a pair of axes to draw on."""
        df = self.to_dataframe(threshold)
        share = self.universal_share(threshold) if self.baseline else None
        layers = sorted(df["layer"].unique())
        pos = np.arange(len(layers), dtype=float)
        if ax is not None:
            ax_dist, ax_share = ax
            fig = ax_dist.figure
        else:
            fig, (ax_dist, ax_share) = new_axes(
                figsize=(max(6.0, 0.5 * len(layers) + 3), 7), nrows=2, ncols=1, sharex=True
            )
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

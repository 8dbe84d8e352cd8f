"""The result of :func:`universality_over_training`: a table per (checkpoint, layer), plots and
the per-unit trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.names import neuron_name, parse_unit
from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder
from tl_universality.units.activations import (
    UnitIndex,
)

#: Training tokens per optimiser step of known checkpointed models, by name prefix (Stanford
#: CRFM's Mistral GPT-2 runs, by alias and by ``cfg.model_name``: batch 512 x 1024 tokens).
#: Pass ``tokens_per_step`` for others.
TOKENS_PER_STEP: dict[str, int] = {
    prefix: 512 * 1024
    for prefix in (
        "stanford-gpt2", "stanford-crfm/", "alias-gpt2", "battlestar-gpt2", "caprica-gpt2",
        "darkmatter-gpt2", "expanse-gpt2", "arwen-gpt2", "beren-gpt2", "celebrimbor-gpt2",
        "durin-gpt2", "eowyn-gpt2",
    )
}  # fmt: skip

#: The columns of :meth:`TrainingCurve.to_dataframe`, one row per (checkpoint, layer).
COLUMNS = (
    "step", "tokens_seen", "loss", "layer", "n_units", "n_dead", "n_universal",
    "universal_share", "median_max_corr", "median_baseline", "excess_p50", "excess_p90",
    "excess_p99", "excess_max", "participation_ratio",
)  # fmt: skip

Loader = Callable[..., Any]


# -- the result ------------------------------------------------------------------------------------


@dataclass(repr=False)
class TrainingCurve(Result):
    """Universality at each training checkpoint, per layer and per unit.

    Attributes:
        names: Labels of the reference and the other models (without the checkpoint).
        steps: Training step of each checkpoint (the checkpoint value; the index if unknown).
        tokens_seen: Training tokens seen at each checkpoint (-1 where unknown).
        loss: Mean next-token loss (nats) of the reference on the analysis tokens.
        table: One row per (checkpoint, layer), columns :data:`COLUMNS`.
        units: The reference's units (the same at every checkpoint).
        max_corr: ``[checkpoints, units]`` each unit's max-correlation with the other seeds
            (mean over them, the paper's ``mean_corr``); NaN for dead units.
        baseline: ``[checkpoints, units]`` its chance baseline (mean over the other seeds).
        threshold: The excess correlation above which a unit counts as universal.
        config: The run's settings (baseline, draws, token convention, tokens, ...).
    """

    FORMAT = "tl_universality.training_curve"
    VERSION = 1

    names: tuple[str, ...]
    steps: list[int]
    tokens_seen: list[int]
    loss: list[float]
    table: pd.DataFrame
    units: UnitIndex
    max_corr: Float[Tensor, "checkpoints units"]
    baseline: Float[Tensor, "checkpoints units"]
    threshold: float = 0.5
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def excess_correlation(self) -> Float[Tensor, "checkpoints units"]:
        """``max_corr - baseline`` per checkpoint and unit (the paper's excess correlation)."""
        return self.max_corr - self.baseline

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (checkpoint, layer): step, tokens seen, loss, universal share, excess
        quantiles, baseline median, participation ratio (:data:`COLUMNS`)."""
        return self.table.copy()

    def first_exceeds(
        self,
        threshold: float | None = None,
        column: str = "excess_corr",
    ) -> pd.DataFrame:
        """When each unit's ``column`` first exceeds ``threshold`` (default: the curve's).

        ``max_corr`` is the unit's best match in the other seeds (mean over them); with
        ``excess_corr`` the baseline is subtracted. One row per unit: ``layer, neuron, unit,
        first_step, first_tokens`` (-1 if never), ``final`` and ``peak`` value, ordered by
        first step (never last).
        """
        threshold = self.threshold if threshold is None else float(threshold)
        values = self._values(column).numpy()
        above = np.nan_to_num(values, nan=-np.inf) > threshold
        ever = above.any(0)
        first = np.where(ever, above.argmax(0), -1)
        steps, tokens = np.asarray(self.steps), np.asarray(self.tokens_seen)
        with np.errstate(all="ignore"), _quiet():
            peak = np.nanmax(values, 0)
        frame = self.units.to_frame()
        frame["unit"] = [neuron_name(a, b) for a, b in zip(frame.layer, frame.neuron, strict=True)]
        frame["first_step"] = np.where(ever, steps[first], -1)
        frame["first_tokens"] = np.where(ever, tokens[first], -1)
        frame["final"] = values[-1]
        frame["peak"] = peak
        order = np.lexsort((np.arange(len(frame)), ~ever, np.where(ever, first, 0)))
        return frame.iloc[order].reset_index(drop=True)

    def neuron_trajectory(self, neuron: str | tuple[int, int]) -> pd.DataFrame:
        """One neuron (``"L1N191"`` or ``(1, 191)``) through training: step, tokens seen, loss,
        max_corr, baseline, excess_corr."""
        if isinstance(neuron, str):
            parsed = parse_unit(neuron)
            layer, index = parsed.layer, parsed.index
        else:
            layer, index = neuron
        flat = self.units.flat(int(layer), int(index))
        return pd.DataFrame(
            {
                "step": self.steps,
                "tokens_seen": self.tokens_seen,
                "loss": self.loss,
                "max_corr": self.max_corr[:, flat].numpy(),
                "baseline": self.baseline[:, flat].numpy(),
                "excess_corr": self.excess_correlation[:, flat].numpy(),
            }
        )

    def _values(self, column: str) -> Tensor:
        if column == "excess_corr":
            return self.excess_correlation
        if column == "max_corr":
            return self.max_corr
        raise ValueError(f"column must be 'excess_corr' or 'max_corr', got {column!r}.")

    def summary(self) -> dict[str, Any]:
        """Headline numbers: checkpoints, final loss and universal share (all layers and per
        layer), final excess p99 and max, the largest excess at any checkpoint, and the first step
        at which any unit was universal (-1 if none)."""
        excess = self.excess_correlation.numpy()
        live = ~np.isnan(excess[-1])
        final = excess[-1][live]
        any_universal = (np.nan_to_num(excess, nan=-np.inf) > self.threshold).any(1)
        out: dict[str, Any] = {
            "reference": self.names[0],
            "others": ", ".join(self.names[1:]),
            "n_checkpoints": len(self.steps),
            "first_step": int(self.steps[0]),
            "last_step": int(self.steps[-1]),
            "final_loss": float(self.loss[-1]),
            "threshold": float(self.threshold),
            "final_n_universal": int((final > self.threshold).sum()),
            "final_universal_share": float(
                (final > self.threshold).sum() / max(1, excess.shape[1])
            ),
            "final_excess_p99": float(np.quantile(final, 0.99)) if final.size else math.nan,
            "final_excess_max": float(final.max()) if final.size else math.nan,
            "peak_excess": float(np.nanmax(excess)) if np.isfinite(excess).any() else math.nan,
            "first_universal_step": int(self.steps[int(any_universal.argmax())])
            if any_universal.any()
            else -1,
        }
        last = self.table[self.table["step"] == self.steps[-1]]
        for row in last.itertuples():
            out[f"universal_share_L{int(row.layer)}"] = float(row.universal_share)
        return out

    def plot(self, ax: Any = None) -> Any:
        """Universal share (%) and excess-correlation p99 (max dotted) against training tokens,
        one line per layer; the threshold dashed. ``ax`` may be a pair of axes."""
        if ax is not None:
            ax_share, ax_excess = ax
            fig = ax_share.figure
        else:
            fig, (ax_share, ax_excess) = new_axes(figsize=(6.4, 6.4), nrows=2, sharex=True)
        known = all(t >= 0 for t in self.tokens_seen)
        x_all = np.asarray(self.tokens_seen if known else self.steps, dtype=float)
        for layer, rows in self.table.groupby("layer", sort=True):
            x = np.asarray(rows["tokens_seen"] if known else rows["step"], dtype=float)
            line = ax_share.plot(
                x, 100 * rows["universal_share"], marker="o", label=f"layer {layer}"
            )
            color = line[0].get_color()
            ax_excess.plot(
                x, rows["excess_p99"], marker="o", color=color, label=f"layer {layer} p99"
            )
            ax_excess.plot(x, rows["excess_max"], ls=":", color=color, label=f"layer {layer} max")
        ax_excess.axhline(self.threshold, color="black", ls="--", lw=0.8, label="threshold")
        positive = x_all[x_all > 0]
        if positive.size and x_all.max() > 100 * positive.min():  # spans decades: log scale
            for axis in (ax_share, ax_excess):
                if (x_all > 0).all():
                    axis.set_xscale("log")
                else:
                    axis.set_xscale("symlog", linthresh=float(positive.min()))
        share_max = float(100 * self.table["universal_share"].max()) if len(self.table) else 0
        ax_share.set_ylim(0, max(1.0, 1.2 * share_max))
        ax_share.set_ylabel(f"universal (excess > {self.threshold}) %")
        ax_share.set_title(f"{self.names[0]} vs {', '.join(self.names[1:])} over training")
        ax_share.legend(fontsize="small")
        ax_excess.set_ylabel("excess correlation")
        ax_excess.set_xlabel("training tokens" if known else "training step")
        ax_excess.legend(fontsize="x-small", ncol=2)
        return fig

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"TrainingCurve({s['reference']} vs {s['others']}: {s['n_checkpoints']} checkpoints,"
            f" steps {s['first_step']}..{s['last_step']}, final universal share"
            f" {s['final_universal_share']:.1%}, final excess p99 {s['final_excess_p99']:.3f})"
        )

    # -- saving ----------------------------------------------------------------------------------

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_table("curve", self.table)
        out.write_tensors("units", {"max_corr": self.max_corr, "baseline": self.baseline})
        meta.update(
            names=list(self.names), steps=list(self.steps), tokens_seen=list(self.tokens_seen),
            loss=list(self.loss), units=self.units.to_dict(), threshold=self.threshold,
            config=self.config,
        )  # fmt: skip

    @classmethod
    def _read(cls, saved: SavedFolder) -> TrainingCurve:
        meta = saved.meta
        tensors = saved.tensors("units")
        curve = cls(
            names=tuple(meta["names"]), steps=[int(s) for s in meta["steps"]],
            tokens_seen=[int(t) for t in meta["tokens_seen"]],
            loss=[float(v) for v in meta["loss"]], table=saved.table("curve"),
            units=UnitIndex.from_dict(meta["units"]), max_corr=tensors["max_corr"],
            baseline=tensors["baseline"], threshold=float(meta["threshold"]),
            config=dict(meta["config"]),
        )  # fmt: skip
        n = len(curve.steps)
        shape = (n, curve.units.n_units)
        if len(curve.tokens_seen) != n or len(curve.loss) != n or curve.max_corr.shape != shape:
            raise ValueError(f"the saved curve's checkpoints and units disagree ({shape})")
        if curve.baseline.shape != shape or list(curve.table.columns) != list(COLUMNS):
            raise ValueError("the saved curve's baseline or table has the wrong shape")
        return curve


class _quiet:
    """Silence numpy's all-NaN warnings (dead units) inside a block."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._catch.__exit__(*exc)

"""Universality across training: when do universal neurons appear (docs/training_curve.md)?

For each training checkpoint of a set of seed models, :func:`universality_over_training`
correlates seed 0 with the other seeds on the same tokens with
:func:`~tl_universality.analyses.correlation.correlate` (and its baseline), and records per layer
the universal share, the excess-correlation quantiles, the baseline median and the participation
ratio of seed 0's activations, with the reference's loss on those tokens. The models come from an
offline seed family trained with checkpoints
(``train_seed_family(..., checkpoints=[...])``) or, with the internet, from TransformerLens
models with checkpoints such as the Stanford GPT-2 seeds (``stanford-gpt2-small-a`` ... ``-e``,
609 checkpoints each), loaded with ``checkpoint_index`` or ``checkpoint_value``.

The :class:`TrainingCurve` also keeps every unit's max-correlation and baseline at every
checkpoint, so a neuron can be followed through training: :meth:`TrainingCurve.first_exceeds`
says when each neuron's best match across seeds first exceeds a threshold.

Participation ratio of a layer: ``(Σ λ)² / Σ λ²`` over the eigenvalues ``λ`` of the covariance of
its units (over the same token positions as the correlation), i.e. ``tr(C)² / ‖C‖²_F``: the number
of directions the activations effectively use (1 for a rank-one layer, ``d`` for isotropic ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.analyses.correlation import correlate
from tl_universality.core.names import neuron_name, parse_unit
from tl_universality.core.protocol import HookedModel
from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.units.activations import (
    UnitIndex,
    UnitsSpec,
    excluded_token_ids,
    stream_activations,
    unit_index,
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


# -- per checkpoint ------------------------------------------------------------------------------


@torch.no_grad()
def participation_ratios(
    model: HookedModel,
    tokens: Any,
    *,
    units: UnitsSpec = None,
    batch_size: int = 32,
    exclude_token_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[int, float]:
    """Per layer, ``tr(C)² / ‖C‖²_F`` of the covariance ``C`` of its units' activations.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_mlp=16,
        ...                               d_vocab=20, act_fn="relu", seed=0)
        >>> toks = torch.randint(1, 20, (8, 8), generator=torch.Generator().manual_seed(0))
        >>> toks[:, 0] = 0
        >>> pr = participation_ratios(HookedTransformer(cfg), toks, exclude_token_ids=[0])
        >>> 1.0 <= pr[0] <= 16.0
        True
    """
    index = unit_index(model, units)
    sums: Tensor | None = None
    n = 0
    for batch in stream_activations(
        model, tokens, units=units, batch_size=batch_size, dtype=torch.float64,
        exclude_token_ids=exclude_token_ids, progress=progress,
    ):  # fmt: skip
        acts = batch.acts[0]
        if sums is None:
            sums = torch.zeros(acts.shape[1], dtype=torch.float64, device=acts.device)
            blocks: list[Tensor] = [
                torch.zeros(w, w, dtype=torch.float64, device=acts.device) for w in index.widths
            ]
        sums += acts.sum(0)
        for i, layer in enumerate(index.layers):
            part = acts[:, index.slice(layer)]
            blocks[i] += part.T @ part
        n += acts.shape[0]
    if sums is None or n == 0:
        return {int(layer): math.nan for layer in index.layers}
    out = {}
    for i, layer in enumerate(index.layers):
        mean = sums[index.slice(layer)] / n
        cov = blocks[i] / n - torch.outer(mean, mean)
        denom = float((cov * cov).sum())
        out[int(layer)] = float(torch.trace(cov)) ** 2 / denom if denom > 0 else math.nan
    return out


@torch.no_grad()
def _mean_loss(model: HookedModel, source: Any, batch_size: int) -> float:
    total, count = 0.0, 0
    device = next(model.parameters()).device  # type: ignore[attr-defined]
    for batch in source.batches(batch_size):
        loss = model(batch.to(device), return_type="loss")  # type: ignore[operator]
        total += float(loss) * batch.shape[0]
        count += batch.shape[0]
    return total / count if count else math.nan


def _layer_rows(result: Any, threshold: float) -> list[dict[str, Any]]:
    df = result.to_dataframe(threshold)
    rows = []
    for layer, group in df.groupby("layer", sort=True):
        excess = group.loc[~group["is_dead"], "excess_corr"].dropna().to_numpy()
        q = np.quantile(excess, [0.5, 0.9, 0.99]) if excess.size else [math.nan] * 3
        rows.append(
            {
                "layer": int(layer),
                "n_units": int(len(group)),
                "n_dead": int(group["is_dead"].sum()),
                "n_universal": int(group["is_universal"].sum()),
                "universal_share": float(group["is_universal"].mean()),
                "median_max_corr": float(group["mean_corr"].median()),
                "median_baseline": float(group["mean_baseline"].median()),
                "excess_p50": float(q[0]),
                "excess_p90": float(q[1]),
                "excess_p99": float(q[2]),
                "excess_max": float(excess.max()) if excess.size else math.nan,
            }
        )
    return rows


# -- where the checkpoints come from ---------------------------------------------------------------


@dataclass
class _Checkpoint:
    step: int
    tokens_seen: int
    models: list[Any]
    tokens: Any = None  # default tokens of this source (a family's held-out set)


def _family_checkpoints(
    family: Any, checkpoints: Sequence[int] | str, cache_dir: Any, device: str
) -> tuple[list[str], Iterator[_Checkpoint]]:
    from tl_universality.data.seeds import (
        SeedFamily,
        family_folder,
        load_family_folder,
    )

    folder = (
        family.folder
        if isinstance(family, SeedFamily)
        else family_folder(family, cache_dir=cache_dir)
    )
    if not (Path(folder) / "family.json").is_file():
        name = getattr(family, "name", family)
        raise FileNotFoundError(
            f"No cached seed family {name!r} in {folder}. Fix: run train_seed_family({name!r},"
            " checkpoints=[...]) first (the CLI's training-curve command does)."
        )
    final = load_family_folder(folder, device=device)
    steps = (
        list(final.info.get("checkpoints", [final.config.steps]))
        if checkpoints == "all"
        else list(checkpoints)
    )
    names = [f"{final.config.name}/seed{s}" for s in final.config.seeds]

    def generate() -> Iterator[_Checkpoint]:
        for step in steps:
            fam = (
                final
                if step == final.config.steps
                else load_family_folder(folder, device=device, checkpoint=int(step))
            )
            yield _Checkpoint(int(step), fam.tokens_seen, fam.models, final.held_out_tokens())

    return names, generate()


def _hub_tokens_per_step(name: str) -> int | None:
    for prefix, value in TOKENS_PER_STEP.items():
        if name.startswith(prefix):
            return value
    return None


def _hub_checkpoints(
    names: Sequence[str],
    checkpoints: Sequence[int],
    kind: str,
    loader: Loader | None,
    device: str,
    tokens_per_step: int | None,
) -> Iterator[_Checkpoint]:
    if loader is None:
        from transformer_lens import HookedTransformer

        loader = HookedTransformer.from_pretrained
    per_step = tokens_per_step if tokens_per_step is not None else _hub_tokens_per_step(names[0])
    for checkpoint in checkpoints:
        key = "checkpoint_index" if kind == "index" else "checkpoint_value"
        models = [loader(name, device=device, **{key: int(checkpoint)}) for name in names]
        cfg = models[0].cfg
        value = getattr(cfg, "checkpoint_value", None)
        step = int(value) if value is not None else int(checkpoint)
        label = getattr(cfg, "checkpoint_label_type", None) or "step"
        if label == "tokens":
            seen = step
        else:
            seen = step * per_step if per_step is not None else -1
        yield _Checkpoint(step, seen, models)


# -- the analysis ----------------------------------------------------------------------------------


def universality_over_training(
    families_or_model_names: Any,
    checkpoints: Sequence[int] | str = "all",
    tokens: Tokens = None,
    *,
    checkpoint_kind: str = "value",
    units: UnitsSpec = None,
    threshold: float = 0.5,
    baseline: str = "rotation",
    n_draws: int = 2,
    seed: int = 0,
    batch_size: int = 32,
    max_tokens: int | None = None,
    exclude_token_ids: Sequence[int] | None = None,
    tokens_per_step: int | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    loader: Loader | None = None,
    progress: bool = False,
    callback: Callable[[int, TrainingCurve], None] | None = None,
) -> TrainingCurve:
    """Universality of seed 0 against the other seeds at each training checkpoint.

    Args:
        families_or_model_names: An offline seed family (a preset name such as ``"demo"``, a
            :class:`~tl_universality.data.seeds.SeedFamilyConfig` or a loaded ``SeedFamily``),
            trained with ``checkpoints=``; or a list of TransformerLens model names with
            checkpoints, the first the reference (e.g. ``["stanford-gpt2-small-a",
            "stanford-gpt2-small-b"]``; needs the internet).
        checkpoints: The checkpoints, in order: training steps of a family (``"all"``: every
            saved one, the final weights last); for model names, values or indices (see
            ``checkpoint_kind``).
        tokens: The analysis tokens (anything ``correlate`` accepts); default a family's
            held-out set, else the embedded corpus. The same tokens at every checkpoint.
        checkpoint_kind: For model names: ``"value"`` (the training step, TransformerLens's
            ``checkpoint_value``) or ``"index"`` (``checkpoint_index``).
        units: Which units (default every layer's MLP neurons).
        threshold: Excess correlation above which a unit is universal (the paper's 0.5).
        baseline, n_draws, seed, batch_size, max_tokens, exclude_token_ids: As in
            :func:`~tl_universality.analyses.correlation.correlate` (the token convention
            defaults to the paper's: BOS, padding and newline positions left out).
        tokens_per_step: Training tokens per step of model names (default known for the
            Stanford GPT-2 runs: 512 x 1024; else tokens seen are -1).
        cache_dir: Where the seed families are cached.
        device: Where the models run.
        loader: ``loader(name, device=..., checkpoint_index=i | checkpoint_value=v)`` returning a
            model; default ``HookedTransformer.from_pretrained``.
        progress: Progress bars of each correlation.
        callback: Called as ``callback(i, curve_so_far)`` after each checkpoint.

    Returns:
        A :class:`TrainingCurve`.

    Examples:
        >>> from tl_universality.data.seeds import train_seed_family
        >>> _ = train_seed_family("tiny", checkpoints=[0, 30], progress=False)  # doctest: +SKIP
        >>> curve = universality_over_training("tiny", max_tokens=5000)  # doctest: +SKIP
        >>> curve.steps  # doctest: +SKIP
        [0, 30, 60]
    """
    from tl_universality.data.seeds import SeedFamily, SeedFamilyConfig
    from tl_universality.data.tokens import resolve_tokens

    spec = families_or_model_names
    if isinstance(spec, (str, SeedFamilyConfig, SeedFamily)):
        names, source_iter = _family_checkpoints(spec, checkpoints, cache_dir, device)
    else:
        names = [str(n) for n in spec]
        if len(names) < 2:
            raise ValueError("universality_over_training needs at least two model names.")
        if isinstance(checkpoints, str):
            raise ValueError(
                "Name the checkpoints of hub models (e.g. checkpoints=[0, 1000, 400000] with"
                " checkpoint_kind='value')."
            )
        if checkpoint_kind not in ("value", "index"):
            raise ValueError(
                f"checkpoint_kind must be 'value' or 'index', got {checkpoint_kind!r}."
            )
        source_iter = _hub_checkpoints(
            names, checkpoints, checkpoint_kind, loader, device, tokens_per_step
        )

    rows: list[dict[str, Any]] = []
    steps: list[int] = []
    seen: list[int] = []
    losses: list[float] = []
    max_corr: list[Tensor] = []
    base: list[Tensor] = []
    index: UnitIndex | None = None
    config: dict[str, Any] = {}
    curve: TrainingCurve | None = None
    for i, point in enumerate(source_iter):
        models = point.models
        source = resolve_tokens(
            tokens if tokens is not None else point.tokens, models, max_tokens=max_tokens
        )
        result = correlate(
            models[0], models[1:], source, units=units, baseline=baseline, n_draws=n_draws,
            seed=seed, batch_size=batch_size, exclude_token_ids=exclude_token_ids,
            progress=progress,
        )  # fmt: skip
        if index is None:
            index = result.units
            config = {
                "baseline": baseline,
                "n_draws": n_draws,
                "seed": seed,
                "tokens": source.name,
                "n_tokens": int(result.n_tokens),
                "exclude_token_ids": sorted(
                    excluded_token_ids(
                        source, getattr(models[0], "tokenizer", None), exclude_token_ids
                    )
                ),
                "token_convention": "paper (BOS, padding, newline)"
                if exclude_token_ids is None
                else "explicit",
            }
        pr = participation_ratios(
            models[0], source, units=units, batch_size=batch_size,
            exclude_token_ids=exclude_token_ids,
        )  # fmt: skip
        loss = _mean_loss(models[0], source, batch_size)
        for row in _layer_rows(result, threshold):
            rows.append(
                {"step": point.step, "tokens_seen": point.tokens_seen, "loss": loss, **row,
                 "participation_ratio": pr.get(row["layer"], math.nan)}
            )  # fmt: skip
        steps.append(point.step)
        seen.append(point.tokens_seen)
        losses.append(loss)
        max_corr.append(result.mean_corr.float())
        base.append(result.mean_baseline.float())
        curve = TrainingCurve(
            names=tuple(names), steps=list(steps), tokens_seen=list(seen), loss=list(losses),
            table=pd.DataFrame(rows, columns=list(COLUMNS)), units=index,
            max_corr=torch.stack(max_corr), baseline=torch.stack(base), threshold=threshold,
            config=config,
        )  # fmt: skip
        if callback is not None:
            callback(i, curve)
        del models, point
    if curve is None:
        raise ValueError("No checkpoint given: pass at least one step, index or value.")
    return curve


def training_curve(
    model: HookedModel,
    others: Sequence[Any],
    checkpoints: Sequence[int],
    tokens: Tokens = None,
    **kwargs: Any,
) -> TrainingCurve:
    """:func:`universality_over_training` of the hub model ``model`` (by its
    ``cfg.model_name``, e.g. a loaded ``stanford-gpt2-small-a``) and ``others`` (names or
    models): the accessor's form, ``model.universality.training_curve(others, checkpoints)``."""
    names = [_hub_name(model), *(_hub_name(o) if not isinstance(o, str) else o for o in others)]
    return universality_over_training(names, checkpoints, tokens, **kwargs)


def _hub_name(model: Any) -> str:
    name = getattr(getattr(model, "cfg", None), "model_name", None)
    if not name:
        raise ValueError(
            "training_curve needs models loaded by name (cfg.model_name). For an offline seed"
            " family, call universality_over_training(preset) instead."
        )
    return str(name)

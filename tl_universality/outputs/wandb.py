"""Log results to Weights & Biases: configuration, scalar summaries, tables, histograms, figures.

wandb is imported lazily and defaults to offline mode (``WANDB_MODE`` overrides it), so nothing
ever prompts for a login. Logging is best effort: callers save results to disk first, and a wandb
error is turned into a warning so the computed result is never lost.

Any result object can be logged, each under its own key (its type and name, :func:`payload_of`).
A correlation result logs its summaries, tables, histograms and figure
(:func:`correlation_payload`); objects with a ``wandb_payload()`` method say what to log;
DataFrames are logged as tables; other objects with ``to_dataframe()`` are logged as that table.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class WandbPayload:
    """What to log for one result, under ``prefix/``."""

    prefix: str
    scalars: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def correlation_payload(result: Any, threshold: float = 0.5) -> WandbPayload:
    """What a :class:`~tl_universality.analyses.correlation.CorrelationResult` logs (its
    ``wandb_payload``): the numbers of ``summary()``, the universal-neuron and per-layer tables,
    histograms of max correlation, baseline and excess, and the paper's figure."""
    return _as_payload(result.wandb_payload(threshold), "correlation")


def _scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    }


def _as_payload(parts: Any, prefix: str) -> WandbPayload:
    if isinstance(parts, WandbPayload):
        return parts
    return WandbPayload(
        prefix,
        scalars=_scalars(parts.get("scalars", {})),
        tables=dict(parts.get("tables", {})),
        histograms=dict(parts.get("histograms", {})),
        figures=dict(parts.get("figures", {})),
    )


def payload_of(result: Any, name: str | None = None) -> WandbPayload:
    """The :class:`WandbPayload` of a result, logged under its type and ``name``.

    A result that says what to log (``wandb_payload()``) logs that; any other result of the
    protocol logs its ``summary()`` numbers, its ``to_dataframe()`` table and its ``plot()``; a
    DataFrame logs as the table ``table/<name>``. The prefix is the type (``correlation``,
    ``entropy_intervention``, ...), then ``/<name>`` when a name other than the type is given.

    Examples:
        >>> payload_of(pd.DataFrame({"a": [1]}), "families").prefix
        'table'
        >>> list(payload_of(pd.DataFrame({"a": [1]}), "families").tables)
        ['families']
    """
    if isinstance(result, pd.DataFrame):
        return WandbPayload("table", tables={name or result.attrs.get("name") or "table": result})
    kind = _snake(type(result).__name__)
    prefix = kind if name in (None, kind) else f"{kind}/{name}"
    if hasattr(result, "wandb_payload"):
        return _as_payload(result.wandb_payload(), prefix)
    if hasattr(result, "to_dataframe"):
        payload = WandbPayload(prefix, tables={"table": result.to_dataframe()})
        try:
            payload.scalars = _scalars(result.summary())
        except (AttributeError, NotImplementedError):
            pass
        return payload
    raise TypeError(
        f"Don't know how to log a {type(result).__name__} to wandb: give it a wandb_payload() or"
        " to_dataframe() method, or pass a DataFrame."
    )


def _named(results: Mapping[str, Any] | Iterable[Any] | Any) -> list[tuple[str | None, Any]]:
    """``(name, result)`` pairs: a mapping gives its names; in a list, a DataFrame without a
    name (``attrs["name"]``) is ``table_<i>``, other results go by their type."""
    if isinstance(results, Mapping):
        return list(results.items())
    if not isinstance(results, list | tuple):
        results = [results]
    pairs: list[tuple[str | None, Any]] = []
    for i, result in enumerate(results):
        if isinstance(result, pd.DataFrame) and not result.attrs.get("name"):
            pairs.append((f"table_{i}", result))
        else:
            pairs.append((None, result))
    return pairs


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.removesuffix("_result")


def run_location(run: Any) -> str:
    """Where a run went: its URL when online, else its offline folder and the command to upload
    it (``wandb sync <folder>``)."""
    url = getattr(run, "url", None)
    if url:
        return str(url)
    folder = Path(run.dir).parent if getattr(run, "dir", None) else None
    if folder is None or getattr(run, "disabled", False):
        return "disabled (nothing written)"
    return f"offline run in {folder}; upload it with: wandb sync {folder}"


def open_run(
    project: str = "tl_universality",
    *,
    config: Mapping[str, Any] | None = None,
    mode: str | None = None,
    dir: str | Path | None = None,
    name: str | None = None,
    group: str | None = None,
) -> Any:
    """Start a wandb run that never prompts: offline unless ``mode`` or ``WANDB_MODE`` says else.

    ``mode="disabled"`` gives a run that writes nothing. ``config`` is the run's settings
    (models with fingerprints, tokens, baseline, versions); ``group`` gathers the runs of one
    study.
    """
    import wandb

    mode = mode or os.environ.get("WANDB_MODE") or "offline"
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=project,
        config=dict(config or {}),
        mode=mode,
        dir=str(dir) if dir is not None else None,
        name=name,
        group=group,
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )


def log_results(
    results: Iterable[Any] | Any,
    *,
    run: Any = None,
    project: str = "tl_universality",
    config: Mapping[str, Any] | None = None,
    mode: str | None = None,
    out_dir: str | Path | None = None,
    finish: bool | None = None,
    name: str | None = None,
    group: str | None = None,
) -> Any:
    """Log one or several results to ``run`` (or to a new offline run in ``out_dir``, named
    ``name``, in ``group``, with ``config`` as its settings).

    ``results`` is one result, a list, or a mapping name -> result. Each result goes under its
    own key, its type and name (:func:`payload_of`): ``correlation/...``,
    ``table/neuron_table``, ``entropy_intervention/...``; a key used twice gets ``_2``, ``_3``.

    Returns the run, or ``None`` when wandb failed (a warning says why; nothing else is lost).

    Examples:
        >>> df = pd.DataFrame({"layer": [0], "neuron": [3], "excess_corr": [0.7]})
        >>> log_results(df, mode="disabled") is not None
        True
    """
    own_run = run is None
    try:
        import wandb

        if own_run:
            run = open_run(project, config=config, mode=mode, dir=out_dir, name=name, group=group)
        used: set[str] = set()

        def key(prefix: str, item: str) -> str:
            base = f"{prefix}/{item}"
            found, n = base, 1
            while found in used:
                n += 1
                found = f"{base}_{n}"
            used.add(found)
            return found

        for result_name, result in _named(results):
            payload = payload_of(result, result_name)
            p = payload.prefix
            if payload.scalars:
                run.summary.update({key(p, k): float(v) for k, v in payload.scalars.items()})
            row: dict[str, Any] = {}
            for k, table in payload.tables.items():
                row[key(p, k)] = wandb.Table(dataframe=_loggable(table))
            for k, values in payload.histograms.items():
                finite = np.asarray(values, dtype=np.float64)
                row[key(p, k)] = wandb.Histogram(finite[np.isfinite(finite)])
            for k, fig in payload.figures.items():
                row[key(p, k)] = wandb.Image(_figure_image(fig))
            if row:
                run.log(row)
        if finish if finish is not None else own_run:
            run.finish()
        return run
    except Exception as err:  # a logging failure must never cost the user their result
        warnings.warn(
            f"wandb logging failed ({type(err).__name__}: {err}); the results on disk are intact."
            " Re-log them later with tl_universality.outputs.wandb.log_results.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _loggable(table: pd.DataFrame) -> pd.DataFrame:
    """A copy wandb's Table takes: a flat index, string column names, no nested objects."""
    flat = table.reset_index(drop=all(n is None for n in table.index.names))
    flat.columns = [str(c) for c in flat.columns]
    for column in flat.columns:
        if flat[column].dtype == object:
            flat[column] = flat[column].map(lambda v: v if isinstance(v, str | int | float | bool)
                                            or v is None else str(v))  # fmt: skip
    return flat


def _figure_image(fig: Any) -> Any:
    """A PIL image of a matplotlib figure (wandb's own conversion needs pyplot's global state)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    buf.seek(0)
    return Image.open(buf)


class WandbProgress:
    """A progress callback that logs a long run's progress to wandb as it goes.

    Pass it as ``correlate(..., callback=WandbProgress(run))``: each call logs the numeric fields
    of the progress object it receives (tokens, sequences, pass) under ``prefix/``; it can also be
    called with keyword arguments.
    """

    def __init__(self, run: Any, prefix: str = "progress") -> None:
        self.run = run
        self.prefix = prefix

    def __call__(self, progress: Any = None, **scalars: float) -> None:
        if progress is not None:
            fields = progress.__dict__ if hasattr(progress, "__dict__") else dict(progress)
            scalars = {
                k: v
                for k, v in fields.items()
                if isinstance(v, (int, float)) and not k.startswith("_")
            } | scalars
        try:
            self.run.log({f"{self.prefix}/{k}": float(v) for k, v in scalars.items()})
        except Exception as err:  # never stop a long run for a logging hiccup
            warnings.warn(f"wandb progress logging failed: {err}", RuntimeWarning, stacklevel=2)

"""The report's interactive figures, as plotly figure dicts (drawn by plotly.js in the page).

Each builder takes the tables the analyses saved and returns ``{"data": [...], "layout": {...}}``;
layers are integer ticks, and a figure with nothing to show says so in place of an empty axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tl_universality.core.names import neuron_name

Figure = dict[str, Any]

_LAYER_AXIS = {"title": {"text": "layer"}, "tickmode": "linear", "dtick": 1}
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become ``None`` (JSON has no NaN), arrays become lists.

    Examples:
        >>> clean({"y": [1.0, float("nan")], "z": np.array([2, 3])})
        {'y': [1.0, None], 'z': [2, 3]}
    """
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray | pd.Series | pd.Index):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "margin": {"t": 50, "b": 50}, **extra}


def _empty(title: str, message: str) -> Figure:
    """A figure that says why it is empty instead of showing a bare axis."""
    return {
        "data": [],
        "layout": _layout(
            title,
            xaxis={"visible": False},
            yaxis={"visible": False},
            annotations=[{"text": message, "showarrow": False, "font": {"size": 15}}],
        ),
    }


def units_of(df: pd.DataFrame) -> list[str]:
    return [neuron_name(int(a), int(b)) for a, b in zip(df["layer"], df["neuron"], strict=True)]


def max_correlation(table: pd.DataFrame, baseline: str | None) -> Figure:
    """Per layer, the max-correlation (mean over models) of every neuron against its baseline."""
    data = []
    for column, name, colour in (
        ("mean_corr", "max correlation (mean over models)", "#1f77b4"),
        ("mean_baseline", f"baseline ({baseline})", "#7f7f7f"),
    ):
        live = table[["layer", column]].dropna()
        if len(live):
            data.append({"type": "box", "x": live["layer"], "y": live[column], "name": name,
                         "marker": {"color": colour}, "boxpoints": False})  # fmt: skip
    if not data:
        return _empty("Max correlation per layer", "every neuron is dead: no correlation")
    return {
        "data": data,
        "layout": _layout("Max correlation per layer", boxmode="group", xaxis=_LAYER_AXIS,
                          yaxis={"title": {"text": "correlation"}}),
    }  # fmt: skip


def universal_share(share: pd.DataFrame, threshold: float) -> Figure:
    """The share of universal neurons per layer (or a note that there are none)."""
    title = f"Universal neurons per layer (excess_corr > {threshold:g})"
    if share.empty or not share["n_universal"].any():
        return _empty(title, f"no neuron has excess_corr > {threshold:g} in any layer")
    text = [f"{int(n)} of {int(t)}" for n, t in zip(share["n_universal"], share["n_units"],
                                                    strict=True)]  # fmt: skip
    return {
        "data": [{"type": "bar", "x": share["layer"], "y": share["universal_share"],
                  "text": text, "hovertemplate": "layer %{x}: %{y:.2%} (%{text})"}],
        "layout": _layout(title, xaxis=_LAYER_AXIS,
                          yaxis={"title": {"text": "share"}, "tickformat": ".1%"}),
    }  # fmt: skip


def excess_scatter(table: pd.DataFrame, threshold: float) -> Figure:
    """Every neuron's excess correlation by layer; hover for its name."""
    live = table.dropna(subset=["excess_corr"])
    if live.empty:
        return _empty("Excess correlation of every neuron", "no live neuron")
    rng = np.random.default_rng(0)
    x = live["layer"].to_numpy() + rng.uniform(-0.3, 0.3, len(live))
    return {
        "data": [{"type": "scattergl", "mode": "markers", "x": x, "y": live["excess_corr"],
                  "text": units_of(live), "hovertemplate": "%{text}: %{y:.3f}",
                  "marker": {"size": 4, "color": live["excess_corr"], "colorscale": "Viridis"}}],
        "layout": _layout(
            "Excess correlation of every neuron", xaxis=_LAYER_AXIS,
            yaxis={"title": {"text": "excess_corr"}},
            shapes=[{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": threshold,
                     "y1": threshold, "line": {"dash": "dash", "color": "#d62728"}}],
        ),
    }  # fmt: skip


def property_boxes(table: pd.DataFrame, mask: pd.Series, props: Sequence[str]) -> Figure:
    """One box pair (contrast group vs the rest) per neuron property, on a grid."""
    props = [p for p in props if p in table and table[p].notna().any()]
    if not props:
        return _empty("Neuron properties", "the neuron table has none of the compared properties")
    cols = min(3, len(props))
    rows = math.ceil(len(props) / cols)
    data, layout = [], _layout("Neuron properties: contrast group vs the rest",
                               grid={"rows": rows, "columns": cols, "pattern": "independent"},
                               showlegend=False, height=260 * rows)  # fmt: skip
    for i, prop in enumerate(props, 1):
        axis = "" if i == 1 else str(i)
        for group, name, colour in ((mask, "contrast", "#ff7f0e"), (~mask, "other", "#7f7f7f")):
            values = table.loc[group, prop].dropna()
            data.append({"type": "box", "y": values, "name": name, "xaxis": f"x{axis}",
                         "yaxis": f"y{axis}", "marker": {"color": colour},
                         "boxpoints": False})  # fmt: skip
        layout[f"xaxis{axis}"] = {"title": {"text": prop}}
    return {"data": data, "layout": layout}


def stacked_by_layer(counts: pd.DataFrame, title: str, ylabel: str) -> Figure:
    """Stacked bars of ``counts`` (rows: layers, columns: categories)."""
    if counts.empty or not counts.to_numpy().any():
        return _empty(title, "nothing to count")
    data = [
        {"type": "bar", "name": str(c), "x": list(counts.index), "y": counts[c],
         "marker": {"color": _COLOURS[i % len(_COLOURS)]}}
        for i, c in enumerate(counts.columns)
    ]  # fmt: skip
    return {"data": data, "layout": _layout(title, barmode="stack", xaxis=_LAYER_AXIS,
                                            yaxis={"title": {"text": ylabel}})}  # fmt: skip


def vocab_moments(roles: pd.DataFrame) -> Figure:
    """Vocabulary kurtosis (log) against skew of every neuron, coloured by role."""
    data = []
    for i, (role, group) in enumerate(roles.groupby("role", sort=True)):
        data.append({"type": "scattergl", "mode": "markers", "name": str(role),
                     "x": group["vocab_skew"], "y": group["vocab_kurt"], "text": units_of(group),
                     "hovertemplate": "%{text}: skew %{x:.2f}, kurtosis %{y:.1f}",
                     "marker": {"size": 5, "color": _COLOURS[i % len(_COLOURS)]}})  # fmt: skip
    return {"data": data, "layout": _layout(
        "Vocabulary kurtosis and skew of W_out", xaxis={"title": {"text": "vocab_skew"}},
        yaxis={"title": {"text": "vocab_kurt"}, "type": "log"})}  # fmt: skip

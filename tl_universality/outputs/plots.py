"""The paper's views of the neuron table (matplotlib, imported only when a plot is drawn).

- :func:`plot_property_distributions`: one panel per property, universal vs other neurons;
- :func:`plot_vocab_moments_by_layer`: vocabulary kurtosis and skew of every neuron by layer,
  coloured by role when the table has one (prediction neurons gather in late layers);
- :func:`plot_role_counts`: prediction / suppression / partition neurons per layer.

Each takes a neuron table (:func:`~tl_universality.analyses.neuron_stats.neuron_stats`, optionally
joined
with a correlation result or passed through
:func:`~tl_universality.analyses.roles.prediction_neurons`) and
returns the matplotlib ``Figure``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_PROPERTIES = (
    "w_in_norm",
    "input_bias",
    "w_out_norm",
    "in_out_sim",
    "l2_penalty",
    "vocab_var",
    "vocab_skew",
    "vocab_kurt",
    "mean",
    "var",
    "skew",
    "kurt",
    "act_freq",
)
"""Properties shown by default (those present in the table): the paper's Figure on universal
neuron properties."""

_LOG_SCALE = {"vocab_kurt", "kurt", "vocab_var", "var", "l2_penalty"}
"""Heavy-tailed, positive properties drawn on a log axis."""

_ROLE_COLOURS = {
    "prediction": "tab:blue",
    "suppression": "tab:red",
    "partition": "tab:green",
    "none": "grey",
}


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ImportError(
            "Plotting needs matplotlib: pip install 'tl_universality[plot]'."
        ) from err
    return plt


def plot_property_distributions(
    table: pd.DataFrame,
    properties: Sequence[str] | None = None,
    *,
    universal: str = "is_universal",
    bins: int = 40,
    ncols: int = 4,
) -> Any:
    """Histograms of each property for universal vs other neurons, one panel per property.

    Densities are normalised per group (universal neurons are few); heavy-tailed positive
    properties (kurtosis, variances, L2 penalty) use log-spaced bins.

    Args:
        table: a neuron table with a boolean ``universal`` column.
        properties: columns to draw (default: :data:`DEFAULT_PROPERTIES` present in the table).
        universal: the column marking universal neurons.
        bins: bins per panel.
        ncols: panels per row.

    Returns:
        The matplotlib figure.
    """
    plt = _pyplot()
    if universal not in table.columns:
        raise KeyError(
            f"The table has no {universal!r} column: pass correlation=... to neuron_stats first."
        )
    if properties is None:
        properties = [p for p in DEFAULT_PROPERTIES if p in table.columns]
    missing = [p for p in properties if p not in table.columns]
    if missing:
        raise KeyError(f"The table has no column(s) {missing}.")
    mask = table[universal].fillna(False).astype(bool).to_numpy()
    nrows = max(1, int(np.ceil(len(properties) / ncols)))
    ncols_used = min(ncols, max(1, len(properties)))
    fig, axes = plt.subplots(
        nrows, ncols_used, figsize=(3.2 * ncols_used, 2.6 * nrows), squeeze=False
    )
    for ax, prop in zip(axes.flat, properties, strict=False):
        values = pd.to_numeric(table[prop], errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(values)
        data = values[finite]
        if data.size == 0:
            ax.set_title(f"{prop} (no data)")
            continue
        # log bins only where the values span an order of magnitude (else the labels collide)
        log = prop in _LOG_SCALE and data.min() > 0 and data.max() > 10 * data.min()
        if log:
            edges = np.geomspace(data.min(), data.max(), bins + 1)
            ax.set_xscale("log")
        else:
            edges = bins
        for group, label, colour in (
            (~mask, "other", "tab:grey"),
            (mask, "universal", "tab:orange"),
        ):
            group_values = values[group & finite]
            if group_values.size:
                ax.hist(group_values, bins=edges, density=True, histtype="step", lw=1.5,
                        color=colour, label=f"{label} ({group_values.size})")  # fmt: skip
        ax.set_title(prop)
    for ax in list(axes.flat)[len(properties) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Universal vs other neurons")
    fig.tight_layout()
    return fig


def plot_vocab_moments_by_layer(table: pd.DataFrame, *, jitter: float = 0.15, seed: int = 0) -> Any:
    """Vocabulary kurtosis (log scale when it spans a decade) and skew of every neuron by layer.

    Points are coloured by ``role`` when the table has it (from
    :func:`~tl_universality.analyses.roles.prediction_neurons`); the dashed line is the paper's
    kurtosis threshold of 10.
    """
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for col in ("layer", "vocab_kurt", "vocab_skew"):
        if col not in table.columns:
            raise KeyError(f"The table has no {col!r} column (use vocab_moments or neuron_stats).")
    rng = np.random.default_rng(seed)
    x = table["layer"].to_numpy(dtype=float) + rng.uniform(-jitter, jitter, len(table))
    if "role" in table.columns:
        colours = [_ROLE_COLOURS.get(str(r), "black") for r in table["role"]]
    else:
        colours = ["tab:blue"] * len(table)
    fig, (ax_k, ax_s) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    ax_k.scatter(x, table["vocab_kurt"], s=4, c=colours, alpha=0.6, linewidths=0)
    kurt = table["vocab_kurt"].to_numpy(dtype=float)
    kurt = kurt[np.isfinite(kurt)]
    if kurt.size and kurt.min() > 0 and kurt.max() > 10 * kurt.min():
        # prediction neurons reach kurtosis in the hundreds; plain labels read better than 10^k
        ax_k.set_yscale("log")
        ax_k.yaxis.set_major_formatter(ScalarFormatter())
        ax_k.yaxis.set_minor_formatter(NullFormatter())
    ax_k.axhline(10, ls="--", color="black", lw=0.8)
    ax_k.set_ylabel("vocab kurtosis")
    ax_s.scatter(x, table["vocab_skew"], s=4, c=colours, alpha=0.6, linewidths=0)
    ax_s.axhline(0, color="black", lw=0.8)
    ax_s.set_ylabel("vocab skew")
    ax_s.set_xlabel("layer")
    ax_s.set_xticks(sorted(table["layer"].unique()))
    if "role" in table.columns:
        for role, colour in _ROLE_COLOURS.items():
            ax_k.scatter([], [], c=colour, s=12, label=role)
        ax_k.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig


def plot_role_counts(roles: pd.DataFrame) -> Any:
    """Stacked bars: prediction, suppression and partition neurons per layer."""
    from tl_universality.analyses.roles import role_counts

    plt = _pyplot()
    counts = role_counts(roles).drop(columns="none")
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = np.zeros(len(counts))
    for role in counts.columns:
        ax.bar(counts.index, counts[role], bottom=bottom, color=_ROLE_COLOURS[role], label=role)
        bottom += counts[role].to_numpy()
    ax.set_xticks(counts.index, [str(layer) for layer in counts.index])  # whole layers only
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig

"""The universality overlay: neuron nodes marked with their excess correlation and family.

Given the correlation result of the model as the reference (:func:`~tl_universality.analyses.
correlation.correlate`), every neuron node gets ``excess_corr`` and ``is_universal``
(``excess_corr > threshold``, the paper's 0.5); given a families table
(:func:`~tl_universality.analyses.families.families`), its ``family``. Other nodes get NaN,
False and ``""``.

Examples:
    >>> nodes = pd.DataFrame({"kind": ["neuron", "head"], "layer": [1, 1], "unit": [7, 0]})
    >>> table = pd.DataFrame({"layer": [1], "neuron": [7], "excess_corr": [0.62]})
    >>> universality_overlay(nodes, table)[["excess_corr", "is_universal"]].values.tolist()
    [[0.62, True], [nan, False]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def universality_overlay(
    nodes: pd.DataFrame,
    correlation: Any = None,
    families: pd.DataFrame | None = None,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """A copy of ``nodes`` with ``excess_corr``, ``is_universal`` and ``family`` columns."""
    nodes = nodes.copy()
    nodes["excess_corr"] = np.nan
    nodes["is_universal"] = False
    nodes["family"] = ""
    is_neuron = nodes["kind"] == "neuron"
    keys = list(zip(nodes.loc[is_neuron, "layer"], nodes.loc[is_neuron, "unit"], strict=True))
    if correlation is not None:
        table = correlation if isinstance(correlation, pd.DataFrame) else correlation.to_dataframe()
        missing = {"layer", "neuron", "excess_corr"} - set(table.columns)
        if missing:
            raise ValueError(
                f"correlation lacks the columns {sorted(missing)}. Pass a CorrelationResult (or"
                " its to_dataframe()) computed with this model as the reference."
            )
        excess = dict(
            zip(
                zip(table["layer"], table["neuron"], strict=True), table["excess_corr"], strict=True
            )
        )
        values = np.array([excess.get(key, np.nan) for key in keys], dtype=float)
        nodes.loc[is_neuron, "excess_corr"] = values
        nodes.loc[is_neuron, "is_universal"] = np.nan_to_num(values, nan=-np.inf) > threshold
    if families is not None:
        missing = {"layer", "neuron", "family"} - set(families.columns)
        if missing:
            raise ValueError(
                f"families lacks the columns {sorted(missing)}. Pass the table of"
                " tl_universality.analyses.families.families(...)."
            )
        family = dict(
            zip(
                zip(families["layer"], families["neuron"], strict=True),
                families["family"].astype(str),
                strict=True,
            )
        )
        nodes.loc[is_neuron, "family"] = [family.get(key, "") for key in keys]
    return nodes

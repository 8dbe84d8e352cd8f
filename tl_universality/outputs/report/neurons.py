"""One page per interesting neuron: every universal neuron, else the most universal 5 %
(:func:`~tl_universality.analyses.neuron_stats.contrast_group`, the rule the demo uses).

A page shows what the folder knows of the neuron: its universality and its matched neuron in
every other model, its role and family, its best features with their variance reduction, and,
when the report is built with the model, its top-activating contexts (tokens shaded by
activation) and the tokens its ``w_out`` raises and lowers most. That model-dependent part is
saved in ``neuron_data.json`` so a later report without the model still shows it.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from tl_universality.core.names import neuron_name
from tl_universality.outputs.report import files
from tl_universality.outputs.report.page import Renderer, Section, page_html
from tl_universality.outputs.report.sections import ReportData

#: Most pages written (the highest excess correlation first).
MAX_PAGES = 200


def page_neurons(data: ReportData) -> tuple[pd.DataFrame, str]:
    """The neurons that get a page (rows of :meth:`ReportData.units`), best first, and what
    they are."""
    from tl_universality.analyses.neuron_stats import contrast_group

    table = data.units()
    if table is None or "excess_corr" not in table:
        return pd.DataFrame(columns=["layer", "neuron"]), "none"
    if "is_universal" not in table:
        table = table.assign(is_universal=False)
    mask, which = contrast_group(table)
    chosen = table[mask].sort_values("excess_corr", ascending=False).head(MAX_PAGES)
    return chosen.reset_index(drop=True), which


def neuron_data(
    model: Any, tokens: Any, neurons: pd.DataFrame, *, k: int = 12, progress: bool = False
) -> dict[str, Any]:
    """Contexts and vocabulary of each neuron (JSON-ready), from the model: the ``k``
    top-activating contexts (one pass over ``tokens``, at most 20,000 tokens) and the 10 tokens
    ``w_out`` raises and lowers most (cosine with the unembedding)."""
    from tl_universality.analyses.families import top_activations_of
    from tl_universality.analyses.vocab import top_tokens

    pairs = [(int(a), int(b)) for a, b in zip(neurons["layer"], neurons["neuron"], strict=True)]
    if not pairs:
        return {}
    tops = top_activations_of(model, tokens, pairs, k=k, max_tokens=20_000, progress=progress)
    out: dict[str, Any] = {}
    for (layer, neuron), top in zip(pairs, tops, strict=True):
        vocab = top_tokens(model, layer, neuron, k=10)
        out[neuron_name(layer, neuron)] = {
            "examples": [asdict(e) for e in top.examples],
            "vocab": vocab.to_dict(orient="records"),
        }
    return out


def read_neuron_data(folder: Path) -> dict[str, Any]:
    path = folder / files.NEURON_DATA
    return json.loads(path.read_text()) if path.is_file() else {}


def _row_of(table: pd.DataFrame | None, layer: int, neuron: int) -> pd.DataFrame:
    if table is None or not {"layer", "neuron"} <= set(table.columns):
        return pd.DataFrame()
    return table[(table["layer"] == layer) & (table["neuron"] == neuron)]


def _matches(data: ReportData, row: pd.Series) -> pd.DataFrame:
    """The neuron's best match in every other model, with the correlation and baseline."""
    if data.correlation is None:
        return pd.DataFrame()
    rows = []
    for label in data.correlation.other_labels():
        layer, neuron = row.get(f"max_sim_layer_{label}"), row.get(f"max_sim_neuron_{label}")
        matched = (
            "" if layer is None or int(layer) < 0 else f"{neuron_name(int(layer), int(neuron))}"
        )
        rows.append({"model": label, "matched_neuron": matched,
                     "max_corr": row.get(f"max_corr_{label}"),
                     "baseline": row.get(f"baseline_{label}"),
                     "min_corr": row.get(f"min_corr_{label}")})  # fmt: skip
    return pd.DataFrame(rows)


def neuron_page(data: ReportData, row: pd.Series, saved: dict[str, Any], pages: set[str]) -> str:
    """The HTML of one neuron's page (``row``: its row of :meth:`ReportData.units`)."""
    from tl_universality.analyses.families import ActivatingExample, TopActivations

    layer, neuron = int(row["layer"]), int(row["neuron"])
    name = neuron_name(layer, neuron)
    render = Renderer(pages, root="../")
    role = _row_of(data.roles, layer, neuron)
    family = _row_of(data.families, layer, neuron)
    facts = {
        "excess_corr": f"{row['excess_corr']:.3f}",
        "mean max-corr": f"{row.get('mean_corr', float('nan')):.3f}",
        "baseline": f"{row.get('mean_baseline', float('nan')):.3f}",
        "universal": "yes" if bool(row.get("is_universal", False)) else "no",
        "role": str(role["role"].iloc[0]) if len(role) else "n/a",
        "family": str(family["family"].iloc[0]) if len(family) else "n/a",
    }
    cards = "".join(
        f"<div class='card'>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in facts.items()
    )
    sections = [Section("At a glance", html=f"<div class='cards'>{cards}</div>")]
    sections.append(Section("Matched neuron in every other model", tables=[
        ("best match per model", _matches(data, row))]))  # fmt: skip
    features = _row_of(data.explanations, layer, neuron)
    if len(features):
        keep = [c for c in ("rank", "feature", "family", "variance_reduction", "p_feature",
                            "mean_in", "mean_out") if c in features]  # fmt: skip
        sections.append(Section("Best features (variance reduction)",
                                tables=[("features", features[keep])]))  # fmt: skip
    entry = saved.get(name)
    if entry:
        top = TopActivations(layer, neuron, [ActivatingExample(**e) for e in entry["examples"]])
        sections.append(Section(
            "Top-activating contexts",
            "Tokens shaded by the neuron's activation (red positive, blue negative); the"
            " activating token is outlined; hover a token for its value.",
            html=f"<style>{TopActivations.CSS}</style>" + top.rows_html(),
        ))  # fmt: skip
        vocab = pd.DataFrame(entry["vocab"])
        sections.append(Section("Vocabulary: tokens w_out raises (top) and lowers (bottom)",
                                tables=[("tokens", vocab)]))  # fmt: skip
    else:
        sections.append(Section(
            "Top-activating contexts and vocabulary",
            "Not computed: this report was built without the model. Run `tl-universality report"
            " DIR MODEL` (or `--family NAME`) to add them.",
        ))  # fmt: skip
    body = "<p><a href='../index.html'>&larr; report</a></p>" + render.sections(sections)
    return page_html(f"Neuron {name}", body, root="../")


def neuron_index(neurons: pd.DataFrame, which: str, data: ReportData) -> Section | None:
    """The index section listing every neuron page."""
    if neurons.empty:
        return None
    table = neurons[[c for c in ("layer", "neuron", "excess_corr", "mean_corr") if c in neurons]]
    if data.families is not None:
        table = table.merge(data.families[["layer", "neuron", "family", "feature"]],
                            on=["layer", "neuron"], how="left")  # fmt: skip
    if data.roles is not None:
        table = table.merge(data.roles[["layer", "neuron", "role"]], on=["layer", "neuron"],
                            how="left")  # fmt: skip
    return Section(
        f"Neuron pages: {which}",
        "Click a neuron for its page.",
        tables=[("neurons", table.astype({"role": str}) if "role" in table else table)],
    )

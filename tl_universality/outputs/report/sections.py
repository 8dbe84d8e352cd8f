"""The report's sections, each built from what the analyses saved in a results folder.

:class:`ReportData` reads the folder once; every number shown comes from the results' own
``summary()`` (the correlation headline) or from their saved tables, so the page agrees with
``summary.json`` and wandb by construction. Sections whose results are absent are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tl_universality.outputs.report import figures as plots
from tl_universality.outputs.report import files
from tl_universality.outputs.report.page import Section

THRESHOLD = 0.5


def _parquet(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


@dataclass
class ReportData:
    """What a results folder holds, read once (``None`` where a result is absent)."""

    folder: Path
    summary_json: dict[str, Any] = field(default_factory=dict)
    correlation: Any = None
    neuron_table: pd.DataFrame | None = None
    families: pd.DataFrame | None = None
    explanations: pd.DataFrame | None = None
    roles: pd.DataFrame | None = None
    entropy: pd.DataFrame | None = None
    attention: pd.DataFrame | None = None

    @classmethod
    def read(cls, folder: Path) -> ReportData:
        data = cls(Path(folder))
        path = data.folder / files.SUMMARY
        data.summary_json = json.loads(path.read_text()) if path.is_file() else {}
        if (data.folder / files.CORRELATION_DIR).is_dir():
            from tl_universality.analyses.correlation import CorrelationResult

            data.correlation = CorrelationResult.load(data.folder / files.CORRELATION_DIR)
        data.neuron_table = _parquet(data.folder / files.NEURON_TABLE)
        data.families = _parquet(data.folder / files.FAMILIES)
        data.explanations = _parquet(data.folder / files.EXPLANATIONS)
        data.roles = _parquet(data.folder / files.PREDICTION)
        data.entropy = _parquet(data.folder / files.ENTROPY_SCORES)
        data.attention = _parquet(data.folder / files.ATTENTION_SCORES)
        return data

    def headline(self) -> dict[str, Any]:
        """The correlation's ``summary()``: the one place the headline numbers come from."""
        return self.correlation.summary(THRESHOLD) if self.correlation is not None else {}

    def units(self) -> pd.DataFrame | None:
        """One row per reference neuron: the correlation table, joined with the neuron table's
        other columns when both exist (else whichever exists)."""
        table = self.correlation.to_dataframe(THRESHOLD) if self.correlation is not None else None
        if self.neuron_table is None:
            return table
        if table is None:
            return self.neuron_table
        extra = [c for c in self.neuron_table if c not in table or c in ("layer", "neuron")]
        return table.merge(self.neuron_table[extra], on=["layer", "neuron"], how="left")


def summary_section(data: ReportData) -> Section | None:
    """The headline numbers (from ``summary()``) and the run's other recorded values."""
    items = dict(data.headline())
    for key, value in data.summary_json.items():
        if key not in items and not isinstance(value, dict | list):
            items[key] = value
    if not items:
        return None
    rows = [{"item": k, "value": _fmt(k, v)} for k, v in items.items()]
    return Section("Summary", tables=[("run", pd.DataFrame(rows))])


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2%}" if "share" in key else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def universality_section(data: ReportData) -> Section | None:
    result = data.correlation
    if result is None:
        return None
    s = data.headline()
    table = result.to_dataframe(THRESHOLD)
    share = result.universal_share(THRESHOLD) if result.baseline else pd.DataFrame()
    text = (
        f"{s['n_universal']:,} of {s['n_units']:,} neurons ({s['universal_share']:.2%}) have excess"
        f" correlation > {THRESHOLD} (mean over {result.n_models} other model(s) of the max"
        f" correlation, minus the same for a {s['baseline']} baseline), over {s['n_tokens']:,}"
        f" tokens. Median max-correlation {s['median_max_corr']:.3f}, median baseline"
        f" {s['median_baseline']:.3f}."
    )
    top = table[table["is_universal"]] if result.baseline else table.iloc[:0]
    top = top.sort_values("excess_corr", ascending=False)
    title = "universal neurons"
    if top.empty:
        top, title = table.nlargest(20, "excess_corr"), "most universal neurons (none > threshold)"
    cols = ["layer", "neuron", "excess_corr", "mean_corr", "mean_baseline"]
    return Section(
        "Universality: max correlation vs baseline, per layer",
        text,
        plots=[
            ("max_correlation", plots.max_correlation(table, result.baseline)),
            ("universal_share", plots.universal_share(share, THRESHOLD)),
            ("excess_correlation", plots.excess_scatter(table, THRESHOLD)),
        ],
        tables=[("per layer", share), (title, top[cols])],
    )


def properties_section(data: ReportData) -> Section | None:
    from tl_universality.analyses.neuron_stats import (
        CONTRAST_PROPERTIES,
        compare_universal,
        contrast_group,
    )

    table = data.units()
    if table is None or "is_universal" not in table or data.neuron_table is None:
        return None
    mask, which = contrast_group(table)
    props = [c for c in CONTRAST_PROPERTIES if c in table]
    return Section(
        f"Neuron properties: {which} vs other neurons",
        "The paper: universal neurons fire more sparsely, have higher activation kurtosis and"
        " larger weight norms.",
        plots=[("property_distributions", plots.property_boxes(table, mask, props))],
        tables=[
            ("means and medians", compare_universal(table.assign(is_universal=mask), props)),
            ("neuron table", table.sort_values("excess_corr", ascending=False)),
        ],
    )


def families_section(data: ReportData) -> Section | None:
    from tl_universality.analyses.families import family_counts

    labels = data.families
    if labels is None:
        return None
    counts = family_counts(labels)
    labelled = labels[labels["family"] != "none"].sort_values("variance_reduction",
                                                              ascending=False)  # fmt: skip
    return Section(
        "Families of the explained neurons",
        "Each neuron is labelled by the token feature that explains most of its activation"
        " variance, when that variance reduction passes its family's threshold.",
        plots=[("family_counts", plots.stacked_by_layer(counts.drop(columns="total"),
                                                        "Families by layer", "neurons"))],
        tables=[("counts", counts.reset_index()), ("labelled neurons", labelled)],
    )  # fmt: skip


def roles_section(data: ReportData) -> Section | None:
    from tl_universality.analyses.roles import role_counts

    roles = data.roles
    if roles is None:
        return None
    counts = role_counts(roles)
    cols = [c for c in ("layer", "neuron", "role", "vocab_kurt", "vocab_skew") if c in roles]
    named = roles[roles["role"] != "none"][cols]
    return Section(
        "Prediction, suppression and partition neurons by layer",
        "From the vocabulary composition of each neuron's output weights: vocab_kurt > 10 with"
        " positive skew predicts a token set, negative skew suppresses one.",
        plots=[
            ("vocab_moments", plots.vocab_moments(roles)),
            (
                "role_counts",
                plots.stacked_by_layer(
                    counts.drop(columns="none"), "Roles by layer (without none)", "neurons"
                ),
            ),
        ],
        tables=[("counts", counts.reset_index()), ("neurons with a role", named)],
    )


def circuit_section(data: ReportData) -> Section | None:
    section = Section(
        "Entropy and attention-deactivation candidates",
        "Entropy neurons write a large vector into the unembedding's near-null space;"
        " deactivation neurons make a later head attend to BOS.",
    )
    if data.entropy is not None:
        section.tables.append(("top entropy-neuron candidates", data.entropy.head(20)))
    if (data.folder / files.ENTROPY_INTERVENTION).is_dir():
        from tl_universality.analyses.entropy import EntropyInterventionResult

        result = EntropyInterventionResult.load(data.folder / files.ENTROPY_INTERVENTION)
        section.figures.append(("entropy_intervention", figure_of(result.plot())))
        section.tables.append(("entropy intervention", result.to_dataframe()))
    if data.attention is not None:
        section.tables.append(("top (neuron, head) deactivation scores", data.attention.head(20)))
    if (data.folder / files.PATH_ABLATION).is_dir():
        from tl_universality.analyses.attention import PathAblationResult

        ablation = PathAblationResult.load(data.folder / files.PATH_ABLATION)
        section.figures.append(("path_ablation", figure_of(ablation.plot())))
    return section if section.tables or section.figures else None


def figure_of(plotted: Any) -> Any:
    """A Figure from whatever a ``plot()`` returned (a Figure, an Axes or an array of Axes)."""
    if hasattr(plotted, "savefig"):
        return plotted
    first = plotted.flat[0] if hasattr(plotted, "flat") else plotted
    return first.get_figure()


SectionBuilder = Callable[[ReportData], Section | None]
"""Builds one section from what a folder holds, or None when it holds nothing for it."""

SECTIONS: list[SectionBuilder] = [
    summary_section,
    universality_section,
    properties_section,
    families_section,
    roles_section,
    circuit_section,
]

"""A self-contained HTML report (plus PNG figures) of a results folder.

``build_report(dir)`` reads what the analyses saved in ``dir`` (the correlation result, the neuron
table, family labels, role tables) and writes ``dir/report/index.html`` with the paper's main
views, each figure also saved as a PNG in ``dir/report/figures``. Sections whose results are absent
are skipped. The page embeds its figures as data URIs, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# File names inside a results folder, shared by the writers (demo, CLI) and the report.
CORRELATION_DIR = "correlation"
NEURON_TABLE = "neuron_table.parquet"
FAMILIES = "families.parquet"
EXPLANATIONS = "explanations.parquet"
PREDICTION = "prediction_neurons.parquet"
ENTROPY_SCORES = "entropy_scores.parquet"
ENTROPY_INTERVENTION = "entropy_intervention"  # EntropyInterventionResult.save folder
ATTENTION_SCORES = "attention_deactivation.parquet"
PATH_ABLATION = "path_ablation"  # PathAblationResult.save folder
SUMMARY = "summary.json"


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[tuple[str, Any]] = field(default_factory=list)  # (name, matplotlib figure)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6rem; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2rem; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; }}
th {{ background: #f4f4f4; }} .note {{ color: #555; }}
</style></head>
<body data-figures="pending">
<h1>{title}</h1>
{body}
<script>
// Marks the page once it has loaded, saying whether every figure decoded, so that a headless
// browser can check rendering.
window.addEventListener("load", function () {{
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figures =
    ok === imgs.length ? "ok:" + ok : "broken:" + ok + "/" + imgs.length;
}});
</script>
</body></html>
"""


def render_html(title: str, sections: list[Section], figure_dir: Path | None = None) -> str:
    """HTML for ``sections``; figures are embedded and, if ``figure_dir`` is set, saved as PNG."""
    parts = []
    for s_i, section in enumerate(sections):
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p class='note'>{html.escape(section.text)}</p>")
        for name, fig in section.figures:
            data = _png(fig)
            if figure_dir is not None:
                figure_dir.mkdir(parents=True, exist_ok=True)
                (figure_dir / f"{s_i:02d}_{name}.png").write_bytes(data)
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            parts.append(
                f"<figure><img alt='{html.escape(name)}' src='{uri}'>"
                f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>"
            )
        for name, table in section.tables:
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(table.to_html(index=False, float_format=lambda x: f"{x:.3g}", border=0))
        parts.append("</section>")
    return _PAGE.format(title=html.escape(title), body="\n".join(parts))


SectionBuilder = Callable[[Path], Section | None]


def build_report(results_dir: str | Path, *, title: str | None = None) -> Path:
    """Write ``results_dir/report/index.html`` and its PNG figures; return the HTML path.

    Examples:
        >>> import tempfile
        >>> out = build_report(tempfile.mkdtemp())  # an empty folder gives an empty report
        >>> out.name
        'index.html'
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    results_dir = Path(results_dir)
    report_dir = results_dir / "report"
    summary = _read_json(results_dir / SUMMARY)
    sections = [s for build in _SECTIONS if (s := build(results_dir)) is not None]
    if summary:
        sections.insert(0, Section("Summary", tables=[("run", _summary_table(summary))]))
    if not sections:
        sections = [Section("No results", "This folder holds no saved analysis yet.")]
    page = render_html(
        title or f"Universal neurons: {results_dir.name}", sections, report_dir / "figures"
    )
    for section in sections:
        for _, fig in section.figures:
            plt.close(fig)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _summary_table(summary: dict[str, Any]) -> pd.DataFrame:
    flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    return pd.DataFrame({"item": list(flat), "value": [_fmt(k, v) for k, v in flat.items()]})


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2%}" if "share" in key else f"{value:.4g}"
    return str(value)


def _parquet(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def _universality(d: Path) -> Section | None:
    from tl_universality.analyses.correlation import CorrelationResult

    if not (d / CORRELATION_DIR).is_dir():
        return None
    result = CorrelationResult.load(d / CORRELATION_DIR)
    table = result.to_dataframe()
    share = result.universal_share()
    s = result.summary()
    text = (
        f"{s['n_universal']} of {s['n_units']} neurons"
        f" ({s['universal_share']:.2%}) have excess correlation > 0.5 (mean over"
        f" {result.n_models} other model(s) of the max correlation, minus the same for a"
        f" baseline). Median max-correlation {s['median_max_corr']:.3f}, median baseline"
        f" {s['median_baseline']:.3f}."
    )
    top = result.universal_neurons().head(20)
    if top.empty:
        top = table.nlargest(10, "excess_corr")
    cols = [c for c in ("layer", "neuron", "excess_corr", "mean_corr", "mean_baseline") if c in top]
    return Section(
        "Universality: max correlation vs baseline, per layer",
        text,
        figures=[("max_correlation_and_universal_share", result.plot())],
        tables=[("per layer", share), ("most universal neurons", top[cols])],
    )


def _properties(d: Path) -> Section | None:
    from tl_universality.analyses.neuron_stats import CONTRAST_PROPERTIES, compare_universal
    from tl_universality.outputs.plots import plot_property_distributions

    table = _parquet(d / NEURON_TABLE)
    if table is None or "is_universal" not in table:
        return None
    group = "universal"
    if table["is_universal"].sum() < 5 and "excess_corr" in table:
        # No (or too few) universal neurons: contrast the most universal 5% instead, and say so.
        cut = table["excess_corr"].quantile(0.95)
        table = table.assign(is_universal=table["excess_corr"] >= cut)
        group = "most universal 5% (by excess correlation)"
    props = [c for c in CONTRAST_PROPERTIES if c in table]
    return Section(
        f"Neuron properties: {group} vs other neurons",
        "The paper: universal neurons fire more sparsely, have higher activation kurtosis and"
        " larger weight norms.",
        figures=[("property_distributions", plot_property_distributions(table, props))],
        tables=[("means and medians", compare_universal(table, props))],
    )


def _families(d: Path) -> Section | None:
    from tl_universality.analyses.families import family_counts

    labels = _parquet(d / FAMILIES)
    if labels is None:
        return None
    counts = family_counts(labels)
    fig = _bar_figure(counts.drop(columns="total"), "neurons", "Families by layer")
    examples = labels[labels["family"] != "none"].sort_values("variance_reduction", ascending=False)
    return Section(
        "Families of the explained neurons",
        "Each neuron is labelled by the token feature that explains most of its activation"
        " variance, when that variance reduction passes its family's threshold.",
        figures=[("family_counts", fig)],
        tables=[("counts", counts.reset_index()), ("best explained", examples.head(15))],
    )


def _roles(d: Path) -> Section | None:
    from tl_universality.outputs.plots import plot_role_counts, plot_vocab_moments_by_layer

    roles = _parquet(d / PREDICTION)
    if roles is None:
        return None
    from tl_universality.analyses.roles import role_counts

    return Section(
        "Prediction, suppression and partition neurons by layer",
        "From the vocabulary composition of each neuron's output weights: vocab_kurt > 10 with"
        " positive skew predicts a token set, negative skew suppresses one.",
        figures=[
            ("vocab_moments_by_layer", plot_vocab_moments_by_layer(roles)),
            ("role_counts", plot_role_counts(roles)),
        ],
        tables=[("counts", role_counts(roles).reset_index())],
    )


def _circuit_roles(d: Path) -> Section | None:
    section = Section(
        "Entropy and attention-deactivation candidates",
        "Entropy neurons write a large vector into the unembedding's near-null space;"
        " deactivation neurons make a later head attend to BOS.",
    )
    entropy = _parquet(d / ENTROPY_SCORES)
    if entropy is not None:
        section.tables.append(("top entropy-neuron candidates", entropy.head(10)))
    if (d / ENTROPY_INTERVENTION).is_dir():
        from tl_universality.analyses.entropy import EntropyInterventionResult

        result = EntropyInterventionResult.load(d / ENTROPY_INTERVENTION)
        section.figures.append(("entropy_intervention", _figure_of(result.plot())))
    attention = _parquet(d / ATTENTION_SCORES)
    if attention is not None:
        section.tables.append(("top (neuron, head) deactivation scores", attention.head(10)))
    if (d / PATH_ABLATION).is_dir():
        from tl_universality.analyses.attention import PathAblationResult

        ablation = PathAblationResult.load(d / PATH_ABLATION)
        section.figures.append(("path_ablation", _figure_of(ablation.plot())))
    return section if section.tables or section.figures else None


def _figure_of(plotted: Any) -> Any:
    """A Figure from whatever a ``plot()`` returned (a Figure, an Axes or an array of Axes)."""
    if hasattr(plotted, "savefig"):
        return plotted
    first = plotted.flat[0] if hasattr(plotted, "flat") else plotted
    return first.get_figure()


def _bar_figure(counts: pd.DataFrame, ylabel: str, title: str) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    bottom = None
    positions = np.arange(len(counts))
    for column in counts.columns:
        values = counts[column].to_numpy()
        ax.bar(positions, values, bottom=bottom, label=str(column))
        bottom = values if bottom is None else bottom + values
    ax.set_xticks(positions, [str(i) for i in counts.index])
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2)
    return fig


_SECTIONS: list[SectionBuilder] = [_universality, _properties, _families, _roles, _circuit_roles]

"""``build_report``: the browsable report folder of a results folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tl_universality.core.names import neuron_name
from tl_universality.outputs.report import files
from tl_universality.outputs.report.neurons import (
    neuron_data,
    neuron_index,
    neuron_page,
    page_neurons,
    read_neuron_data,
)
from tl_universality.outputs.report.page import (
    NEURON_DIR,
    Renderer,
    Section,
    page_html,
    write_plotly_js,
)
from tl_universality.outputs.report.sections import SECTIONS, ReportData


def build_report(
    results_dir: str | Path,
    *,
    title: str | None = None,
    model: Any = None,
    tokens: Any = None,
    progress: bool = False,
) -> Path:
    """Write ``results_dir/report/`` and return its ``index.html``.

    The folder opens offline: ``index.html`` (interactive plotly figures, sortable and
    filterable tables), ``neurons/<name>.html`` (one page per universal neuron, else per neuron
    of the top 5 % by excess correlation; every neuron name in every table links to its page),
    ``assets/plotly.min.js`` (plotly.js, once) and ``figures/*.png`` (the results' static
    figures). With ``model`` (the reference) and ``tokens``, the neuron pages also show
    top-activating contexts and vocabulary (saved in ``neuron_data.json`` for later reports).

    Examples:
        >>> import tempfile
        >>> out = build_report(tempfile.mkdtemp())  # an empty folder gives an empty report
        >>> out.name
        'index.html'
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    folder = Path(results_dir)
    report_dir = folder / "report"
    data = ReportData.read(folder)
    neurons, which = page_neurons(data)
    saved = read_neuron_data(folder)
    names = [neuron_name(int(a), int(b)) for a, b in zip(neurons["layer"], neurons["neuron"],
                                                          strict=True)]  # fmt: skip
    if model is not None and len(neurons):
        missing = neurons[[name not in saved for name in names]]
        if len(missing):
            saved.update(neuron_data(model, tokens, missing, progress=progress))
            (folder / files.NEURON_DATA).write_text(json.dumps(saved), encoding="utf-8")
    pages = set(names)
    sections = [s for build in SECTIONS if (s := build(data)) is not None]
    index_section = neuron_index(neurons, which, data)
    if index_section is not None:
        sections.insert(min(2, len(sections)), index_section)
    if not sections:
        sections = [Section("No results", "This folder holds no saved analysis yet.")]
    report_dir.mkdir(parents=True, exist_ok=True)
    has_plots = any(s.plots for s in sections)
    if has_plots:
        write_plotly_js(report_dir)
    body = Renderer(pages).sections(sections, report_dir / "figures")
    for section in sections:
        for _, fig in section.figures:
            plt.close(fig)
    page = page_html(title or f"Universal neurons: {folder.name}", body, plotly=has_plots)
    path = report_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    (report_dir / NEURON_DIR).mkdir(exist_ok=True)
    for _, row in neurons.iterrows():
        name = neuron_name(int(row["layer"]), int(row["neuron"]))
        text = neuron_page(data, row, saved, pages)
        (report_dir / NEURON_DIR / f"{name}.html").write_text(text, encoding="utf-8")
    return path

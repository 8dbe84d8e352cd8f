"""A browsable report of a results folder: ``build_report(dir)`` writes ``dir/report/``.

``index.html`` shows the paper's main views as interactive plotly figures (plotly.js is copied
once into ``report/assets``, so the folder opens offline, no CDN) with sortable, filterable
tables; every neuron name links to its page in ``report/neurons/`` (universal neurons, else the
top 5 % by excess correlation). Sections whose results are absent are skipped. The numbers come
from the results' ``summary()`` and saved tables (:mod:`.sections`), so the report, ``summary.json``
and wandb agree.
"""

from tl_universality.outputs.report.build import build_report
from tl_universality.outputs.report.files import (
    ATTENTION_SCORES,
    CORRELATION_DIR,
    ENTROPY_INTERVENTION,
    ENTROPY_SCORES,
    EXPLANATIONS,
    FAMILIES,
    NEURON_DATA,
    NEURON_TABLE,
    PATH_ABLATION,
    PREDICTION,
    SUMMARY,
)
from tl_universality.outputs.report.page import Section, render_html
from tl_universality.outputs.report.sections import SectionBuilder

__all__ = [
    "ATTENTION_SCORES",
    "CORRELATION_DIR",
    "ENTROPY_INTERVENTION",
    "ENTROPY_SCORES",
    "EXPLANATIONS",
    "FAMILIES",
    "NEURON_DATA",
    "NEURON_TABLE",
    "PATH_ABLATION",
    "PREDICTION",
    "SUMMARY",
    "Section",
    "SectionBuilder",
    "build_report",
    "render_html",
]

"""Moved to :mod:`tl_universality.outputs.report`.

This path works for one more release.
"""

from tl_universality.outputs.report import (
    ATTENTION_SCORES,
    CORRELATION_DIR,
    ENTROPY_INTERVENTION,
    ENTROPY_SCORES,
    EXPLANATIONS,
    FAMILIES,
    NEURON_TABLE,
    PATH_ABLATION,
    PREDICTION,
    SUMMARY,
    Section,
    SectionBuilder,
    build_report,
    render_html,
)

__all__ = [
    "ATTENTION_SCORES",
    "CORRELATION_DIR",
    "ENTROPY_INTERVENTION",
    "ENTROPY_SCORES",
    "EXPLANATIONS",
    "FAMILIES",
    "NEURON_TABLE",
    "PATH_ABLATION",
    "PREDICTION",
    "SUMMARY",
    "Section",
    "SectionBuilder",
    "build_report",
    "render_html",
]

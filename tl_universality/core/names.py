"""One printed form for units: ``L1N191`` (neuron), ``L1H3`` (head), ``L1.hook_mlp_out/F73``
(SAE latent), parsed back by :func:`parse_unit`.

Tables keep separate ``layer``/``neuron`` columns; these names are for printing, plot labels and
what a user types at the CLI. A dotted ``1.191`` reads as a number, so it is not used.

Examples:
    >>> neuron_name(1, 191), head_name(0, 3), latent_name("L1.hook_mlp_out", 73)
    ('L1N191', 'L0H3', 'L1.hook_mlp_out/F73')
    >>> parse_unit("L1N191")
    UnitName(kind='neuron', layer=1, index=191, hook=None)
    >>> parse_unit("l0h3").kind
    'head'
    >>> parse_unit("blocks.1.hook_mlp_out/F73")
    UnitName(kind='latent', layer=1, index=73, hook='blocks.1.hook_mlp_out')
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

_NEURON = re.compile(r"^L(\d+)N(\d+)$", re.IGNORECASE)
_HEAD = re.compile(r"^L(\d+)H(\d+)$", re.IGNORECASE)
_LATENT = re.compile(r"^(.+)/F(\d+)$")
_LAYER_IN_HOOK = re.compile(r"(?:^L|blocks\.)(\d+)")


class UnitName(NamedTuple):
    """A parsed unit name."""

    kind: str  # "neuron", "head" or "latent"
    layer: int
    index: int
    hook: str | None = None


def neuron_name(layer: Any, neuron: Any) -> str:
    """``L{layer}N{neuron}`` (any integral numbers, e.g. from a DataFrame row)."""
    return f"L{int(layer)}N{int(neuron)}"


def head_name(layer: Any, head: Any) -> str:
    """``L{layer}H{head}``."""
    return f"L{int(layer)}H{int(head)}"


def latent_name(hook: str, latent: Any) -> str:
    """``{hook}/F{latent}`` for an SAE latent read at ``hook``."""
    return f"{hook}/F{int(latent)}"


def parse_unit(text: str) -> UnitName:
    """Parse a neuron, head or latent name; raise ``ValueError`` naming the accepted forms."""
    text = str(text).strip()
    if m := _NEURON.match(text):
        return UnitName("neuron", int(m[1]), int(m[2]))
    if m := _HEAD.match(text):
        return UnitName("head", int(m[1]), int(m[2]))
    if m := _LATENT.match(text):
        layer = _LAYER_IN_HOOK.search(m[1])
        return UnitName("latent", int(layer[1]) if layer else -1, int(m[2]), m[1])
    raise ValueError(
        f"unit {text!r} is not a unit name. Write a neuron as 'L1N191' (layer 1, neuron 191), a"
        " head as 'L1H3', an SAE latent as 'blocks.1.hook_mlp_out/F73'."
    )

"""Moved to :mod:`tl_universality.units.hooks`.

This path works for one more release.
"""

from tl_universality.units.hooks import (
    FixNeuron,
    FreezeLNScale,
    HookList,
    Intervention,
    RemoveFromQueryInput,
    apply,
    run_with_interventions,
    split_qkv_input,
    token_batches,
)

__all__ = [
    "FixNeuron",
    "FreezeLNScale",
    "HookList",
    "Intervention",
    "RemoveFromQueryInput",
    "apply",
    "run_with_interventions",
    "split_qkv_input",
    "token_batches",
]

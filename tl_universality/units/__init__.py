"""Stage 2, units: which activations are units (neurons, hooks, SAE latents), streaming them, and
interventions as hooks.

The unit specs are importable from here: ``from tl_universality.units import PerModel``.
"""

from tl_universality.units.sae import SAEUnits, attached_sae_units
from tl_universality.units.specs import PerModel, UnitsSpec, UnitTransform, per_model

__all__ = ["PerModel", "SAEUnits", "UnitTransform", "UnitsSpec", "attached_sae_units", "per_model"]

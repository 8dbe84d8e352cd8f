"""Moved to :mod:`tl_universality.data.seeds`.

This path works for one more release.
"""

from tl_universality.data.seeds import (
    PRESETS,
    SeedFamily,
    SeedFamilyConfig,
    batch_order,
    family_folder,
    load_family_folder,
    load_seed_family,
    load_seed_model,
    mean_loss,
    save_seed_model,
    train_seed_family,
)

__all__ = [
    "PRESETS",
    "SeedFamily",
    "SeedFamilyConfig",
    "batch_order",
    "family_folder",
    "load_family_folder",
    "load_seed_family",
    "load_seed_model",
    "mean_loss",
    "save_seed_model",
    "train_seed_family",
]

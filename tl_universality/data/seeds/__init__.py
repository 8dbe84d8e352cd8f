"""Seed families: small models that differ only in their random seed, trained offline on
the embedded corpus and cached.
"""

from tl_universality.data.seeds.config import (
    FORMAT,
    PRESETS,
    SeedFamily,
    SeedFamilyConfig,
)
from tl_universality.data.seeds.family import (
    family_folder,
    load_family_folder,
    load_seed_family,
    train_seed_family,
)
from tl_universality.data.seeds.files import (
    load_seed_model,
    load_tensor,
    load_tokenizer,
    read_json,
    save_seed_model,
)
from tl_universality.data.seeds.training import (
    batch_order,
    lr_lambda,
    mean_loss,
    train_one,
)

__all__ = [
    "FORMAT",
    "PRESETS",
    "SeedFamily",
    "SeedFamilyConfig",
    "batch_order",
    "family_folder",
    "load_family_folder",
    "load_seed_family",
    "load_seed_model",
    "load_tensor",
    "load_tokenizer",
    "mean_loss",
    "read_json",
    "save_seed_model",
    "lr_lambda",
    "train_one",
    "train_seed_family",
]

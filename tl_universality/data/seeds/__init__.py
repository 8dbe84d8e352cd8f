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
    available_checkpoints,
    check_steps,
    checkpoint_folder,
    family_folder,
    load_family_folder,
    load_seed_family,
    train_seed_family,
)
from tl_universality.data.seeds.files import (
    load_seed_model,
    load_tokenizer,
    load_tokens,
    read_json,
    read_train_record,
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
    "available_checkpoints",
    "batch_order",
    "check_steps",
    "checkpoint_folder",
    "family_folder",
    "load_family_folder",
    "load_seed_family",
    "load_seed_model",
    "load_tokenizer",
    "load_tokens",
    "mean_loss",
    "read_json",
    "read_train_record",
    "save_seed_model",
    "lr_lambda",
    "train_one",
    "train_seed_family",
]

"""Saving and loading one seed model (safetensors + JSON; loading runs no code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.saving import atomic_dir, atomic_write_json

# -- files ---------------------------------------------------------------------------------------


def load_tensor(path: Path, key: str) -> Tensor:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CorruptCacheError(
            f"{path} is missing. Fix: delete {path.parent} and run train_seed_family() again."
        )
    try:
        return load_file(str(path))[key]
    except Exception as err:  # any failure to parse means the file is unusable
        raise CorruptCacheError(
            f"{path} is unreadable ({type(err).__name__}: {err}). "
            f"Fix: delete {path.parent} and run train_seed_family() again."
        ) from err


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CorruptCacheError(f"{path} is missing.") from err
    except (OSError, ValueError) as err:
        raise CorruptCacheError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise CorruptCacheError(f"{path} does not hold a JSON object.")
    return data


def _json_safe_cfg(cfg: Any) -> dict[str, Any]:
    data = dict(cfg.to_dict())  # a copy: to_dict may hand out the live __dict__
    data["dtype"] = str(data["dtype"]).removeprefix("torch.")
    data["device"] = None if data.get("device") is None else str(data["device"])
    return json.loads(json.dumps(data, default=str))


def save_seed_model(model: Any, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Save a model as ``model.safetensors`` + ``config.json`` (+ ``train.json``), atomically.

    Examples:
        >>> import tempfile, torch
        >>> from tl_universality.data.seeds import PRESETS
        >>> from transformer_lens import HookedTransformer
        >>> model = HookedTransformer(PRESETS["tiny"].model_config(seed=0, d_vocab=300))
        >>> folder = Path(tempfile.mkdtemp()) / "seed0"
        >>> save_seed_model(model, folder)
        >>> toks = torch.tensor([[0, 5, 7]])
        >>> torch.equal(load_seed_model(folder)(toks), model(toks))
        True
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(Path(folder)) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "config.json", _json_safe_cfg(model.cfg))
        if extra is not None:
            atomic_write_json(tmp / "train.json", extra)


def load_seed_model(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    device: str = "cpu",
) -> Any:
    """Load one model saved by :func:`save_seed_model` (never unpickles anything).

    Args:
        folder: The model folder (``.../seed<k>``).
        tokenizer: The tokenizer to attach; by default the family's ``../tokenizer`` if present.
        device: Where to put the model.

    Returns:
        A ``HookedTransformer`` in eval mode.

    Raises:
        CorruptCacheError: A file is missing or unreadable, or the weights do not fit the config.
    """
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(folder)
    fix = f"Fix: delete {folder} and run train_seed_family() again, which rebuilds it."
    try:
        cfg_dict = read_json(folder / "config.json")
        cfg_dict["dtype"] = getattr(torch, cfg_dict["dtype"])
        cfg_dict["device"] = device
        cfg = HookedTransformerConfig(**cfg_dict)
    except CorruptCacheError as err:
        raise CorruptCacheError(f"Seed model folder {folder} is corrupt: {err} {fix}") from err
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as err:
        raise CorruptCacheError(
            f"Seed model folder {folder} has an invalid config.json ({err}). {fix}"
        ) from err
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CorruptCacheError(f"Seed model folder {folder} has no model.safetensors. {fix}")
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise CorruptCacheError(
            f"Seed model folder {folder}: model.safetensors is unreadable "
            f"({type(err).__name__}: {err}). {fix}"
        ) from err
    if tokenizer is None and (folder.parent / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(folder.parent / "tokenizer")
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CorruptCacheError(
            f"Seed model folder {folder}: the weights do not match config.json ({err}). {fix}"
        ) from err
    return model.eval()


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # any failure means the folder is unusable
        raise CorruptCacheError(
            f"The tokenizer in {folder} is unreadable ({type(err).__name__}: {err})."
        ) from err

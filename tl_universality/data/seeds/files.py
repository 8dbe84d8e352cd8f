"""The saved pieces of a seed family, each a verified folder (:mod:`tl_universality.core.saving`).

One seed model, the shared tokenizer, the held-out tokens and the family's settings are each
written with :func:`~tl_universality.core.saving.save_folder` (a checksummed ``manifest.json``
with shapes and dtypes) and read back with :func:`~tl_universality.core.saving.open_saved`, so a
flipped byte, a truncated file or a missing piece is a
:class:`~tl_universality.core.errors.CorruptCacheError` naming the file and the fix, never a
model that loads with wrong weights. Loading runs no code (safetensors and JSON only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.saving import MANIFEST, open_saved, save_folder

SEED_MODEL = "tl_universality.seed_model"
TOKENIZER = "tl_universality.tokenizer"
HELD_OUT = "tl_universality.held_out_tokens"
FAMILY_CONFIG = "tl_universality.seed_family_config"
PIECE_VERSION = 1


def _fix(folder: Path) -> str:
    return (
        f"delete {folder} and run train_seed_family() again, which rebuilds only the damaged"
        " part (a damaged seed retrains that seed alone)."
    )


# -- JSON ------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is a :class:`CorruptCacheError`."""
    try:
        data = json.loads(Path(path).read_text())
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


# -- one seed model --------------------------------------------------------------------------------


def save_seed_model(model: Any, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Save a model as a verified folder: ``model.safetensors``, ``config.json`` (+
    ``train.json`` with ``extra``) and their checksummed manifest, atomically.

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
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with save_folder(Path(folder), SEED_MODEL, PIECE_VERSION) as out:
        out.write_tensors("model", state)
        out.write_json("config", _json_safe_cfg(model.cfg))
        if extra is not None:
            out.write_json("train", extra)


def read_train_record(folder: str | Path) -> dict[str, Any]:
    """The verified ``train.json`` of a saved seed model (``{}`` when it was saved without one)."""
    folder = Path(folder)
    with open_saved(folder, SEED_MODEL, PIECE_VERSION, what="seed model", fix=_fix(folder)) as s:
        record = s.json("train") if s.has("train.json") else {}
    if not isinstance(record, dict):
        raise CorruptCacheError(f"{folder}/train.json does not hold an object. Fix: {_fix(folder)}")
    return record


def load_seed_model(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    device: str = "cpu",
) -> Any:
    """Load one model saved by :func:`save_seed_model`, verifying every checksum first.

    Args:
        folder: The model folder (``.../seed<k>``).
        tokenizer: The tokenizer to attach; by default the family's ``../tokenizer`` if present.
        device: Where to put the model.

    Returns:
        A ``HookedTransformer`` in eval mode.

    Raises:
        CorruptCacheError: A file is missing, damaged (checksum), or the weights do not fit the
            config; the message names the file and the fix.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(folder)
    fix = _fix(folder)
    with open_saved(folder, SEED_MODEL, PIECE_VERSION, what="seed model", fix=fix) as saved:
        cfg_dict = saved.json("config")
        state = saved.tensors("model")
    try:
        cfg_dict["dtype"] = getattr(torch, cfg_dict["dtype"])
        cfg_dict["device"] = device
        cfg = HookedTransformerConfig(**cfg_dict)
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as err:
        raise CorruptCacheError(
            f"Seed model folder {folder} has an invalid config.json ({err}). Fix: {fix}"
        ) from err
    sibling = folder.parent / "tokenizer"
    if tokenizer is None and (sibling / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(sibling, verify=(sibling / MANIFEST).is_file())
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    try:
        model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise CorruptCacheError(
            f"Seed model folder {folder}: the weights do not match config.json ({err}). Fix: {fix}"
        ) from err
    return model.eval()


# -- the tokenizer -------------------------------------------------------------------------------


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> str:
    """Save ``tokenizer`` (``save_pretrained``) as a verified folder; returns its content hash."""
    with save_folder(folder, TOKENIZER, PIECE_VERSION) as out:
        tokenizer.save_pretrained(str(out.root))
        for file in sorted(out.root.iterdir()):
            out.add_file(file.name)
    return tokenizer_hash(folder)


def tokenizer_hash(folder: Path) -> str:
    """SHA-256 of the vocabulary and merges (``tokenizer.json``): what the models depend on."""
    return hashlib.sha256((Path(folder) / "tokenizer.json").read_bytes()).hexdigest()


def load_tokenizer(folder: Path, *, verify: bool = True) -> PreTrainedTokenizerBase:
    """Load a tokenizer folder; with ``verify`` (a family's) its manifest is checked first."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if verify:
        with open_saved(folder, TOKENIZER, PIECE_VERSION, what="tokenizer", fix=_fix(folder)):
            pass
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # any failure means the folder is unusable
        raise CorruptCacheError(
            f"The tokenizer in {folder} is unreadable ({type(err).__name__}: {err}). "
            f"Fix: {_fix(folder)}"
        ) from err


# -- held-out tokens and the settings ------------------------------------------------------------


def save_tokens(tokens: Int[Tensor, "n seq"], folder: Path) -> str:
    """Save token ids as a verified folder (``tokens.safetensors``); returns their hash."""
    with save_folder(folder, HELD_OUT, PIECE_VERSION, meta={"sha256": tokens_hash(tokens)}) as out:
        out.write_tensors("tokens", {"tokens": tokens})
    return tokens_hash(tokens)


def tokens_hash(tokens: Tensor) -> str:
    """SHA-256 of the ids (as int64) and their shape."""
    data = tokens.to(torch.int64).contiguous().numpy()
    return hashlib.sha256(repr(tuple(data.shape)).encode() + data.tobytes()).hexdigest()


def load_tokens(folder: Path) -> Int[Tensor, "n seq"]:
    """The verified token ids saved by :func:`save_tokens`."""
    folder = Path(folder)
    with open_saved(folder, HELD_OUT, PIECE_VERSION, what="token set", fix=_fix(folder)) as saved:
        tokens = saved.tensors("tokens")["tokens"]
    if tokens.dtype not in (torch.int32, torch.int64) or tokens.ndim != 2:
        raise CorruptCacheError(f"{folder} does not hold a 2-D integer tensor. Fix: {_fix(folder)}")
    return tokens


def save_settings(
    folder: Path, settings: dict[str, Any], info: dict[str, Any] | None = None
) -> None:
    """Save the family's settings (config, data hashes) and its description (``info``, copied to
    the top-level ``family.json`` for reading) as a verified folder."""
    with save_folder(folder, FAMILY_CONFIG, PIECE_VERSION) as out:
        out.write_json("settings", settings)
        if info is not None:
            out.write_json("info", info)


def load_settings(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The verified settings and description saved by :func:`save_settings`."""
    folder = Path(folder)
    fix = _fix(folder)
    what = "seed-family settings"
    with open_saved(folder, FAMILY_CONFIG, PIECE_VERSION, what=what, fix=fix) as s:
        settings = s.json("settings")
        info = s.json("info") if s.has("info.json") else None
    if not isinstance(settings, dict) or not isinstance(settings.get("config"), dict):
        raise CorruptCacheError(f"{folder}/settings.json holds no config. Fix: {fix}")
    return settings, info

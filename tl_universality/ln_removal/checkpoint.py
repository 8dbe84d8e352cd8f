"""Checkpoints of a LayerNorm-removal run: written atomically, resumed only for the same run.

A checkpoint is one saved folder (:mod:`tl_universality.core.saving`: atomic swap, every file
checksummed) holding the fine-tuned model's state (weights, σ's and which paths are fake), the
AdamW state by parameter name, and the loss history so far. Its manifest carries the run's
fingerprint: the settings (:class:`~tl_universality.ln_removal.config.LNRemovalConfig`), a digest
of the starting model's parameters and digests of the training and held-out tokens. Resuming with
any of them different is a :class:`~tl_universality.core.errors.CheckpointMismatchError` that names
what differs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_universality.core.errors import CheckpointMismatchError
from tl_universality.core.saving import open_saved, save_folder

FORMAT = "tl_universality.ln_removal_checkpoint"
VERSION = 1
_OPT_KEYS = ("step", "exp_avg", "exp_avg_sq")


def tensor_digest(tensor: Tensor) -> str:
    """SHA-256 (16 hex digits) of a tensor's bytes, shape and dtype."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}{t.dtype}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_digest(model: Any) -> str:
    """A digest of every parameter and buffer of ``model`` (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()[:16]


def fingerprint(config: Any, model: Any, train: Tensor, held_out: Tensor) -> dict[str, Any]:
    """What identifies a run: settings, starting model and data."""
    return {
        "config": config.to_dict(),
        "model": model_digest(model),
        "train_tokens": tensor_digest(train),
        "held_out_tokens": tensor_digest(held_out),
    }


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Tensor]:
    """AdamW's state as ``{"<param name>/<key>": tensor}`` (``names`` maps ``id(param)``)."""
    out = {}
    for param, state in optimizer.state.items():
        for key in _OPT_KEYS:
            if key in state:
                value = state[key]
                out[f"{names[id(param)]}/{key}"] = (
                    value if isinstance(value, Tensor) else torch.tensor(float(value))
                )
    return out


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, params: dict[str, Any], tensors: dict[str, Tensor]
) -> None:
    """Restore :func:`optimizer_tensors` output into ``optimizer`` (``params`` by name)."""
    for name, param in params.items():
        state = {k: tensors[f"{name}/{k}"] for k in _OPT_KEYS if f"{name}/{k}" in tensors}
        if state:
            optimizer.state[param] = {
                k: (v.to(param.device) if k != "step" else v.clone()) for k, v in state.items()
            }


def save_checkpoint(
    folder: Path,
    *,
    identity: dict[str, Any],
    step: int,
    model_state: dict[str, Tensor],
    optimizer_state: dict[str, Tensor],
    history: Any,
    extra: dict[str, Any],
) -> None:
    """Write the checkpoint folder atomically (the old one survives a kill at any moment)."""
    meta = {"fingerprint": identity, "step": int(step), **extra}
    with save_folder(folder, FORMAT, VERSION, meta) as out:
        out.write_tensors("model", model_state)
        out.write_tensors("optimizer", optimizer_state)
        out.write_table("history", history)


def load_checkpoint(folder: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's contents, None when there is none; refuses another run's checkpoint.

    Raises:
        CheckpointMismatchError: The checkpoint was written with other settings, another starting
            model or other tokens (the message names which).
        CorruptCacheError: The folder is damaged.
    """
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        return None
    fix = f"delete {folder} to start again, or pass another checkpoint_dir."
    with open_saved(folder, FORMAT, VERSION, what="LayerNorm-removal checkpoint", fix=fix) as s:
        saved = s.meta.get("fingerprint", {})
        contents = None
        if saved == identity:
            contents = {
                "step": int(s.meta["step"]),
                "meta": dict(s.meta),
                "model": s.tensors("model"),
                "optimizer": s.tensors("optimizer"),
                "history": s.table("history"),
            }
    if contents is None:  # outside the reading block: a mismatch is not a damaged folder
        differs = [k for k in identity if saved.get(k) != identity[k]]
        detail = ""
        if "config" in differs:
            old, new = saved.get("config", {}), identity["config"]
            keys = [k for k in new if old.get(k) != new[k]]
            detail = "; settings that differ: " + ", ".join(
                f"{k} (checkpoint {old.get(k)!r}, now {new[k]!r})" for k in keys
            )
        raise CheckpointMismatchError(
            f"checkpoint_dir={str(folder)!r} holds a LayerNorm-removal run with a different"
            f" {', '.join(differs)}{detail}. Fix: {fix}"
        )
    return contents


__all__ = [
    "fingerprint",
    "load_checkpoint",
    "load_optimizer_tensors",
    "model_digest",
    "optimizer_tensors",
    "save_checkpoint",
    "tensor_digest",
]

"""The settings of one LayerNorm-removal run, as one frozen, validated object.

The same :class:`LNRemovalConfig` is the checkpoint's fingerprint (a resume with other settings is
refused) and the wandb run's config. Defaults follow Baroni et al. (2025) for GPT-2 small (300
steps, lr 6e-4 → 3e-4 cosine after 20 warm-up steps, the schedule of
:class:`~tl_universality.ln_removal.schedule.RemovalSchedule`) and Heimersheim (2024) for the
optimiser (AdamW with betas (0.9, 0.95), weight decay 0.1, gradient clipping at 1.0).

Examples:
    >>> cfg = LNRemovalConfig(steps=60, schedule=RemovalSchedule(start=4))
    >>> LNRemovalConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> LNRemovalConfig(steps=100).check_fits(n_layers=12)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: steps=100 ends before the removal schedule's last event (step 116 ... Fix: ...
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from tl_universality.ln_removal.schedule import RemovalSchedule


@dataclass(frozen=True)
class LNRemovalConfig:
    """Settings of :func:`~tl_universality.ln_removal.finetune.remove_layernorm`.

    Attributes:
        steps: Optimiser steps in all (must leave steps after the schedule's last event).
        batch_size: Sequences per step.
        lr: Peak learning rate of AdamW.
        min_lr_ratio: Final learning rate as a fraction of ``lr`` (cosine decay).
        lr_warmup: Steps of linear learning-rate warm-up.
        weight_decay: AdamW weight decay of matrices (biases and LayerNorm weights: none).
        betas: AdamW betas.
        grad_clip: Maximum global gradient norm.
        schedule: When each LayerNorm path goes fake.
        aux_loss_weight: Weight of the auxiliary loss (MSE between each position's residual std
            at the input of ``ln_final`` and their detached mean); 0 switches it off.
        momentum: Momentum of the σ moving averages.
        special_eot: Give end-of-text tokens a σ of their own until the schedule drops it.
        eot_token_id: The end-of-text id (None: the tokenizer's ``eos_token_id``).
        keep_layernorm: Fine-tune with the same recipe but keep every LayerNorm real: the
            papers' control, which separates the effect of fine-tuning from that of removal.
        seed: Seed of the order in which training sequences are visited.
    """

    steps: int = 300
    batch_size: int = 16
    lr: float = 6e-4
    min_lr_ratio: float = 0.5
    lr_warmup: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    schedule: RemovalSchedule = field(default_factory=RemovalSchedule)
    aux_loss_weight: float = 0.0
    momentum: float = 0.9
    special_eot: bool = True
    eot_token_id: int | None = None
    keep_layernorm: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.schedule, dict):
            object.__setattr__(self, "schedule", RemovalSchedule(**self.schedule))
        if not isinstance(self.schedule, RemovalSchedule):
            raise ValueError(
                f"schedule must be a RemovalSchedule, got {type(self.schedule).__name__}. Fix:"
                " schedule=RemovalSchedule(start=..., gap_ln2=...)."
            )
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for name in ("steps", "batch_size"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.lr_warmup, int) or not 0 <= self.lr_warmup < self.steps:
            raise ValueError(
                f"lr_warmup must be an integer in [0, steps={self.steps}), got {self.lr_warmup!r}."
                f" Fix: lr_warmup={min(20, self.steps - 1)}."
            )
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        for name, low, high in (("min_lr_ratio", 0, 1), ("momentum", 0, 1 - 1e-12)):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and low <= value <= high):
                raise ValueError(f"{name} must be in [{low}, {high:g}], got {value!r}.")
        for name in ("weight_decay", "aux_loss_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}. Fix: {name}=0.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}.")
        if self.eot_token_id is not None and (
            not isinstance(self.eot_token_id, int) or self.eot_token_id < 0
        ):
            raise ValueError(
                f"eot_token_id must be a token id >= 0 or None, got {self.eot_token_id!r}."
            )

    def check_fits(self, n_layers: int, *, has_mlp: bool = True) -> None:
        """Raise ``ValueError`` unless the schedule ends before the last step."""
        last = self.schedule.last_step(n_layers, has_mlp=has_mlp)
        if self.keep_layernorm or last < self.steps:
            return
        raise ValueError(
            f"steps={self.steps} ends before the removal schedule's last event (step {last} for"
            f" {n_layers} layers), so the model would never be fully LayerNorm-free. Fix: pass"
            f" steps={last + max(10, last // 4)} or more, or a shorter RemovalSchedule(start=...,"
            " gap_...=...)."
        )

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: linear warm-up, then cosine to ``min_lr_ratio * lr``.

        Examples:
            >>> cfg = LNRemovalConfig(steps=100, lr=1.0, lr_warmup=10, min_lr_ratio=0.5)
            >>> cfg.lr_at(0), cfg.lr_at(10), round(cfg.lr_at(99), 3)
            (0.1, 1.0, 0.5)
        """
        if step < self.lr_warmup:
            return self.lr * (step + 1) / self.lr_warmup
        progress = (step - self.lr_warmup) / max(1, self.steps - 1 - self.lr_warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (the schedule nested)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LNRemovalConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        check_fields(data)
        data = dict(data)
        if "betas" in data:  # JSON has a list where the config has a tuple
            data["betas"] = tuple(data["betas"])
        if "schedule" in data and isinstance(data["schedule"], dict):
            data["schedule"] = RemovalSchedule(**data["schedule"])
        return cls(**data)

    def replace(self, **changes: Any) -> LNRemovalConfig:
        """A copy with some fields changed (validated again)."""
        check_fields(changes)
        return dataclasses.replace(self, **changes)


def check_fields(settings: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming any key that is not a field of :class:`LNRemovalConfig`."""
    known = [f.name for f in dataclasses.fields(LNRemovalConfig)]
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{key!r} is not a setting of LNRemovalConfig.{hint} Settings: {', '.join(known)}."
            )


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"{name} must be a positive integer, got {value!r}. Fix: {name}=1 or more."
        )


__all__ = ["LNRemovalConfig", "check_fields"]

"""SAE latents as units: an SAE's encoder applied at its hook point (docs/concepts.md, "SAE latents
as units").

:class:`SAEUnits` wraps a sae-lens SAE as a :class:`~tl_universality.units.specs.UnitTransform`;
every ``units=`` argument also takes the raw SAE and wraps it the same way
(:func:`~tl_universality.units.specs.as_transform`). Only the SAE's ``cfg.d_in``, ``cfg.d_sae``,
``encode`` and ``decode`` are used, so sae-lens itself is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.errors import HookError, InvalidArgumentError


def sae_hook_name(sae: Any) -> str | None:
    metadata = getattr(sae.cfg, "metadata", None)
    name = getattr(metadata, "hook_name", None) if metadata is not None else None
    return name or getattr(sae.cfg, "hook_name", None)


def is_raw_sae(obj: Any) -> bool:
    """Whether ``obj`` looks like a sae-lens SAE: ``encode``/``decode`` and ``cfg.d_sae``.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> is_raw_sae(StandardSAE(StandardSAEConfig(d_in=4, d_sae=8))), is_raw_sae("hook_z")
        (True, False)
    """
    cfg = getattr(obj, "cfg", None)
    return (
        callable(getattr(obj, "encode", None))
        and callable(getattr(obj, "decode", None))
        and hasattr(cfg, "d_sae")
        and hasattr(cfg, "d_in")
    )


@dataclass(frozen=True, eq=False)
class SAEUnits:
    """The latents of ``sae`` as units, read at ``hook_name`` (default: the SAE's own hook).

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=48))
        >>> units = SAEUnits(sae, hook_name="blocks.0.hook_resid_post")
        >>> units.width, units.label
        (48, 'blocks.0.hook_resid_post.hook_sae_acts_post')
    """

    sae: Any
    hook_name: str = ""
    splice: bool = False

    def __post_init__(self) -> None:
        if not is_raw_sae(self.sae):
            raise InvalidArgumentError(
                f"SAEUnits(sae={type(self.sae).__name__} object): not a sae-lens SAE (it needs"
                " encode, decode, cfg.d_in and cfg.d_sae). Fix: pass an SAE, e.g."
                " sae_lens.SAE.from_pretrained(...)."
            )
        name = self.hook_name or sae_hook_name(self.sae)
        if not name:
            raise ValueError(
                "This SAE does not say which hook it reads (sae.cfg.metadata.hook_name is empty)."
                " Pass it: SAEUnits(sae, hook_name='blocks.0.hook_resid_post')."
            )
        object.__setattr__(self, "hook_name", name)

    @property
    def label(self) -> str:
        return f"{self.hook_name}.hook_sae_acts_post"

    @property
    def width(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    def __call__(self, act: Float[Tensor, "batch pos ..."]) -> Float[Tensor, "batch pos d_sae"]:
        if act.shape[-1] != self.d_in and int(act[0, 0].numel()) != self.d_in:
            raise HookError(
                f"The SAE expects inputs of width d_in={self.d_in}, but hook {self.hook_name}"
                f" gives {tuple(act.shape[2:])} per position. Attach the SAE at the hook it was"
                " trained on (sae.cfg.metadata.hook_name) or pass the matching hook_name."
            )
        with torch.no_grad():
            sae_dtype = next(self.sae.parameters()).dtype
            return self.sae.encode(act.to(sae_dtype))

    def replacement(self, act: Tensor, units: Tensor) -> Tensor:
        """The SAE reconstruction of ``act``, shaped like it (used when spliced)."""
        with torch.no_grad():
            return self.sae.decode(units).reshape(act.shape).to(act.dtype)


def attached_sae_units(model: Any) -> list[str]:
    """The latent hook names of the SAEs attached to a ``HookedSAETransformer``.

    Pass the list as ``units=`` to use them.
    """
    saes = getattr(model, "acts_to_saes", None)
    if not saes:
        raise HookError(
            f"{type(model).__name__} has no attached SAE. Attach one with model.add_sae(sae), or"
            " pass units=SAEUnits(sae) to read an SAE without attaching it."
        )
    return [f"{name}.hook_sae_acts_post" for name in saes]

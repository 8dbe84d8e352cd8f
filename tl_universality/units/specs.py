"""Unit specs: how a ``units=`` argument says which activations are the units.

Two spellings that cannot be confused:

* a **plain spec** means the same units on every model: ``None`` (every layer's ``mlp.hook_post``),
  a per-layer suffix such as ``"mlp.hook_pre"``, one full hook name, a :class:`UnitTransform`
  (e.g. :class:`~tl_universality.units.sae.SAEUnits`), a raw sae-lens SAE (wrapped in
  ``SAEUnits`` for you), or a flat list of hook names, transforms and SAEs;
* :class:`PerModel` ``([spec0, spec1, ...])`` gives one plain spec per model, in the models'
  order (e.g. each seed model with its own SAE).

A list of lists (``units=[[a], [b]]``) used to be the per-model spelling; it still works for one
more release, with a ``DeprecationWarning`` that names the replacement. A wrong shape is an
:class:`~tl_universality.core.errors.InvalidArgumentError` naming the argument, the value and the
fix, before any forward pass.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from tl_universality.core.errors import InvalidArgumentError
from tl_universality.units.sae import SAEUnits, is_raw_sae


@runtime_checkable
class UnitTransform(Protocol):
    """Units computed from a hook's activation rather than read off it, e.g. SAE latents.

    :class:`tl_universality.units.sae.SAEUnits` is the implementation for sae-lens SAEs.
    """

    hook_name: str  # where the input is read
    label: str  # the unit set's name (used like a hook name in a UnitIndex)
    width: int  # units per position
    splice: bool  # replace the hook's output with :meth:`replacement` (changes the model)

    def __call__(self, act: Tensor) -> Tensor:
        """``[batch, pos, ...] -> [batch, pos, width]``; raises HookError on a shape mismatch."""
        ...

    def replacement(self, act: Tensor, units: Tensor) -> Tensor:
        """What the hook outputs when spliced (e.g. the SAE reconstruction)."""
        ...


UnitsSpec = str | UnitTransform | Any | Sequence[str | UnitTransform | Any] | None
"""Which units to read on one model (``Any`` stands for a raw sae-lens SAE): ``None`` (every
layer's ``mlp.hook_post``), a per-layer suffix such as ``"mlp.hook_pre"`` or ``"hook_resid_post"``
(expanded to ``blocks.{l}.<suffix>``), one full hook name, a :class:`UnitTransform` or raw SAE, or
a list of hook names, transforms and SAEs. The unit axis is the hook's last dimension; any
dimensions between position and the last are flattened into it (e.g. ``attn.hook_z`` gives
heads × d_head). Wrap one spec per model in :class:`PerModel`."""

FIX = (
    "pass None (every layer's mlp.hook_post), a hook name or per-layer suffix such as"
    " 'mlp.hook_post', an SAE or SAEUnits(sae), or a flat list of those for the same units on"
    " every model; or PerModel([spec0, spec1, ...]) for one spec per model"
)


def describe(spec: Any) -> str:
    """A short readable form of a spec for error messages (an SAE's repr is a page long).

    Examples:
        >>> describe(["blocks.0.hook_resid_post", None])
        "['blocks.0.hook_resid_post', None]"
    """
    if spec is None or isinstance(spec, (str, int, float)):
        return repr(spec)
    if isinstance(spec, PerModel):
        return repr(spec)
    if isinstance(spec, (list, tuple)):
        inner = ", ".join(describe(s) for s in spec)
        return f"[{inner}]" if isinstance(spec, list) else f"({inner})"
    if isinstance(spec, SAEUnits):
        return f"SAEUnits({type(spec.sae).__name__} at {spec.hook_name!r})"
    if isinstance(spec, UnitTransform):
        return f"{type(spec).__name__}({spec.label!r})"
    if is_raw_sae(spec):
        return f"{type(spec).__name__}(d_in={spec.cfg.d_in}, d_sae={spec.cfg.d_sae})"
    text = repr(spec)
    return text if len(text) <= 60 else f"<{type(spec).__name__} object>"


class PerModel:
    """One unit spec per model, in the order the models are given.

    A plain spec (a string, a transform, a list of them) means the same units on every model;
    ``PerModel`` is the way to say "this spec for model 0, that one for model 1".

    Args:
        specs: one plain :data:`UnitsSpec` per model.

    Examples:
        >>> units = PerModel(["mlp.hook_post", ["blocks.0.hook_resid_post"]])
        >>> len(units), units[1]
        (2, ['blocks.0.hook_resid_post'])
        >>> per_model(units, 2)
        ['mlp.hook_post', ['blocks.0.hook_resid_post']]
        >>> per_model(units, 3)
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.InvalidArgumentError: units=PerModel(['mlp.hook_post', \
['blocks.0.hook_resid_post']]) has 2 specs for 3 models. Fix: give PerModel one spec per model, \
in the models' order, or pass one plain spec (not PerModel) to read the same units on every model.
    """

    __slots__ = ("specs",)
    specs: tuple[UnitsSpec, ...]

    def __init__(self, specs: Sequence[UnitsSpec]) -> None:
        if not isinstance(specs, (list, tuple)):
            raise InvalidArgumentError(
                f"PerModel(specs={describe(specs)}): specs must be a list with one unit spec per"
                " model. Fix: e.g. PerModel(['mlp.hook_post', 'hook_resid_post']) for two models,"
                f" or pass {describe(specs)} itself (no PerModel) for the same units on every"
                " model."
            )
        for i, spec in enumerate(specs):
            check_spec(spec, f"PerModel(...)[{i}]")
        self.specs = tuple(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[UnitsSpec]:
        return iter(self.specs)

    def __getitem__(self, i: int) -> UnitsSpec:
        return self.specs[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PerModel) and self.specs == other.specs

    def __repr__(self) -> str:
        return f"PerModel([{', '.join(describe(s) for s in self.specs)}])"


def check_spec(spec: Any, argument: str = "units") -> None:
    """Raise :class:`InvalidArgumentError` unless ``spec`` is a plain spec for one model.

    Examples:
        >>> check_spec(["blocks.0.hook_resid_post", "mlp.hook_post"])
        >>> check_spec(3)
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.InvalidArgumentError: units=3 is not a unit spec. Fix: pass \
None (every layer's mlp.hook_post), a hook name or per-layer suffix such as 'mlp.hook_post', an \
SAE or SAEUnits(sae), or a flat list of those for the same units on every model; or \
PerModel([spec0, spec1, ...]) for one spec per model.
    """
    if spec is None or _is_unit(spec):
        return
    if isinstance(spec, PerModel):
        raise InvalidArgumentError(
            f"{argument}={spec!r} gives one spec per model, but here {argument} describes the"
            " units of one model. Fix: pass one of its specs, or pass the PerModel to the"
            " function that takes all the models (e.g. correlate or stream_activations)."
        )
    if isinstance(spec, (list, tuple)):
        for i, unit in enumerate(spec):
            if not _is_unit(unit):
                nested = unit is None or isinstance(unit, (list, tuple, PerModel))
                why = (
                    "a list inside a list (one spec per model is spelled PerModel([...]))"
                    if nested
                    else "not a hook name, a transform or an SAE"
                )
                raise InvalidArgumentError(
                    f"{argument}={describe(spec)}: item {i}, {describe(unit)}, is {why}."
                    f" Fix: {FIX}."
                )
        return
    raise InvalidArgumentError(f"{argument}={describe(spec)} is not a unit spec. Fix: {FIX}.")


def _is_unit(unit: Any) -> bool:
    return isinstance(unit, str) or isinstance(unit, UnitTransform) or is_raw_sae(unit)


def as_transform(unit: Any) -> Any:
    """``unit`` itself, or a raw sae-lens SAE wrapped in :class:`SAEUnits` (at its own hook)."""
    if not isinstance(unit, UnitTransform) and is_raw_sae(unit):
        return SAEUnits(unit)
    return unit


def is_legacy_per_model(units: Any) -> bool:
    """The old per-model spelling: a list holding lists or ``None`` (``[[a], [b]]``)."""
    return isinstance(units, (list, tuple)) and any(
        u is None or isinstance(u, (list, tuple)) for u in units
    )


def is_per_model(units: Any, n_models: int) -> bool:
    """Whether ``units`` gives one spec per model (a :class:`PerModel`, or the deprecated list of
    lists); raises when it does with the wrong number of specs.

    Examples:
        >>> is_per_model(PerModel(["mlp.hook_post", None]), 2), is_per_model(["a", "b"], 2)
        (True, False)
    """
    if isinstance(units, PerModel):
        check_count(units, n_models)
        return True
    return is_legacy_per_model(units) and len(units) == n_models and n_models > 1


def check_count(units: PerModel, n_models: int, argument: str = "units") -> None:
    """Raise :class:`InvalidArgumentError` unless ``units`` holds ``n_models`` specs."""
    if len(units) != n_models:
        raise InvalidArgumentError(
            f"{argument}={units!r} has {len(units)} spec{'s' * (len(units) != 1)} for"
            f" {n_models} model{'s' * (n_models != 1)}. Fix: give PerModel one spec per model,"
            " in the models' order, or pass one plain spec (not PerModel) to read the same units"
            " on every model."
        )


def per_model(units: Any, n_models: int, argument: str = "units") -> list[UnitsSpec]:
    """One plain spec per model: ``PerModel`` unpacked, a plain spec repeated ``n_models`` times.

    Validates the shape and each spec first. The deprecated list of lists still means one spec per
    model when its length is ``n_models``, with a ``DeprecationWarning``; any other list holding
    lists is refused.

    Examples:
        >>> per_model("mlp.hook_pre", 2)
        ['mlp.hook_pre', 'mlp.hook_pre']
        >>> per_model(PerModel([None, "hook_resid_post"]), 2)
        [None, 'hook_resid_post']
    """
    if isinstance(units, PerModel):
        check_count(units, n_models, argument)
        return list(units)
    if is_legacy_per_model(units):
        if len(units) == n_models and n_models > 1:
            for i, spec in enumerate(units):
                check_spec(spec, f"{argument}[{i}]")
            warnings.warn(
                f"{argument}={describe(units)}: a list of lists for one spec per model is"
                f" deprecated. Fix: write {argument}=PerModel({describe(list(units))}); a plain"
                " list means the same units on every model.",
                DeprecationWarning,
                stacklevel=caller_stacklevel(),
            )
            return list(units)
        raise InvalidArgumentError(
            f"{argument}={describe(units)} holds lists (or None) but is not one spec per model:"
            f" it has {len(units)} items for {n_models} model{'s' * (n_models != 1)}. Fix: for one"
            f" spec per model write {argument}=PerModel([spec0, spec1, ...]) with {n_models}"
            " specs; for the same units on every model pass one flat list of hook names."
        )
    check_spec(units, argument)
    return [units] * n_models


#: Frames to skip: the package, and the checkers that wrap its functions during tests.
_INTERNAL = ("tl_universality", "jaxtyping", "beartype")


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside the package.

    Call it from the function that calls ``warnings.warn``.
    """
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None
    while frame is not None and not frame.f_globals.get("__name__", "").startswith(_INTERNAL[0]):
        frame = frame.f_back  # a checker's wrapper around this function
    level = 1  # the function that calls warnings.warn
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level

"""tl_universality: universal neurons (Gurnee et al. 2024) as a TransformerLens plugin.

Importing the package registers ``model.universality`` on ``HookedTransformer`` (and so on
sae-lens's ``HookedSAETransformer``) and on ``TransformerBridge``. Every accessor method is also a
free function that takes the model as its first argument.

The import itself is cheap: the names below load on first use (PEP 562), and the accessor is
registered as soon as TransformerLens is imported (at once when it already is). So the command
line answers ``--help`` without paying TransformerLens's import time.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

from tl_universality.core.version import __version__ as __version__

# Public name -> the module defining it (imported on first access).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ["UniversalityAccessor", "register_default_accessors", "register_model_accessor"],
        "tl_universality.accessor",
    ),
    **dict.fromkeys(
        ["CorrelationResult", "correlate", "plan_correlation"],
        "tl_universality.analyses.correlation",
    ),
    **dict.fromkeys(
        [
            "AccessorError",
            "CheckpointMismatchError",
            "CorruptCacheError",
            "EmptyTokenSourceError",
            "HookError",
            "NonFiniteActivationError",
            "NoUnitsError",
            "SequenceTooLongError",
            "TokenizerMismatchError",
            "UniversalityError",
        ],
        "tl_universality.core.errors",
    ),
    "HookedModel": "tl_universality.core.protocol",
    "CrossMoments": "tl_universality.stats.cross_moments",
    "Moments": "tl_universality.stats.moments",
    **dict.fromkeys(
        [
            "ActivationBatch",
            "UnitIndex",
            "collect_activations",
            "stream_activations",
            "unit_index",
        ],
        "tl_universality.units.activations",
    ),
    **dict.fromkeys(
        ["FixNeuron", "FreezeLNScale", "RemoveFromQueryInput"], "tl_universality.units.hooks"
    ),
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later reads skip __getattr__
        return value
    try:  # a subpackage not imported yet, e.g. ``tl_universality.analyses``
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _register() -> None:
    from tl_universality.accessor import register_default_accessors

    register_default_accessors()


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers the accessor right after ``transformer_lens`` is imported, by whoever."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "transformer_lens":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate the package
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # resource readers etc. of the real loader
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        try:
            _register()
        except Exception as err:  # never break the user's `import transformer_lens`
            warnings.warn(
                f"tl_universality could not register model.universality ({err}); call"
                " tl_universality.register_default_accessors() to see why.",
                RuntimeWarning,
                stacklevel=2,
            )


if "transformer_lens" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())

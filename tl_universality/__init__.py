"""tl_universality: universal neurons (Gurnee et al. 2024) as a TransformerLens plugin.

Importing the package registers ``model.universality`` on ``HookedTransformer`` (and so on
sae-lens's ``HookedSAETransformer``) and on ``TransformerBridge``. Every accessor method is also a
free function that takes the model as its first argument.
"""

from tl_universality.accessor import (
    UniversalityAccessor,
    register_default_accessors,
    register_model_accessor,
)
from tl_universality.analyses.correlation import CorrelationResult, correlate, plan_correlation
from tl_universality.core.errors import (
    AccessorError,
    CheckpointMismatchError,
    CorruptCacheError,
    EmptyTokenSourceError,
    HookError,
    NonFiniteActivationError,
    NoUnitsError,
    SequenceTooLongError,
    TokenizerMismatchError,
    UniversalityError,
)
from tl_universality.core.protocol import HookedModel
from tl_universality.stats.cross_moments import CrossMoments
from tl_universality.stats.moments import Moments
from tl_universality.units.activations import (
    ActivationBatch,
    UnitIndex,
    collect_activations,
    stream_activations,
    unit_index,
)
from tl_universality.units.hooks import FixNeuron, FreezeLNScale, RemoveFromQueryInput

__version__ = "0.1.0"

register_default_accessors()

__all__ = [
    "AccessorError",
    "CheckpointMismatchError",
    "CorrelationResult",
    "CrossMoments",
    "FixNeuron",
    "FreezeLNScale",
    "RemoveFromQueryInput",
    "correlate",
    "plan_correlation",
    "ActivationBatch",
    "CorruptCacheError",
    "EmptyTokenSourceError",
    "HookError",
    "HookedModel",
    "Moments",
    "NoUnitsError",
    "NonFiniteActivationError",
    "SequenceTooLongError",
    "TokenizerMismatchError",
    "UnitIndex",
    "UniversalityAccessor",
    "UniversalityError",
    "__version__",
    "collect_activations",
    "register_model_accessor",
    "stream_activations",
    "unit_index",
]

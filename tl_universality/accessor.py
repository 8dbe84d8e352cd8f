"""The ``model.universality`` accessor, registered pandas-style on TransformerLens classes.

A descriptor on the class builds a thin :class:`UniversalityAccessor` on each access; nothing is
stored on the model, so models still save, load, deep-copy and move devices exactly as before, and
no reference cycle keeps a model alive. Each accessor method calls the free function of the same
name with the model as its first argument.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from tl_universality.analyses import attention as attention_module
from tl_universality.analyses import composition as composition_module
from tl_universality.analyses import correlation as correlation_module
from tl_universality.analyses import entropy as entropy_module
from tl_universality.analyses import families as families_module
from tl_universality.analyses import neuron_stats as neuron_stats_module
from tl_universality.analyses import roles as roles_module
from tl_universality.analyses import sae as sae_module
from tl_universality.analyses import training_curve as training_curve_module
from tl_universality.analyses import vocab as vocab_module
from tl_universality.attention_decomposition import decompose as decompose_module
from tl_universality.attention_decomposition import intervene as intervene_module
from tl_universality.attention_decomposition import svd as svd_module
from tl_universality.attention_decomposition import trace as trace_module
from tl_universality.core.errors import AccessorError
from tl_universality.flow import graph as flow_module
from tl_universality.ln_removal import dla as dla_module
from tl_universality.ln_removal import finetune as ln_removal_module
from tl_universality.units import activations as activations_module

AccessorT = TypeVar("AccessorT")


class _AccessorDescriptor(Generic[AccessorT]):
    """Class attribute that builds the accessor for the instance it is read from."""

    def __init__(self, name: str, accessor: type[AccessorT]) -> None:
        self._name = name
        self._accessor = accessor

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self._accessor
        try:
            return self._accessor(obj)
        except AttributeError as err:
            # nn.Module.__getattr__ would swallow an AttributeError and report a misleading
            # "object has no attribute 'universality'"; raise it as something else.
            raise AccessorError(
                f"Building `model.{self._name}` for {type(obj).__name__} failed: {err}"
            ) from err


def register_model_accessor(
    name: str, model_cls: type
) -> Callable[[type[AccessorT]], type[AccessorT]]:
    """Install ``accessor`` on ``model_cls`` as the attribute ``name``.

    Warns when the name is already taken by something else; re-registering the same accessor
    class (e.g. on module reload) is silent.

    Examples:
        >>> import torch.nn as nn
        >>> class Toy(nn.Module):
        ...     pass
        >>> @register_model_accessor("shout", Toy)
        ... class Shout:
        ...     def __init__(self, model):
        ...         self._model: HookedModel = model
        ...     def hello(self):
        ...         return type(self._model).__name__.upper()
        >>> Toy().shout.hello()
        'TOY'
    """

    def decorator(accessor: type[AccessorT]) -> type[AccessorT]:
        existing = model_cls.__dict__.get(name)
        if existing is not None and not (
            isinstance(existing, _AccessorDescriptor)
            and existing._accessor.__qualname__ == accessor.__qualname__
        ):
            warnings.warn(
                f"Registering accessor {accessor.__qualname__!r} as {model_cls.__name__}.{name}"
                f" overrides an existing attribute of the same name ({existing!r}).",
                UserWarning,
                stacklevel=2,
            )
        setattr(model_cls, name, _AccessorDescriptor(name, accessor))
        return accessor

    return decorator


def _delegate(function: Callable[..., Any]) -> Callable[..., Any]:
    """An accessor method that calls ``function(model, ...)`` and shows its real signature.

    ``inspect.signature`` of the bound method equals the free function's without the model, and
    ``help()`` shows the free function's docstring.
    """
    signature = inspect.signature(function)
    params = list(signature.parameters.values())[1:]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)

    @functools.wraps(function)
    def method(self: UniversalityAccessor, /, *args: Any, **kwargs: Any) -> Any:
        return function(self._model, *args, **kwargs)

    method.__qualname__ = f"UniversalityAccessor.{function.__name__}"
    method.__signature__ = signature.replace(parameters=[self_param, *params])  # type: ignore[attr-defined]
    del method.__wrapped__  # inspect must read __signature__, not the model-first original
    return method


class UniversalityAccessor:
    """Universal-neuron analyses of one model, as ``model.universality.<analysis>(...)``.

    Every method is a thin call of the free function of the same name, which takes the model as its
    first argument and works on any :class:`~tl_universality.core.protocol.HookedModel`.

    Examples:
        >>> import tl_universality  # registers the accessor
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
        ...                               act_fn="relu")
        >>> model = HookedTransformer(cfg)
        >>> model.universality.unit_index().n_units
        32
    """

    def __init__(self, model: Any) -> None:
        # Typed Any so that our own check below, with its clearer message, is what fails.
        missing = [a for a in ("cfg", "hook_dict", "hooks") if not hasattr(model, a)]
        if missing:
            raise TypeError(
                f"{type(model).__name__} lacks {', '.join(missing)}, so it is not a TransformerLens"
                " hooked model. Use HookedTransformer, HookedSAETransformer or TransformerBridge."
            )
        self._model = model

    def __repr__(self) -> str:
        return f"<UniversalityAccessor of {type(self._model).__name__}>"

    # Units and activations
    unit_index = _delegate(activations_module.unit_index)
    stream_activations = _delegate(activations_module.stream_activations)
    collect_activations = _delegate(activations_module.collect_activations)

    # Universality (docs/concepts.md, "Universality")
    correlate = _delegate(correlation_module.correlate)

    # Universality across training checkpoints (docs/training_curve.md)
    training_curve = _delegate(training_curve_module.training_curve)

    # Neuron table, vocabulary composition and roles ("The neuron table", "Circuit roles")
    neuron_stats = _delegate(neuron_stats_module.neuron_stats)
    vocab_moments = _delegate(vocab_module.vocab_moments)
    vocab_composition = _delegate(vocab_module.vocab_composition)
    prediction_neurons = _delegate(roles_module.prediction_neurons)
    token_set_scores = _delegate(roles_module.token_set_scores)
    head_composition = _delegate(composition_module.head_composition)

    # Families ("Neuron families")
    explain = _delegate(families_module.explain)
    families = _delegate(families_module.families)
    top_activations = _delegate(families_module.top_activations)

    # Circuit roles ("Circuit roles")
    entropy_neuron_scores = _delegate(entropy_module.entropy_neuron_scores)
    entropy_intervention = _delegate(entropy_module.entropy_intervention)
    attention_deactivation_scores = _delegate(attention_module.attention_deactivation_scores)
    path_ablation = _delegate(attention_module.path_ablation)

    # Sparse attention decomposition and circuit tracing (docs/attention_decomposition.md)
    attention_svd = _delegate(svd_module.attention_svd)
    decompose_attention = _delegate(decompose_module.decompose_attention)
    trace_circuit = _delegate(trace_module.trace_circuit)
    intervene_on_signal = _delegate(intervene_module.intervene_on_signal)

    # Flow graphs of one forward pass (docs/flow_graphs.md)
    flow_graph = _delegate(flow_module.flow_graph)

    # LayerNorm removal (docs/ln_removal.md)
    remove_layernorm = _delegate(ln_removal_module.remove_layernorm)
    direct_logit_attribution = _delegate(dla_module.direct_logit_attribution)

    # SAE latents as units
    neuron_latent_correlation = _delegate(sae_module.neuron_latent_correlation)
    sae_unit_stats = _delegate(sae_module.sae_unit_stats)


ACCESSOR_METHODS: tuple[str, ...] = tuple(
    name
    for name, value in vars(UniversalityAccessor).items()
    if callable(value) and not name.startswith("_")
)
"""The names of every analysis the accessor offers."""


def register_default_accessors(name: str = "universality") -> None:
    """Install the accessor on HookedTransformer and TransformerBridge.

    ``HookedSAETransformer`` (sae-lens) subclasses ``HookedTransformer`` and inherits the
    accessor, so sae-lens need not be imported to register it.
    """
    from transformer_lens import HookedTransformer

    register_model_accessor(name, HookedTransformer)(UniversalityAccessor)
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - older TransformerLens without the bridge
        return
    register_model_accessor(name, TransformerBridge)(UniversalityAccessor)

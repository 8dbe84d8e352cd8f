"""Interventions as first-class objects: small frozen dataclasses producing TransformerLens hooks.

Each intervention has a ``hook_name`` (the hook point it changes) and ``fwd_hooks()``, which returns
the ``[(name, fn)]`` list that ``model.hooks(fwd_hooks=...)`` and ``model.run_with_hooks(...)``
take, so the causal tests of the paper (docs/concepts.md, "Circuit roles") are also building blocks
for your own
experiments:

- :class:`FixNeuron`: set one MLP neuron's activation (``blocks.{l}.mlp.hook_post``) to a value
  at every position;
- :class:`FreezeLNScale`: replace a LayerNorm's scale (``ln_final.hook_scale`` by default) by its
  value from a clean run, which cuts the path through the normalisation (direct effects);
- :class:`RemoveFromQueryInput`: remove a neuron's output ``act * w_out`` from one head's *query*
  input only, keys and values untouched (path ablation).

Hook points. The plugin adds **no** hook points of its own: TransformerLens already has an exact
one for every intervention here. Removing something from a head's query input alone uses
TransformerLens's ``blocks.{l}.hook_q_input`` (``[batch, pos, head, d_model]``), which fires only
while ``cfg.use_split_qkv_input`` is on. :func:`apply` and :func:`split_qkv_input` switch that flag
on for the duration of a ``with`` block and restore the model's own setting afterwards, even when
the block raises. If you pass ``RemoveFromQueryInput(...).fwd_hooks()`` to ``model.hooks`` yourself,
switch it on yourself (``model.set_use_split_qkv_input(True)``); :func:`run_with_interventions`
raises :class:`~tl_universality.core.errors.HookError` when an intervention's hook never fired.

Scoping. Everything here adds hooks through ``with model.hooks(...)`` and removes them when the
block ends, whatever happens inside; a model's other hooks (yours, permanent ones) are never
touched and ``reset_hooks()`` is never called.

Examples:
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
    ...                               act_fn="relu", seed=0)
    >>> model = HookedTransformer(cfg)
    >>> fix = FixNeuron(layer=0, neuron=3, value=2.0)
    >>> fix.hook_name
    'blocks.0.mlp.hook_post'
    >>> with model.hooks(fwd_hooks=fix.fwd_hooks()):
    ...     _, fixed = model.run_with_cache(torch.tensor([[0, 1, 2]]), names_filter=fix.hook_name)
    >>> fixed[fix.hook_name][0, :, 3].tolist()
    [2.0, 2.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.core.errors import HookError
from tl_universality.core.protocol import HookedModel, HookFn, check_hooks_exist, model_name
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.units.activations import model_device

HookList = list[tuple[str, HookFn]]
"""What ``model.hooks(fwd_hooks=...)`` takes: ``[(hook_name, fn), ...]``."""


@runtime_checkable
class Intervention(Protocol):
    """Anything with a ``hook_name`` and ``fwd_hooks()``; the classes below all qualify."""

    hook_name: str

    def fwd_hooks(self) -> HookList: ...


@dataclass(frozen=True, eq=False)
class FixNeuron:
    """Set MLP neuron ``neuron`` of ``layer`` to ``value`` at every position.

    The hook returns a new tensor rather than writing into the activation, so it also works when
    gradients flow.

    Attributes:
        layer: The neuron's layer.
        neuron: Its index in ``d_mlp``.
        value: The activation it is fixed to (after the nonlinearity, ``mlp.hook_post``): a number,
            or a tensor that broadcasts to ``[batch, pos]``, e.g. one value per sequence as
            ``[batch, 1]`` (several values in one forward pass).

    Examples:
        >>> FixNeuron(1, 5, 0.0).fwd_hooks()[0][0]
        'blocks.1.mlp.hook_post'
    """

    layer: int
    neuron: int
    value: float | int | Tensor

    requires_split_qkv_input: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.layer < 0 or self.neuron < 0:
            raise ValueError(f"FixNeuron needs non-negative layer and neuron, got {self}.")

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.mlp.hook_post"

    def fwd_hooks(self) -> HookList:
        index = self.neuron
        value = self.value.detach() if isinstance(self.value, Tensor) else float(self.value)

        def fix_neuron(act: Tensor, hook: Any) -> Tensor:
            if index >= act.shape[-1]:
                raise HookError(
                    f"{hook.name} has {act.shape[-1]} neurons; cannot fix neuron {index}."
                )
            out = act.clone()
            try:
                out[..., index] = value.to(act) if isinstance(value, Tensor) else value
            except RuntimeError as err:
                raise HookError(
                    f"FixNeuron value of shape {tuple(value.shape)} does not broadcast to"
                    f" {hook.name}'s [batch, pos] = {tuple(act.shape[:-1])}: {err}"
                ) from err
            return out

        return [(self.hook_name, fix_neuron)]


@dataclass(frozen=True, eq=False)
class FreezeLNScale:
    """Replace a normalisation's scale by the one recorded on a clean run.

    With the final LayerNorm's scale frozen, a change of the residual stream reaches the logits only
    linearly (through ``W_U``), not by renormalising everything else: the paper's *direct* effect of
    an entropy neuron.

    Attributes:
        clean_scale: The scale from the clean run (``[batch, pos, 1]``); the run it is used in must
            have the same batch and sequence shape.
        hook_name: The scale hook (``ln_final.hook_scale``; ``blocks.{l}.ln2.hook_scale`` etc. work
            too).

    Examples:
        >>> freeze = FreezeLNScale(torch.ones(2, 3, 1))
        >>> freeze.hook_name
        'ln_final.hook_scale'
    """

    clean_scale: Float[Tensor, "batch pos ..."]
    hook_name: str = "ln_final.hook_scale"

    requires_split_qkv_input: ClassVar[bool] = False

    def fwd_hooks(self) -> HookList:
        clean = self.clean_scale.detach()

        def freeze_scale(scale: Tensor, hook: Any) -> Tensor:
            if scale.shape != clean.shape:
                raise HookError(
                    f"{hook.name} has shape {tuple(scale.shape)} but the frozen clean scale has"
                    f" {tuple(clean.shape)}. Record the clean scale on the same batch of tokens."
                )
            return clean.to(device=scale.device, dtype=scale.dtype)

        return [(self.hook_name, freeze_scale)]


@dataclass(frozen=True, eq=False)
class RemoveFromQueryInput:
    """Remove a neuron's output from one head's query input only (path ablation).

    Two hooks work together: one records the neuron's activation ``a`` on ``mlp.hook_post`` in the
    same forward pass, the other subtracts ``a * w_out`` from the head's slice of
    ``blocks.{head_layer}.hook_q_input`` at every position. The head's keys and values, and every
    other head, read the unchanged residual stream; the query's LayerNorm is recomputed from the
    changed input. Needs ``cfg.use_split_qkv_input`` (use :func:`apply`, which switches it on).

    Attributes:
        neuron_layer, neuron: The neuron whose contribution is removed.
        head_layer, head: The head whose query loses it (``head_layer > neuron_layer``).
        w_out: The neuron's output weights ``W_out[neuron_layer, neuron]``, ``[d_model]``; see
            :meth:`from_model`.

    Examples:
        >>> ablate = RemoveFromQueryInput(0, 3, 1, 2, torch.zeros(8))
        >>> ablate.hook_name, [name for name, _ in ablate.fwd_hooks()]
        ('blocks.1.hook_q_input', ['blocks.0.mlp.hook_post', 'blocks.1.hook_q_input'])
    """

    neuron_layer: int
    neuron: int
    head_layer: int
    head: int
    w_out: Float[Tensor, " d_model"]

    requires_split_qkv_input: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.head_layer <= self.neuron_layer:
            raise ValueError(
                f"Head L{self.head_layer}H{self.head} reads the residual stream before neuron"
                f" L{self.neuron_layer}N{self.neuron} writes to it; pick a head in a later layer"
                f" (head_layer > {self.neuron_layer})."
            )

    @classmethod
    def from_model(
        cls, model: HookedModel, neuron: tuple[int, int], head: tuple[int, int]
    ) -> RemoveFromQueryInput:
        """Build it with the neuron's ``w_out`` read from ``model.W_out``."""
        layer, index = neuron
        w_out = model.W_out[layer, index].detach()  # type: ignore[attr-defined]
        return cls(layer, index, head[0], head[1], w_out)

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.head_layer}.hook_q_input"

    def fwd_hooks(self) -> HookList:
        # Fresh state per call: the recorded activation is shared by this pair of hooks only.
        recorded: dict[str, Tensor] = {}
        neuron, head, w_out = self.neuron, self.head, self.w_out.detach()

        def record_activation(act: Tensor, hook: Any) -> None:
            recorded["act"] = act[..., neuron]

        def remove_from_query(q_input: Tensor, hook: Any) -> Tensor:
            if "act" not in recorded:
                raise HookError(
                    f"{hook.name} fired before the activation of neuron"
                    f" L{self.neuron_layer}N{neuron} was recorded."
                )
            contribution = recorded.pop("act")[..., None] * w_out.to(q_input)
            out = q_input.clone()
            out[:, :, head] = q_input[:, :, head] - contribution
            return out

        return [
            (f"blocks.{self.neuron_layer}.mlp.hook_post", record_activation),
            (self.hook_name, remove_from_query),
        ]


@contextmanager
def split_qkv_input(model: HookedModel) -> Iterator[HookedModel]:
    """Switch on ``cfg.use_split_qkv_input`` for a ``with`` block; restore the previous setting.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu"))
        >>> with split_qkv_input(model):
        ...     model.cfg.use_split_qkv_input
        True
        >>> model.cfg.use_split_qkv_input
        False
    """
    previous = bool(getattr(model.cfg, "use_split_qkv_input", False))
    setter: Callable[[bool], None] | None = getattr(model, "set_use_split_qkv_input", None)
    if setter is None:
        raise HookError(
            f"{model_name(model)} has no `set_use_split_qkv_input`, so a head's query input cannot"
            " be changed apart from its keys and values. Use a HookedTransformer or"
            " TransformerBridge."
        )
    if previous:
        yield model
        return
    setter(True)
    try:
        yield model
    finally:
        setter(previous)


def _hooks_of(interventions: Sequence[Intervention]) -> HookList:
    hooks: HookList = []
    for intervention in interventions:
        hooks.extend(intervention.fwd_hooks())
    return hooks


@contextmanager
def apply(model: HookedModel, *interventions: Intervention) -> Iterator[HookedModel]:
    """Apply interventions for a ``with`` block, with everything they need switched on.

    The hooks are added with ``model.hooks(...)`` and removed when the block ends, also on an
    exception; flags such as ``use_split_qkv_input`` are restored.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu", seed=0))
        >>> ablate = RemoveFromQueryInput.from_model(model, neuron=(0, 1), head=(1, 0))
        >>> with apply(model, ablate, FixNeuron(0, 1, 3.0)):
        ...     logits = model(torch.tensor([[0, 4, 2]]))
        >>> logits.shape, any(hp.fwd_hooks for hp in model.hook_dict.values())
        (torch.Size([1, 3, 10]), False)
    """
    hooks = _hooks_of(interventions)
    needs_split = any(getattr(i, "requires_split_qkv_input", False) for i in interventions)
    with ExitStack() as stack:
        if needs_split:  # first: some models list the q/k/v input hooks only when it is on
            stack.enter_context(split_qkv_input(model))
        check_hooks_exist(model, [name for name, _ in hooks])
        stack.enter_context(model.hooks(fwd_hooks=hooks))
        yield model


def run_with_interventions(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    interventions: Sequence[Intervention] = (),
    *,
    capture: Sequence[str] = (),
    stop_at_layer: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass with ``interventions`` applied, recording the hook points in ``capture``.

    Runs under ``torch.no_grad()``. Capture hooks are added after the interventions, so a captured
    hook point shows the intervened value. Raises :class:`HookError` when an intervention's or a
    capture's hook never fired (e.g. a hook that needs a config flag, or one beyond
    ``stop_at_layer``).

    Args:
        model: Any TransformerLens hooked model.
        tokens: ``[batch, pos]`` token ids.
        interventions: What to change.
        capture: Hook names whose (intervened) values to return.
        stop_at_layer: Passed to the model (the output is then the residual stream, not logits).

    Returns:
        ``(output, captured)``: the model's output and ``{hook_name: tensor}``.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu", seed=0))
        >>> _, got = run_with_interventions(model, torch.tensor([[0, 3]]), [FixNeuron(0, 2, 1.5)],
        ...                                 capture=["blocks.0.mlp.hook_post"])
        >>> got["blocks.0.mlp.hook_post"][0, :, 2].tolist()
        [1.5, 1.5]
    """
    captured: dict[str, Tensor] = {}
    fired: set[str] = set()

    def capture_hook(act: Tensor, hook: Any) -> None:
        captured[hook.name] = act.detach()

    def watched(name: str, fn: HookFn) -> HookFn:
        def hook_fn(act: Tensor, hook: Any) -> Any:
            fired.add(name)
            return fn(act, hook)

        return hook_fn

    hooks = _hooks_of(interventions)
    needs_split = any(getattr(i, "requires_split_qkv_input", False) for i in interventions)
    all_hooks = [(name, watched(name, fn)) for name, fn in hooks]
    all_hooks += [(name, watched(name, capture_hook)) for name in capture]
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if needs_split:
            stack.enter_context(split_qkv_input(model))
        check_hooks_exist(model, [name for name, _ in all_hooks])
        stack.enter_context(model.hooks(fwd_hooks=all_hooks))
        if stop_at_layer is None:
            out = model(tokens)
        else:
            out = model(tokens, stop_at_layer=stop_at_layer)
    missing = sorted({name for name, _ in all_hooks} - fired)
    if missing:
        raise HookError(
            f"Hook(s) {missing} of {model_name(model)} never fired. A hook beyond `stop_at_layer`,"
            " or one that needs a config flag (`blocks.{l}.hook_q_input` needs"
            " `use_split_qkv_input`, which `apply`/`run_with_interventions` switch on for"
            " RemoveFromQueryInput), does not run."
        )
    return out, captured


def token_batches(
    model: HookedModel,
    tokens: Tokens,
    *,
    batch_size: int,
    bos_token_id: int | None = None,
    max_tokens: int | None = None,
) -> Iterator[Int[Tensor, "batch pos"]]:
    """BOS-first token batches on the model's device, resolved by
    :func:`~tl_universality.data.tokens.resolve_tokens` (its rule for length and BOS)."""
    from tl_universality.data.tokens import resolve_tokens

    source = resolve_tokens(tokens, model, max_tokens=max_tokens, bos_token_id=bos_token_id)
    device = model_device(model)
    n = 0
    for batch in source.batches(batch_size):
        n += 1
        yield batch.to(device)
    if n == 0:
        from tl_universality.core.errors import EmptyTokenSourceError

        raise EmptyTokenSourceError(f"The token source {source.name} yielded no sequence.")


__all__ = [
    "FixNeuron",
    "FreezeLNScale",
    "HookList",
    "Intervention",
    "RemoveFromQueryInput",
    "apply",
    "run_with_interventions",
    "split_qkv_input",
    "token_batches",
]

"""Activation streaming: the one place every analysis gets unit activations from.

Runs one or several models over a token stream and yields, batch by batch, the activations of the
chosen units flattened to ``[tokens, units]``, with BOS/padding positions removed. Hooks are scoped
(``model.hooks(...)``), the forward stops after the last hooked block (no logits are computed), and
everything runs under ``torch.no_grad()``. Before any real compute the models' tokenizers are
compared and every requested hook is checked to exist; after every forward each hook is checked to
have fired with the expected width.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_universality.core.errors import HookError, InvalidArgumentError, NonFiniteActivationError
from tl_universality.core.protocol import (
    HookedModel,
    check_hooks_exist,
    check_same_tokenizer,
    mlp_hook_names,
    model_name,
)
from tl_universality.core.validate import check_device, check_int
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.units.specs import (
    PerModel,
    UnitsSpec,
    UnitTransform,
    as_transform,
    check_spec,
    per_model,
)
from tl_universality.units.specs import is_per_model as is_per_model  # its home before specs.py

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class UnitIndex:
    """The flat unit axis of one model: which hook each unit comes from, and its neuron index.

    Units are ordered hook by hook (layer by layer for the default MLP units), each hook's units
    in their natural order.

    Examples:
        >>> idx = UnitIndex(("blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"), (3, 3), (0, 1))
        >>> idx.n_units, idx.locate(4), idx.flat(1, 1)
        (6, (1, 1), 4)
        >>> idx.to_frame().head(2).to_dict("list")
        {'layer': [0, 0], 'neuron': [0, 1]}
    """

    hook_names: tuple[str, ...]
    widths: tuple[int, ...]
    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.hook_names) == len(self.widths) == len(self.layers)):
            raise ValueError("hook_names, widths and layers must have the same length")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(
                f"Two hooks share a layer ({self.layers}); address units by hook instead."
            )

    @property
    def n_units(self) -> int:
        return int(sum(self.widths))

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each hook's units on the flat axis (plus the total at the end)."""
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.widths)]))

    def slice(self, layer: int) -> slice:
        """The flat-axis slice holding ``layer``'s units."""
        i = self.layers.index(layer)
        return slice(self.offsets[i], self.offsets[i + 1])

    @property
    def layer_of_unit(self) -> Int[np.ndarray, " units"]:
        return np.repeat(np.asarray(self.layers, dtype=np.int64), self.widths)

    @property
    def neuron_of_unit(self) -> Int[np.ndarray, " units"]:
        return np.concatenate([np.arange(w, dtype=np.int64) for w in self.widths])

    def locate(self, flat: int) -> tuple[int, int]:
        """``(layer, neuron)`` of flat unit ``flat``."""
        i = int(np.searchsorted(self.offsets, flat, side="right")) - 1
        return self.layers[i], int(flat - self.offsets[i])

    def flat(self, layer: int, neuron: int) -> int:
        """Flat index of ``(layer, neuron)``."""
        sl = self.slice(layer)
        if not 0 <= neuron < sl.stop - sl.start:
            raise IndexError(f"layer {layer} has {sl.stop - sl.start} units, not neuron {neuron}")
        return sl.start + neuron

    def to_frame(self) -> pd.DataFrame:
        """A ``layer, neuron`` table with one row per unit, in flat order."""
        return pd.DataFrame({"layer": self.layer_of_unit, "neuron": self.neuron_of_unit})

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook_names": list(self.hook_names),
            "widths": list(self.widths),
            "layers": list(self.layers),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitIndex:
        return cls(tuple(d["hook_names"]), tuple(d["widths"]), tuple(d["layers"]))


@dataclass(frozen=True)
class _Tap:
    """One unit set: its label, the hook it reads, and the transform applied (if any)."""

    label: str
    hook_name: str
    transform: UnitTransform | None = None


def _taps(model: HookedModel, units: UnitsSpec) -> list[_Tap]:
    check_spec(units)
    if units is None or isinstance(units, str):
        return [_Tap(n, n) for n in _hook_names(model, units)]
    taps = []
    for unit in units if isinstance(units, (list, tuple)) else [units]:
        unit = as_transform(unit)  # a raw sae-lens SAE reads its own hook
        if isinstance(unit, UnitTransform):
            check_hooks_exist(model, [unit.hook_name])
            taps.append(_Tap(unit.label, unit.hook_name, unit))
        else:
            taps.extend(_Tap(n, n) for n in _hook_names(model, [unit]))
    if not taps:
        raise HookError("No units requested: `units` is an empty list.")
    return taps


def _hook_names(model: HookedModel, units: str | Sequence[str] | None) -> list[str]:
    if units is None:
        return mlp_hook_names(model, "hook_post")
    if isinstance(units, str):
        if units in model.hook_dict or _BLOCK_RE.match(units):
            names = [units]
        else:  # a per-layer suffix
            names = [f"blocks.{layer}.{units}" for layer in range(model.cfg.n_layers)]
            if units.startswith("mlp."):
                mlp_hook_names(model, units.removeprefix("mlp."))  # clear error if no MLPs
    else:
        names = list(units)
    if not names:
        raise HookError("No units requested: `units` is an empty list.")
    check_hooks_exist(model, names)
    return names


def _layer_of(name: str, position: int) -> int:
    m = _BLOCK_RE.match(name)
    return int(m.group(1)) if m else -(position + 1)


def _stop_at_layer(model: HookedModel, names: Sequence[str]) -> int | None:
    """Stop the forward after the last hooked block, when every hook lives inside a block."""
    layers = [_BLOCK_RE.match(n) for n in names]
    if not all(layers):
        return None
    return max(int(m.group(1)) for m in layers if m) + 1


def _forward(model: HookedModel, tokens: Tensor, stop: int | None) -> None:
    if stop is None:
        model(tokens)
    else:
        model(tokens, stop_at_layer=stop)


def unit_index(model: HookedModel, units: UnitsSpec = None) -> UnitIndex:
    """Resolve ``units`` on ``model`` into a :class:`UnitIndex`.

    The default MLP units take their width from ``cfg.d_mlp``; other hooks are measured with a
    one-token forward pass, which also proves that they fire.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
        ...                               act_fn="relu")
        >>> model = HookedTransformer(cfg)
        >>> unit_index(model).widths
        (32, 32)
        >>> unit_index(model, "attn.hook_z").widths  # heads x d_head
        (8, 8)
    """
    return _resolve(model, units)[0]


def _resolve(model: HookedModel, units: UnitsSpec) -> tuple[UnitIndex, list[_Tap]]:
    taps = _taps(model, units)
    layers = tuple(_layer_of(t.hook_name, i) for i, t in enumerate(taps))
    if all(t.transform is None and t.hook_name.endswith(_MLP_HOOKS) for t in taps):
        widths = tuple(int(model.cfg.d_mlp) for _ in taps)
    else:
        # Measure (and prove firing) with a one-token forward; transforms check their input here.
        seen: dict[str, int] = {}

        def measure(act: Tensor, hook: Any) -> None:
            for tap in taps:
                if tap.hook_name == hook.name:
                    out = act if tap.transform is None else tap.transform(act)
                    seen[tap.label] = int(np.prod(out.shape[2:])) if out.ndim > 2 else 1

        hooks = sorted({t.hook_name for t in taps})
        probe = torch.zeros(1, 1, dtype=torch.long, device=model_device(model))
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, measure) for n in hooks]):
            _forward(model, probe, _stop_at_layer(model, hooks))
        _check_fired(model, [t.label for t in taps], seen)
        widths = tuple(seen[t.label] for t in taps)
    return UnitIndex(tuple(t.label for t in taps), widths, layers), taps


_MLP_HOOKS = (".mlp.hook_post", ".mlp.hook_pre")


def model_device(model: HookedModel) -> torch.device:
    """The device a model's parameters live on (``cfg.device`` when set)."""
    device = getattr(model.cfg, "device", None)
    if device is not None:
        return torch.device(device)
    return next(iter(model.parameters())).device  # type: ignore[attr-defined]


def _check_fired(model: HookedModel, names: Sequence[str], fired: Iterable[str]) -> None:
    missing = [n for n in names if n not in set(fired)]
    if missing:
        raise HookError(
            f"Hook(s) {missing} of {model_name(model)} never fired during the forward pass. The"
            " model skips them (e.g. an optional hook that needs a config flag such as"
            " `use_attn_result`, or an SAE hook with no SAE attached). Enable them or choose other"
            " units."
        )


@dataclass
class ActivationBatch:
    """Activations of one batch of sequences, BOS/padding positions removed.

    Attributes:
        acts: one ``[tokens, units]`` tensor per model, in the order the models were given.
        tokens: the batch of token ids, ``[batch, seq]``.
        keep: which positions of ``tokens`` the rows of ``acts`` come from (row-major order).
        first_sequence: index in the stream of the batch's first sequence.
    """

    # Models may differ in unit count (e.g. layer count), so the unit axis is not shared.
    acts: list[Float[Tensor, "tok _units"]]
    tokens: Int[Tensor, "batch seq"]
    keep: Bool[Tensor, "batch seq"]
    first_sequence: int = 0

    @property
    def n_tokens(self) -> int:
        return int(self.keep.sum())

    @property
    def token_ids(self) -> Int[Tensor, " tok"]:
        """Token id at each kept position."""
        return self.tokens[self.keep]

    @property
    def prev_token_ids(self) -> Int[Tensor, " tok"]:
        """Token id one position earlier; -1 at position 0, which has none."""
        prev = torch.roll(self.tokens, shifts=1, dims=1)
        prev[:, 0] = -1
        return prev[self.keep]

    @property
    def positions(self) -> Int[Tensor, " tok"]:
        """Position in its sequence of each kept token."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return pos.expand_as(self.tokens)[self.keep]


def _as_models(models: HookedModel | Sequence[HookedModel]) -> list[HookedModel]:
    if isinstance(models, (list, tuple)):
        return list(models)
    return [models]  # type: ignore[list-item]


def stream_activations(
    models: HookedModel | Sequence[HookedModel],
    tokens: Tokens,
    *,
    units: UnitsSpec | PerModel = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    exclude_token_ids: Iterable[int] | None = None,
    start_sequence: int = 0,
    check_finite: bool = True,
    progress: bool = True,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
) -> Iterator[ActivationBatch]:
    """Yield the activations of ``units`` of every model, batch by batch.

    Args:
        models: one model or a list; all must share a tokenizer (checked first).
        tokens: see :data:`~tl_universality.data.tokens.Tokens` (resolved once by
            :func:`~tl_universality.data.tokens.resolve_tokens`; a ``TokenSource`` passes through).
        units: a :data:`~tl_universality.units.specs.UnitsSpec` for every model, or
            :class:`~tl_universality.units.specs.PerModel` ``([spec0, spec1, ...])`` for one spec
            per model.
        batch_size: sequences per forward pass.
        device: where the yielded activations live (default: the first model's device).
        dtype: dtype of the yielded activations (default: each model's own, so a float64 model's
            activations reach the statistics in float64; ``torch.float32`` rounds them).
        exclude_token_ids: token ids whose positions are dropped; default BOS, padding and the
            newline token, as in the paper (:func:`excluded_token_ids`).
        start_sequence: skip this many sequences first without running the models (resuming).
        check_finite: raise :class:`NonFiniteActivationError` on NaN/inf activations.
        progress: show a tqdm bar.
        seq_len: tokens per sequence when ``tokens`` is text (default: the smallest context of
            the models, at most 512 as in the paper).
        max_tokens: stop after this many tokens.
        bos_token_id: BOS id of a token tensor when the models have no tokenizer.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=8, d_head=4, d_vocab=10,
        ...                               act_fn="relu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> toks = torch.randint(1, 10, (4, 8)); toks[:, 0] = 0
        >>> batch = next(stream_activations(model, toks, batch_size=4, bos_token_id=0,
        ...                                 progress=False))
        >>> batch.acts[0].shape  # 4 sequences x 7 non-BOS positions, 2 layers x 32 neurons
        torch.Size([28, 64])
    """
    from tl_universality.data.tokens import resolve_tokens

    models = _as_models(models)
    if not models:
        raise ValueError("stream_activations needs at least one model.")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    start_sequence = check_int("start_sequence", start_sequence, minimum=0)
    check_device("device", device)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise InvalidArgumentError(
            f"dtype={dtype!r} is not a floating-point torch dtype. Fix: pass e.g."
            " dtype=torch.float32 or dtype=torch.float64."
        )
    check_same_tokenizer(models)
    specs = per_model(units, len(models))
    resolved = [_resolve(m, spec) for m, spec in zip(models, specs, strict=True)]
    stops = [
        _stop_at_layer(m, [t.hook_name for t in taps])
        for m, (_, taps) in zip(models, resolved, strict=True)
    ]

    source = resolve_tokens(
        tokens, models, seq_len=seq_len, max_tokens=max_tokens, bos_token_id=bos_token_id
    )
    excluded = excluded_token_ids(source, getattr(models[0], "tokenizer", None), exclude_token_ids)
    out_device = torch.device(device) if device is not None else model_device(models[0])

    total = source.n_tokens
    bar = tqdm(total=total, disable=not progress, unit="tok", unit_scale=True, desc="activations")
    seen_sequences = 0
    try:
        for batch in source.batches(batch_size):
            first = seen_sequences
            seen_sequences += batch.shape[0]
            if seen_sequences <= start_sequence:
                bar.update(batch.numel())
                continue
            if first < start_sequence:  # resume point falls inside this batch
                batch = batch[start_sequence - first :]
                first = start_sequence
            keep = ~torch.isin(batch, torch.tensor(sorted(excluded), dtype=batch.dtype))
            acts = [
                _run_one(m, batch, keep, idx, taps, stop, out_device, dtype, check_finite)
                for m, (idx, taps), stop in zip(models, resolved, stops, strict=True)
            ]
            yield ActivationBatch(acts, batch.to(out_device), keep.to(out_device), first)
            del acts  # do not hold this batch while the next forward runs
            bar.update(batch.numel())
    finally:
        bar.close()


def newline_token_id(tokenizer: Any) -> int | None:
    """The id of the token that is exactly ``"\\n"`` (GPT-2's 198), or None if there is none.

    Examples:
        >>> newline_token_id(None) is None
        True
    """
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        return None
    try:
        ids = tokenizer.encode("\n", add_special_tokens=False)
    except Exception:  # a tokenizer that cannot encode a newline has no newline token
        return None
    return int(ids[0]) if len(ids) == 1 else None


def excluded_token_ids(
    source: Any, tokenizer: Any = None, explicit: Iterable[int] | None = None
) -> set[int]:
    """Token ids whose positions every statistic leaves out: ``explicit`` when given, else the
    paper's convention: the source's BOS, the tokenizer's BOS and padding ids, and the
    tokenizer's newline token (the paper's final correlation code excludes it: in small models
    some neurons put most of their variance on newlines, which would dominate their correlation).

    Examples:
        >>> from tl_universality.data.corpus import load_default_tokenizer
        >>> from tl_universality.data.tokens import TensorTokenSource
        >>> import torch
        >>> tok = load_default_tokenizer(512)
        >>> source = TensorTokenSource(torch.zeros(1, 4, dtype=torch.long), 0)
        >>> sorted(excluded_token_ids(source, tok)) == sorted({0, newline_token_id(tok)})
        True
        >>> excluded_token_ids(source, tok, explicit=[0])  # BOS only, the older convention
        {0}
    """
    if explicit is not None:
        return {int(t) for t in explicit}
    ids = {int(source.bos_token_id)}
    for attr in ("bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            ids.add(int(value))
    newline = newline_token_id(tokenizer)
    if newline is not None:
        ids.add(newline)
    return ids


def all_finite(values: Tensor) -> bool:
    """Whether every entry is finite. One sum decides almost always (a NaN or inf makes it
    non-finite); only a non-finite sum, which finite values can also give by overflowing, pays
    for the entrywise check. The sum keeps the values' own float32 or float64 (a float64 sum of
    float32 values converts each one first, several times slower); half types sum in float32.

    Examples:
        >>> all_finite(torch.tensor([1.0, 3e38, 3e38])), all_finite(torch.tensor([1.0, torch.nan]))
        (True, False)
        >>> all_finite(torch.tensor([[1.0, torch.inf], [2.0, 3.0]])[:, 1:])  # a strided view
        False
    """
    if values.numel() == 0:
        return True
    acc = values.dtype if values.dtype in (torch.float32, torch.float64) else torch.float32
    if bool(torch.isfinite(values.sum(dtype=acc))):
        return True
    return bool(torch.isfinite(values).all())


def _parameters(model: Any) -> Iterator[Tensor]:
    params = getattr(model, "parameters", None)
    return iter(params()) if callable(params) else iter(())


def _leading_drop(keep: Bool[Tensor, "batch seq"]) -> int | None:
    """``p`` when ``keep`` drops exactly the first ``p`` positions of every sequence, else None.

    Examples:
        >>> keep = torch.ones(2, 4, dtype=torch.bool); keep[:, 0] = False
        >>> _leading_drop(keep)
        1
        >>> keep[1, 2] = False; _leading_drop(keep) is None
        True
    """
    kept = keep.sum(1)
    p = keep.shape[1] - int(kept[0]) if kept.numel() else 0
    if not bool((kept == keep.shape[1] - p).all()) or bool(keep[:, :p].any()):
        return None
    return p


def _run_one(
    model: HookedModel,
    batch: Int[Tensor, "batch seq"],
    keep: Bool[Tensor, "batch seq"],
    index: UnitIndex,
    taps: Sequence[_Tap],
    stop: int | None,
    out_device: torch.device,
    dtype: torch.dtype | None,
    check_finite: bool,
) -> Float[Tensor, "tok units"]:
    here = model_device(model)
    keep_here = keep.to(here)
    n_keep = int(keep.sum())
    # The kept rows are copied once, straight into their columns of ``out``: as a strided view
    # when the batch drops the same leading positions of every sequence (BOS, the usual case),
    # else gathered by index (a boolean mask would make a copy more).
    drop = _leading_drop(keep)
    flat_index = None if drop is not None else keep_here.reshape(-1).nonzero().squeeze(1)
    if dtype is None:  # the model's own dtype: never round a float64 model's activations
        dtype = getattr(model.cfg, "dtype", None)
        dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None
        dtype = dtype or next((p.dtype for p in _parameters(model)), torch.float32)
    out = torch.empty(n_keep, index.n_units, dtype=dtype, device=out_device)
    offsets = index.offsets
    fired: list[str] = []

    def make_hook(i: int, tap: _Tap) -> Any:
        def store(act: Tensor, hook: Any) -> Tensor | None:
            units = act if tap.transform is None else tap.transform(act)
            flat = units.reshape(units.shape[0], units.shape[1], -1)
            if flat.shape[-1] != index.widths[i]:
                raise HookError(
                    f"{tap.label} of {model_name(model)} gave {flat.shape[-1]} units per"
                    f" position, expected {index.widths[i]}. Was the model changed after the"
                    " units were resolved?"
                )
            block = out[:, offsets[i] : offsets[i + 1]]
            if drop is not None:
                block.view(flat.shape[0], flat.shape[1] - drop, flat.shape[2]).copy_(flat[:, drop:])
            else:
                block.copy_(flat.reshape(-1, flat.shape[-1]).index_select(0, flat_index))
            if check_finite and not all_finite(block):  # as stored: a narrower dtype may overflow
                raise NonFiniteActivationError(
                    f"{model_name(model)} produced NaN/inf activations at {tap.label}. Check the"
                    " weights (e.g. a diverged checkpoint) or run in float32 rather than float16."
                )
            fired.append(tap.label)
            if tap.transform is not None and tap.transform.splice:
                return tap.transform.replacement(act, units)
            return None  # observe only: the forward pass is unchanged

        return store

    fwd_hooks = [(tap.hook_name, make_hook(i, tap)) for i, tap in enumerate(taps)]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        _forward(model, batch.to(here), stop)
    _check_fired(model, index.hook_names, fired)
    return out


def collect_activations(
    models: HookedModel | Sequence[HookedModel], tokens: Tokens, **kwargs: Any
) -> list[Float[Tensor, "tok _units"]]:
    """All activations of a (small) stream at once, one ``[tokens, units]`` tensor per model.

    Convenient for notebooks and tests; the analyses themselves stream.
    """
    per_model: list[list[Tensor]] = []
    for batch in stream_activations(models, tokens, **kwargs):
        if not per_model:
            per_model = [[] for _ in batch.acts]
        for store, acts in zip(per_model, batch.acts, strict=True):
            store.append(acts)
    if not per_model:
        from tl_universality.core.errors import EmptyTokenSourceError

        raise EmptyTokenSourceError("The token stream yielded no batch; pass a non-empty source.")
    return [torch.cat(chunks) for chunks in per_model]

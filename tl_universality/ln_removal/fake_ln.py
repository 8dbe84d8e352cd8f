"""Fake LayerNorms: TransformerLens LayerNorms that can divide by a fixed σ instead of the live std.

A :class:`FakeLayerNorm` replaces one of a model's ``LayerNorm`` modules (``blocks.{l}.ln1``,
``blocks.{l}.ln2``, ``ln_final``) and keeps its parameters under the same names (``w``, ``b``). It
always centres and applies ``w`` and ``b``; what it divides by depends on the state of each of its
*paths*:

- real: the live scale ``sqrt(mean(x_centred²) + eps)``, exactly as TransformerLens's LayerNorm;
- fake: a fixed σ per position: ``sigma`` for ordinary tokens, ``sigma_bos`` at position 0 and
  ``sigma_eot`` at end-of-text tokens while those special cases are kept.

``ln2`` and ``ln_final`` have one path. ``ln1`` has two, ``qk`` (what queries and keys read) and
``v`` (what values read): TransformerLens's block calls ``ln1`` three times per forward pass, on
the query, key and value inputs in that order, and a forward pre-hook on the block resets the
counter that tells the calls apart.

Which positions are special is read from the tokens: :func:`install_fake_layernorms` registers a
forward pre-hook on the model that records, for every forward pass, a code per position
(:data:`NORMAL`, :data:`BOS` for position 0, :data:`EOT` for an end-of-text token elsewhere), so σ
is applied per position and per token for any sequence length, not only ``n_ctx``.

Every state is a buffer (saved in ``state_dict``, so checkpoints hold it) and each LayerNorm has
hook points of its own besides TransformerLens's ``hook_scale`` (the divisor used) and
``hook_normalized``: ``hook_sigma{_path}`` (the fixed σ of each position, ``[batch, pos, 1]``) and
``hook_is_fake{_path}`` (a 0-d tensor, 1.0 when the path is fake), so ``run_with_cache`` and
``run_with_hooks`` see them. The path suffix is ``_qk``/``_v`` for ``ln1`` and empty otherwise.

Examples:
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
    ...                               act_fn="relu", seed=0)
    >>> model = install_fake_layernorms(HookedTransformer(cfg))
    >>> sorted(fake_paths(model))
    ['blocks.0.ln1.qk', 'blocks.0.ln1.v', 'blocks.0.ln2', 'ln_final']
    >>> "blocks.0.ln1.hook_sigma_v" in model.hook_dict, "ln_final.hook_is_fake" in model.hook_dict
    (True, True)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.components import LayerNorm, LayerNormPre
from transformer_lens.hook_points import HookPoint

from tl_universality.core.protocol import HookedModel, model_name
from tl_universality.ln_removal.sigma import ema_update, mean_scale_by_code

NORMAL, BOS, EOT = 0, 1, 2
"""Position codes: an ordinary token, the first position (BOS), an end-of-text token."""

ATTENTION_PATHS = ("qk", "v")
"""The two paths of an attention LayerNorm (``ln1``)."""

_ORDER = {"qk": 0, "v": 1}
# TransformerLens's block calls ln1 on the query, key and value inputs, in that order.
_CALL_PATH = (0, 0, 1)


class FakeLayerNorm(nn.Module):
    """A LayerNorm whose paths can each be real (live std) or fake (fixed σ per position).

    Args:
        ln: The TransformerLens ``LayerNorm`` to replace (its ``w``, ``b``, ``eps`` are kept).
        paths: ``("",)`` for a LayerNorm read by one module, :data:`ATTENTION_PATHS` for ``ln1``.
        eot_token_id: The end-of-text id whose positions keep their own σ (None: no such token).
        momentum: Momentum of the σ moving averages (``σ ← m σ + (1 - m) batch mean``).

    Examples:
        >>> from transformer_lens import HookedTransformerConfig
        >>> from transformer_lens.components import LayerNorm, LayerNormPre
        >>> ln = LayerNorm(HookedTransformerConfig(n_layers=1, d_model=4, n_ctx=4, d_head=2,
        ...                                        act_fn="relu", d_vocab=5))
        >>> fake = FakeLayerNorm(ln)
        >>> x = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 2.0, 2.0]]])
        >>> torch.allclose(fake(x), ln(x))  # real: the same as TransformerLens's LayerNorm
        True
        >>> fake.set_sigma(2.0)
        >>> fake.make_fake()
        >>> fake(x)[0, 1].tolist()  # centred, divided by the fixed σ = 2
        [-0.5, -0.5, 0.5, 0.5]
    """

    def __init__(
        self,
        ln: nn.Module,
        paths: tuple[str, ...] = ("",),
        *,
        eot_token_id: int | None = None,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.cfg = ln.cfg
        self.eps = float(ln.eps)
        self.length = int(ln.w.shape[0])
        self.w = ln.w
        self.b = ln.b
        self.paths = tuple(paths)
        self.momentum = float(momentum)
        n = len(self.paths)
        dtype = ln.w.dtype
        device = ln.w.device
        # σ per path: ordinary tokens, BOS (position 0), end-of-text tokens.
        self.register_buffer("sigma", torch.ones(n, dtype=torch.float64, device=device))
        self.register_buffer("sigma_bos", torch.ones(n, dtype=torch.float64, device=device))
        self.register_buffer("sigma_eot", torch.ones(n, dtype=torch.float64, device=device))
        # How many moving-average updates each σ has had (0: the next one initialises it).
        self.register_buffer("updates", torch.zeros(3, n, dtype=torch.long, device=device))
        self.register_buffer("is_fake", torch.zeros(n, dtype=torch.bool, device=device))
        self.register_buffer("bos_special", torch.ones((), dtype=torch.bool, device=device))
        self.register_buffer("eot_special", torch.ones((), dtype=torch.bool, device=device))
        eot = -1 if eot_token_id is None else int(eot_token_id)
        self.register_buffer("eot_token_id", torch.tensor(eot, dtype=torch.long, device=device))
        self._dtype = dtype
        self.tracking = False  # update the σ averages while a path is real (training only)
        self.codes: Tensor | None = None  # [batch, pos] position codes of the current pass
        self.calls = 0  # calls in the current block pass (ln1: query, key, value)

        self.hook_scale = HookPoint()  # [batch, pos, 1]: what the input is divided by
        self.hook_normalized = HookPoint()  # [batch, pos, length]
        for path in self.paths:
            suffix = f"_{path}" if path else ""
            setattr(self, f"hook_sigma{suffix}", HookPoint())  # [batch, pos, 1]
            setattr(self, f"hook_is_fake{suffix}", HookPoint())  # [] 1.0 when fake

    # -- state -----------------------------------------------------------------------------------

    def _index(self, path: str) -> int:
        if path not in self.paths:
            raise ValueError(
                f"path={path!r} is not a path of this LayerNorm; its paths are {self.paths}."
                " Use '' for ln2/ln_final and 'qk' or 'v' for ln1."
            )
        return self.paths.index(path)

    def set_sigma(
        self,
        sigma: float,
        path: str | None = None,
        *,
        bos: float | None = None,
        eot: float | None = None,
    ) -> None:
        """Set the fixed σ of ``path`` (default: every path); ``bos``/``eot`` default to it."""
        for i in [self._index(path)] if path is not None else range(len(self.paths)):
            self.sigma[i] = float(sigma)
            self.sigma_bos[i] = float(sigma if bos is None else bos)
            self.sigma_eot[i] = float(sigma if eot is None else eot)
            self.updates[:, i] = 1

    def make_fake(self, path: str | None = None, fake: bool = True) -> None:
        """Make ``path`` (default every path) fake: from now on it divides by its frozen σ."""
        for i in [self._index(path)] if path is not None else range(len(self.paths)):
            self.is_fake[i] = bool(fake)

    def drop_special(self, bos: bool = False, eot: bool = False) -> None:
        """Stop giving BOS and/or end-of-text positions a σ of their own."""
        if bos:
            self.bos_special.fill_(False)
        if eot:
            self.eot_special.fill_(False)

    # -- forward ---------------------------------------------------------------------------------

    def _codes_for(self, x: Tensor) -> Int[Tensor, "batch pos"]:
        batch, pos = x.shape[0], x.shape[1]
        codes = self.codes
        if codes is None or tuple(codes.shape) != (batch, pos):
            # Called outside a model forward pass (or on embeddings): position 0 is still BOS.
            codes = torch.full((batch, pos), NORMAL, dtype=torch.long, device=x.device)
            codes[:, 0] = BOS
        return codes.to(x.device)

    def _fixed_sigma(self, i: int, codes: Tensor) -> Tensor:
        sigma = self.sigma[i].expand(codes.shape).clone()
        if bool(self.bos_special):
            sigma = torch.where(codes == BOS, self.sigma_bos[i], sigma)
        if bool(self.eot_special):
            sigma = torch.where(codes == EOT, self.sigma_eot[i], sigma)
        return sigma

    @torch.no_grad()
    def _track(self, i: int, scale: Tensor, codes: Tensor) -> None:
        means = mean_scale_by_code(scale.detach().to(torch.float64), codes, n_codes=3)
        for code, buffer in ((NORMAL, self.sigma), (BOS, self.sigma_bos), (EOT, self.sigma_eot)):
            value = means[code]
            if torch.isnan(value):
                continue  # no position of this kind in the batch
            first = int(self.updates[code, i]) == 0
            buffer[i] = ema_update(buffer[i], value, self.momentum, first=first)
            self.updates[code, i] += 1

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"],
    ) -> Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"]:
        call = self.calls % 3
        i = _CALL_PATH[call] if len(self.paths) > 1 else 0
        self.calls += 1
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        x = x - x.mean(-1, keepdim=True)
        extra = (1,) * (x.ndim - 2)  # [batch, pos, 1] or [batch, pos, 1, 1] (split qkv input)
        codes = self._codes_for(x)
        live = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        # The Q/K path is read twice per pass (query, key): average it once.
        if self.tracking and not bool(self.is_fake[i]) and (len(self.paths) == 1 or call != 1):
            self._track(i, live.reshape(codes.shape), codes)
        fixed = self._fixed_sigma(i, codes).reshape(*codes.shape, *extra).to(x.dtype)
        suffix = f"_{self.paths[i]}" if self.paths[i] else ""
        getattr(self, f"hook_sigma{suffix}")(fixed)
        getattr(self, f"hook_is_fake{suffix}")(self.is_fake[i].to(x.dtype))
        scale = self.hook_scale(fixed if bool(self.is_fake[i]) else live)
        out = self.hook_normalized(x / scale).to(self._dtype)
        return out * self.w + self.b

    def extra_repr(self) -> str:
        state = ", ".join(
            f"{p or 'main'}={'fake' if bool(f) else 'real'}"
            for p, f in zip(self.paths, self.is_fake, strict=True)
        )
        return f"length={self.length}, {state}"


# -- installing on a model -------------------------------------------------------------------------


def _reset_calls(block: nn.Module, args: Any) -> None:
    block.ln1.calls = 0


def _record_codes(model: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook of the model: the position codes of this pass, given to every fake LN."""
    fakes = list(fake_layernorms(model).values())
    if not fakes:
        return
    tokens = args[0] if args else kwargs.get("input")
    codes = None
    if isinstance(tokens, str | list):
        tokens = model.to_tokens(tokens)  # type: ignore[operator]
    if isinstance(tokens, Tensor) and tokens.ndim in (1, 2) and not tokens.is_floating_point():
        tokens = tokens if tokens.ndim == 2 else tokens[None]
        codes = torch.full(tokens.shape, NORMAL, dtype=torch.long, device=tokens.device)
        eot = int(fakes[0].eot_token_id)
        if eot >= 0:
            codes[tokens == eot] = EOT
        past = kwargs.get("past_kv_cache")
        cached = 0
        if past is not None and getattr(past, "entries", None):
            cached = int(past.entries[0].past_keys.shape[1])
        if cached == 0:
            codes[:, 0] = BOS
    for fake in fakes:
        fake.codes = codes


def fake_layernorms(model: Any) -> dict[str, FakeLayerNorm]:
    """The model's :class:`FakeLayerNorm` modules by name (``blocks.0.ln1``, ..., ``ln_final``)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeLayerNorm)}


def fake_paths(model: Any) -> dict[str, bool]:
    """Every LayerNorm path (``blocks.{l}.ln1.qk``, ``blocks.{l}.ln1.v``, ``blocks.{l}.ln2``,
    ``ln_final``) and whether it is fake."""
    out = {}
    for name, module in fake_layernorms(model).items():
        for path, fake in zip(module.paths, module.is_fake.tolist(), strict=True):
            out[f"{name}.{path}" if path else name] = bool(fake)
    return out


def get_path(model: Any, path: str) -> tuple[FakeLayerNorm, str]:
    """The module and path name of a path such as ``blocks.0.ln1.qk`` or ``ln_final``."""
    modules = fake_layernorms(model)
    if path in modules:
        return modules[path], ""
    head, _, tail = path.rpartition(".")
    if head in modules and tail in modules[head].paths:
        return modules[head], tail
    raise ValueError(
        f"path={path!r} is not a LayerNorm path of {model_name(model)}. Its paths are"
        f" {sorted(fake_paths(model))}; did you call install_fake_layernorms(model) first?"
    )


def install_fake_layernorms(
    model: HookedModel, *, eot_token_id: int | None = None, momentum: float = 0.9
) -> Any:
    """Replace every LayerNorm of a GPT-2-style model by a :class:`FakeLayerNorm`, in place.

    Starts with every path real (the model computes exactly what it did) and σ = 1; the hook
    dictionary is rebuilt so the new hook points are visible. Call it on a copy to keep the
    original.

    Args:
        model: A ``HookedTransformer`` with ``normalization_type`` ``"LN"`` or ``"LNPre"`` (folded
            weights, as ``from_pretrained`` loads them; weight 1 and bias 0 are put back), pre-norm.
        eot_token_id: The end-of-text id that keeps its own σ (None: no such token).
        momentum: Momentum of the σ moving averages.

    Returns:
        The same model.

    Raises:
        ValueError: The model has no LayerNorm to replace (``normalization_type`` not ``"LN"``),
            or its blocks are post-norm or normalise before and after.
    """
    norm = getattr(model.cfg, "normalization_type", None)
    if norm not in ("LN", "LNPre"):
        raise ValueError(
            f"{model_name(model)} has normalization_type={norm!r}; LayerNorm removal needs learned"
            " LayerNorms (normalization_type='LN'). Load the model with"
            " HookedTransformer.from_pretrained(...) (LNPre, folded weights, also works) or build"
            " it with normalization_type='LN'."
        )
    if getattr(model.cfg, "use_normalization_before_and_after", False):
        raise ValueError(
            f"{model_name(model)} normalises before and after each layer"
            " (use_normalization_before_and_after=True); only GPT-2-style pre-norm blocks are"
            " supported. Use a GPT-2-style model."
        )
    if fake_layernorms(model):
        raise ValueError(
            f"{model_name(model)} already has fake LayerNorms; install_fake_layernorms runs once"
            " per model. Use the model as it is, or start from the original."
        )
    if norm == "LNPre":  # folded LayerNorms: weight 1 and bias 0, made learnable again
        _unfold_layernorm_pre(model)
    for block in model.blocks:  # type: ignore[attr-defined]
        if not isinstance(block.ln1, LayerNorm):
            raise ValueError(
                f"{model_name(model)} has a {type(block.ln1).__name__} as ln1, not a LayerNorm."
                " Use a GPT-2-style model with normalization_type='LN'."
            )
        block.ln1 = FakeLayerNorm(
            block.ln1, ATTENTION_PATHS, eot_token_id=eot_token_id, momentum=momentum
        )
        block.register_forward_pre_hook(_reset_calls)
        if hasattr(block, "ln2") and isinstance(block.ln2, LayerNorm):
            block.ln2 = FakeLayerNorm(block.ln2, eot_token_id=eot_token_id, momentum=momentum)
    if isinstance(getattr(model, "ln_final", None), LayerNorm):
        model.ln_final = FakeLayerNorm(model.ln_final, eot_token_id=eot_token_id, momentum=momentum)
    model.register_forward_pre_hook(_record_codes, with_kwargs=True)  # type: ignore[attr-defined]
    model.setup()  # type: ignore[attr-defined]  # rebuild hook_dict with the new hook points
    return model


def _unfold_layernorm_pre(model: Any) -> None:
    """Replace every ``LayerNormPre`` by a ``LayerNorm`` with weight 1 and bias 0 (same output)."""
    device = next(model.parameters()).device
    for block in model.blocks:
        for name in ("ln1", "ln2"):
            if isinstance(getattr(block, name, None), LayerNormPre):
                setattr(block, name, LayerNorm(model.cfg).to(device))
    if isinstance(getattr(model, "ln_final", None), LayerNormPre):
        model.ln_final = LayerNorm(model.cfg).to(device)
    model.cfg.normalization_type = "LN"


def set_tracking(model: Any, tracking: bool) -> None:
    """Switch the σ moving averages of every fake LayerNorm on or off."""
    for module in fake_layernorms(model).values():
        module.tracking = bool(tracking)


__all__ = [
    "ATTENTION_PATHS",
    "BOS",
    "EOT",
    "NORMAL",
    "FakeLayerNorm",
    "fake_layernorms",
    "fake_paths",
    "get_path",
    "install_fake_layernorms",
    "set_tracking",
]

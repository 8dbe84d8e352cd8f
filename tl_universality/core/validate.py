"""Validation at the door: the one place public entry points check what a user passed.

Each check raises :class:`~tl_universality.core.errors.InvalidArgumentError` (both a
``ValueError`` and a ``TypeError``) or :class:`~tl_universality.core.errors.InvalidTokensError`
with the argument's name, the value and the fix, before any model runs. A check names only the
argument it is given, so a caller passes the name of its own parameter.

Examples:
    >>> check_int("batch_size", 32, minimum=1)
    32
    >>> check_int("max_tokens", 1e6, minimum=1)  # a whole float is accepted
    1000000
    >>> check_int("batch_size", 2.5, minimum=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tl_universality.core.errors.InvalidArgumentError: batch_size=2.5 is not a whole number...
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_universality.core.errors import InvalidArgumentError, InvalidTokensError


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> int | None:
    """``value`` as an ``int`` within ``[minimum, maximum]`` (``None`` passes when ``optional``).

    Python, numpy and 0-d torch integers are accepted, and floats that are whole numbers (``1e6``);
    booleans, strings, fractions, NaN and infinities are not.
    """
    if value is None and optional:
        return None
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        example = f"{name}={minimum if minimum is not None else 0}"
        raise InvalidArgumentError(
            f"{name}={_show(value)} is a {type(value).__name__}, not a number. Fix: pass an"
            f" integer, e.g. {example}" + (f" (or {name}=None)." if optional else ".")
        )
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        if not math.isfinite(value) or value != int(value):
            raise InvalidArgumentError(
                f"{name}={_show(value)} is not a whole number. Fix: pass an integer such as"
                f" {name}={math.floor(value) if math.isfinite(value) else 1}."
            )
        number = int(value)
    if minimum is not None and number < minimum:
        raise InvalidArgumentError(
            f"{name}={_show(value)} is less than {minimum}. Fix: pass {name} >= {minimum}."
        )
    if maximum is not None and number > maximum:
        raise InvalidArgumentError(
            f"{name}={_show(value)} is more than {maximum}. Fix: pass {name} <= {maximum}."
        )
    return number


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | int | None = None,
    maximum: float | int | None = None,
    strict_minimum: bool = False,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite ``float`` within the bounds (``None`` passes when ``optional``).

    Examples:
        >>> check_number("memory_budget", float("nan"), minimum=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.InvalidArgumentError: memory_budget=nan is not a finite...
    """
    if value is None and optional:
        return None
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.item()
    bound = "" if minimum is None else f" {'>' if strict_minimum else '>='} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"{name}={_show(value)} is a {type(value).__name__}, not a number. Fix: pass a"
            f" number{bound}" + (f" (or {name}=None)." if optional else ".")
        )
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgumentError(
            f"{name}={_show(value)} is not a finite number. Fix: pass a finite number{bound}."
        )
    if minimum is not None and (number <= minimum if strict_minimum else number < minimum):
        raise InvalidArgumentError(
            f"{name}={_show(value)} is out of range. Fix: pass {name}{bound}."
        )
    if maximum is not None and number > maximum:
        raise InvalidArgumentError(
            f"{name}={_show(value)} is more than {maximum:g}. Fix: pass {name} <= {maximum:g}."
        )
    return number


def check_device(name: str, value: Any, *, optional: bool = True) -> torch.device | None:
    """``value`` as a ``torch.device`` that exists on this machine.

    Examples:
        >>> check_device("device", "cpu")
        device(type='cpu')
        >>> check_device("device", "gpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.InvalidArgumentError: device='gpu' is not a torch device...
    """
    if value is None and optional:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InvalidArgumentError(
            f"{name}={_show(value)} is not a torch device ({err}). Fix: pass e.g. {name}='cpu' or"
            f" {name}='cuda:0'."
        ) from None
    shown = _show(str(value)) if isinstance(value, torch.device) else _show(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                "this PyTorch build has no CUDA"
                if torch.version.cuda is None
                else "no GPU is visible"
            )
            raise InvalidArgumentError(
                f"{name}={shown} but CUDA is not available here ({build})."
                f" Fix: pass {name}='cpu', or install a CUDA build of PyTorch on a GPU machine."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InvalidArgumentError(
                f"{name}={shown} but this machine has {count} CUDA device(s)."
                f" Fix: pass {name}='cuda:0'" + (f" ... 'cuda:{count - 1}'." if count > 1 else ".")
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InvalidArgumentError(
                f"{name}={shown} but Apple's MPS backend is not available here."
                f" Fix: pass {name}='cpu'."
            )
    elif device.type not in ("cpu", "meta"):
        raise InvalidArgumentError(
            f"{name}={shown}: tl_universality runs on 'cpu', 'cuda' or 'mps' devices."
            f" Fix: pass {name}='cpu' or {name}='cuda'."
        )
    return device


def check_folder(name: str, value: Any, *, optional: bool = True) -> Path | None:
    """``value`` as a ``Path`` that is a folder or does not exist yet (not a file).

    Examples:
        >>> import tempfile
        >>> file = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
        >>> check_folder("checkpoint_dir", file)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.InvalidArgumentError: checkpoint_dir=... is a file, not a...
    """
    if value is None and optional:
        return None
    if not isinstance(value, str | os.PathLike) or (isinstance(value, str) and not value):
        raise InvalidArgumentError(
            f"{name}={_show(value)} is not a path. Fix: pass a folder path, e.g."
            f" {name}='runs/checkpoint'."
        )
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(
            f"{name}={_show(str(path))} is a file, not a folder. Fix: pass the path of a folder"
            f" (it is created if missing), e.g. {name}={_show(str(path.with_suffix('')) + '_dir')}."
        )
    return path


def check_tokens(tokens: Any, *, d_vocab: int | None = None, name: str = "tokens") -> Tensor:
    """Check a tensor of token ids: integer dtype, 1-D or 2-D, every id in ``[0, d_vocab)``.

    Bool tensors and float tensors are refused, not cast (a cast would turn 2.7 into 2 without a
    word); the message names the first bad position and value. Returns the tensor unchanged.

    Examples:
        >>> check_tokens(torch.tensor([[0, 5, 9]]), d_vocab=10).shape
        torch.Size([1, 3])
        >>> check_tokens(torch.tensor([[0, 5, -1]]), d_vocab=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.InvalidTokensError: tokens[0, 2] = -1 is not a token id...
    """
    if not isinstance(tokens, Tensor):
        raise InvalidTokensError(
            f"{name} is a {type(tokens).__name__}, not a tensor of token ids. Fix: pass"
            f" torch.tensor(ids, dtype=torch.long)."
        )
    if tokens.dtype == torch.bool:
        raise InvalidTokensError(
            f"{name} is a bool tensor, not token ids (a mask passed by mistake?). Fix: pass the"
            f" integer ids, e.g. {name}.long() if the mask really holds ids 0 and 1."
        )
    if tokens.is_floating_point() or tokens.is_complex():
        kind = str(tokens.dtype).removeprefix("torch.")
        whole = (
            torch.isfinite(tokens) & (tokens == tokens.round())
            if tokens.is_floating_point()
            else None
        )
        if whole is not None and not bool(whole.all()):
            index = (~whole).nonzero()[0]
            raise InvalidTokensError(
                f"{name} is a {kind} tensor and {name}{_position(index)} ="
                f" {tokens[tuple(index)].item()!r} is not a whole number, so not a token id."
                f" Fix: pass the integer ids (torch.long) you meant."
            )
        raise InvalidTokensError(
            f"{name} is a {kind} tensor; token ids must be integers (a silent cast could round"
            f" them). Fix: pass {name}.long() if it holds whole numbers."
        )
    if tokens.ndim not in (1, 2):
        raise InvalidTokensError(
            f"{name} has shape {tuple(tokens.shape)}; token ids come as a 2-D [n_sequences, seq]"
            f" tensor or a 1-D stream. Fix: reshape it, e.g. {name}.reshape(-1, {name}.shape[-1])."
        )
    check_token_range(tokens, d_vocab, name=name)
    return tokens


def check_token_range(
    tokens: Tensor, d_vocab: int | None, *, name: str = "tokens", row_offset: int = 0
) -> None:
    """Raise :class:`InvalidTokensError` naming the first id outside ``[0, d_vocab)``.

    ``row_offset`` is added to the row of the position reported (a block read from a stream).
    """
    if tokens.numel() == 0:
        return
    bad = tokens < 0
    if d_vocab is not None:
        bad |= tokens >= d_vocab
    if not bool(bad.any()):
        return
    index = bad.nonzero()[0]
    value = int(tokens[tuple(index)])
    position = index.clone()
    if position.numel() == 2:
        position[0] += row_offset
    vocab = f"[0, {d_vocab})" if d_vocab is not None else "[0, d_vocab)"
    fix = (
        "-1 is often padding: replace it with the tokenizer's pad or BOS id"
        if value == -1
        else "the ids come from another tokenizer than the model's, or need the model's tokenizer"
    )
    raise InvalidTokensError(
        f"{name}{_position(position)} = {value} is not a token id of the model (ids are in"
        f" {vocab}; the first of {int(bad.sum())} such). Fix: {fix}."
    )


def _position(index: Tensor) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"

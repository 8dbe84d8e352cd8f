"""The settings of a correlation run, as one frozen, validated object.

:class:`CorrelationConfig` is what :func:`~tl_universality.analyses.correlation.correlate` runs
with (its keyword arguments are turned into one), what a checkpoint's fingerprint records and
what wandb logs as the run's config: the same dictionary everywhere (:meth:`to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tl_universality.core.errors import InvalidArgumentError
from tl_universality.core.validate import check_int, check_number
from tl_universality.stats.baselines import MIXING_KINDS, check_kind

#: How ranks split a run under ``torch.distributed`` (docs/scaling.md, "Distributed runs").
PARALLEL_MODES = ("tokens", "tiles")


@dataclass(frozen=True)
class CorrelationConfig:
    """Settings of :func:`~tl_universality.analyses.correlation.correlate` (see it for each).

    Examples:
        >>> CorrelationConfig(top_k=5).top_k
        5
        >>> CorrelationConfig(batch_size=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.InvalidArgumentError: batch_size=0 is less than 1. Fix: ...
        >>> CorrelationConfig.from_dict(CorrelationConfig(n_draws=2).to_dict()).n_draws
        2
    """

    all_pairs: bool = False
    baseline: str | None = "rotation"
    n_draws: int = 5
    seed: int = 0
    top_k: int = 10
    # Given as in correlate (e.g. torch.float16, "16GB"), stored normalised (str, int, tuple).
    keep_matrix: bool | str | torch.dtype | None = None
    memory_budget: int | float | str | None = None
    batch_size: int = 32
    product_dtype: str | torch.dtype | None = None
    exclude_token_ids: Sequence[int] | None = None
    seq_len: int | None = None
    max_tokens: int | None = None
    checkpoint_every: int = 10_000_000
    parallel: str = "tokens"
    # exhaustive runs: one more pass for batch-means standard errors (errors.py)
    standard_errors: bool = False
    # screened exact mode (docs/concepts.md, "Screened exact correlation")
    candidates: int | None = None
    screen_tokens: int | None = None
    certificate_sigmas: float = 4.0
    tol: float | None = None
    baseline_candidates: int | None = None

    def __post_init__(self) -> None:
        check_kind(self.baseline)
        set_ = object.__setattr__
        set_(self, "all_pairs", bool(self.all_pairs))
        set_(self, "standard_errors", bool(self.standard_errors))
        set_(self, "n_draws", check_int("n_draws", self.n_draws, minimum=1 if self.baseline else 0))
        set_(self, "seed", check_int("seed", self.seed))
        set_(self, "top_k", check_int("top_k", self.top_k, minimum=1))
        set_(self, "batch_size", check_int("batch_size", self.batch_size, minimum=1))
        set_(self, "seq_len", check_int("seq_len", self.seq_len, minimum=2, optional=True))
        set_(self, "max_tokens", check_int("max_tokens", self.max_tokens, minimum=1, optional=True))
        set_(
            self,
            "checkpoint_every",
            check_int("checkpoint_every", self.checkpoint_every, minimum=1),
        )
        set_(self, "candidates", check_int("candidates", self.candidates, minimum=1, optional=True))
        set_(
            self,
            "screen_tokens",
            check_int("screen_tokens", self.screen_tokens, minimum=1, optional=True),
        )
        set_(
            self,
            "certificate_sigmas",
            check_number("certificate_sigmas", self.certificate_sigmas, minimum=0.0),
        )
        set_(
            self,
            "baseline_candidates",
            check_int("baseline_candidates", self.baseline_candidates, minimum=1, optional=True),
        )
        if self.baseline_candidates is not None and self.baseline not in MIXING_KINDS:
            raise InvalidArgumentError(
                f"baseline_candidates={self.baseline_candidates} follows the mixed units of a"
                f" mixing baseline, but baseline={self.baseline!r}. Fix: drop"
                " baseline_candidates (the gaussian_noise baseline is exact from the token count"
                " alone), or pass baseline='rotation'."
            )
        tol = check_number("tol", self.tol, minimum=0.0, strict_minimum=True, optional=True)
        set_(self, "tol", tol)
        if self.candidates is None:
            for name in ("screen_tokens", "tol", "baseline_candidates"):
                if getattr(self, name) is not None:
                    raise InvalidArgumentError(
                        f"{name}={getattr(self, name)!r} only applies to the screened mode."
                        f" Fix: pass candidates=K (e.g. candidates=8) with {name}, or drop {name}."
                    )
        elif self.keep_matrix is not None and self.keep_matrix is not False:
            raise InvalidArgumentError(
                f"keep_matrix={self.keep_matrix!r} cannot be combined with"
                f" candidates={self.candidates}: a screened run never forms the full matrices."
                " Fix: drop keep_matrix, or run the exhaustive mode (candidates=None)."
            )
        set_(self, "memory_budget", _budget(self.memory_budget))
        if self.parallel not in PARALLEL_MODES:
            raise InvalidArgumentError(
                f"parallel={self.parallel!r} is not a way to split a distributed run. Fix: pass"
                " parallel='tokens' (each rank reads a shard of the batches) or 'tiles' (each"
                " rank reads every batch and holds some of the tiles)."
            )
        if self.parallel == "tiles" and self.candidates is not None:
            raise InvalidArgumentError(
                f"parallel='tiles' cannot be combined with candidates={self.candidates}: the"
                " screened mode needs little memory and runs data-parallel. Fix: drop parallel"
                " (or pass parallel='tokens')."
            )
        set_(self, "keep_matrix", _dtype_name("keep_matrix", self.keep_matrix, matrix=True))
        set_(self, "product_dtype", _dtype_name("product_dtype", self.product_dtype))
        if self.exclude_token_ids is not None:
            ids = tuple(
                sorted(check_int("exclude_token_ids", t, minimum=0) for t in self.exclude_token_ids)
            )
            set_(self, "exclude_token_ids", ids)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> CorrelationConfig:
        """Build from ``correlate``'s keyword names; an unknown one is an error with a hint."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            import difflib

            hints = [difflib.get_close_matches(u, names, n=1) for u in unknown]
            said = ", ".join(
                f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "")
                for u, h in zip(unknown, hints, strict=True)
            )
            raise InvalidArgumentError(
                f"CorrelationConfig has no setting {said}. Fix: use one of {sorted(names)}."
            )
        return cls(**kwargs)

    def replace(self, **changes: Any) -> CorrelationConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings: the fingerprint of a checkpoint and the config wandb logs."""
        out = dataclasses.asdict(self)
        if out["exclude_token_ids"] is not None:
            out["exclude_token_ids"] = list(out["exclude_token_ids"])
        out["n_draws"] = out["n_draws"] if self.baseline else 0
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrelationConfig:
        return cls.from_kwargs(**data)


def _budget(value: Any) -> int | None:
    from tl_universality.analyses.correlation.plan import parse_bytes

    if value is None:
        return None
    if not isinstance(value, str):
        check_number("memory_budget", value, minimum=0, strict_minimum=True)
    try:
        parsed = parse_bytes(value)
    except ValueError as err:
        raise InvalidArgumentError(f"memory_budget={value!r}: {err}") from err
    if parsed is None or not math.isfinite(parsed) or parsed <= 0:
        raise InvalidArgumentError(
            f"memory_budget={value!r} is not a positive size. Fix: pass bytes or e.g. '16GB'."
        )
    return int(parsed)


def _dtype_name(name: str, value: Any, matrix: bool = False) -> str | None:
    """A dtype setting as a string (``"float32"``, ``"tf32"``...), so the config is JSON."""
    if value is None or value is False:
        return None
    if matrix and value is True:
        return "float32"
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, str) and value:
        return value.removeprefix("torch.")
    raise InvalidArgumentError(
        f"{name}={value!r} is not a dtype. Fix: pass e.g. {name}=torch.float32 or"
        f" {name}='float64'" + (" (or True for float32)." if matrix else ".")
    )

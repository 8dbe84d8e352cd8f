"""The fixed σ of a fake LayerNorm: the average live std at that point, as a moving average.

While a LayerNorm is still real, each training step measures its live scale
``sqrt(mean_d(x_centred²) + eps)`` (the std pooled over channels, per token) and averages it over
the ordinary positions of the batch; position 0 (BOS) and end-of-text tokens are averaged
separately, because their residual norm is typically far larger. The averages are tracked with an
exponential moving average, ``σ ← m·σ + (1 − m)·batch_mean`` (the first update sets σ to the batch
mean), and frozen when the LayerNorm goes fake.

Examples:
    >>> scale = torch.tensor([[9.0, 1.0, 3.0]])          # [batch, pos]
    >>> codes = torch.tensor([[1, 0, 0]])                # BOS, then two ordinary tokens
    >>> mean_scale_by_code(scale, codes, n_codes=3).tolist()[:2]
    [2.0, 9.0]
    >>> round(float(ema_update(torch.tensor(2.0), torch.tensor(4.0), 0.9)), 6)
    2.2
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def mean_scale_by_code(
    scale: Float[Tensor, "batch pos"], codes: Int[Tensor, "batch pos"], n_codes: int
) -> Float[Tensor, " codes"]:
    """The mean of ``scale`` over the positions of each code (NaN for a code with none)."""
    flat_codes = codes.reshape(-1)
    flat = scale.reshape(-1)
    sums = torch.zeros(n_codes, dtype=flat.dtype, device=flat.device).index_add_(
        0, flat_codes, flat
    )
    counts = torch.bincount(flat_codes, minlength=n_codes)[:n_codes].to(flat.dtype)
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan)


def ema_update(
    old: Float[Tensor, ""], value: Float[Tensor, ""], momentum: float, *, first: bool = False
) -> Float[Tensor, ""]:
    """``momentum * old + (1 - momentum) * value``, or ``value`` on the first update."""
    if first:
        return value.to(old.dtype)
    return momentum * old + (1.0 - momentum) * value.to(old.dtype)


@torch.no_grad()
def live_scales(model: object, tokens: Int[Tensor, "batch pos"]) -> dict[str, Tensor]:
    """Each LayerNorm's live scale ``[batch, pos]`` on ``tokens`` (hook ``*.hook_scale``).

    For ``ln1`` the scale is the same on the query, key and value calls while all are real.
    """
    names = [n for n in model.hook_dict if n.endswith("hook_scale")]  # type: ignore[attr-defined]
    _, cache = model.run_with_cache(tokens, names_filter=names)  # type: ignore[attr-defined]
    return {n.removesuffix(".hook_scale"): cache[n][..., 0] for n in names}


__all__ = ["ema_update", "live_scales", "mean_scale_by_code"]

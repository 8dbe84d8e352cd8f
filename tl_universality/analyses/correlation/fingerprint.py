"""What a checkpoint proves it saw: a content hash of every model's weights and of every batch of
tokens consumed, so that a resumed run refuses other data at the first batch that differs.

Weights are hashed byte for byte (SHA-256 of every parameter and buffer, with names, shapes and
dtypes); tokens batch by batch as they are read (the hash of each batch's ids). Measured cost:
``benchmarks/fingerprint_cost.py``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor


def weights_digest(model: Any) -> str:
    """SHA-256 of every parameter and buffer's bytes, names, shapes and dtypes.

    Examples:
        >>> import torch.nn as nn
        >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> with torch.no_grad():
        ...     b.load_state_dict(a.state_dict())
        <All keys matched successfully>
        >>> weights_digest(a) == weights_digest(b)
        True
        >>> with torch.no_grad():
        ...     b.weight[0, [0, 1]] = b.weight[0, [1, 0]]  # two entries swapped: same sums
        >>> weights_digest(a) == weights_digest(b)
        False
    """
    digest = hashlib.sha256()
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    with torch.no_grad():
        for name in sorted(state):
            value = state[name]
            if not isinstance(value, Tensor):
                continue
            digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
            data = value.detach().reshape(-1).contiguous()
            if data.numel():
                digest.update(data.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def batch_digest(tokens: Tensor) -> str:
    """SHA-256 of one batch of token ids (as int64), with its shape."""
    data = tokens.detach().to("cpu", torch.int64).contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:32]

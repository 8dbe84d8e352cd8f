"""What the machine offers: a reachable model hub, a CUDA device.

Examples that download models call :func:`require_hub` first, so that without the internet they
stop at once with one line instead of after a long hub time-out.
"""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether the model hub answers (``HF_HUB_OFFLINE=1`` means no, without asking)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Exit with one line (status 1) unless the model hub is reachable; ``what`` needs it."""
    if not hub_reachable():
        raise SystemExit(
            f"error: {what} downloads models from {HUB_HOST}, which cannot be reached from here"
            " (no internet, or HF_HUB_OFFLINE=1). Fix: run it with internet access, or try the"
            " offline `tl-universality demo`."
        )


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"``.

    Examples:
        >>> default_device() in ("cuda", "cpu")
        True
    """
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

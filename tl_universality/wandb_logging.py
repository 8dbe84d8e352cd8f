"""Moved to :mod:`tl_universality.outputs.wandb`.

This path works for one more release.
"""

from tl_universality.outputs.wandb import (
    WandbPayload,
    WandbProgress,
    correlation_payload,
    log_results,
    open_run,
    payload_of,
)

__all__ = [
    "WandbPayload",
    "WandbProgress",
    "correlation_payload",
    "log_results",
    "open_run",
    "payload_of",
]

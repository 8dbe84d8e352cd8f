"""Whether a correlation plan fits in the memory the statistics' device has left, before any work.

Without a ``memory_budget`` the plan makes one pass, whatever the models' size: GPT-2 medium's
float64 cross moments alone are 77 GB per pair. A plan whose estimated peak exceeds what the device
can still give this process would fail in its first batch (a CUDA out-of-memory error, or on the
CPU the kernel killing the process, with nothing saved), so :func:`check_capacity` refuses it at
once, naming a budget that fits. A plan made under an explicit budget larger than the device's
memory gets a warning: the caller chose it.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch

from tl_universality.analyses.correlation.distributed import all_reduce, current_shard
from tl_universality.analyses.correlation.plan import CorrelationPlan, format_bytes
from tl_universality.core.environment import available_memory
from tl_universality.core.errors import InvalidArgumentError

logger = logging.getLogger("tl_universality")

#: The share of the available memory a suggested budget takes: the estimate leaves out the models'
#: own forward buffers and the allocator's slack.
SUGGESTED_SHARE = 0.8


def check_capacity(
    plan: CorrelationPlan, device: torch.device, budget: int | None, screening: bool = False
) -> None:
    """Raise :class:`InvalidArgumentError` when ``plan`` (made without a budget) needs more than
    ``device`` has available; warn when it was made under a ``budget`` that does not fit.
    ``screening``: the plan is the exhaustive first stage of a screened run (the message then
    does not suggest ``candidates``).

    Under ``torch.distributed`` every rank compares the plan with the least memory any rank has
    (a collective call), so all of them raise, or none.

    Examples:
        >>> from tl_universality.analyses.correlation.plan import make_plan
        >>> from tl_universality.units.activations import UnitIndex
        >>> units = UnitIndex(("blocks.0.mlp.hook_post",), (64,), (0,))
        >>> plan = make_plan([units, units], all_pairs=False, baseline=None, memory_budget=None,
        ...                  tokens_per_batch=64, product=torch.float32, matrix_itemsize=0,
        ...                  top_k=3, n_draws=0)
        >>> check_capacity(plan, torch.device("cpu"), None)  # a few hundred KB: fits
    """
    avail = available_memory(device)
    room = math.inf if avail is None else float(avail)
    if current_shard().distributed:
        room = float(all_reduce(torch.tensor([room], dtype=torch.float64), "min")[0])
    peak = plan.peak_bytes
    if math.isinf(room) or peak <= room:
        return
    per = " per process" if current_shard().distributed else ""
    if budget is not None:
        message = (
            f"memory_budget={format_bytes(budget)} allows a plan that peaks at"
            f" ~{format_bytes(peak)} on {device}, but only ~{format_bytes(room)} is available"
            f" there{per}; the run may run out of memory. A budget of"
            f" {format_bytes(SUGGESTED_SHARE * room)} would fit."
        )
        logger.warning("%s", message)
        warnings.warn(message, ResourceWarning, stacklevel=4)
        return
    what = "the screening stage (exhaustive) makes" if screening else "memory_budget=None makes"
    other = "" if screening else ", or candidates=K (the screened mode keeps 2K columns per unit)"
    raise InvalidArgumentError(
        f"memory_budget=None: {what} one pass that needs ~{format_bytes(peak)} on {device}"
        f" (statistics, buffers, a batch of activations), but only ~{format_bytes(room)} is"
        f" available there{per}. Fix: pass memory_budget='{format_bytes(SUGGESTED_SHARE * room)}'"
        " (the units are then tiled into several passes over the tokens; plan_correlation(...)"
        f" shows the plan){other}, or under torchrun parallel='tiles' (each rank holds its own"
        " tiles)."
    )

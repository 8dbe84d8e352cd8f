"""Which heads and neurons a flow graph keeps: a documented score and a budget.

Every head and every MLP neuron of a layer writes one vector into the residual stream at the
position read: head ``h`` writes ``z_h @ W_O[h]`` and neuron ``n`` writes ``act_n · W_out[n]``.
The score of a unit is the size of what it writes:

- heads: ``‖z_h W_O[h]‖`` (VISIT ranked heads by ``‖z_h‖``; the written norm also counts what
  ``W_O`` does to it, and it is the quantity the edges carry);
- neurons: ``act_n · ‖W_out[n]‖``, signed, so the *top* neurons push hardest along their output
  direction and the *bottom* ones (negative activations) along its opposite, as in VISIT's top-k
  and bottom-k; its absolute value is the written norm.

A budget is either a **count** (keep exactly that many per layer, or all when the layer has
fewer) or a **share** ``s`` in (0, 1]: keep the fewest units, strongest first, whose written norms
add up to at least ``s`` of the layer's total written norm ``Σ_i ‖c_i‖``. (The norm of the block
output itself, ``‖Σ_i c_i‖``, cannot serve: contributions cancel, so a subset can exceed it.)
What is not kept is summed into one "rest" node per block and listed in the graph's ``pruned``
table, so nothing silently disappears from the decomposition.

Examples:
    >>> norms = torch.tensor([0.5, 3.0, 1.0, 0.0])
    >>> keep_strongest(norms, 2).tolist()
    [1, 2]
    >>> keep_strongest(norms, 0.7).tolist()  # 3.0 alone is 67% of 4.5; with 1.0, 89%
    [1, 2]
    >>> top, bottom = keep_top_bottom(torch.tensor([0.2, -1.0, 2.0, -0.1, 0.5]), (2, 1))
    >>> top.tolist(), bottom.tolist()
    ([2, 4], [1])
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

HeadBudget = int | float
"""Heads to keep per layer: a count (int >= 0) or a share of the written norm (float in (0, 1])."""

NeuronBudget = tuple[int, int] | float
"""Neurons to keep per layer: ``(top, bottom)`` counts or a share of the written norm."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral)


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _is_share(value: object) -> bool:
    return isinstance(value, numbers.Real) and not _is_int(value) and 0.0 < value <= 1.0


@dataclass(frozen=True)
class Budget:
    """A checked budget: ``heads`` and ``neurons`` as :data:`HeadBudget`/:data:`NeuronBudget`.

    Examples:
        >>> Budget(heads=10, neurons=(18, 7)).describe()
        'heads: 10 per layer; neurons: top 18 and bottom 7 per layer'
        >>> Budget(heads=0.9, neurons=0.5).describe()
        'heads: 90% of the written norm; neurons: 50% of the written norm'
        >>> Budget(heads=-1)
        Traceback (most recent call last):
        ...
        ValueError: heads=-1 is not a budget. ...
    """

    heads: HeadBudget = 10
    neurons: NeuronBudget = (18, 7)

    def __post_init__(self) -> None:
        if not (_is_count(self.heads) or _is_share(self.heads)):
            raise ValueError(
                f"heads={self.heads!r} is not a budget. Pass a count of heads to keep per layer"
                " (an int >= 0, e.g. heads=10) or the share of the attention output's written"
                " norm to keep (a float in (0, 1], e.g. heads=0.9)."
            )
        neurons = self.neurons
        if isinstance(neurons, list):
            neurons = tuple(neurons)
            object.__setattr__(self, "neurons", neurons)
        counts = isinstance(neurons, tuple) and len(neurons) == 2 and all(map(_is_count, neurons))
        if not (counts or _is_share(neurons)):
            raise ValueError(
                f"neurons={self.neurons!r} is not a budget. Pass (top, bottom) counts of neurons"
                " to keep per layer (two ints >= 0, e.g. neurons=(18, 7)) or the share of the MLP"
                " output's written norm to keep (a float in (0, 1], e.g. neurons=0.8)."
            )

        # Plain Python numbers, so the budget is JSON as written and compares equal after it.
        heads = int(self.heads) if _is_count(self.heads) else float(self.heads)
        object.__setattr__(self, "heads", heads)
        neurons = tuple(int(n) for n in neurons) if counts else float(neurons)
        object.__setattr__(self, "neurons", neurons)

    def describe(self) -> str:
        """The budget in words."""
        heads = (
            f"{self.heads} per layer"
            if _is_count(self.heads)
            else f"{self.heads:.0%} of the written norm"
        )
        if isinstance(self.neurons, tuple):
            neurons = f"top {self.neurons[0]} and bottom {self.neurons[1]} per layer"
        else:
            neurons = f"{self.neurons:.0%} of the written norm"
        return f"heads: {heads}; neurons: {neurons}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (``from_dict`` reads it back)."""
        neurons = list(self.neurons) if isinstance(self.neurons, tuple) else self.neurons
        return {"heads": self.heads, "neurons": neurons}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Budget:
        """Inverse of :meth:`to_dict`."""
        neurons = data["neurons"]
        return cls(
            heads=data["heads"],  # type: ignore[arg-type]
            neurons=tuple(neurons) if isinstance(neurons, list) else neurons,  # type: ignore[arg-type]
        )


def keep_strongest(norms: Float[Tensor, " units"], budget: HeadBudget) -> Int[Tensor, " kept"]:
    """Indices of the units kept under ``budget``, strongest first (see the module docstring)."""
    order = torch.argsort(norms, descending=True, stable=True)
    if _is_count(budget):
        return order[: int(budget)]
    total = float(norms.sum())
    if total <= 0:
        return order[:0]
    cumulative = norms[order].cumsum(0)
    # The first prefix whose mass reaches the share; the tolerance keeps share=1.0 from
    # dropping the last unit to rounding, and zero-norm units are never needed.
    n_keep = int((cumulative < float(budget) * total * (1 - 1e-9)).sum()) + 1
    return order[: min(n_keep, len(order))]


def keep_top_bottom(
    scores: Float[Tensor, " neurons"], budget: NeuronBudget
) -> tuple[Int[Tensor, " top"], Int[Tensor, " bottom"]]:
    """``(top, bottom)`` neuron indices kept under ``budget``; scores are ``act · ‖W_out[n]‖``.

    With counts ``(t, b)``: the ``t`` highest scores, then the ``b`` lowest of the rest (so
    exactly ``min(t + b, d_mlp)`` neurons). With a share: :func:`keep_strongest` on ``|score|``,
    split by sign.
    """
    if isinstance(budget, tuple):
        n_top, n_bottom = budget
        order = torch.argsort(scores, descending=True, stable=True)
        top = order[:n_top]
        rest = order[n_top:]
        bottom = rest.flip(0)[:n_bottom]
        return top, bottom
    kept = keep_strongest(scores.abs(), budget)
    positive = scores[kept] >= 0
    return kept[positive], kept[~positive]

"""When each LayerNorm goes fake: the removal schedule.

After ``start`` steps of fine-tuning with every LayerNorm real, the events come one at a time:
``ln2`` block by block, then ``ln1`` on the query/key path block by block, then ``ln1`` on the
value path block by block, then ``ln_final``, then the end-of-text special case is dropped, then
the BOS special case. Each event follows the previous one after the gap of the previous event's
phase. The defaults are those of Baroni et al. (2025) for GPT-2 small: first event at step 20,
gaps of 2 steps after ``ln2`` and Q/K events, 3 after V events, 2 after ``ln_final`` and 10 after
end-of-text, so for 12 layers: ``ln2`` at 20..42, Q/K at 44..66, V at 68..101, ``ln_final`` at
104, end-of-text at 106 and BOS at 116.

Examples:
    >>> events = RemovalSchedule().events(n_layers=12)
    >>> [(e.step, e.kind) for e in events if e.kind in ("ln_final", "eot", "bos")]
    [(104, 'ln_final'), (106, 'eot'), (116, 'bos')]
    >>> [e.step for e in events if e.kind == "ln1_v"][:3]
    [68, 71, 74]
    >>> events[0]
    RemovalEvent(step=20, kind='ln2', layer=0)
    >>> events[0].path
    'blocks.0.ln2'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

KINDS = ("ln2", "ln1_qk", "ln1_v", "ln_final", "eot", "bos")
"""The kinds of event, in schedule order."""


class RemovalEvent(NamedTuple):
    """One event: at optimiser step ``step`` (before it is taken), ``kind`` for ``layer``."""

    step: int
    kind: str
    layer: int | None = None

    @property
    def path(self) -> str | None:
        """The LayerNorm path made fake (``blocks.0.ln1.qk``), or None for special cases."""
        if self.kind == "ln2":
            return f"blocks.{self.layer}.ln2"
        if self.kind == "ln1_qk":
            return f"blocks.{self.layer}.ln1.qk"
        if self.kind == "ln1_v":
            return f"blocks.{self.layer}.ln1.v"
        if self.kind == "ln_final":
            return "ln_final"
        return None

    @property
    def label(self) -> str:
        """A short label: ``L0 ln2``, ``ln_final``, ``eot``."""
        return f"L{self.layer} {self.kind}" if self.layer is not None else self.kind


@dataclass(frozen=True)
class RemovalSchedule:
    """Steps of the removal events.

    Attributes:
        start: Step of the first event (the steps before are a warm-up with every LN real).
        gap_ln2: Steps after each ``ln2`` event before the next event.
        gap_qk: Steps after each ``ln1`` query/key event.
        gap_v: Steps after each ``ln1`` value event.
        gap_ln_final: Steps after the ``ln_final`` event.
        gap_eot: Steps after dropping the end-of-text special case (before dropping BOS's).

    Examples:
        >>> RemovalSchedule(start=2, gap_ln2=1, gap_qk=1, gap_v=1, gap_ln_final=1,
        ...                 gap_eot=1).last_step(n_layers=2)
        10
        >>> RemovalSchedule(gap_v=0)
        Traceback (most recent call last):
        ...
        ValueError: gap_v must be an integer >= 1, got 0. Fix: pass gap_v=1 or more.
    """

    start: int = 20
    gap_ln2: int = 2
    gap_qk: int = 2
    gap_v: int = 3
    gap_ln_final: int = 2
    gap_eot: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"start must be an integer >= 0, got {self.start!r}. Fix: start=0.")
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{f.name} must be an integer >= 1, got {value!r}. Fix: pass {f.name}=1 or"
                    " more."
                )

    def events(self, n_layers: int, *, has_mlp: bool = True) -> list[RemovalEvent]:
        """Every event in order (no ``ln2`` events when the model has no MLPs)."""
        plan: list[tuple[str, int | None, int]] = []
        if has_mlp:
            plan += [("ln2", layer, self.gap_ln2) for layer in range(n_layers)]
        plan += [("ln1_qk", layer, self.gap_qk) for layer in range(n_layers)]
        plan += [("ln1_v", layer, self.gap_v) for layer in range(n_layers)]
        plan += [("ln_final", None, self.gap_ln_final), ("eot", None, self.gap_eot)]
        plan += [("bos", None, 0)]
        step = self.start
        events = []
        for kind, layer, gap in plan:
            events.append(RemovalEvent(step, kind, layer))
            step += gap
        return events

    def last_step(self, n_layers: int, *, has_mlp: bool = True) -> int:
        """The step of the last event (BOS)."""
        return self.events(n_layers, has_mlp=has_mlp)[-1].step

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return dataclasses.asdict(self)


__all__ = ["KINDS", "RemovalEvent", "RemovalSchedule"]

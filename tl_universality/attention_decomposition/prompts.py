"""IOI-style prompts (indirect object identification) for tracing GPT-2 small's name-mover circuit.

Each prompt introduces two names and ends where the model should say the one that was not repeated
(the indirect object, IO) rather than the repeated subject (S): "When Mary and John went to the
store, John gave a drink to" → " Mary". :func:`ioi_prompts` fills templates with names and objects
that are single GPT-2 tokens (with their leading space), so the prompts of one template line up
position by position; it returns the text, the IO and S tokens for the logit difference, and the
end position of each prompt for ``trace_circuit(..., dest=...)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "Then, {A} and {B} were working at the {PLACE}. {B} decided to give a {OBJECT} to",
    "While {A} and {B} were commuting to the {PLACE}, {B} gave a {OBJECT} to",
)
NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Paul", "Mark", "Sarah", "Anna", "David", "Laura", "Kevin",
    "Lisa", "Daniel", "Emma", "Michael", "Alice",
)  # fmt: skip
PLACES: tuple[str, ...] = ("store", "park", "school", "office", "station", "restaurant")
OBJECTS: tuple[str, ...] = ("drink", "ring", "book", "bone", "kiss", "basketball")


@dataclass(frozen=True)
class IOIPrompts:
    """IOI prompts and what to measure on them.

    Attributes:
        text: The prompts (without the answer).
        io: The indirect object's name per prompt (the right answer, with a leading space).
        s: The subject's name per prompt (the wrong answer).
        template: Index of the template of each prompt.
    """

    text: list[str]
    io: list[str]
    s: list[str]
    template: list[int]

    def tokens(self, model: Any) -> Any:
        """``(tokens, logit_tokens, end)`` for a model with a tokenizer: ``[n, pos]`` ids with BOS
        (right-padded), ``[n, 2]`` (IO, S) ids, and ``[n]`` end positions."""
        import torch

        tokens = model.to_tokens(self.text, padding_side="right")
        lengths = torch.stack([torch.tensor(len(model.to_tokens(t)[0])) for t in self.text])
        single = [model.to_single_token(n) for n in (*self.io, *self.s)]
        answers = torch.tensor(single).reshape(2, -1).T
        return tokens, answers, lengths - 1


def ioi_prompts(n: int = 16, seed: int = 0, templates: tuple[str, ...] = TEMPLATES) -> IOIPrompts:
    """``n`` IOI prompts from ``templates``, names drawn without a repeat inside a prompt.

    Examples:
        >>> prompts = ioi_prompts(2, seed=1)
        >>> len(prompts.text), prompts.text[0].endswith(" to"), prompts.io[0].startswith(" ")
        (2, True, True)
        >>> prompts.s[0].strip() in prompts.text[0].split(",")[1]
        True
    """
    if n < 1:
        raise ValueError(f"n={n!r} must be at least 1: the number of prompts.")
    rng = random.Random(seed)
    text, io, s, which = [], [], [], []
    for i in range(n):
        t = i % len(templates)
        a, b = rng.sample(NAMES, 2)
        filled = templates[t].format(A=a, B=b, PLACE=rng.choice(PLACES), OBJECT=rng.choice(OBJECTS))
        text.append(filled)
        io.append(" " + a)
        s.append(" " + b)
        which.append(t)
    return IOIPrompts(text, io, s, which)


__all__ = ["IOIPrompts", "NAMES", "TEMPLATES", "ioi_prompts"]

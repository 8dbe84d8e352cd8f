"""What features see of a batch: the tokens, their strings, positions and neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# What a feature sees of a batch


def normalise_token(s: str) -> str:
    """The unigram key of a token string: one leading space dropped, lower case.

    ``" The"``, ``"the"`` and ``" THE"`` are one unigram; a lone space stays a space.

    Examples:
        >>> [normalise_token(s) for s in [" The", "the", " ", "\\n"]]
        ['the', 'the', ' ', '\\n']
    """
    if len(s) > 1 and s[0] == " ":
        s = s[1:]
    return s.lower()


@dataclass
class FeatureContext:
    """The kept positions of one batch, as features see them (one entry per kept token).

    Attributes:
        token_ids: The current token.
        prev_token_ids: The token one position earlier; -1 at position 0.
        positions: Position of the token in its sequence.
        sequence_ids: Index in the stream of the token's sequence.
        vocab: Token strings of the vocabulary (index = token id), if known.
    """

    token_ids: Int[Tensor, " tok"]
    prev_token_ids: Int[Tensor, " tok"]
    positions: Int[Tensor, " tok"]
    sequence_ids: Int[Tensor, " tok"]
    vocab: tuple[str, ...] | None = None

    @classmethod
    def from_tokens(
        cls,
        tokens: Int[Tensor, "batch seq"],
        keep: Bool[Tensor, "batch seq"] | None = None,
        *,
        first_sequence: int = 0,
        bos_token_id: int | None = None,
        vocab: Sequence[str] | None = None,
    ) -> FeatureContext:
        """The context of a ``[batch, seq]`` block of sequences.

        Args:
            tokens: Token ids.
            keep: Positions to keep (default: those not equal to ``bos_token_id``, or all).
            first_sequence: Stream index of the first row.
            bos_token_id: Positions holding it are dropped when ``keep`` is not given.
            vocab: Token strings, for features that read strings.
        """
        if keep is None:
            keep = (
                torch.ones_like(tokens, dtype=torch.bool)
                if bos_token_id is None
                else tokens != bos_token_id
            )
        prev = torch.roll(tokens, shifts=1, dims=1)
        prev[:, 0] = -1
        pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        seq = torch.arange(tokens.shape[0], device=tokens.device) + int(first_sequence)
        seq = seq[:, None].expand_as(tokens)
        return cls(
            tokens[keep],
            prev[keep],
            pos[keep],
            seq[keep],
            None if vocab is None else tuple(vocab),
        )

    @classmethod
    def from_batch(cls, batch: Any, vocab: Sequence[str] | None = None) -> FeatureContext:
        """The context of an :class:`~tl_universality.units.activations.ActivationBatch`."""
        return cls.from_tokens(
            batch.tokens, batch.keep, first_sequence=int(batch.first_sequence), vocab=vocab
        )

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    def _strings(self, ids: Tensor) -> np.ndarray:
        if self.vocab is None:
            raise ValueError(
                "This feature reads token strings but the features were built without a"
                " vocabulary. Build them with FeatureSet(..., vocab=tokenizer_strings)."
            )
        table = np.asarray((*self.vocab, ""), dtype=object)  # id -1 (no previous token) -> ""
        return table[ids.cpu().numpy()]

    @property
    def strings(self) -> np.ndarray:
        """Token string of each kept token (an object array)."""
        return self._strings(self.token_ids)

    @property
    def prev_strings(self) -> np.ndarray:
        """Token string of each kept token's predecessor (``""`` at position 0)."""
        return self._strings(self.prev_token_ids)

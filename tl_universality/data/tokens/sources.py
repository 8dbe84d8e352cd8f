"""Token sources: fixed-length, BOS-first sequences read batch by batch; tensors."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator

import torch
from jaxtyping import Int
from torch import Tensor

from tl_universality.core.errors import EmptyTokenSourceError
from tl_universality.core.validate import check_int, check_number, check_token_range, check_tokens

# Documents are tokenized this many at a time: the fast tokenizer parallelises within a batch.
TOKENIZE_BATCH = 256
# Rows read from a parquet file at a time (bounded memory whatever the file size).
PARQUET_BATCH = 1024


def _split_fraction(seed: int, index: int) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, index)``, the same on every machine."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class TokenSource:
    """Fixed-length token sequences, each starting with BOS, in a deterministic order.

    Subclasses implement :meth:`_units`, which yields ``(unit_index, sequences)`` pairs: a unit is
    what a split assigns as a whole (a document, or a tensor row). The base class applies splits
    and limits, batches, counts, and raises :class:`EmptyTokenSourceError` when nothing comes out.

    Attributes:
        seq_len: Tokens per sequence, BOS included.
        bos_token_id: The id every sequence starts with.
        name: A short description used in error messages and reports.

    Examples:
        >>> import torch
        >>> src = TensorTokenSource(torch.tensor([[0, 5, 6], [0, 7, 8], [0, 9, 9]]), 0)
        >>> train, held = src.split(held_out=0.5, seed=1)
        >>> sorted(s[1].item() for s in [*train.sequences(), *held.sequences()])
        [5, 7, 9]
        >>> src.limit(6).n_sequences
        2
    """

    seq_len: int
    bos_token_id: int
    name: str

    def __init__(self, seq_len: int, bos_token_id: int, name: str) -> None:
        seq_len = check_int("seq_len", seq_len)
        bos_token_id = check_int("bos_token_id", bos_token_id, minimum=0)
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len}: sequences need BOS plus at least one token.")
        self.seq_len = int(seq_len)
        self.bos_token_id = int(bos_token_id)
        self.name = name
        # (seed, held_out fraction, keep the held-out side?) for each split applied, in order.
        self._splits: tuple[tuple[int, float, bool], ...] = ()
        self._max_sequences: int | None = None
        self._count: int | None = None
        # Set by :meth:`check_vocab`: every id read must be below this (the model's d_vocab).
        self._d_vocab: int | None = None

    # -- what subclasses provide ---------------------------------------------------------------

    def _units(self, keep: Callable[[int], bool]) -> Iterator[Int[Tensor, "n seq"]]:
        """Yield blocks of sequences from the units ``keep(index)`` accepts, in order."""
        raise NotImplementedError

    def _countable(self) -> bool:
        """Whether counting by reading is bounded (False for endless streams)."""
        return True

    def _describe_fix(self) -> str:
        """What a user can do when this source turns out empty."""
        return "pass more data, a shorter seq_len, or a larger held-out/limit setting"

    # -- public API ----------------------------------------------------------------------------

    def _keep(self, index: int) -> bool:
        for seed, fraction, keep_held_out in self._splits:
            if (_split_fraction(seed, index) < fraction) != keep_held_out:
                return False
        return True

    def sequences(self) -> Iterator[Int[Tensor, " seq"]]:
        """Yield each sequence as an int64 tensor of length ``seq_len`` starting with BOS.

        Raises:
            EmptyTokenSourceError: The source yields no sequence at all.
        """
        produced = 0
        if self._max_sequences != 0:
            for block in self._units(self._keep):
                if self._d_vocab is not None:
                    check_token_range(
                        block, self._d_vocab, name=f"{self.name}: sequence", row_offset=produced
                    )
                for row in block:
                    yield row
                    produced += 1
                    if produced == self._max_sequences:
                        return
        if produced == 0:
            raise EmptyTokenSourceError(
                f"Token source {self.name} yielded no sequence of {self.seq_len} tokens. "
                f"Fix: {self._describe_fix()}."
            )

    def batches(self, batch_size: int) -> Iterator[Int[Tensor, "batch seq"]]:
        """Yield ``[batch_size, seq_len]`` batches; the last one may be smaller.

        Examples:
            >>> import torch
            >>> src = TensorTokenSource(torch.zeros(5, 4, dtype=torch.long), 0)
            >>> [tuple(b.shape) for b in src.batches(2)]
            [(2, 4), (2, 4), (1, 4)]
        """
        batch_size = check_int("batch_size", batch_size, minimum=1)
        rows: list[Tensor] = []
        for seq in self.sequences():
            rows.append(seq)
            if len(rows) == batch_size:
                yield torch.stack(rows)
                rows = []
        if rows:
            yield torch.stack(rows)

    def to_tensor(self) -> Int[Tensor, "n seq"]:
        """All sequences stacked into one ``[n_sequences, seq_len]`` tensor (reads everything).

        Examples:
            >>> import torch
            >>> TensorTokenSource(torch.zeros(3, 4, dtype=torch.long), 0).to_tensor().shape
            torch.Size([3, 4])
        """
        return torch.stack(list(self.sequences()))

    @property
    def n_sequences(self) -> int | None:
        """Number of sequences, or None when it cannot be known without reading an endless stream.

        Finite sources are counted by reading them once (tokenizing text); the count is kept.
        """
        if self._count is None:
            if not self._countable() and self._max_sequences is None:
                return None
            n = 0
            if self._max_sequences != 0:
                for block in self._units(self._keep):
                    n += block.shape[0]
                    if self._max_sequences is not None and n >= self._max_sequences:
                        n = self._max_sequences
                        break
            self._count = n
        return self._count

    @property
    def n_tokens(self) -> int | None:
        """Number of tokens (``n_sequences * seq_len``, BOS included), or None if unknowable."""
        n = self.n_sequences
        return None if n is None else n * self.seq_len

    def _copy(self) -> TokenSource:
        new = copy.copy(self)
        new._count = None
        return new

    def split(self, held_out: float = 0.05, seed: int = 0) -> tuple[TokenSource, TokenSource]:
        """Split into ``(train, held_out)`` sources, per document (or per tensor row).

        Each unit goes to the held-out part when a hash of ``(seed, index)`` falls below
        ``held_out``, so the split is reproducible, the parts are disjoint, and a stream can be
        split while reading it. A limit applied before the split is kept on both parts.

        Args:
            held_out: Expected fraction of units held out, in (0, 1).
            seed: Different seeds give different splits.

        Examples:
            >>> import torch
            >>> src = TensorTokenSource(torch.zeros(100, 4, dtype=torch.long), 0)
            >>> train, held = src.split(0.2, seed=0)
            >>> train.n_sequences + held.n_sequences, 5 < held.n_sequences < 40
            (100, True)
        """
        held_out = check_number("held_out", held_out)
        seed = check_int("seed", seed)
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out}.")
        parts = []
        for keep_held_out, label in ((False, "train"), (True, "held-out")):
            part = self._copy()
            part._splits = (*self._splits, (int(seed), float(held_out), keep_held_out))
            part.name = f"{self.name} [{label} part of split {held_out:g}, seed {seed}]"
            parts.append(part)
        return parts[0], parts[1]

    def limit(self, max_tokens: int) -> TokenSource:
        """A source that stops after ``max_tokens`` tokens, rounded down to whole sequences.

        Examples:
            >>> import torch
            >>> src = TensorTokenSource(torch.zeros(10, 4, dtype=torch.long), 0)
            >>> src.limit(9).n_tokens
            8
        """
        max_tokens = check_int("max_tokens", max_tokens, minimum=1)
        if max_tokens < self.seq_len:
            raise ValueError(
                f"max_tokens={max_tokens} is less than one sequence of {self.seq_len} tokens. "
                f"Fix: ask for at least {self.seq_len} tokens."
            )
        part = self._copy()
        n = max_tokens // self.seq_len
        part._max_sequences = n if self._max_sequences is None else min(n, self._max_sequences)
        part.name = f"{self.name} [first {part._max_sequences * self.seq_len} tokens]"
        return part

    def check_vocab(self, d_vocab: int) -> TokenSource:
        """A source that raises :class:`~tl_universality.core.errors.InvalidTokensError` when it
        reads an id outside ``[0, d_vocab)``, naming the sequence and position.

        Examples:
            >>> import torch
            >>> src = TensorTokenSource(torch.tensor([[0, 1], [0, 12]]), 0).check_vocab(10)
            >>> src.to_tensor()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            tl_universality.core.errors.InvalidTokensError: ...sequence[1, 1] = 12 is not a token...
        """
        part = self._copy()
        part._d_vocab = check_int("d_vocab", d_vocab, minimum=1)
        return part

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, seq_len={self.seq_len})"


class TensorTokenSource(TokenSource):
    """Token ids already in memory.

    Ids must be integers (not bool, not float: a cast would round 2.7 to 2 silently), at least 0,
    and below ``d_vocab`` when given (:func:`~tl_universality.core.validate.check_tokens`).
    A 2-D ``[n, seq]`` tensor is used row by row as it is: every row must start with
    ``bos_token_id`` (else a ValueError), unless ``prepend_bos=True``, which prepends BOS to every
    row (``seq_len = seq + 1``), as ``model.to_tokens`` does. A 1-D tensor is a stream of ids
    (without BOS) cut into chunks of ``seq_len - 1`` each prefixed by BOS; the incomplete last
    chunk is dropped. Splits assign whole rows (or chunks).

    Args:
        tokens: ``[n, seq]`` rows or a ``[n]`` stream of token ids.
        bos_token_id: The BOS id.
        seq_len: Sequence length for a 1-D stream (ignored for 2-D tensors, whose width rules).
        prepend_bos: Prepend BOS to the rows of a 2-D tensor.
        name: Description for messages.
        d_vocab: The models' vocabulary size, when known: ids must be below it.

    Examples:
        >>> import torch
        >>> src = TensorTokenSource(torch.tensor([[5, 6], [7, 8]]), 0, prepend_bos=True)
        >>> src.to_tensor().tolist()
        [[0, 5, 6], [0, 7, 8]]
    """

    def __init__(
        self,
        tokens: Tensor,  # ids [n, seq] or [stream]; any dtype, checked here (not cast)
        bos_token_id: int,
        *,
        seq_len: int = 128,
        prepend_bos: bool = False,
        name: str | None = None,
        d_vocab: int | None = None,
    ) -> None:
        check_tokens(tokens, d_vocab=d_vocab)
        bos_token_id = check_int("bos_token_id", bos_token_id, minimum=0)
        if d_vocab is not None and bos_token_id >= d_vocab:
            raise ValueError(
                f"bos_token_id={bos_token_id} is not a token id of the model (d_vocab={d_vocab})."
                " Fix: pass the BOS id of the model's tokenizer."
            )
        seq_len = check_int("seq_len", seq_len)
        tokens = tokens.detach().to("cpu", torch.long)
        if tokens.ndim == 2:
            if prepend_bos:
                bos = torch.full((tokens.shape[0], 1), bos_token_id, dtype=torch.long)
                tokens = torch.cat([bos, tokens], dim=1)
            elif tokens.shape[0] and not bool((tokens[:, 0] == bos_token_id).all()):
                bad = int((tokens[:, 0] != bos_token_id).nonzero()[0, 0])
                raise ValueError(
                    f"Row {bad} of the token tensor starts with {int(tokens[bad, 0])}, not BOS "
                    f"({bos_token_id}). Fix: pass prepend_bos=True to add BOS to every row, or "
                    f"pass a 1-D tensor to have it chunked."
                )
            width = tokens.shape[1]
            rows = tokens
        elif tokens.ndim == 1:
            body = seq_len - 1
            n = tokens.shape[0] // body if body > 0 else 0
            bos = torch.full((n, 1), bos_token_id, dtype=torch.long)
            rows = torch.cat([bos, tokens[: n * body].reshape(n, body)], dim=1)
            width = seq_len
        else:
            raise ValueError(
                "Token tensor must be 2-D [n, seq] or 1-D [stream], "
                f"got shape {tuple(tokens.shape)}."
            )
        super().__init__(width, bos_token_id, name or f"tensor of shape {tuple(tokens.shape)}")
        self._rows = rows

    def _units(self, keep: Callable[[int], bool]) -> Iterator[Int[Tensor, "n seq"]]:
        if not self._splits:  # fast path: no per-row hashing
            yield self._rows
            return
        mask = torch.tensor([keep(i) for i in range(self._rows.shape[0])], dtype=torch.bool)
        yield self._rows[mask]

    def _describe_fix(self) -> str:
        return (
            f"pass at least one row, or a 1-D stream of at least {self.seq_len - 1} ids "
            f"(or a smaller seq_len)"
        )

"""Token sources: one way to say "these tokens" to every analysis in tl_universality.

A :class:`TokenSource` yields fixed-length sequences of token ids, each starting with BOS, in a
deterministic order. Every source can be batched, counted, split into train / held-out parts and
limited to a number of tokens, without holding the whole data set in memory.

Sources:

- :class:`TensorTokenSource`: a ``[n, seq]`` tensor of rows used as they are, or a 1-D stream of
  ids cut into chunks;
- text sources, whose *documents* are tokenized (without special tokens), each followed by EOS,
  concatenated, and cut into chunks of ``seq_len - 1`` tokens each prefixed by BOS (the incomplete
  last chunk is dropped):

  - :class:`TextFileSource`: a UTF-8 text file whose documents are separated by blank lines;
  - :class:`JsonlSource`: one JSON object per line, text in a field (``"text"``);
  - :class:`ParquetSource`: a column (``"text"``) read batch by batch with pyarrow;
  - :class:`HFDatasetSource`: a Hugging Face dataset, streamed with ``datasets.load_dataset``;
  - :class:`DefaultCorpusSource`: the embedded standard-library corpus
    (:mod:`tl_universality.data.corpus`).

:func:`as_token_source` turns anything a user may pass (a source, a tensor, a path, a dataset name,
``None``) into a source. :func:`check_fits` checks sequences fit a model's context.

Splits are assigned per document (per row for 2-D tensors, per chunk for 1-D ones) by a hash of
``(seed, index)``, so a stream is split while it is read and both parts are reproducible.

Examples:
    >>> import torch
    >>> src = as_token_source(torch.arange(1, 40), seq_len=8, bos_token_id=0)
    >>> next(iter(src.sequences())).tolist()
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> src.n_sequences, src.n_tokens, [b.shape[0] for b in src.batches(2)]
    (5, 40, [2, 2, 1])
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tl_universality.core.errors import EmptyTokenSourceError, SequenceTooLongError

# Documents are tokenized this many at a time: the fast tokenizer parallelises within a batch.
_TOKENIZE_BATCH = 256
# Rows read from a parquet file at a time (bounded memory whatever the file size).
_PARQUET_BATCH = 1024


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
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len}: sequences need BOS plus at least one token.")
        self.seq_len = int(seq_len)
        self.bos_token_id = int(bos_token_id)
        self.name = name
        # (seed, held_out fraction, keep the held-out side?) for each split applied, in order.
        self._splits: tuple[tuple[int, float, bool], ...] = ()
        self._max_sequences: int | None = None
        self._count: int | None = None

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
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, seq_len={self.seq_len})"


class TensorTokenSource(TokenSource):
    """Token ids already in memory.

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

    Examples:
        >>> import torch
        >>> src = TensorTokenSource(torch.tensor([[5, 6], [7, 8]]), 0, prepend_bos=True)
        >>> src.to_tensor().tolist()
        [[0, 5, 6], [0, 7, 8]]
    """

    def __init__(
        self,
        tokens: Int[Tensor, "n seq"] | Int[Tensor, " stream"],
        bos_token_id: int,
        *,
        seq_len: int = 128,
        prepend_bos: bool = False,
        name: str | None = None,
    ) -> None:
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


class TextTokenSource(TokenSource):
    """Base of the sources built from text documents.

    Subclasses implement :meth:`documents`. Documents are tokenized without special tokens,
    each is followed by EOS, and the concatenated stream is cut into chunks of ``seq_len - 1``
    tokens each prefixed by BOS; the incomplete last chunk is dropped. A document's tokens may
    continue into the next sequence, as in GPT-2's training data. Splits assign whole documents.

    Args:
        tokenizer: A Hugging Face tokenizer with a BOS (or EOS) token.
        seq_len: Tokens per sequence, BOS included.
        name: Description for messages.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, seq_len: int, name: str) -> None:
        if tokenizer is None:
            raise ValueError(
                f"Token source {name} holds text, which needs a tokenizer. "
                f"Fix: pass tokenizer=model.tokenizer (or tokenize it yourself and pass a tensor)."
            )
        # GPT-2-style tokenizers use one token for both; fall back on whichever exists.
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        bos, eos = (bos if bos is not None else eos), (eos if eos is not None else bos)
        if bos is None:
            raise ValueError(
                f"The tokenizer {tokenizer.name_or_path!r} has neither a BOS nor an EOS token, so "
                f"sequences cannot start with BOS. Fix: set tokenizer.bos_token before use."
            )
        super().__init__(seq_len, bos, name)
        self.tokenizer = tokenizer
        self.eos_token_id = int(eos)

    def documents(self) -> Iterator[str]:
        """Yield the documents' texts in order."""
        raise NotImplementedError

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _units(self, keep: Callable[[int], bool]) -> Iterator[Int[Tensor, "n seq"]]:
        body = self.seq_len - 1
        buffer: list[int] = []
        pending: list[str] = []

        def flush() -> Iterator[Tensor]:
            nonlocal buffer
            for ids in self._tokenize(pending):
                buffer.extend(ids)
                buffer.append(self.eos_token_id)
            pending.clear()
            n = len(buffer) // body
            if n:
                block = torch.tensor(buffer[: n * body], dtype=torch.long).reshape(n, body)
                buffer = buffer[n * body :]
                bos = torch.full((n, 1), self.bos_token_id, dtype=torch.long)
                yield torch.cat([bos, block], dim=1)

        for index, text in enumerate(self.documents()):
            if not keep(index):
                continue
            pending.append(text)
            if len(pending) >= _TOKENIZE_BATCH:
                yield from flush()
        if pending:
            yield from flush()

    def _describe_fix(self) -> str:
        return (
            "check the documents are not empty (and the text field name), or use a smaller "
            "seq_len or held-out fraction"
        )


class TextFileSource(TextTokenSource):
    """A UTF-8 text file; documents are separated by one or more blank lines.

    Read line by line, so the file never has to fit in memory.

    Examples:
        >>> import tempfile, pathlib
        >>> from tl_universality.data.corpus import load_default_tokenizer
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = path.write_text("first document\\n\\nsecond one\\nstill second\\n")
        >>> src = TextFileSource(path, load_default_tokenizer(512), seq_len=4)
        >>> list(src.documents())
        ['first document', 'second one\\nstill second']
    """

    def __init__(
        self, path: str | Path, tokenizer: PreTrainedTokenizerBase | None, *, seq_len: int = 128
    ) -> None:
        self.path = Path(path)
        super().__init__(tokenizer, seq_len, f"text file {self.path}")

    def documents(self) -> Iterator[str]:
        lines: list[str] = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                elif lines:
                    yield "\n".join(lines)
                    lines = []
        if lines:
            yield "\n".join(lines)


class _FieldFileSource(TextTokenSource):
    """A local file of records whose ``text_field`` holds one document each."""

    kind = "file"

    def __init__(
        self,
        path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None,
        *,
        seq_len: int = 128,
        text_field: str = "text",
    ) -> None:
        self.path = Path(path)
        self.text_field = text_field
        super().__init__(tokenizer, seq_len, f"{self.kind} {self.path}")


class JsonlSource(_FieldFileSource):
    """A JSON-lines file, one document per line in the field ``text_field``; blank lines skipped.

    Examples:
        >>> import json, tempfile, pathlib
        >>> from tl_universality.data.corpus import load_default_tokenizer
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
        >>> _ = path.write_text(json.dumps({"text": "hello there"}) + "\\n")
        >>> list(JsonlSource(path, load_default_tokenizer(512)).documents())
        ['hello there']
    """

    kind = "JSONL file"

    def documents(self) -> Iterator[str]:
        with open(self.path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if self.text_field not in record:
                    raise ValueError(
                        f"Line {line_no} of {self.path} has no field {self.text_field!r} "
                        f"(fields: {sorted(record)}). Fix: pass text_field=..."
                    )
                yield record[self.text_field]


class ParquetSource(_FieldFileSource):
    """A parquet file's text column, read ``_PARQUET_BATCH`` rows at a time with pyarrow.

    Examples:
        >>> import tempfile, pathlib, pyarrow as pa, pyarrow.parquet as pq
        >>> from tl_universality.data.corpus import load_default_tokenizer
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.parquet"
        >>> pq.write_table(pa.table({"text": ["one", "two"]}), path)
        >>> list(ParquetSource(path, load_default_tokenizer(512)).documents())
        ['one', 'two']
    """

    kind = "parquet file"

    def documents(self) -> Iterator[str]:
        import pyarrow.parquet as pq

        file = pq.ParquetFile(self.path)
        if self.text_field not in file.schema_arrow.names:
            raise ValueError(
                f"{self.path} has no column {self.text_field!r} (columns: "
                f"{file.schema_arrow.names}). Fix: pass text_field=..."
            )
        for batch in file.iter_batches(batch_size=_PARQUET_BATCH, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text


class HFDatasetSource(TextTokenSource):
    """A Hugging Face dataset, streamed: ``datasets.load_dataset(name, split=..., streaming=True)``.

    ``name`` may be a hub name (needs the internet), a local folder of data files (``.jsonl``,
    ``.parquet``, ``.txt``, ...), or a folder written by ``Dataset.save_to_disk`` (loaded with
    ``load_from_disk`` and iterated lazily). Without a limit the stream may be endless, so
    :attr:`n_sequences` is None until :meth:`limit` is applied.

    Args:
        name: Dataset name or local folder.
        tokenizer: The tokenizer.
        seq_len: Tokens per sequence, BOS included.
        split: The dataset split.
        text_field: The column holding the text.
        **load_kwargs: Passed to ``datasets.load_dataset`` (e.g. a config name as ``name=...``,
            ``data_files=...``).

    Examples:
        >>> from tl_universality.data.corpus import load_default_tokenizer
        >>> src = HFDatasetSource("NeelNanda/pile-10k", load_default_tokenizer(512))
        >>> next(src.documents())[:10]  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str | Path,
        tokenizer: PreTrainedTokenizerBase | None,
        *,
        seq_len: int = 128,
        split: str = "train",
        text_field: str = "text",
        **load_kwargs: Any,
    ) -> None:
        self.dataset_name = str(name)
        self.split_name = split
        self.text_field = text_field
        self.load_kwargs = load_kwargs
        super().__init__(tokenizer, seq_len, f"dataset {self.dataset_name!r} (split {split!r})")

    def _countable(self) -> bool:
        return False

    def _dataset(self) -> Iterable[dict]:
        import datasets

        local = Path(self.dataset_name)
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[self.split_name]
            return loaded.to_iterable_dataset()
        return datasets.load_dataset(
            self.dataset_name, split=self.split_name, streaming=True, **self.load_kwargs
        )

    def documents(self) -> Iterator[str]:
        for record in self._dataset():
            if self.text_field not in record:
                raise ValueError(
                    f"{self.name} has no field {self.text_field!r} (fields: {sorted(record)}). "
                    f"Fix: pass text_field=..."
                )
            text = record[self.text_field]
            if text:
                yield text


class DefaultCorpusSource(TextTokenSource):
    """The embedded standard-library corpus (see :func:`tl_universality.data.corpus.build_corpus`).

    Args:
        tokenizer: The tokenizer; by default the cached default tokenizer (vocabulary 4096).
        seq_len: Tokens per sequence, BOS included.
        include_source: Include the standard library's source code.

    Examples:
        >>> from tl_universality.data.corpus import load_default_tokenizer
        >>> src = DefaultCorpusSource(load_default_tokenizer(512), seq_len=64)
        >>> seq = next(src.sequences())
        >>> seq.shape, int(seq[0]) == src.bos_token_id
        (torch.Size([64]), True)
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        seq_len: int = 128,
        include_source: bool = False,
    ) -> None:
        if tokenizer is None:
            from tl_universality.data.corpus import load_default_tokenizer

            tokenizer = load_default_tokenizer(include_source=include_source)
        self.include_source = include_source
        label = "with stdlib source" if include_source else "docstrings and topics"
        super().__init__(tokenizer, seq_len, f"default corpus ({label})")

    def documents(self) -> Iterator[str]:
        from tl_universality.data.corpus import build_corpus

        yield from build_corpus(self.include_source)


def as_token_source(
    tokens: Any = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    seq_len: int = 128,
    max_tokens: int | None = None,
    text_field: str = "text",
    split: str = "train",
    bos_token_id: int | None = None,
    prepend_bos: bool = False,
) -> TokenSource:
    """Turn whatever a user passed as "the tokens" into a :class:`TokenSource`.

    Accepted:

    - a :class:`TokenSource`: returned as is (``max_tokens`` still applies);
    - a ``torch.Tensor``: 2-D rows (width = ``seq_len``) or a 1-D stream (see
      :class:`TensorTokenSource`); the BOS id is ``bos_token_id`` or the tokenizer's;
    - a path ending in ``.txt``, ``.jsonl`` or ``.parquet`` (text, needs a tokenizer);
    - a folder (local data files or a ``save_to_disk`` dataset) or any other string: a Hugging
      Face dataset, streamed;
    - ``None`` or ``"default"``: the embedded default corpus (default tokenizer if none given).

    Args:
        tokens: What to read.
        tokenizer: Tokenizer for text (usually ``model.tokenizer``).
        seq_len: Tokens per sequence, BOS included (ignored for 2-D tensors and TokenSources).
        max_tokens: Stop after this many tokens (whole sequences).
        text_field: Field/column holding the text (JSONL, parquet, datasets).
        split: Dataset split (Hugging Face datasets).
        bos_token_id: BOS id for tensors, when there is no tokenizer.
        prepend_bos: Prepend BOS to the rows of a 2-D tensor.

    Examples:
        >>> import torch
        >>> src = as_token_source(torch.tensor([[0, 1, 2], [0, 3, 4]]), bos_token_id=0)
        >>> src.n_tokens
        6
        >>> as_token_source(torch.tensor([[0, 1, 2]]), bos_token_id=0, max_tokens=3).n_sequences
        1
    """
    source: TokenSource
    if isinstance(tokens, TokenSource):
        source = tokens
    elif isinstance(tokens, Tensor):
        if bos_token_id is None:
            if tokenizer is None or tokenizer.bos_token_id is None:
                raise ValueError(
                    "A token tensor needs the BOS id. Fix: pass tokenizer=model.tokenizer or "
                    "bos_token_id=..."
                )
            bos_token_id = tokenizer.bos_token_id
        source = TensorTokenSource(
            tokens, int(bos_token_id), seq_len=seq_len, prepend_bos=prepend_bos
        )
    elif tokens is None or (isinstance(tokens, str) and tokens == "default"):
        source = DefaultCorpusSource(tokenizer, seq_len=seq_len)
    elif isinstance(tokens, str | Path):
        path = Path(tokens)
        suffix = path.suffix.lower()
        if suffix in {".txt", ".jsonl", ".parquet"}:
            if not path.is_file():
                raise FileNotFoundError(f"No such token file: {path}.")
            if suffix == ".txt":
                source = TextFileSource(path, tokenizer, seq_len=seq_len)
            elif suffix == ".jsonl":
                source = JsonlSource(path, tokenizer, seq_len=seq_len, text_field=text_field)
            else:
                source = ParquetSource(path, tokenizer, seq_len=seq_len, text_field=text_field)
        else:
            source = HFDatasetSource(
                tokens, tokenizer, seq_len=seq_len, split=split, text_field=text_field
            )
    else:
        raise TypeError(
            f"Cannot make a token source from {type(tokens).__name__}. Pass a TokenSource, a "
            f"tensor of ids, a .txt/.jsonl/.parquet path, a dataset name, or None (default corpus)."
        )
    if max_tokens is not None:
        source = source.limit(max_tokens)
    return source


def check_fits(source: TokenSource, model: Any) -> None:
    """Raise :class:`SequenceTooLongError` if the sequences are longer than ``model.cfg.n_ctx``.

    Examples:
        >>> import torch, types
        >>> src = TensorTokenSource(torch.zeros(1, 8, dtype=torch.long), 0)
        >>> check_fits(src, types.SimpleNamespace(cfg=types.SimpleNamespace(n_ctx=8)))
        >>> short = types.SimpleNamespace(cfg=types.SimpleNamespace(n_ctx=4))
        >>> check_fits(src, short)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tl_universality.core.errors.SequenceTooLongError: Token source ... n_ctx=4. Fix: ...
    """
    n_ctx = model.cfg.n_ctx
    if source.seq_len > n_ctx:
        raise SequenceTooLongError(
            f"Token source {source.name} has sequences of {source.seq_len} tokens but the model's "
            f"context is n_ctx={n_ctx}. Fix: build the source with seq_len={n_ctx} (or less), "
            f"e.g. as_token_source(..., seq_len={n_ctx})."
        )

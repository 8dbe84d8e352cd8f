"""Token sources that tokenize text: strings, files, JSONL, parquet, datasets, the default
corpus."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tl_universality.core.errors import TokenFileError
from tl_universality.data.tokens.sources import PARQUET_BATCH, TOKENIZE_BATCH, TokenSource


def _bad_utf8(path: Path, err: UnicodeDecodeError) -> TokenFileError:
    """The error for a file that is not UTF-8, naming the first bad line (found by re-reading)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return TokenFileError(
                    f"Line {line_no} of {path} is not valid UTF-8 (byte {raw[bad.start]:#04x} at"
                    f" column {bad.start + 1}). Fix: re-encode the file as UTF-8, e.g."
                    f" iconv -f latin1 -t utf-8, or remove that line."
                )
    return TokenFileError(f"{path} is not valid UTF-8 ({err}). Fix: re-encode it as UTF-8.")


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
            if len(pending) >= TOKENIZE_BATCH:
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
            try:
                for line in f:
                    if line.strip():
                        lines.append(line.rstrip("\n"))
                    elif lines:
                        yield "\n".join(lines)
                        lines = []
            except UnicodeDecodeError as err:
                raise _bad_utf8(self.path, err) from None
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
            try:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        yield self._text(line, line_no)
            except UnicodeDecodeError as err:
                raise _bad_utf8(self.path, err) from None

    def _text(self, line: str, line_no: int) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TokenFileError(
                f"Line {line_no} of {self.path} is not valid JSON ({err.msg} at column"
                f" {err.colno}). Fix: repair or remove that line (one JSON object per line)."
            ) from None
        if not isinstance(record, dict):
            raise TokenFileError(
                f"Line {line_no} of {self.path} holds a JSON {type(record).__name__}, not an"
                f" object with a {self.text_field!r} field. Fix: write one object per line."
            )
        if self.text_field not in record:
            raise ValueError(
                f"Line {line_no} of {self.path} has no field {self.text_field!r} "
                f"(fields: {sorted(record)}). Fix: pass text_field=..."
            )
        text = record[self.text_field]
        if not isinstance(text, str):
            raise TokenFileError(
                f"Line {line_no} of {self.path}: field {self.text_field!r} holds a"
                f" {type(text).__name__}, not text. Fix: store the document as a string."
            )
        return text


class ParquetSource(_FieldFileSource):
    """A parquet file's text column, read ``PARQUET_BATCH`` rows at a time with pyarrow.

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

        try:
            # Page checksums, where the writer stored them, catch a garbled page that would
            # otherwise decode to other text.
            file = pq.ParquetFile(self.path, page_checksum_verification=True)
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError on a damaged footer
            raise TokenFileError(
                f"{self.path} is not a readable parquet file ({err}). Fix: write it again, or"
                " check it is parquet."
            ) from None
        if self.text_field not in file.schema_arrow.names:
            raise ValueError(
                f"{self.path} has no column {self.text_field!r} (columns: "
                f"{file.schema_arrow.names}). Fix: pass text_field=..."
            )
        row = 0
        for group in range(file.num_row_groups):
            first, rows = row, file.metadata.row_group(group).num_rows
            for text in self._group(file, group, first, rows):
                if text is not None and not isinstance(text, str):
                    raise TokenFileError(
                        f"Row {row} of {self.path}: column {self.text_field!r} holds"
                        f" {type(text).__name__}, not text. Fix: pass text_field=<a string column>."
                    )
                row += 1
                if text is not None:
                    yield text
            row = first + rows

    def _group(self, file: Any, group: int, first: int, rows: int) -> Iterator[Any]:
        """The values of one row group, streamed; a garbled page names the group's rows."""
        batches = file.iter_batches(
            batch_size=PARQUET_BATCH, row_groups=[group], columns=[self.text_field]
        )
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as err:  # a garbled page: ArrowInvalid, OSError, ...
                raise TokenFileError(
                    f"Rows {first}-{first + rows - 1} (row group {group}) of {self.path} cannot be"
                    f" read ({type(err).__name__}: {err}). Fix: write the file again, or drop"
                    " that row group."
                ) from None
            yield from batch.column(0).to_pylist()


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

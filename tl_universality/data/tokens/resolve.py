"""The one way from what a user passes as ``tokens`` to a token source."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tl_universality.core.errors import InvalidArgumentError, SequenceTooLongError
from tl_universality.core.validate import check_int, check_tokens
from tl_universality.data.tokens.sources import TensorTokenSource, TokenSource
from tl_universality.data.tokens.text import (
    DefaultCorpusSource,
    HFDatasetSource,
    JsonlSource,
    ParquetSource,
    TextFileSource,
)

Tokens: TypeAlias = Tensor | TokenSource | str | os.PathLike | None
"""What every analysis takes as ``tokens``: a ``[n, seq]`` (or 1-D) tensor of ids, a
:class:`TokenSource`, a ``.txt``/``.jsonl``/``.parquet`` path, a dataset name, or ``None`` (the
embedded default corpus). :func:`resolve_tokens` turns it into a source."""

#: The paper's sequence length; a model with a shorter context uses its own.
DEFAULT_MAX_SEQ_LEN = 512


def default_seq_len(models: Any) -> int:
    """The one rule for the sequence length of text: 512 (the paper's), or the smallest
    ``n_ctx`` of the models when that is shorter.

    Examples:
        >>> import types
        >>> default_seq_len([types.SimpleNamespace(cfg=types.SimpleNamespace(n_ctx=64))])
        64
    """
    models = list(models) if isinstance(models, Sequence) else [models]
    return min(DEFAULT_MAX_SEQ_LEN, *(int(m.cfg.n_ctx) for m in models))


def resolve_tokens(
    tokens: Tokens,
    models: Any,
    *,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    **source_options: Any,
) -> TokenSource:
    """The one way every analysis turns its ``tokens`` argument into batches' source.

    The rule, the same for every analysis:

    - **sequence length** of text sources: ``seq_len``, else :func:`default_seq_len` of the
      models (512, or the smallest context); a 2-D tensor keeps its own width;
    - **BOS**: every sequence starts with BOS; its id is ``bos_token_id``, else the first model's
      tokenizer's, else (a 2-D token tensor of a model without a tokenizer) the first token of the
      first row, which every row must then start with; positions holding BOS or padding are left
      out of every statistic;
    - the sequences must fit every model's context (``SequenceTooLongError`` otherwise);
    - token ids must be integers in ``[0, d_vocab)`` of every model: a tensor is checked at once,
      a text source as it is read (:class:`~tl_universality.core.errors.InvalidTokensError`
      naming the position and the id); ``seq_len``, ``max_tokens`` and ``bos_token_id`` must be
      whole numbers in range (:class:`~tl_universality.core.errors.InvalidArgumentError`).

    Called once per analysis; a :class:`TokenSource` passes through unchanged (``max_tokens``
    still applies).

    Args:
        tokens: See :data:`Tokens`.
        models: The model, or the models that will read the tokens (they share a tokenizer).
        seq_len: Tokens per sequence for text, BOS included.
        max_tokens: Stop after this many tokens (whole sequences).
        bos_token_id: The BOS id of a token tensor, when the models have no tokenizer.
        source_options: ``text_field``, ``split``, ``prepend_bos`` (see :func:`as_token_source`).

    Examples:
        >>> import torch
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu"))
        >>> resolve_tokens(torch.tensor([[0, 1, 2, 3]]), model, bos_token_id=0).n_tokens
        4
        >>> resolve_tokens(torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]]), model)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Row 1 of the token tensor starts with 1, not BOS (0)...
    """
    models = list(models) if isinstance(models, Sequence) else [models]
    seq_len = check_int("seq_len", seq_len, minimum=2, optional=True)
    max_tokens = check_int("max_tokens", max_tokens, minimum=1, optional=True)
    bos_token_id = check_int("bos_token_id", bos_token_id, minimum=0, optional=True)
    d_vocab = _d_vocab(models)
    if bos_token_id is not None and d_vocab is not None and bos_token_id >= d_vocab:
        raise InvalidArgumentError(
            f"bos_token_id={bos_token_id} is not a token id of the model (d_vocab={d_vocab})."
            " Fix: pass the BOS id of the model's tokenizer."
        )
    tokenizer = getattr(models[0], "tokenizer", None)
    if isinstance(tokens, Tensor):
        check_tokens(tokens, d_vocab=d_vocab)
    elif tokenizer is None and isinstance(tokens, str | os.PathLike) and tokens != "default":
        raise InvalidArgumentError(
            f"tokens={str(tokens)!r} is text, and the model has no tokenizer to turn it into ids."
            " Fix: give the model its tokenizer (HookedTransformer(cfg, tokenizer=...)), or"
            " tokenize the text yourself and pass the ids as a tensor."
        )
    if (
        isinstance(tokens, Tensor)
        and bos_token_id is None
        and getattr(tokenizer, "bos_token_id", None) is None
    ):
        if tokens.ndim == 2 and tokens.numel():
            bos_token_id = int(tokens[0, 0])  # every row must start with it (checked)
        else:
            raise ValueError(
                "tokens is a 1-D token stream and the model has no tokenizer, so the BOS id to"
                " put before each chunk is unknown. Fix: pass bos_token_id=<your BOS id>."
            )
    source = as_token_source(
        tokens,
        tokenizer,
        seq_len=seq_len or default_seq_len(models),
        max_tokens=max_tokens,
        bos_token_id=bos_token_id,
        **source_options,
    )
    for model in models:
        check_fits(source, model)
    if d_vocab is not None:
        source = source.check_vocab(d_vocab)
    return source


def _d_vocab(models: Sequence[Any]) -> int | None:
    """The smallest vocabulary of the models (ids must fit all), None if one does not say."""
    sizes = [getattr(getattr(m, "cfg", None), "d_vocab", None) for m in models]
    if any(not isinstance(size, int) or size < 1 for size in sizes):
        return None
    return min(sizes)


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
    seq_len = check_int("seq_len", seq_len, minimum=2)
    max_tokens = check_int("max_tokens", max_tokens, minimum=1, optional=True)
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

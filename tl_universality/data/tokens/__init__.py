"""Tokens: every analysis reads fixed-length, BOS-first token sequences from a source."""

from tl_universality.data.tokens.resolve import (
    DEFAULT_MAX_SEQ_LEN,
    Tokens,
    as_token_source,
    check_fits,
    default_seq_len,
    resolve_tokens,
)
from tl_universality.data.tokens.sources import (
    PARQUET_BATCH,
    TOKENIZE_BATCH,
    TensorTokenSource,
    TokenSource,
)
from tl_universality.data.tokens.text import (
    DefaultCorpusSource,
    HFDatasetSource,
    JsonlSource,
    ParquetSource,
    TextFileSource,
    TextTokenSource,
)

__all__ = [
    "DEFAULT_MAX_SEQ_LEN",
    "Tokens",
    "default_seq_len",
    "resolve_tokens",
    "DefaultCorpusSource",
    "HFDatasetSource",
    "JsonlSource",
    "PARQUET_BATCH",
    "ParquetSource",
    "TOKENIZE_BATCH",
    "TensorTokenSource",
    "TextFileSource",
    "TextTokenSource",
    "TokenSource",
    "as_token_source",
    "check_fits",
]

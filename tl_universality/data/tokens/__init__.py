"""Tokens: every analysis reads fixed-length, BOS-first token sequences from a source."""

from tl_universality.data.tokens.resolve import (
    as_token_source,
    check_fits,
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

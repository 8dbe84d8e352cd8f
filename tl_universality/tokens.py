"""Moved to :mod:`tl_universality.data.tokens`.

This path works for one more release.
"""

from tl_universality.data.tokens import (
    DefaultCorpusSource,
    HFDatasetSource,
    JsonlSource,
    ParquetSource,
    TensorTokenSource,
    TextFileSource,
    TextTokenSource,
    TokenSource,
    as_token_source,
    check_fits,
)

__all__ = [
    "DefaultCorpusSource",
    "HFDatasetSource",
    "JsonlSource",
    "ParquetSource",
    "TensorTokenSource",
    "TextFileSource",
    "TextTokenSource",
    "TokenSource",
    "as_token_source",
    "check_fits",
]

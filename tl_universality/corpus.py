"""Moved to :mod:`tl_universality.data.corpus`.

This path works for one more release.
"""

from tl_universality.data.corpus import (
    SPECIAL_TOKEN,
    build_corpus,
    corpus_info,
    corpus_key,
    corpus_path,
    load_default_tokenizer,
    stdlib_dir,
    stdlib_files,
    timed_tokenizer,
    tokenizer_folder,
    train_tokenizer,
)

__all__ = [
    "SPECIAL_TOKEN",
    "build_corpus",
    "corpus_info",
    "corpus_key",
    "corpus_path",
    "load_default_tokenizer",
    "stdlib_dir",
    "stdlib_files",
    "timed_tokenizer",
    "tokenizer_folder",
    "train_tokenizer",
]

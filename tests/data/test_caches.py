"""Integrity of the corpus and tokenizer caches: damage is found and rebuilt, never used."""

from __future__ import annotations

import json
import warnings

import pytest

from tl_universality.core.errors import CorruptCacheError
from tl_universality.data import corpus

DOCS = [f"document {i}: parsing tokens, trees and {i * 7} bytes" for i in range(40)]


@pytest.fixture
def small_cache(tmp_path, monkeypatch):
    """A fresh cache whose corpus is ``DOCS`` (fast to build and to train a tokenizer on)."""
    monkeypatch.setenv("TL_UNIVERSALITY_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "_gather_documents", lambda include_source: list(DOCS))
    return tmp_path


def _no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_intact_corpus_is_reused_without_a_warning(small_cache):
    assert corpus.build_corpus() == DOCS
    assert _no_warning(corpus.build_corpus) == DOCS
    assert _no_warning(corpus.corpus_info)["n_documents"] == len(DOCS)


def _damage_lines(path, edit):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(edit(lines)), encoding="utf-8")


@pytest.mark.parametrize(
    "edit",
    [
        lambda lines: lines[:-1],  # cut at a line boundary: valid JSONL, one document short
        lambda lines: lines[:10] + lines[11:],  # a line lost in the middle
        lambda lines: [lines[0].replace("document", "docuMent"), *lines[1:]],  # a changed letter
        lambda lines: [*lines, json.dumps({"text": "extra"}) + "\n"],  # a document added
    ],
    ids=["cut-at-line", "line-lost", "letter-changed", "line-added"],
)
def test_damaged_corpus_is_rebuilt_with_a_warning(small_cache, edit):
    corpus.build_corpus()
    path = corpus.corpus_path()
    _damage_lines(path, edit)
    with pytest.warns(UserWarning, match=r"corpus\.jsonl does not match its checksum"):
        assert corpus.build_corpus() == DOCS  # the oracle: what was saved
    assert _no_warning(corpus.build_corpus) == DOCS


def test_corpus_cache_without_a_manifest_is_rebuilt(small_cache):
    corpus.build_corpus()
    path = corpus.corpus_path()
    (path.parent / "manifest.json").unlink()
    _damage_lines(path, lambda lines: lines[:5])
    with pytest.warns(UserWarning, match="manifest.json is missing"):
        assert corpus.build_corpus() == DOCS


@pytest.mark.parametrize(
    "damage",
    [
        # A merge rule changed inside valid JSON: it loads, as another tokenizer, without a check.
        lambda f: (f / "tokenizer.json").write_text(
            (f / "tokenizer.json").read_text().replace('"Ġ', '"Ġx', 1)
        ),
        lambda f: (f / "tokenizer_config.json").write_text(
            (f / "tokenizer_config.json").read_text()[:-20]
        ),
        lambda f: (f / "tokenizer.json").unlink(),
        lambda f: (f / "manifest.json").write_text("[]"),
    ],
    ids=["merge-changed", "config-truncated", "file-missing", "manifest-list"],
)
def test_damaged_tokenizer_is_retrained_with_a_warning(small_cache, damage):
    first = corpus.load_default_tokenizer(300)
    folder = corpus.tokenizer_folder(300)
    original = (folder / "tokenizer.json").read_text()
    damage(folder)
    with pytest.raises(CorruptCacheError, match=str(folder)):
        corpus._reload(folder)
    with pytest.warns(UserWarning, match="Retraining the tokenizer cache"):
        again = corpus.load_default_tokenizer(300)
    assert again.get_vocab() == first.get_vocab()
    assert (folder / "tokenizer.json").read_text() == original  # the oracle: the saved file
    assert _no_warning(lambda: corpus.load_default_tokenizer(300)).get_vocab() == first.get_vocab()

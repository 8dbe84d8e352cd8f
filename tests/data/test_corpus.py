"""The embedded corpus and its tokenizer."""

from __future__ import annotations

import json

import pytest

from tests.helpers import build_model
from tl_universality.core.cache import cache_root
from tl_universality.core.errors import CorruptCacheError
from tl_universality.data import corpus


def test_corpus_is_deterministic_and_matches_a_fresh_build(monkeypatch):
    docs = corpus.build_corpus()
    assert docs == corpus.build_corpus()
    # The cached copy starts with what reading the interpreter's first files gives right now
    # (a prefix, to keep the test fast: the full build takes seconds).
    first = corpus.stdlib_files()[:60]
    monkeypatch.setattr(corpus, "stdlib_files", lambda: first)
    fresh = corpus._gather_documents(include_source=False)
    assert len(fresh) > 500 and docs[: len(fresh)] == fresh


def test_corpus_content():
    from pydoc_data.topics import topics

    docs = corpus.build_corpus()
    n_topics = len([t for t in topics.values() if t.strip()])
    assert docs[:n_topics] == [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    assert len(docs) > n_topics + 5000  # thousands of docstrings follow the topics
    assert all(isinstance(d, str) and len(d) >= corpus._MIN_DOCSTRING_CHARS for d in docs)
    info = corpus.corpus_info()
    assert info["n_documents"] == len(docs)
    assert info["n_characters"] == sum(map(len, docs))
    assert corpus.corpus_path().is_relative_to(cache_root() / "corpus")


def test_stdlib_files_skip_tests_and_are_sorted():
    files = corpus.stdlib_files()
    rel = [f.relative_to(corpus.stdlib_dir()).as_posix() for f in files]
    assert rel == sorted(rel)
    assert not any(part in {"test", "tests", "idle_test", "site-packages"} for f in files
                   for part in f.relative_to(corpus.stdlib_dir()).parts)  # fmt: skip
    assert "ast.py" in rel and "json/decoder.py" in rel


def test_source_code_is_appended_after_the_prose(monkeypatch):
    few = corpus.stdlib_files()[:4]
    monkeypatch.setattr(corpus, "stdlib_files", lambda: few)
    prose = corpus._gather_documents(include_source=False)
    with_source = corpus._gather_documents(include_source=True)
    # Prose keeps its indices (hence its held-out split); each file adds one document.
    assert with_source[: len(prose)] == prose
    assert with_source[len(prose) :] == [f.read_text(encoding="utf-8") for f in few]
    assert corpus.corpus_key(True) != corpus.corpus_key(False)


def test_docstrings_in_source_order():
    src = '"""Module docstring, long enough to keep."""\n' + "\n".join(
        f'def f{i}():\n    """Function number {i} has a docstring of some length."""\n'
        for i in range(3)
    )
    docs = list(corpus._docstrings(src))
    assert docs[0].startswith("Module") and [d.split()[2] for d in docs[1:]] == ["0", "1", "2"]
    assert list(corpus._docstrings("def broken(:\n")) == []


def test_unreadable_corpus_cache_raises(monkeypatch, tmp_path):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    monkeypatch.setattr(corpus, "corpus_path", lambda include_source=False: bad)
    with pytest.raises(CorruptCacheError, match="Fix: delete"):
        corpus.build_corpus()


def test_tokenizer_round_trip_and_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok) == 512
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tok, name) == corpus.SPECIAL_TOKEN
    assert tok.bos_token_id == tok.eos_token_id == 0
    for text in ["def f(x):\n    return x + 1", "Ünïcödé — ≥ 😀", "  leading spaces", ""]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
        assert 0 not in ids  # no special token inside ordinary text
    # The tokenizer was reloaded from its cache folder, which TransformerLens needs.
    assert tok.name_or_path == str(corpus.tokenizer_folder(512))


def test_tokenizer_works_with_hooked_transformer(tiny_tokenizer):
    model = build_model(tokenizer=tiny_tokenizer)
    toks = model.to_tokens("The quick brown fox")
    assert toks[0, 0].item() == tiny_tokenizer.bos_token_id
    assert (toks[0, 1:] != tiny_tokenizer.bos_token_id).all()  # exactly one BOS
    assert model.to_string(toks[0, 1:]) == "The quick brown fox"
    assert model(toks).shape == (1, toks.shape[1], len(tiny_tokenizer))


def test_default_tokenizer_is_trained_once(tiny_tokenizer, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(corpus, "train_tokenizer", boom)
    again = corpus.load_default_tokenizer(512)
    assert again.get_vocab() == tiny_tokenizer.get_vocab()


def test_broken_tokenizer_cache_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_UNIVERSALITY_CACHE", str(tmp_path))
    docs = ["alpha beta gamma delta"] * 20
    monkeypatch.setattr(corpus, "build_corpus", lambda include_source=False: docs)
    first = corpus.load_default_tokenizer(300)
    folder = corpus.tokenizer_folder(300)
    (folder / "tokenizer.json").write_text("{ not json")
    with pytest.raises(CorruptCacheError, match=str(folder)):
        corpus._reload(folder)
    with pytest.warns(UserWarning, match="Retraining the tokenizer cache"):
        assert corpus.load_default_tokenizer(300).get_vocab() == first.get_vocab()


def test_tokenizer_training_is_deterministic(tmp_path):
    docs = [f"document {i} about parsing tokens and trees" for i in range(50)]
    a = corpus.train_tokenizer(320, folder=tmp_path / "a", documents=docs)
    b = corpus.train_tokenizer(320, folder=tmp_path / "b", documents=docs)
    assert a.get_vocab() == b.get_vocab()
    merges_a = json.loads((tmp_path / "a" / "tokenizer.json").read_text())["model"]["merges"]
    merges_b = json.loads((tmp_path / "b" / "tokenizer.json").read_text())["model"]["merges"]
    assert merges_a == merges_b


def test_tokenizer_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        corpus.train_tokenizer(100, folder=tmp_path, documents=["x"])
    with pytest.raises(ValueError, match="folder"):
        corpus.train_tokenizer(300, documents=["x"])

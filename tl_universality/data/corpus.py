"""The embedded default corpus and its byte-level BPE tokenizer.

Every CPython installation ships a few megabytes of English prose about programming: the help
topics in :mod:`pydoc_data.topics` and the docstrings of the standard library. That is enough text
to train the small offline seed families of :mod:`tl_universality.data.seeds` with no download at
all.
Optionally the standard library's *source code* is added as extra text (about 12M characters).

Both the corpus and the tokenizer are built once and cached under ``cache_root()``:

- ``corpus/<hash>/corpus.jsonl``: one ``{"text": ...}`` object per document, keyed by the Python
  version and the options;
- ``tokenizer/<hash>/``: a ``transformers`` tokenizer folder (``save_pretrained``), keyed by the
  corpus key, the vocabulary size and the tokenizer options. TransformerLens re-loads a tokenizer
  from its ``name_or_path`` to switch on BOS, so the tokenizer we hand out is always the one
  *reloaded* from that folder, never the in-memory object we trained.

Both are saved folders of :mod:`tl_universality.core.saving`: a ``manifest.json`` records each
file's size and SHA-256, checked on every load. A damaged entry (a flipped byte, a corpus cut at a
line boundary, a missing file, an entry of an older version without checksums) is rebuilt with a
warning; building is deterministic, so the rebuilt entry equals the lost one.

Examples:
    >>> docs = build_corpus()
    >>> len(docs) > 1000 and all(isinstance(d, str) and d for d in docs)
    True
"""

from __future__ import annotations

import ast
import contextlib
import json
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from tl_universality.core.cache import build_lock, cache_root, stable_hash
from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.saving import open_saved, read_manifest, save_folder

#: The one special token: beginning of sequence, end of document, padding and unknown.
SPECIAL_TOKEN = "<|endoftext|>"

# Bump when the way documents are gathered changes, so old caches are not reused.
_CORPUS_FORMAT = 1
_TOKENIZER_FORMAT = 1
# Manifest tags of the two cache folders (core.saving); their versions are the formats above.
_CORPUS_TAG = "tl_universality.corpus"
_TOKENIZER_TAG = "tl_universality.tokenizer"

# Folders (anywhere in a path) whose files are not part of the corpus: test suites are mostly
# code fixtures, site-packages is not the standard library, and encodings holds codec tables.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings"})
# Docstrings shorter than this are mostly "Return x." one-liners that add little text.
_MIN_DOCSTRING_CHARS = 32


def stdlib_dir() -> Path:
    """The folder holding the running interpreter's pure-Python standard library.

    Examples:
        >>> (stdlib_dir() / "ast.py").is_file()
        True
    """
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Standard-library ``.py`` files used by the corpus, in sorted (deterministic) order.

    Test suites, ``site-packages``, codec tables, build configuration and ``pydoc_data`` (whose
    topics are added separately, as text) are skipped.

    Examples:
        >>> files = stdlib_files()
        >>> files == sorted(files) and not any("test" in f.parts for f in files)
        True
    """
    root = stdlib_dir()
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if _SKIP_DIRS.intersection(parts[:-1]):
            continue
        if parts[0].startswith(("config-", "_sysconfigdata", "pydoc_data")):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(source: str) -> Iterator[str]:
    """Docstrings of the module, classes and functions in ``source``, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a few files target other Python versions
        return
    nodes = [tree]
    # Depth-first in source order (ast.walk is breadth-first, which scatters related docstrings).
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= _MIN_DOCSTRING_CHARS:
                yield doc
        nodes.extend(reversed(list(ast.iter_child_nodes(node))))


def _gather_documents(include_source: bool) -> list[str]:
    """Read the documents from the interpreter's files (no cache)."""
    from pydoc_data.topics import topics

    docs = [topics[key].strip() for key in sorted(topics) if topics[key].strip()]
    sources = []
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.extend(_docstrings(text))
        if include_source and text.strip():
            sources.append(text)
    # Source code goes last, so the prose documents keep their indices (and their held-out split)
    # whether or not the source is included.
    return docs + sources


def corpus_key(include_source: bool = False) -> dict:
    """The settings a corpus depends on: Python version, corpus format and options.

    Examples:
        >>> corpus_key()["include_source"]
        False
    """
    return {
        "python": sys.version,
        "stdlib": str(stdlib_dir()),
        "format": _CORPUS_FORMAT,
        "include_source": bool(include_source),
    }


def corpus_path(include_source: bool = False) -> Path:
    """The cached ``corpus.jsonl`` for these options, building it on first use.

    Examples:
        >>> corpus_path().name
        'corpus.jsonl'
    """
    folder = cache_root() / "corpus" / stable_hash(corpus_key(include_source))
    path = folder / "corpus.jsonl"
    with build_lock(folder):  # another process building it: wait, then read what it built
        try:
            _corpus_meta(folder)
            return path
        except CorruptCacheError as err:
            if folder.exists():
                warnings.warn(f"{err} Rebuilding the corpus cache.", stacklevel=2)
        docs = _gather_documents(include_source)
        info = dict(corpus_key(include_source), n_documents=len(docs))
        info["n_characters"] = sum(len(d) for d in docs)
        with save_folder(folder, _CORPUS_TAG, _CORPUS_FORMAT, meta=info) as out:
            with open(out.add_file("corpus.jsonl"), "w", encoding="utf-8") as f:
                for doc in docs:
                    f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            out.write_json("info", info)
    return path


def _corpus_meta(folder: Path) -> dict:
    """The verified manifest meta of a corpus cache folder (``CorruptCacheError`` if damaged)."""
    fix = f"delete {folder} and call build_corpus() again (it is rebuilt from the interpreter)."
    with open_saved(folder, _CORPUS_TAG, _CORPUS_FORMAT, what="corpus cache", fix=fix) as saved:
        saved.path("corpus.jsonl")
        return dict(saved.meta)


def build_corpus(include_source: bool = False) -> list[str]:
    """The default corpus: pydoc topics, stdlib docstrings and optionally stdlib source code.

    Deterministic for a given Python installation: topics in sorted key order, then docstrings
    from the standard-library files in sorted path order (depth-first source order within a file),
    then, with ``include_source=True``, each file's source as one more document.

    Args:
        include_source: Also add the source code of every standard-library file as a document.

    Returns:
        The documents, as non-empty strings.

    Examples:
        >>> docs = build_corpus()
        >>> docs == build_corpus()
        True
        >>> sum(map(len, docs)) > 1_000_000
        True
    """
    path = corpus_path(include_source)
    try:
        with open(path, encoding="utf-8") as f:
            docs = [json.loads(line)["text"] for line in f]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCacheError(
            f"The cached corpus {path} is unreadable ({err}). "
            f"Fix: delete {path.parent} and call build_corpus() again."
        ) from err
    expected = _corpus_meta(path.parent)["n_documents"]
    if len(docs) != expected:  # changed between the check and the read (a concurrent rebuild)
        raise CorruptCacheError(
            f"The cached corpus {path} holds {len(docs)} documents, its manifest {expected}."
            f" Fix: delete {path.parent} and call build_corpus() again."
        )
    return docs


def corpus_info(include_source: bool = False) -> dict:
    """Size of the default corpus: number of documents and characters (from the cache).

    Examples:
        >>> corpus_info()["n_documents"] > 1000
        True
    """
    return _corpus_meta(corpus_path(include_source).parent)


def tokenizer_folder(vocab_size: int = 4096, include_source: bool = False) -> Path:
    """Where the default tokenizer with these settings is (or will be) cached.

    Examples:
        >>> tokenizer_folder(512).parent.name
        'tokenizer'
    """
    key = {
        "corpus": corpus_key(include_source),
        "vocab_size": int(vocab_size),
        "format": _TOKENIZER_FORMAT,
    }
    return cache_root() / "tokenizer" / stable_hash(key)


def _reload(folder: Path) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer folder (local files only, never the network)."""
    from transformers import AutoTokenizer

    fix = f"delete {folder} and call load_default_tokenizer() again."
    read_manifest(folder, _TOKENIZER_TAG, _TOKENIZER_FORMAT, what="tokenizer", fix=fix)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # any failure means the folder is unusable
        raise CorruptCacheError(
            f"The cached tokenizer in {folder} is unreadable ({type(err).__name__}: {err}). "
            f"Fix: delete {folder} and call load_default_tokenizer() again."
        ) from err
    if tok.bos_token != SPECIAL_TOKEN or tok.eos_token != SPECIAL_TOKEN:
        raise CorruptCacheError(
            f"The cached tokenizer in {folder} lacks the {SPECIAL_TOKEN} BOS/EOS token. "
            f"Fix: delete {folder} and call load_default_tokenizer() again."
        )
    return tok


def train_tokenizer(
    vocab_size: int = 4096,
    *,
    include_source: bool = False,
    folder: str | Path | None = None,
    documents: list[str] | None = None,
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer on the default corpus, save it, and reload it.

    ``<|endoftext|>`` (id 0) is the BOS, EOS, padding and unknown token, as in GPT-2. The tokenizer
    does not add special tokens itself (``tok("x").input_ids`` has no BOS); TransformerLens's
    ``model.to_tokens`` prepends BOS. The returned object is reloaded with
    ``AutoTokenizer.from_pretrained(folder)``, so its ``name_or_path`` is a real folder, which
    TransformerLens needs.

    Args:
        vocab_size: Vocabulary size including the 256 byte tokens and the special token.
        include_source: Train on the corpus with standard-library source code.
        folder: Where to save it; by default the cache folder :func:`tokenizer_folder` (which
            :func:`load_default_tokenizer` reuses). An existing folder is replaced.
        documents: Train on these texts instead of the default corpus (``folder`` then required).

    Returns:
        The reloaded ``transformers`` fast tokenizer.

    Examples:
        >>> import tempfile
        >>> tok = train_tokenizer(300, folder=tempfile.mkdtemp(), documents=["hello world"] * 10)
        >>> tok.decode(tok("hello world").input_ids), tok.bos_token_id
        ('hello world', 0)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
            f"{SPECIAL_TOKEN}. Use vocab_size >= 258."
        )
    if documents is not None and folder is None:
        raise ValueError(
            "train_tokenizer(documents=...) needs folder=..., the cache is per corpus."
        )
    if documents is None:
        documents = build_corpus(include_source)
    cached = folder is None
    folder = Path(folder) if folder is not None else tokenizer_folder(vocab_size, include_source)

    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKEN))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        # All 256 bytes are in the vocabulary, so any text can be encoded (no unknown tokens).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(documents, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        model_max_length=1_000_000,  # the model's n_ctx limits length, not the tokenizer
    )
    meta = {"vocab_size": int(vocab_size), "include_source": bool(include_source)}
    # the cache entry is written under its lock (a folder of the caller's gets no lock file)
    with build_lock(folder) if cached else contextlib.nullcontext():
        with save_folder(folder, _TOKENIZER_TAG, _TOKENIZER_FORMAT, meta=meta) as out:
            wrapped.save_pretrained(str(out.root))
            for file in sorted(out.root.iterdir()):
                out.add_file(file.name)  # checksummed as they are
        return _reload(folder)


def load_default_tokenizer(
    vocab_size: int = 4096, *, include_source: bool = False
) -> PreTrainedTokenizerBase:
    """The cached default tokenizer, trained on the default corpus on first use only.

    Args:
        vocab_size: Vocabulary size (see :func:`train_tokenizer`).
        include_source: Whether the corpus includes standard-library source code.

    Returns:
        A fast tokenizer usable as ``HookedTransformer(cfg, tokenizer=tok)``.

    Examples:
        >>> tok = load_default_tokenizer(512)
        >>> len(tok), tok.bos_token, tok.decode(tok("def f(x):").input_ids)
        (512, '<|endoftext|>', 'def f(x):')
    """
    folder = tokenizer_folder(vocab_size, include_source)
    with build_lock(folder):  # another process training it: wait, then load what it saved
        if folder.exists():
            try:
                return _reload(folder)
            except CorruptCacheError as err:
                # A broken cache entry is rebuilt: training is cheap and deterministic.
                warnings.warn(f"{err} Retraining the tokenizer cache.", stacklevel=2)
        return train_tokenizer(vocab_size, include_source=include_source)


def timed_tokenizer(vocab_size: int = 4096, *, include_source: bool = False) -> dict:
    """Train and reload the tokenizer, returning timings and sizes (for the docs and benchmarks).

    Not cached: always re-trains into the cache folder.
    """
    t0 = time.perf_counter()
    docs = build_corpus(include_source)
    t1 = time.perf_counter()
    tok = train_tokenizer(vocab_size, include_source=include_source)
    t2 = time.perf_counter()
    _reload(tokenizer_folder(vocab_size, include_source))
    t3 = time.perf_counter()
    return {
        "corpus_seconds": t1 - t0,
        "train_seconds": t2 - t1,
        "reload_seconds": t3 - t2,
        "vocab_size": len(tok),
        "n_documents": len(docs),
        "n_characters": sum(map(len, docs)),
    }

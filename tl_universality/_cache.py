"""Where tl_universality caches what it builds (corpus, tokenizer, seed models, SAEs).

The folder is ``$TL_UNIVERSALITY_CACHE`` when set, else ``$XDG_CACHE_HOME/tl_universality``,
else ``~/.cache/tl_universality``. Every entry is written into a temporary sibling folder and
renamed into place, so a crash never leaves a half-written entry under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "TL_UNIVERSALITY_CACHE"


def cache_root() -> Path:
    """The root cache folder (created on first use).

    Examples:
        >>> cache_root().name in {"tl_universality"} or "TL_UNIVERSALITY_CACHE" in os.environ
        True
    """
    if env := os.environ.get(CACHE_ENV):
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base).expanduser() / "tl_universality"
    root.mkdir(parents=True, exist_ok=True)
    return root


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of a JSON-serialisable object, stable across runs and machines.

    Examples:
        >>> stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1})
        True
    """
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``final`` only if the block succeeds.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "entry"
        >>> with atomic_dir(target) as tmp:
        ...     _ = (tmp / "x.txt").write_text("hi")
        >>> (target / "x.txt").read_text()
        'hi'
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


@contextlib.contextmanager
def reading_saved(path: Path, what: str, fix: str) -> Iterator[None]:
    """Turn any failure while reading a saved result into a :class:`CorruptCacheError`.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with reading_saved(folder, "Thing", "save it again."):  # doctest: +ELLIPSIS
        ...     json.loads("{not json")
        Traceback (most recent call last):
        ...
        tl_universality.errors.CorruptCacheError: ...is not a saved Thing (...). Fix: save it again.
    """
    from tl_universality.errors import CorruptCacheError

    try:
        yield
    except CorruptCacheError:
        raise
    except Exception as err:  # unreadable JSON, parquet or safetensors, missing file or key
        raise CorruptCacheError(f"{path} is not a saved {what} ({err}). Fix: {fix}") from err

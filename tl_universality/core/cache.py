"""Where tl_universality caches what it builds (corpus, tokenizer, seed models, SAEs).

The folder is ``$TL_UNIVERSALITY_CACHE`` when set, else ``$XDG_CACHE_HOME/tl_universality``,
else ``~/.cache/tl_universality``. Entries are written through
:mod:`tl_universality.core.saving`, so a crash never leaves a half-written entry under the final
name, and :func:`build_lock` lets one process at a time check or build an entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

CACHE_ENV = "TL_UNIVERSALITY_CACHE"
#: errno values of a filesystem that does not lock (some network filesystems).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: Seconds of waiting for a lock before saying so (a holder that only loads an entry, importing
#: transformers on the way, is done by then).
_QUIET_WAIT_S = 10.0
_GUARD = threading.Lock()
_LOCAL: dict[str, threading.RLock] = {}  # per lock file: the threads of this process in turn
_DEPTH: dict[str, int] = {}  # per lock file: how deep this process holds it


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


@contextmanager
def build_lock(folder: str | Path, *, quiet: bool = False) -> Iterator[None]:
    """Hold the cache entry ``folder`` alone while checking or building it.

    Processes that build the same entry at once (the ranks of a ``torchrun`` job on a fresh
    cache, two jobs of a user) would each build it, and one could read a folder that another is
    replacing. Under this lock the second one waits, then finds the entry built. The lock is
    ``fcntl.flock`` on the sibling file ``.{name}.lock``, which names its holder. The kernel
    releases it when the holder exits, even when the holder is killed. A process may take a lock
    it already holds, and threads of one process take it in turn. Where ``flock`` is missing
    (Windows) or the filesystem refuses it, nothing is locked and the atomic writes still keep
    every entry whole.

    Args:
        folder: The cache entry (it need not exist yet; its parent is created).
        quiet: Do not say on stderr that the lock is held by another process and we wait.

    Examples:
        >>> import tempfile
        >>> entry = Path(tempfile.mkdtemp()) / "entry"
        >>> with build_lock(entry), build_lock(entry):  # re-entrant
        ...     sorted(p.name for p in entry.parent.iterdir())
        ['.entry.lock']
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f".{folder.name}.lock"
    key = str(path.resolve())
    with _GUARD:
        local = _LOCAL.setdefault(key, threading.RLock())
    with local:  # one thread of this process at a time; re-entrant for the holder
        if _DEPTH.get(key, 0) or fcntl is None:
            _DEPTH[key] = _DEPTH.get(key, 0) + 1
            try:
                yield
            finally:
                _DEPTH[key] -= 1
            return
        with open(path, "a+") as handle:
            locked = _flock(handle, path, folder, quiet)
            _DEPTH[key] = 1
            try:
                if locked:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                    handle.flush()
                yield
            finally:
                _DEPTH[key] = 0
                if locked:
                    fcntl.flock(handle, fcntl.LOCK_UN)


def _flock(handle: IO[str], path: Path, folder: Path, quiet: bool) -> bool:
    """Take the exclusive lock, waiting while another process holds it (and saying so after
    :data:`_QUIET_WAIT_S`); False where the filesystem does not lock."""
    deadline = time.monotonic() + _QUIET_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # another process loading the entry holds it briefly
        except OSError as err:
            if err.errno in _NO_LOCKS:
                return False
            raise
    if not quiet:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        print(
            f"tl_universality: waiting for {holder}, which is building {folder} (lock {path})",
            file=sys.stderr,
            flush=True,
        )
    fcntl.flock(handle, fcntl.LOCK_EX)
    return True

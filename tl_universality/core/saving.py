"""The one way tl_universality writes and reads a saved folder (results, checkpoints, caches).

A saved folder holds its data files (safetensors for tensors, parquet for tables, JSON for the
rest) and a ``manifest.json`` that names the folder's format and version and records, for every
file, its size and SHA-256 and, for tensors, their shapes and dtypes. The manifest carries a
checksum of itself. Reading a folder checks all of it before any number is returned, so a flipped
byte, a truncated file, a swapped file or a folder of another format is a
:class:`~tl_universality.core.errors.CorruptCacheError` that names the file and the fix, never a
wrong number or a raw ``KeyError`` later.

Writes are atomic. A folder is written into a temporary sibling and then swapped into place: on
Linux with one ``renameat2(RENAME_EXCHANGE)`` call, elsewhere by renaming the old folder aside,
renaming the new one in, and deleting the old; a reader that finds only the set-aside folder
restores it. So a kill at any moment leaves the old folder or the new one under the final name.
Temporary files and folders carry the writer's host and process id; the next write into the same
folder removes those of processes of this host that are gone (never those of a live write, nor
those of another machine sharing the folder over a network file system).

Every typed read (tensors, table, JSON) checks the SHA-256 of the very bytes it parses, so a folder
re-saved by another process between opening and reading is an error, never a mix of two saves.

Examples:
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp()) / "result"
    >>> with save_folder(folder, "demo.thing", 1, meta={"n": 3}) as out:
    ...     out.write_tensors("arrays", {"x": torch.arange(3.0)})
    >>> with open_saved(folder, "demo.thing", 1, what="Thing", fix="save it again.") as saved:
    ...     saved.meta["n"], saved.tensors("arrays")["x"].tolist()
    (3, [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.version import __version__

MANIFEST = "manifest.json"
_PARTIAL = ".partial-"
_OLD = ".old-"
_CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _json_checksum(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


#: Names temporary files and folders after this machine, so a write in progress on another host
#: that shares the folder (NFS, a cluster's home) is never taken for a dead one of ours.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# ".{target}.partial-{pid}-{host}-{random}" (or ".old-"); older versions wrote no host.
_LEFTOVER = re.compile(r"^\.(?P<target>.+?)(?P<marker>\.partial-|\.old-)(?P<pid>\d+)-(?P<rest>.*)$")


def _stale(name: str) -> tuple[str, str] | None:
    """``(target, marker)`` when ``name`` is a leftover of a dead writer of this host."""
    match = _LEFTOVER.match(name)
    if match is None:
        return None
    rest = match["rest"]
    if "-" in rest and rest.split("-", 1)[0] != _HOST:
        return None  # another machine's write: its process ids mean nothing here
    if _pid_alive(int(match["pid"])):
        return None
    return match["target"], match["marker"]


def remove_leftovers(path: Path, *, siblings: bool = False) -> list[Path]:
    """Remove what killed writes of ``path`` left beside it; restore a set-aside old folder.

    With ``siblings=True``, also those of every other entry of ``path``'s folder. Returns the
    paths removed. Leftovers of a live process (a write in progress) and of other hosts are kept.
    """
    path = Path(path)
    parent = path.parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        stale = _stale(entry.name)
        if stale is None or not (siblings or stale[0] == path.name):
            continue
        target = parent / stale[0]
        if stale[1] == _OLD and not target.exists():
            os.replace(entry, target)  # the swap was killed half-way: keep the old folder
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _temp_sibling(path: Path, directory: bool) -> Path:
    prefix = f".{path.name}{_PARTIAL}{os.getpid()}-{_HOST}-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - old glibc or musl
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = final.parent / f".{final.name}{_OLD}{os.getpid()}-{_HOST}-{os.urandom(4).hex()}"
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(
            f"{final} is a file, so a result folder cannot be written there. Pass a folder path."
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final, siblings=True)
    tmp = _temp_sibling(final, directory=True)
    try:
        yield tmp
        _swap_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path, siblings=True)
    tmp = _temp_sibling(path, directory=False)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


class FolderWriter:
    """Writes the files of one saved folder and records each in the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, dict[str, Any]] = {}

    def _record(self, name: str, kind: str, **extra: Any) -> Path:
        path = self.root / name
        self.files[name] = {"kind": kind, **extra}
        return path

    def write_tensors(self, stem: str, tensors: Mapping[str, Any]) -> None:
        """Save a dict of tensors as ``{stem}.safetensors`` with their shapes and dtypes."""
        from safetensors.torch import save_file

        clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        shapes = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in clean.items()}
        save_file(clean, self._record(f"{stem}.safetensors", "tensors", tensors=shapes))

    def write_table(self, stem: str, frame: Any) -> None:
        """Save a DataFrame as ``{stem}.parquet`` with its row count and columns."""
        columns = [str(c) for c in frame.columns]
        path = self._record(f"{stem}.parquet", "table", rows=len(frame), columns=columns)
        frame.to_parquet(path)

    def write_json(self, stem: str, obj: Any) -> None:
        """Save a JSON-serialisable object as ``{stem}.json``."""
        path = self._record(f"{stem}.json", "json")
        path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Save raw bytes under ``name`` (e.g. a tokenizer file)."""
        self._record(name, "bytes").write_bytes(data)

    def add_file(self, name: str) -> Path:
        """The path to write a file of ``name`` to yourself; it is checksummed on close."""
        return self._record(name, "bytes")

    def _finish(self, fmt: str, version: int, meta: Mapping[str, Any]) -> None:
        for name, entry in self.files.items():
            path = self.root / name
            entry["bytes"] = path.stat().st_size
            entry["sha256"] = file_sha256(path)
        body = {
            "format": fmt,
            "version": int(version),
            "package_version": __version__,
            "meta": dict(meta),
            "files": self.files,
        }
        manifest = {**body, "checksum": _json_checksum(body)}
        (self.root / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, default=str)
        )


@contextlib.contextmanager
def save_folder(
    path: str | os.PathLike, fmt: str, version: int, meta: Mapping[str, Any] | None = None
) -> Iterator[FolderWriter]:
    """Write a saved folder atomically: yield a :class:`FolderWriter`, then checksum and swap.

    ``meta`` is stored in the manifest (JSON); it may be filled in inside the block.
    """
    meta = {} if meta is None else meta
    with atomic_dir(Path(path)) as tmp:
        writer = FolderWriter(tmp)
        yield writer
        writer._finish(fmt, version, meta)


class SavedFolder:
    """A saved folder whose manifest and checksums have been verified."""

    def __init__(self, root: Path, manifest: dict[str, Any], what: str, fix: str) -> None:
        self.root = root
        self.manifest = manifest
        self.meta: dict[str, Any] = manifest["meta"]
        self._what = what
        self._fix = fix

    def _entry(self, name: str, kind: str) -> dict[str, Any]:
        entry = self.manifest["files"].get(name)
        if entry is None or entry.get("kind") != kind:
            raise CorruptCacheError(
                f"{self.root} has no {kind} file {name!r} in its manifest, so it is not a complete"
                f" saved {self._what}. Fix: {self._fix}"
            )
        return entry

    def has(self, name: str) -> bool:
        """Whether the manifest lists a file of this name."""
        return name in self.manifest["files"]

    def _verified_bytes(self, name: str, entry: dict[str, Any]) -> bytes:
        """The bytes of ``name``, checked against the manifest as they are read."""
        file = self.root / name
        with reading_saved(file, self._what, self._fix):
            data = file.read_bytes()
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get(
            "sha256"
        ):
            raise CorruptCacheError(
                f"{file} changed after {self.root / MANIFEST} was checked (the folder was saved"
                f" again while being read, or damaged). Fix: load it again; {self._fix}"
            )
        return data

    def tensors(self, stem: str) -> dict[str, Any]:
        """Load ``{stem}.safetensors``; shapes and dtypes are checked against the manifest."""
        from safetensors.torch import load

        name = f"{stem}.safetensors"
        entry = self._entry(name, "tensors")
        data = self._verified_bytes(name, entry)
        with reading_saved(self.root / name, self._what, self._fix):
            loaded = load(data)
        got = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in loaded.items()}
        if got != entry.get("tensors"):
            raise CorruptCacheError(
                f"{self.root / name} holds tensors whose names, shapes or dtypes differ from its"
                f" manifest ({_tensor_difference(entry.get('tensors'), got)}). Fix: {self._fix}"
            )
        return loaded

    def table(self, stem: str) -> Any:
        """Load ``{stem}.parquet`` as a DataFrame; row count and columns are checked."""
        import pandas as pd

        name = f"{stem}.parquet"
        entry = self._entry(name, "table")
        data = self._verified_bytes(name, entry)
        with reading_saved(self.root / name, self._what, self._fix):
            frame = pd.read_parquet(io.BytesIO(data))
        if len(frame) != entry.get("rows") or [str(c) for c in frame.columns] != entry.get(
            "columns"
        ):
            raise CorruptCacheError(
                f"{self.root / name} has {len(frame)} rows and columns {list(frame.columns)}; its"
                f" manifest says {entry.get('rows')} rows and {entry.get('columns')}."
                f" Fix: {self._fix}"
            )
        return frame

    def json(self, stem: str) -> Any:
        """Load ``{stem}.json``."""
        name = f"{stem}.json"
        data = self._verified_bytes(name, self._entry(name, "json"))
        with reading_saved(self.root / name, self._what, self._fix):
            return json.loads(data)

    def path(self, name: str) -> Path:
        """The verified path of a file written with ``write_bytes`` or ``add_file``."""
        self._entry(name, "bytes")
        return self.root / name


def _tensor_difference(expected: Any, got: dict[str, Any]) -> str:
    if not isinstance(expected, dict):
        return f"the manifest lists {expected!r}"
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    changed = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    parts = [f"missing {missing}"] * bool(missing) + [f"unexpected {extra}"] * bool(extra)
    parts += [f"{k}: {got[k]['dtype']}{got[k]['shape']}, expected {expected[k]}" for k in changed]
    return "; ".join(parts)


def read_manifest(path: Path, fmt: str, version: int, what: str, fix: str) -> dict[str, Any]:
    """Read and check ``path/manifest.json`` and the checksum of every file it lists."""
    path = Path(path)
    if not path.exists():
        remove_leftovers(path)  # restores a folder whose swap was killed half-way
    if not path.is_dir():
        raise CorruptCacheError(f"{path} does not exist, so there is no saved {what}. Fix: {fix}")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CorruptCacheError(
            f"{manifest_file} is missing: {path} is not a saved {what} (or was written by an older"
            f" version without checksums). Fix: {fix}"
        )
    with reading_saved(manifest_file, what, fix):
        manifest = json.loads(manifest_file.read_text())
        if not isinstance(manifest, dict):
            raise ValueError(f"the manifest is a {type(manifest).__name__}, not an object")
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        if manifest.get("checksum") != _json_checksum(body):
            raise ValueError("its checksum does not match its contents")
        for key, kind in (("files", dict), ("meta", dict), ("format", str), ("version", int)):
            if not isinstance(manifest.get(key), kind):
                raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
        for name, entry in manifest["files"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
                raise ValueError(f"its entry for {name!r} is not an object with a 'kind'")
    if manifest["format"] != fmt:
        raise CorruptCacheError(
            f"{path} holds a {manifest['format']!r}, not a saved {what} ({fmt!r}). Fix: load it"
            " with the matching class, or point to the right folder."
        )
    if manifest["version"] != version:
        raise CorruptCacheError(
            f"{path} is format version {manifest['version']} of {fmt!r}; this version of"
            f" tl_universality reads version {version}. Fix: {fix}"
        )
    for name, entry in manifest["files"].items():
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise CorruptCacheError(f"{file} is missing from the saved {what}. Fix: {fix}")
        if file.stat().st_size != entry.get("bytes") or file_sha256(file) != entry.get("sha256"):
            raise CorruptCacheError(
                f"{file} does not match its checksum in {manifest_file}: the file is damaged or was"
                f" changed after saving. Fix: {fix}"
            )
    return manifest


@contextlib.contextmanager
def open_saved(
    path: str | os.PathLike, fmt: str, version: int, *, what: str, fix: str
) -> Iterator[SavedFolder]:
    """Open a verified saved folder; any failure inside the block is a ``CorruptCacheError``."""
    root = Path(path)
    manifest = read_manifest(root, fmt, version, what, fix)
    with reading_saved(root, what, fix):
        yield SavedFolder(root, manifest, what, fix)


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
        tl_universality.core.errors.CorruptCacheError: ...is not a saved Thing (...). Fix: save...
    """
    try:
        yield
    except CorruptCacheError:
        raise
    except Exception as err:  # unreadable JSON, parquet or safetensors, missing file or key
        raise CorruptCacheError(f"{path} is not a saved {what} ({err}). Fix: {fix}") from err

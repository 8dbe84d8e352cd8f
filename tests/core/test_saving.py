"""The one save/load helper: damage is a CorruptCacheError naming the file; kills lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from tl_universality.core import saving
from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.result import Result
from tl_universality.core.saving import MANIFEST, open_saved, remove_leftovers, save_folder

FMT = "test.thing"
FIX = "save it again."


def _save(folder: Path, value: float = 1.0) -> Path:
    with save_folder(folder, FMT, 1, meta={"value": value}) as out:
        out.write_tensors("arrays", {"x": torch.full((4, 3), value), "n": torch.arange(5)})
        out.write_table("table", pd.DataFrame({"a": [value, 2.0], "b": ["u", "v"]}))
        out.write_json("info", {"value": value, "list": [1, 2, 3]})
        out.write_bytes("raw.bin", b"0123456789" * 20)
    return folder


def _load_all(folder: Path) -> dict:
    with open_saved(folder, FMT, 1, what="Thing", fix=FIX) as saved:
        return {
            "meta": saved.meta,
            "x": saved.tensors("arrays")["x"],
            "table": saved.table("table"),
            "info": saved.json("info"),
            "raw": saved.path("raw.bin").read_bytes(),
        }


def _flip(file: Path, position: int) -> None:
    data = bytearray(file.read_bytes())
    data[position] ^= 0xFF
    file.write_bytes(bytes(data))


def _rewrite_manifest(folder: Path, edit) -> None:
    """Change the manifest and give it a valid checksum again (a consistent but wrong folder)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    edit(body)
    (folder / MANIFEST).write_text(json.dumps({**body, "checksum": saving._json_checksum(body)}))


def test_round_trip(tmp_path):
    loaded = _load_all(_save(tmp_path / "thing", 3.0))
    assert loaded["meta"] == {"value": 3.0}
    assert torch.equal(loaded["x"], torch.full((4, 3), 3.0))
    assert loaded["table"]["a"].tolist() == [3.0, 2.0] and loaded["info"]["list"] == [1, 2, 3]


@pytest.mark.parametrize(
    "name", ["arrays.safetensors", "table.parquet", "info.json", "raw.bin", MANIFEST]
)
def test_a_flipped_byte_anywhere_names_the_file(tmp_path, name):
    folder = _save(tmp_path / "thing")
    file = folder / name
    size = file.stat().st_size
    # Every byte of the small files; spread positions (start, middle, end) of the larger ones.
    positions = range(size) if size <= 2000 else sorted({*range(0, size, size // 97), size - 1})
    original = file.read_bytes()
    for position in positions:
        _flip(file, position)
        with pytest.raises(CorruptCacheError, match=name.replace(".", r"\.")):
            _load_all(folder)
        file.write_bytes(original)
    _load_all(folder)  # intact again


@pytest.mark.parametrize("name", ["arrays.safetensors", "table.parquet", "info.json", "raw.bin"])
def test_truncated_and_missing_files_name_the_file(tmp_path, name):
    folder = _save(tmp_path / "thing")
    file = folder / name
    file.write_bytes(file.read_bytes()[:-1])
    with pytest.raises(CorruptCacheError, match=name.replace(".", r"\.")):
        _load_all(folder)
    file.unlink()
    with pytest.raises(CorruptCacheError, match=rf"{name.replace('.', r'.')} is missing"):
        _load_all(folder)


def test_manifest_that_is_not_an_object(tmp_path):
    folder = _save(tmp_path / "thing")
    for text in ["[]", "null", '"x"', "{}", ""]:
        (folder / MANIFEST).write_text(text)
        with pytest.raises(CorruptCacheError, match="manifest.json"):
            _load_all(folder)


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: b.update(meta=[]),
        lambda b: b.update(files=[]),
        lambda b: b["files"].update({"arrays.safetensors": []}),
        lambda b: b.update(version="1"),
        lambda b: b.pop("format"),
    ],
    ids=["meta-list", "files-list", "entry-list", "version-str", "no-format"],
)
def test_consistent_manifest_of_the_wrong_types(tmp_path, edit):
    folder = _save(tmp_path / "thing")
    _rewrite_manifest(folder, edit)
    with pytest.raises(CorruptCacheError, match="manifest.json"):
        _load_all(folder)


def _other_tensors(folder: Path, tensors: dict) -> None:
    """Replace the tensors file by a valid one, and record its checksum (not its shapes)."""
    from safetensors.torch import save_file

    file = folder / "arrays.safetensors"
    save_file(tensors, file)

    def edit(body):
        entry = body["files"]["arrays.safetensors"]
        entry.update(bytes=file.stat().st_size, sha256=saving.file_sha256(file))

    _rewrite_manifest(folder, edit)


@pytest.mark.parametrize(
    "tensors, why",
    [
        ({"x": torch.zeros(3, 4), "n": torch.arange(5)}, r"x: torch.float32\[3, 4\]"),
        ({"x": torch.zeros(4, 3, dtype=torch.float64), "n": torch.arange(5)}, "float64"),
        ({"x": torch.zeros(4, 3)}, r"missing \['n'\]"),
        ({"x": torch.zeros(4, 3), "n": torch.arange(5), "y": torch.zeros(1)}, "unexpected"),
    ],
    ids=["shape", "dtype", "missing-tensor", "extra-tensor"],
)
def test_tensors_that_differ_from_the_manifest(tmp_path, tensors, why):
    folder = _save(tmp_path / "thing")
    _other_tensors(folder, tensors)
    with pytest.raises(CorruptCacheError, match=why):
        _load_all(folder)


def test_table_with_other_rows_than_the_manifest(tmp_path):
    folder = _save(tmp_path / "thing")
    file = folder / "table.parquet"
    pd.DataFrame({"a": [1.0], "b": ["u"]}).to_parquet(file)
    _rewrite_manifest(
        folder,
        lambda b: b["files"]["table.parquet"].update(
            bytes=file.stat().st_size, sha256=saving.file_sha256(file)
        ),
    )
    with pytest.raises(CorruptCacheError, match="1 rows"):
        _load_all(folder)


def test_a_file_changed_between_open_and_read_is_refused(tmp_path):
    # Another process re-saves (or damages) the folder after the manifest was checked.
    folder = _save(tmp_path / "thing")
    with open_saved(folder, FMT, 1, what="Thing", fix=FIX) as saved:
        _flip(folder / "arrays.safetensors", 200)
        with pytest.raises(CorruptCacheError, match="changed after"):
            saved.tensors("arrays")


@dataclass
class Pair(Result):
    FORMAT = "test.pair"
    first: int
    second: torch.Tensor

    def _write(self, out, meta):
        meta["first"] = self.first
        out.write_tensors("arrays", {"second": self.second})

    @classmethod
    def _read(cls, saved):
        return cls(saved.meta["first"], saved.tensors("arrays")["second"])


def test_a_result_whose_meta_lacks_a_field_is_a_corrupt_cache_error(tmp_path):
    path = Pair(1, torch.ones(2)).save(tmp_path / "pair")
    _rewrite_manifest(path, lambda b: b.update(meta={}))
    with pytest.raises(CorruptCacheError, match="first"):
        Pair.load(path)
    _rewrite_manifest(path, lambda b: b.update(meta=[]))
    with pytest.raises(CorruptCacheError, match="'meta' is missing or not a dict"):
        Pair.load(path)


def test_resave_replaces_and_keeps_no_leftovers(tmp_path):
    folder = tmp_path / "thing"
    for value in (1.0, 2.0, 3.0):
        _save(folder, value)
    assert _load_all(folder)["meta"]["value"] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_resave_without_renameat2_replaces_too(tmp_path, monkeypatch):
    monkeypatch.setattr(saving, "_exchange", lambda a, b: False)
    folder = tmp_path / "thing"
    _save(folder, 1.0)
    _save(folder, 2.0)
    assert _load_all(folder)["meta"]["value"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_writers_go_those_of_live_ones_stay(tmp_path):
    host = saving._HOST
    dead, live = _dead_pid(), os.getppid()
    entries = {
        f".thing.partial-{dead}-{host}-abc": "dir",  # our killed write of this folder
        f".thing.partial-{dead}-{host}-def.tmp": "file",
        f".other.partial-{dead}-{host}-ghi": "dir",  # a killed write of a sibling
        f".thing.partial-{dead}-jkl": "file",  # an older version's name (no host)
        f".thing.partial-{live}-{host}-mno": "dir",  # a write in progress
        f".thing.partial-{dead}-0badhost-pqr": "dir",  # another machine's write
        "unrelated.partial-1-x": "file",  # not ours at all
    }
    for name, kind in entries.items():
        (tmp_path / name).mkdir() if kind == "dir" else (tmp_path / name).write_bytes(b"x")
    _save(tmp_path / "thing")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [
            "thing",
            f".thing.partial-{live}-{host}-mno",
            f".thing.partial-{dead}-0badhost-pqr",
            "unrelated.partial-1-x",
        ]
    )


def test_atomic_write_bytes_removes_dead_temp_files(tmp_path):
    stale = tmp_path / f".ckpt.bin.partial-{_dead_pid()}-{saving._HOST}-x1y2"
    stale.write_bytes(b"\0" * 1000)
    saving.atomic_write_bytes(tmp_path / "ckpt.bin", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]


def test_a_swap_killed_half_way_restores_the_old_folder(tmp_path):
    folder = _save(tmp_path / "thing", 7.0)
    # What a kill between "rename old aside" and "rename new in" leaves (rename-aside path).
    aside = tmp_path / f".thing.old-{_dead_pid()}-{saving._HOST}-0000"
    os.replace(folder, aside)
    assert _load_all(folder)["meta"]["value"] == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_kill_9_during_save_leaves_the_old_or_the_new_folder(tmp_path, mode):
    folder = tmp_path / "thing"
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("kill_writer.py")), str(folder), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    seen = set()
    try:
        for trial in range(12):
            server.stdin.write(f"trial {trial}\n")
            server.stdin.flush()
            line = server.stdout.readline()
            assert line.startswith("killed"), line
            last = int(line.split()[1])
            with open_saved(folder, "test.kill", 1, what="Thing", fix=FIX) as saved:
                i = saved.meta["i"]
                x = saved.tensors("arrays")["x"]
                table = saved.table("table")
                info = saved.json("info")
                raw = saved.path("raw.bin").read_bytes()
            # The last save reported complete, or the one after it (done, not yet reported).
            assert i in (last, last + 1), (i, last)
            assert bool((x == i).all()) and set(table["i"]) == {i} and info == {"i": i}
            assert raw == str(i).encode() * 1000
            seen.add(i)
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert server.returncode == 0
    # The next write removes what the killed ones left.
    with save_folder(folder, "test.kill", 1, meta={"i": 0}):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]
    assert remove_leftovers(folder, siblings=True) == []

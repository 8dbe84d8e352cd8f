"""available_memory / cpu_available_memory on hand-made /proc and cgroup files (answers by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_universality.core import environment
from tl_universality.core.environment import available_memory, cpu_available_memory


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _meminfo(tmp_path: Path, avail_kb: int) -> str:
    _write(
        tmp_path / "meminfo", f"MemTotal: 99999999 kB\nMemFree: 1 kB\nMemAvailable: {avail_kb} kB\n"
    )
    return str(tmp_path / "meminfo")


def test_without_a_cgroup_limit_it_is_memavailable(tmp_path):
    meminfo = _meminfo(tmp_path, 5000)
    _write(tmp_path / "cgroup", "0::/a/b\n")
    _write(tmp_path / "fs" / "a" / "b" / "memory.max", "max\n")
    _write(tmp_path / "fs" / "a" / "b" / "memory.current", "123\n")
    got = cpu_available_memory(meminfo, str(tmp_path / "fs"), str(tmp_path / "cgroup"))
    assert got == 5000 * 1024


def test_v2_the_tightest_of_the_group_and_its_parents(tmp_path):
    meminfo = _meminfo(tmp_path, 10_000_000)  # ~10 GB: not the bound
    fs = tmp_path / "fs"
    _write(tmp_path / "cgroup", "0::/a/b\n")
    # the group itself: limit 8e9, using 1e9 of which 0.5e9 reclaimable cache -> room 7.5e9
    _write(fs / "a" / "b" / "memory.max", "8000000000\n")
    _write(fs / "a" / "b" / "memory.current", "1000000000\n")
    _write(fs / "a" / "b" / "memory.stat", "anon 5\ninactive_file 500000000\nactive_file 9\n")
    # its parent: limit 3e9, using 2e9 (no stat file) -> room 1e9, the answer
    _write(fs / "a" / "memory.max", "3000000000\n")
    _write(fs / "a" / "memory.current", "2000000000\n")
    got = cpu_available_memory(meminfo, str(fs), str(tmp_path / "cgroup"))
    assert got == 1_000_000_000


def test_v1_uses_the_hierarchical_inactive_file_and_ignores_no_limit(tmp_path):
    meminfo = _meminfo(tmp_path, 10_000_000)
    fs = tmp_path / "fs"
    _write(tmp_path / "cgroup", "12:cpu,cpuacct:/job\n11:memory:/job\n")
    _write(fs / "memory" / "job" / "memory.limit_in_bytes", "4000000000\n")
    _write(fs / "memory" / "job" / "memory.usage_in_bytes", "3000000000\n")
    _write(
        fs / "memory" / "job" / "memory.stat",
        "cache 1\ninactive_file 100\ntotal_cache 2\ntotal_inactive_file 1000000000\n",
    )
    _write(fs / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # v1 "unlimited"
    _write(fs / "memory" / "memory.usage_in_bytes", "5\n")
    got = cpu_available_memory(meminfo, str(fs), str(tmp_path / "cgroup"))
    assert got == 4_000_000_000 - (3_000_000_000 - 1_000_000_000)


def test_memavailable_bounds_a_loose_cgroup_and_unreadable_meminfo_is_unknown(tmp_path):
    meminfo = _meminfo(tmp_path, 1000)
    fs = tmp_path / "fs"
    _write(tmp_path / "cgroup", "0::/\n")
    _write(fs / "memory.max", "99000000000\n")
    _write(fs / "memory.current", "0\n")
    assert cpu_available_memory(meminfo, str(fs), str(tmp_path / "cgroup")) == 1000 * 1024
    assert (
        cpu_available_memory(str(tmp_path / "missing"), str(fs), str(tmp_path / "cgroup")) is None
    )


def test_torchrun_processes_of_a_node_share_the_cpu_memory(monkeypatch):
    monkeypatch.setattr(environment, "cpu_available_memory", lambda: 12_000)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert available_memory("cpu") == 3_000
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert available_memory("cpu") == 12_000


def test_unknown_devices_and_missing_cuda_are_none(monkeypatch):
    import torch

    assert available_memory("meta") is None
    if not torch.cuda.is_available():
        assert available_memory("cuda") is None


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="Linux only")
def test_this_machine_reports_a_positive_figure():
    n = available_memory("cpu")
    assert n is not None and 0 < n

"""What the machine offers: a reachable model hub, a CUDA device.

Examples that download models call :func:`require_hub` first, so that without the internet they
stop at once with one line instead of after a long hub time-out.
"""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether the model hub answers (``HF_HUB_OFFLINE=1`` means no, without asking)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Exit with one line (status 1) unless the model hub is reachable; ``what`` needs it."""
    if not hub_reachable():
        raise SystemExit(
            f"error: {what} downloads models from {HUB_HOST}, which cannot be reached from here"
            " (no internet, or HF_HUB_OFFLINE=1). Fix: run it with internet access, or try the"
            " offline `tl-universality demo`."
        )


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"``.

    Examples:
        >>> default_device() in ("cuda", "cpu")
        True
    """
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- memory ---------------------------------------------------------------------------------------

_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (2^63 rounded to a page)


def available_memory(device: object = "cpu") -> int | None:
    """Bytes this process can still allocate on ``device``; None where that is unknown.

    * CUDA: the device's free memory plus what torch's caching allocator holds but does not use.
    * CPU: the kernel's ``MemAvailable``, or less when the process's control group (a container,
      a batch job) has a memory limit: the limit less the group's working set (its usage less its
      inactive file cache, which the kernel reclaims first), read by
      :func:`cpu_available_memory`. Under ``torchrun`` the processes of a node share it, so each
      gets its ``1 / LOCAL_WORLD_SIZE``.

    Examples:
        >>> n = available_memory("cpu")
        >>> n is None or n > 0
        True
    """
    import torch

    dev = torch.device(device)  # type: ignore[call-overload]
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(dev)
        idle = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + idle)
    if dev.type != "cpu":
        return None
    avail = cpu_available_memory()
    if avail is None:
        return None
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return avail // local


def cpu_available_memory(
    meminfo: str = "/proc/meminfo",
    cgroup_root: str = "/sys/fs/cgroup",
    self_cgroup: str = "/proc/self/cgroup",
) -> int | None:
    """Bytes of RAM this process can still get (Linux): ``MemAvailable`` of ``meminfo``, capped
    by the memory limit of its control group (v2 ``memory.max``, v1 ``memory.limit_in_bytes``)
    less the group's working set; None where ``meminfo`` cannot be read.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "meminfo").write_text("MemTotal: 8000 kB\\nMemAvailable: 6000 kB\\n")
        >>> _ = (d / "cgroup").write_text("0::/job\\n")
        >>> (d / "fs" / "job").mkdir(parents=True)
        >>> _ = (d / "fs" / "job" / "memory.max").write_text("4096000\\n")
        >>> _ = (d / "fs" / "job" / "memory.current").write_text("3000000\\n")
        >>> _ = (d / "fs" / "job" / "memory.stat").write_text("anon 1\\ninactive_file 1000000\\n")
        >>> cpu_available_memory(str(d / "meminfo"), str(d / "fs"), str(d / "cgroup"))
        2096000
    """
    try:
        with open(meminfo) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        avail = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None
    room = _cgroup_room(cgroup_root, self_cgroup)
    return avail if room is None else min(avail, room)


def _cgroup_room(root: str, self_cgroup: str) -> int | None:
    """The memory limit of this process's cgroup less its working set, or None (no limit)."""
    try:
        with open(self_cgroup) as f:
            lines = [line.strip().split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    rooms = []
    for hierarchy, controllers, path in lines:
        if hierarchy == "0" and controllers == "":  # v2
            names, base = ("memory.max", "memory.current", "memory.stat"), root
        elif "memory" in controllers.split(","):  # v1
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat")
            base = os.path.join(root, "memory")
        else:
            continue
        # The group and each of its parents may limit it (inside a container the group's own
        # folder is the mount's root, and the path above it is not there).
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            room = _room_in(os.path.join(base, *parts[:depth]), *names)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def _room_in(folder: str, limit_file: str, usage_file: str, stat_file: str) -> int | None:
    try:
        with open(os.path.join(folder, limit_file)) as f:
            text = f.read().strip()
        if text == "max" or int(text) >= _UNLIMITED:
            return None
        limit = int(text)
        with open(os.path.join(folder, usage_file)) as f:
            usage = int(f.read().strip())
    except (OSError, ValueError):
        return None
    # v1 usage counts the subgroups too, as does its stat's total_* line (inactive_file is the
    # group's own); v2 has only the hierarchical inactive_file.
    stats: dict[str, int] = {}
    try:
        with open(os.path.join(folder, stat_file)) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name in ("inactive_file", "total_inactive_file"):
                    stats[name] = int(value)
    except (OSError, ValueError):
        pass
    inactive = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return max(0, limit - max(0, usage - inactive))

"""What this machine gives a build: memory and cores, as its cgroup limits them.

A CI runner or a container sees the host's /proc/meminfo and every core, yet the kernel kills
the build at the cgroup's ``memory.max`` and throttles it to ``cpu.max``. MAX_JOBS sized from
/proc alone gets the compiler OOM-killed in exactly the places builds run most: containers and
CI runners. So both are the smaller of what the machine has and what the cgroup (and each of
its ancestors) allows; cgroup v2 and v1 are read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

GIB = 1024**3
DEFAULT_MEMORY_GB = 4.0
"""What kiln assumes when nothing can be read."""


def available_memory_gb(root: Path = Path("/")) -> float:
    """Memory a build may use now, in GiB: MemAvailable, bounded by the cgroup's limit less its
    usage. ``root``: where /proc and /sys are (a test's fake tree)."""
    free = _meminfo_available(root)
    room = _cgroup_memory_room(root)
    known = [v for v in (free, room) if v is not None]
    return min(known) / GIB if known else DEFAULT_MEMORY_GB


def usable_cores(root: Path = Path("/")) -> int:
    """Cores a build may use: the CPUs this process may run on, bounded by the cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0)) if root == Path("/") else (os.cpu_count() or 1)
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(root)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _meminfo_available(root: Path) -> int | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_dirs(root: Path) -> list[Path]:
    """This process's cgroup directories, innermost first, each ancestor after it (v2), or the
    memory and cpu controllers' (v1)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    dirs: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = root / "sys/fs/cgroup"
        elif set(controllers.split(",")) & {"memory", "cpu"}:
            base = root / "sys/fs/cgroup" / controllers
        else:
            continue
        here = base / path.lstrip("/")
        while True:
            dirs.append(here)
            if here == base:
                break
            here = here.parent
    return dirs


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_memory_room(root: Path) -> int | None:
    """The least room left under any memory limit on the way up: limit - usage."""
    rooms = []
    for d in _cgroup_dirs(root):
        for limit_name, usage_name in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit = _read_int(d / limit_name)
            if limit is None or limit >= 2**60:  # "max", or v1's "no limit"
                continue
            rooms.append(max(0, limit - (_read_int(d / usage_name) or 0)))
    return min(rooms) if rooms else None


def _cgroup_cpu_quota(root: Path) -> float | None:
    """The smallest CPU quota on the way up, in cores (cpu.max, or v1's cfs quota/period)."""
    quotas = []
    for d in _cgroup_dirs(root):
        try:
            quota, period = (d / "cpu.max").read_text().split()
            if quota != "max":
                quotas.append(int(quota) / int(period))
            continue
        except (OSError, ValueError):
            pass
        q, p = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us")
        if q and p:
            quotas.append(q / p)
    return min(quotas) if quotas else None

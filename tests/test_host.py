"""Memory and cores as a container's or CI runner's cgroup limits them (MAX_JOBS comes from these)."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.buildenv import parallelism
from kiln.host import GIB, available_memory_gb, usable_cores


def fake(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


MEMINFO = "MemTotal:       32000000 kB\nMemAvailable:   20971520 kB\n"  # 20 GiB available


def test_without_a_cgroup_limit_memory_is_memavailable(tmp_path: Path) -> None:
    root = fake(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/ci.slice/job\n",
                           "sys/fs/cgroup/ci.slice/job/memory.max": "max\n"})
    assert available_memory_gb(root) == 20.0


def test_a_cgroup_v2_limit_and_its_ancestors_bound_memory(tmp_path: Path) -> None:
    root = fake(tmp_path, {
        "proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/ci.slice/job\n",
        "sys/fs/cgroup/ci.slice/job/memory.max": f"{8 * GIB}\n",
        "sys/fs/cgroup/ci.slice/job/memory.current": f"{2 * GIB}\n",
        "sys/fs/cgroup/ci.slice/memory.max": f"{6 * GIB}\n",      # the runner's slice: tighter
        "sys/fs/cgroup/ci.slice/memory.current": f"{5 * GIB}\n",
    })
    assert available_memory_gb(root) == 1.0
    assert parallelism(2, cores=16, free_gb=available_memory_gb(root)).max_jobs == 1


def test_a_cgroup_v1_memory_limit_bounds_memory(tmp_path: Path) -> None:
    root = fake(tmp_path, {
        "proc/meminfo": MEMINFO, "proc/self/cgroup": "12:cpu,cpuacct:/docker/abc\n9:memory:/docker/abc\n",
        "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{4 * GIB}\n",
        "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": f"{1 * GIB}\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "unlimited"
    })
    assert available_memory_gb(root) == 3.0


def test_nothing_readable_falls_back_to_a_stated_default(tmp_path: Path) -> None:
    assert available_memory_gb(tmp_path) == 4.0


def test_a_cpu_quota_bounds_the_cores(tmp_path: Path) -> None:
    root = fake(tmp_path, {"proc/self/cgroup": "0::/job\n", "sys/fs/cgroup/job/cpu.max": "150000 100000\n",
                           "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert usable_cores(root) == min(2, os.cpu_count() or 1)
    v1 = fake(tmp_path / "v1", {"proc/self/cgroup": "4:cpu,cpuacct:/docker/x\n",
                                "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us": "100000\n",
                                "sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"})
    assert usable_cores(v1) == 1


def test_this_machine_reads_sane_values() -> None:
    assert 0 < available_memory_gb() < 1024
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)

"""What this machine has, probed in one place: memory and cores as its cgroup limits them, the
CUDA toolkit (CUDA_HOME and nvcc's version), the Pythons a cell may build for, and the GPUs and
driver nvidia-smi lists.

A CI runner or a container sees the host's /proc/meminfo and every core, yet the kernel kills
the build at the cgroup's ``memory.max`` and throttles it to ``cpu.max``. MAX_JOBS sized from
/proc alone gets the compiler OOM-killed in exactly the places builds run most: containers and
CI runners. So both are the smaller of what the machine has and what the cgroup (and each of
its ancestors) allows; cgroup v2 and v1 are read.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
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


# ----------------------------------------------------------------------------- CUDA toolkit and Pythons


@dataclass(frozen=True)
class Host:
    """What this machine has for building."""

    cuda_home: Path | None
    nvcc_version: str | None

    @property
    def cuda_major(self) -> str | None:
        return self.nvcc_version.split(".")[0] if self.nvcc_version else None


def find_cuda_home() -> Path | None:
    """CUDA_HOME, CUDA_PATH, /usr/local/cuda, then nvcc on PATH (wrappers resolved)."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env) and (Path(os.environ[env]) / "bin" / "nvcc").exists():
            return Path(os.environ[env])
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return Path("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        if real.parent.name == "bin" and (real.parent / "nvcc.profile").exists():
            return real.parent.parent
    return None


def nvcc_version(cuda_home: Path) -> str | None:
    try:
        out = subprocess.run([str(cuda_home / "bin" / "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


@functools.cache
def probe_host() -> Host:
    home = find_cuda_home()
    return Host(cuda_home=home, nvcc_version=nvcc_version(home) if home else None)


@functools.cache
def find_python(minor: str) -> Path | None:
    """An interpreter for Python ``minor``: uv's discovery (PATH, managed), then pyenv's."""
    uv = shutil.which("uv")
    if uv:
        res = subprocess.run([uv, "python", "find", "--no-python-downloads", minor],
                             capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.strip():
            path = Path(res.stdout.strip())
            if _python_minor(path) == minor:
                return path
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if root.is_dir():
        for cand in sorted(root.glob(f"{minor}.*"), reverse=True):
            exe = cand / "bin" / f"python{minor}"
            if exe.exists():
                return exe
    return None


def _python_minor(path: Path) -> str | None:
    res = subprocess.run([str(path), "-c", "import sys;print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


# ----------------------------------------------------------------------------- GPUs and driver


def query_gpus(nvidia_smi: str | None = None) -> tuple[tuple[str, ...], str | None]:
    """The compute capability of every GPU (``nvidia-smi --query-gpu=compute_cap``) and the
    newest CUDA its driver runs; ``((), None)`` without nvidia-smi or a GPU."""
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if not exe:
        return (), None
    caps = _run([exe, "--query-gpu=compute_cap", "--format=csv,noheader"])
    gpus = parse_compute_caps(caps or "")
    return gpus, (parse_driver_cuda(_run([exe]) or "") if gpus else None)


def parse_compute_caps(text: str) -> tuple[str, ...]:
    """``9.0\\n9.0\\n`` -> ("9.0", "9.0"); lines that are no compute capability are left out."""
    return tuple(line.strip() for line in text.splitlines() if re.fullmatch(r"\d+\.\d+", line.strip()))


def parse_driver_cuda(text: str) -> str | None:
    """The "CUDA Version: 13.0" of nvidia-smi's header."""
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", text)
    return m.group(1) if m else None


def _run(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None

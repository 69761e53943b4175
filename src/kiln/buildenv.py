"""A cell's build environment, whoever runs the compile step (the local backend here, or
cibuildwheel in a container): kiln's variables and the recipe's, parallelism from cores and
memory, the CUDA architecture policy, ccache in front of the compilers, and the constraints."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import gpushim
from kiln.home import Home
from kiln.host import available_memory_gb, probe_host, usable_cores
from kiln.toolchains import Toolchains

if TYPE_CHECKING:
    from kiln.cuda import Toolkit
    from kiln.matrix import Cell


@dataclass(frozen=True)
class Parallelism:
    max_jobs: int
    nvcc_threads: int


def parallelism(memory_per_job_gb: float, cores: int | None = None,
                free_gb: float | None = None) -> Parallelism:
    """MAX_JOBS = min(cores, free memory / memory per job), both as the cgroup limits them (a CI
    runner's or container's memory.max, cpu.max); nvcc threads share what is left."""
    cores = cores or usable_cores()
    free_gb = available_memory_gb() if free_gb is None else free_gb
    jobs = max(1, min(cores, int(free_gb // memory_per_job_gb)))
    return Parallelism(max_jobs=jobs, nvcc_threads=max(1, cores // jobs))


def build_env(cell: Cell, toolchains: Toolchains, home: Home, toolkit: Toolkit | None = None) -> dict[str, str]:
    """kiln's and the recipe's variables for a cell's compile step, whoever runs it (the local
    backend adds only the caller's variables on kiln.sandbox's allow-list). ``toolkit``: the CUDA
    toolkit a CUDA cell builds with (kiln.cuda.prepare); None: the host's, if any."""
    recipe = cell.recipe
    par = parallelism(recipe.build.memory_per_job_gb)
    env = {
        "MAX_JOBS": str(par.max_jobs),
        "NVCC_THREADS": str(par.nvcc_threads),
        "PIP_NO_INDEX": "1",
        "SOURCE_DATE_EPOCH": "315532800",
    }
    if cell.variant.torch:
        env["KILN_CXX_STD"] = str(toolchains.torch[cell.variant.torch].cxx_std)
    if cell.variant.cuda_major:
        cuda_home = toolkit.home if toolkit else probe_host().cuda_home
        if cuda_home:
            env["CUDA_HOME"] = str(cuda_home)
        if toolkit and toolkit.source == "index":  # every name a build may look for it by
            env["CUDA_PATH"] = str(toolkit.home)
            env["CUDACXX"] = str(toolkit.nvcc)
        if cell.cuda_archs != "upstream":
            env["TORCH_CUDA_ARCH_LIST"] = cell.cuda_archs
        if cell.ptx_archs:
            env["NVCC_APPEND_FLAGS"] = ptx_flags(cell.ptx_archs)
    env.update(compiler_cache_env(home, toolkit.nvcc if toolkit else None))
    env.update(recipe.build.env)
    if cell.ptx_archs and "NVCC_APPEND_FLAGS" in recipe.build.env:
        env["NVCC_APPEND_FLAGS"] = f"{recipe.build.env['NVCC_APPEND_FLAGS']} {ptx_flags(cell.ptx_archs)}"
    # torch answers about GPUs for the cell's target architectures, never this machine's (kiln.gpushim);
    # a recipe's build.env may set the answer itself
    env.setdefault(gpushim.ENV, gpushim.answer_for(cell, toolchains, env.get("TORCH_CUDA_ARCH_LIST")))
    return env


def ptx_flags(ptx_archs: str) -> str:
    """nvcc flags that add PTX alone (no SASS) for each compute capability: ``7.5`` ->
    ``-gencode=arch=compute_75,code=compute_75``. Set as NVCC_APPEND_FLAGS, which nvcc appends to
    every command line, whoever builds it (torch's cpp_extension, CMake, a hand-written setup.py)."""
    return " ".join(f"-gencode=arch=compute_{c},code=compute_{c}"
                    for c in (a.strip().replace(".", "") for a in ptx_archs.split(";")) if c)


def ccache_settings(cache_dir: str, base_dir: str) -> dict[str, str]:
    """ccache's settings for a build, wherever it runs (here, or in cibuildwheel's container with
    its own paths): the cache, paths relative to ``base_dir`` hashed alike, compilers checked by
    content, and the sloppiness that lets builds in new temporary directories hit."""
    return {
        "CCACHE_DIR": cache_dir,
        "CCACHE_BASEDIR": base_dir,
        "CCACHE_NOHASHDIR": "1",
        "CCACHE_COMPILERCHECK": "content",
        "CCACHE_SLOPPINESS": "include_file_mtime,include_file_ctime,time_macros,pch_defines",
        "CCACHE_MAXSIZE": os.environ.get("CCACHE_MAXSIZE", "20G"),
    }


def compiler_cache_env(home: Home, nvcc: Path | None = None) -> dict[str, str]:
    """ccache in front of cc, c++ and nvcc (``nvcc``, else the host's), its cache in the kiln home.

    cc and c++ go through ccache's masquerade links (a `c++` that is ccache), because torch runs
    `$CXX -dumpversion` and cannot take a CXX with a space in it; nvcc goes through PYTORCH_NVCC."""
    exe = shutil.which("ccache") or str(Path(sys.executable).parent / "ccache")
    if not Path(exe).exists():
        return {}
    links = home.ccache.parent / "ccache-bin"
    links.mkdir(parents=True, exist_ok=True)
    for name in ("cc", "c++", "gcc", "g++"):
        link = links / name
        if not link.is_symlink() or os.readlink(link) != exe:
            link.unlink(missing_ok=True)
            link.symlink_to(exe)
    env = {
        **ccache_settings(str(home.ccache), str(home.work)),
        "CC": str(links / "cc"),
        "CXX": str(links / "c++"),
        # torch >= 2.14 prepends any ccache on PATH itself; kiln has wired it already.
        "TORCH_NO_COMPILER_WRAPPER": "1",
    }
    if nvcc is None and (host := probe_host()).cuda_home:
        nvcc = host.cuda_home / "bin" / "nvcc"
    if nvcc is not None:
        env["PYTORCH_NVCC"] = f"{exe} {nvcc}"
    return env




def constraint_lines(cell: Cell) -> list[str]:
    """The constraints on a cell's build environment: the recipe's, and torch's exact release."""
    lines = list(cell.recipe.build.constraints)
    if cell.torch_release:
        lines.append(f"torch=={cell.torch_release}")
    return lines


def write_constraints(cell: Cell, path: Path) -> Path:
    """The cell's constraints (constraint_lines) written to ``path``, for uv and pip to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(constraint_lines(cell)) + "\n")
    return path

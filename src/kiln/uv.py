"""kiln's uv toolbox: where uv is, uv's index options, fresh environments and installs
into them, and what an environment holds. Every uv call kiln makes goes through here (the build
steps, the smoke test, closures, sources, the CUDA toolkit cache, infer, publish)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from packaging.utils import canonicalize_name

from kiln.errors import BuildError, HostError
from kiln.host import find_python
from kiln.logs import run_logged
from kiln.sandbox import installer_env


def uv() -> str:
    """The uv executable: on PATH, else beside this Python (kiln depends on uv)."""
    exe = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(exe).exists():
        raise HostError("uv not found: install kiln with its dependencies (`./dev` does, on first use)")
    return exe


def index_args(urls: Sequence[str]) -> list[str]:
    """uv's index options for ``urls`` (kiln.matrix.Cell.index_urls): the first is the default
    index, each other one an index uv prefers to it."""
    return ["--default-index", urls[0], *(arg for url in urls[1:] for arg in ("--index", url))]


def make_env(python: str, dest: Path, log: TextIO, install_args: Sequence[str] = ()) -> Path:
    """A fresh uv environment at ``dest`` (nothing seeded) for Python ``python`` (X.Y), with
    ``install_args`` (requirements and uv options) installed when given; returns its python."""
    interp = find_python(python)
    if interp is None:
        raise BuildError(f"Python {python} not found")
    if dest.exists():
        shutil.rmtree(dest)
    run_logged([uv(), "venv", "--quiet", "--python", str(interp), str(dest)], log, env=installer_env())
    python_exe = dest / "bin" / "python"
    if install_args:
        install(python_exe, install_args, log)
    return python_exe


def install(python: Path, args: Sequence[str], log: TextIO, constraints: Path | None = None,
            env: dict[str, str] | None = None) -> None:
    """`uv pip install ARGS` into ``python``'s environment, under ``constraints`` when given, with
    ``env`` or the caller's environment less kiln's own credentials."""
    cons = ["--constraint", str(constraints)] if constraints else []
    run_logged([uv(), "pip", "install", "--python", str(python), *cons, *args], log,
               env=installer_env() if env is None else env)


def installed(python: Path) -> tuple[dict[str, str], list[str]]:
    """What ``python``'s environment holds: canonical name -> version, and `uv pip freeze`'s lines."""
    res = subprocess.run([uv(), "pip", "freeze", "--python", str(python)], capture_output=True,
                         text=True, check=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    versions: dict[str, str] = {}
    for ln in lines:
        if "==" in ln:
            name, _, ver = ln.partition("==")
            versions[canonicalize_name(name)] = ver.strip()
    return versions, lines


def site_packages(python: Path) -> Path:
    """The purelib directory of ``python``'s environment."""
    return Path(subprocess.run([str(python), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())

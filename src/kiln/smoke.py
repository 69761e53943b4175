"""Smoke-test a finished wheel as a user installs it: a fresh environment, the wheel, its own
Requires-Dist resolved against the index the user will use (staging: this run's wheels plus the
upstream index), nothing built, none of the build constraints; then its imports, each in its own
interpreter so a failure names the module.

uv installs the newest versions the wheel's requirements allow, so a missing run-export (a
runtime bound the ABI needs) fails the cell here instead of in a user's import.

Installing needs the index (uv, with nothing built); the imports run the package's own code, so
they run in kiln's sandbox: no network, the allow-listed environment, the kiln home's secrets
hidden (kiln.sandbox).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kiln.errors import BuildError
from kiln.matrix import Cell
from kiln.sandbox import Sandbox
from kiln.toolchains import Toolchains
from kiln.uv import index_args, make_env


def top_level_modules(wheel: Path) -> list[str]:
    """The importable top-level modules of a wheel, from its RECORD: packages (directories with
    an __init__.py), modules and extension modules. (top_level.txt is not trusted: setuptools
    writes the names of extensions there even when they live inside a package.)"""
    modules: set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        paths = [row[0] for row in csv.reader(io.StringIO(zf.read(record).decode())) if row]
        for path in paths:
            first, _, rest = path.partition("/")
            if first.endswith((".dist-info", ".data")):
                continue
            name = first.split(".")[0]
            if rest == "__init__.py" or (not rest and first.endswith(".py")):
                modules.add(first if rest else name)
            elif not rest and first.endswith(".so") and _exports_init(zf.read(path), name):
                modules.add(name)
    return sorted(m for m in modules if m.isidentifier())


def extension_modules(wheel: Path) -> list[str]:
    """The dotted names of every extension module in a wheel (``pycocotools._mask``): importing
    them loads the compiled code against the installed dependencies, which importing the
    top-level package alone may not."""
    found = []
    with zipfile.ZipFile(wheel) as zf:
        for path in zf.namelist():
            parts = path.split("/")
            if not path.endswith(".so") or parts[0].endswith((".dist-info", ".data")):
                continue
            name = parts[-1].split(".")[0]
            dotted = ".".join([*parts[:-1], name])
            if all(p.isidentifier() for p in dotted.split(".")) and _exports_init(zf.read(path), name):
                found.append(dotted)
    return sorted(found)


def _exports_init(data: bytes, name: str) -> bool:
    """Whether a shared object is a Python extension module: it exports PyInit_<name> (a bundled
    library such as libkenlm.so does not)."""
    try:
        elf = ELFFile(io.BytesIO(data))
        symbols = elf.get_section_by_name(".dynsym")
        return symbols is not None and bool(symbols.get_symbol_by_name(f"PyInit_{name}"))  # type: ignore[attr-defined]
    except ELFError:
        return False


@dataclass(frozen=True)
class SmokeJob:
    """Whose wheel is tested, and against what: the cell, the toolchain table (the torch build's
    index), the index a user installs from, the directories of this run's wheels, and what the
    imports must not see."""

    cell: Cell
    toolchains: Toolchains
    index_url: str
    find_links: list[Path]
    hidden: tuple[Path, ...] = ()


def smoke(wheel: Path, job: SmokeJob, work: Path, log: TextIO) -> list[str]:
    """Install ``wheel`` with --no-build in a fresh env, resolving its requirements against the
    job's find-links and index, and import the recipe's modules (when the recipe names none: the
    wheel's top-level modules and every extension module in it) in the sandbox, the job's hidden
    paths out of sight; returns the modules imported."""
    cell, toolchains, index_url = job.cell, job.toolchains, job.index_url
    modules = list(cell.recipe.test.imports) or list(dict.fromkeys([*top_level_modules(wheel),
                                                                     *extension_modules(wheel)]))
    print(f"kiln: smoke test of {wheel.name}: install as a user does (no build constraints, "
          f"nothing built), then import {', '.join(modules) or '(nothing)'}", file=log, flush=True)
    env_dir = work / "smoke-env"
    links = [arg for d in job.find_links if d.is_dir() for arg in ("--find-links", str(d))]
    python = make_env(cell.python, env_dir, log,
                      ["--no-build", str(wheel), *index_args(cell.index_urls(toolchains, index_url)), *links])
    box = Sandbox(network=False, hide=job.hidden)
    composed = box.compose({"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
    print(f"kiln: the imports run in a sandbox: {box.describe()}", file=log, flush=True)
    print(f"kiln: the imports' environment: {composed.describe()}", file=log, flush=True)
    preload = "import torch; " if cell.variant.torch else ""
    for module in modules:
        code = f"{preload}import {module}; print('kiln: import {module}: ok', getattr({module}, '__file__', ''))"
        cmd = box.wrap([str(python), "-c", code], work / "smoke-sandbox")
        res = subprocess.run(cmd, capture_output=True, text=True, env=composed.env, cwd=work)
        log.write(res.stdout + res.stderr)
        log.flush()
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["?"])[-1]
            raise BuildError(f"smoke test: import {module} failed: {last}")
    shutil.rmtree(env_dir, ignore_errors=True)
    return modules

"""Ways to compile a cell, behind one Protocol, looked up by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from kiln.errors import KilnError
from kiln.matrix import Cell
from kiln.toolchains import Toolchains

if TYPE_CHECKING:
    from kiln.buildreqs import BuildRequirements


@dataclass
class CompileJob:
    """Everything a backend needs to turn an unpacked, patched source into a raw wheel."""

    cell: Cell
    toolchains: Toolchains
    source_dir: Path
    work_dir: Path
    env: dict[str, str]
    constraints: Path
    log: TextIO
    timeout_s: float
    index_url: str
    """The index build requirements come from (sdists come from it too)."""
    hidden: tuple[Path, ...] = ()
    """What the package's own code must not see (kiln.sandbox.secret_paths of the kiln home)."""


@dataclass
class CompileResult:
    """The raw wheel and what the build environment held."""

    wheel: Path
    installed: dict[str, str]
    """Canonical project name -> version in the build environment."""
    freeze: list[str]
    python: str
    compiler: str
    ld_paths: list[Path] = field(default_factory=list)
    """Where the libraries the extension links (torch's) were found, for auditwheel."""
    nvcc: str | None = None
    """The nvcc release that compiled it, when the backend knows (None: this host's nvcc)."""
    build_requires: BuildRequirements | None = None
    """The build requirements, tier by tier, when the backend knows them."""


class Backend(Protocol):
    name: str

    def compile(self, job: CompileJob) -> CompileResult: ...


def get_backend(name: str) -> Backend:
    if name == "local":
        from kiln.backends.local import LocalBackend

        return LocalBackend()
    if name == "cibuildwheel":
        from kiln.backends.cibuildwheel import CibuildwheelBackend

        return CibuildwheelBackend()
    raise KilnError(f"unknown backend {name!r}: expected 'local' or 'cibuildwheel'")

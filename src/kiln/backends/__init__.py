"""Ways to compile a cell, behind one Protocol (kiln.backends.registry looks them up by name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from kiln.matrix import Cell
from kiln.toolchains import Toolchains

if TYPE_CHECKING:
    from kiln.buildreqs import BuildRequirements
    from kiln.cuda import Toolkit
    from kiln.cythonize import Regeneration


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
    toolkit: Toolkit | None = None
    """For a CUDA cell compiled on this host: the CUDA toolkit it builds with (kiln.cuda.prepare),
    the host's or the index's; None for cells without CUDA and for backends with their own."""


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
    cuda_toolkit: str | None = None
    """The CUDA toolkit that compiled it, as the provenance records it (kiln.cuda.Toolkit.describe:
    ``host /usr/local/cuda (nvcc 13.0)``, ``index: nvidia-cuda-nvcc 13.0.88, ...``)."""
    cython: Regeneration | None = None
    """The sdist's stale Cython output regenerated (or removed) before the build (kiln.cythonize), when the backend
    knows."""
    backend: str = ""
    """The backend that compiled it (``local``, ``cibuildwheel``), as the provenance records it."""


class Backend(Protocol):
    name: str
    own_cuda: bool
    """Whether the compile step brings its own CUDA toolkit (a container image's) instead of
    building with the one kiln picks on this host (kiln.cuda)."""

    def compile(self, job: CompileJob) -> CompileResult: ...


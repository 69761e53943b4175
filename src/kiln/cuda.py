"""CUDA homes: the host's toolkit, or one assembled from NVIDIA's compiler packages on the index.

A CUDA cell compiles with nvcc of its CUDA build's major. ``choose`` says where that comes from:

- ``host``: the host's toolkit (``kiln.host.probe_host``: CUDA_HOME, /usr/local/cuda, nvcc on
  PATH) when its nvcc has the cell's CUDA major;
- ``index``: else, NVIDIA's compiler packages of the exact CUDA release toolchains.yaml names
  (``cuda.<version>.toolkit``: ``nvidia-cuda-nvcc``, ``nvidia-nvvm``, ``nvidia-cuda-crt``,
  ``nvidia-cuda-cccl``, ``nvidia-cuda-runtime``, each ``==13.0.*``), installed with uv into the kiln
  home's cache (``cache/cuda/<version>-<hash of the list>/``, once, under a lock, built in a
  temporary directory and renamed into place) apart from any build environment: torch's own
  dependencies pull newer ``nvidia-nvvm`` releases into the build environment, and a 13.0 ptxas
  rejects the PTX of a 13.5 libnvvm. The packages' ``nvidia/cu13`` tree is the toolkit's root,
  with the links a CUDA home has (``lib64`` -> ``lib``, ``libcudart.so`` -> ``libcudart.so.13``);
- none: a CUDA build without compiler packages (the 12.x ``nvidia-cuda-nvcc-cu12`` packages ship
  ptxas only) on a host without its nvcc: the cell is not buildable here, and says why.

``KILN_CUDA_TOOLKIT`` (``auto``, the default; ``host``; ``index``) forces one source: ``index`` builds
with the index's packages on a host that has nvcc too.

A cell built with the index's toolkit gets a CUDA home of its own (``cell_home``, in its work
directory): the toolkit's ``bin`` and ``nvvm``, and ``include`` and ``lib64`` merging the toolkit's
with the CUDA libraries torch's CUDA wheel brought into the build environment
(``site-packages/nvidia/cu13``: cuBLAS, cuSPARSE, cuSOLVER... headers that torch's own headers
include), the toolkit's first. CUDA_HOME, CUDA_PATH and CUDACXX name it, its ``bin`` is on PATH,
and the sandbox hides the host's toolkits (kiln.sandbox.Sandbox.hide_host_cuda), so the cell is
really built with the index's nvcc; the wheel's provenance names the packages (``cuda_toolkit``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import distributions
from pathlib import Path
from typing import Literal, TextIO, get_args

from packaging.utils import canonicalize_name

from kiln.errors import BuildError, ConfigError
from kiln.host import Host, nvcc_version, probe_host
from kiln.logs import run_logged
from kiln.sandbox import installer_env
from kiln.toolchains import CudaSpec, Toolchains
from kiln.uv import uv

Mode = Literal["auto", "host", "index"]
MODES: tuple[Mode, ...] = get_args(Mode)
MODE_ENV = "KILN_CUDA_TOOLKIT"
"""Where CUDA cells' nvcc comes from: ``auto`` (the host's when its major fits, else the index's),
``host`` or ``index``."""

Source = Literal["host", "index"]
MANIFEST = "kiln-toolkit.json"
"""Written into a cached toolkit once it is complete: what was asked for and what was installed."""


def mode(environ: Mapping[str, str] | None = None) -> Mode:
    """The toolkit policy ``KILN_CUDA_TOOLKIT`` asks for (default ``auto``)."""
    environ = os.environ if environ is None else environ
    value = environ.get(MODE_ENV, "").strip().lower() or "auto"
    for m in MODES:
        if value == m:
            return m
    raise ConfigError(f"{MODE_ENV}={value!r}: expected one of {', '.join(MODES)}")


# ----------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class Choice:
    """Where a CUDA build's nvcc comes from on this host, or why it cannot be had."""

    cuda: str
    """The CUDA build, ``13.0``."""
    source: Source | None
    """``host``, ``index``, or None: no nvcc for it here (``why``)."""
    why: str = ""
    """For None: why the cell is not buildable, and what to do."""
    host: Host = field(default_factory=lambda: Host(None, None))
    packages: tuple[str, ...] = ()
    """For ``index``: the requirements installed, ``nvidia-cuda-nvcc==13.0.*``..."""

    def describe(self) -> str:
        """One phrase: ``host nvcc 13.0 (/usr/local/cuda)``, ``index CUDA 13.0.* (nvidia-cuda-nvcc
        and 4 more packages)``."""
        if self.source == "host":
            return f"host nvcc {self.host.nvcc_version} ({self.host.cuda_home})"
        if self.source == "index":
            first = self.packages[0].split("==")[0] if self.packages else "no packages"
            more = f" and {len(self.packages) - 1} more packages" if len(self.packages) > 1 else ""
            return f"index CUDA {self.cuda}.* ({first}{more})"
        return f"none: {self.why}"


def requirements(cuda: str, spec: CudaSpec) -> tuple[str, ...]:
    """``nvidia-cuda-nvcc==13.0.*``, ...: every package of one CUDA release."""
    return tuple(f"{name}=={cuda}.*" for name in spec.toolkit)


def choose(cuda: str, toolchains: Toolchains, host: Host | None = None, policy: Mode | None = None) -> Choice:
    """Where nvcc for CUDA build ``cuda`` comes from here: the host's toolkit when its nvcc has the
    same major (``auto``, ``host``), else the index's compiler packages (``auto``, ``index``)."""
    host = host or probe_host()
    policy = policy or mode()
    major = cuda.split(".")[0]
    spec = toolchains.cuda.get(cuda)
    fits = host.nvcc_version is not None and host.cuda_major == major
    if policy != "index" and fits:
        return Choice(cuda, "host", host=host)
    if policy != "host" and spec is not None and spec.toolkit:
        return Choice(cuda, "index", host=host, packages=requirements(cuda, spec))
    here = ("no nvcc here" if host.nvcc_version is None
            else f"nvcc here is CUDA {host.nvcc_version} (majors differ)" if not fits else f"nvcc {host.nvcc_version}")
    if policy == "host":
        return Choice(cuda, None, f"{here} and {MODE_ENV}=host: install a CUDA {major} toolkit and set "
                                  "CUDA_HOME", host=host)
    hint = " (the 12.x nvidia-cuda-nvcc-cu12 packages ship ptxas only)" if int(major) == 12 else ""
    why = (f"CUDA {cuda} has no compiler packages on the index{hint}: toolchains.yaml's "
           f"cuda.\"{cuda}\".toolkit is empty")
    if policy == "index":
        return Choice(cuda, None, f"{why} and {MODE_ENV}=index", host=host)
    return Choice(cuda, None, f"{here} and CUDA {cuda} has no compiler packages on the index{hint}: "
                              f"install a CUDA {major} toolkit and set CUDA_HOME", host=host)


# ----------------------------------------------------------------------------- toolkits


@dataclass(frozen=True)
class Toolkit:
    """A CUDA toolkit a cell builds with."""

    source: Source
    root: Path
    """The toolkit's own CUDA home: the host's, or the cached ``nvidia/cu13`` tree."""
    nvcc_version: str
    """nvcc's release, ``13.0``."""
    packages: tuple[tuple[str, str], ...] = ()
    """For ``index``: (project, version) of each package installed."""
    cuda_home: Path | None = None
    """What CUDA_HOME names in the build (a cell's own home for ``index``); None: ``root``."""

    @property
    def home(self) -> Path:
        return self.cuda_home or self.root

    @property
    def nvcc(self) -> Path:
        return self.home / "bin" / "nvcc"

    def describe(self) -> str:
        """As the provenance records it: ``host /usr/local/cuda (nvcc 13.0)`` or ``index:
        nvidia-cuda-nvcc 13.0.88, nvidia-nvvm 13.0.88, ...``."""
        if self.source == "host":
            return f"host {self.root} (nvcc {self.nvcc_version})"
        return "index: " + ", ".join(f"{name} {version}" for name, version in self.packages)

    @property
    def release(self) -> str:
        """The exact release: the nvcc package's version (``13.0.88``) for ``index``, else nvcc's."""
        return self.packages[0][1] if self.packages else self.nvcc_version

    def for_cell(self, work: Path) -> Toolkit:
        """This toolkit as a cell in ``work`` sees it: through the cell's own home (``work/cuda``,
        filled by ``cell_home`` once the build environment exists). The host's too: a toolkit
        installed without the CUDA libraries (nvcc and the runtime alone, as in many images) lacks
        the cuSPARSE and cuBLAS headers torch's own headers include, which the build environment's
        nvidia packages carry; older torch releases do not look for them there themselves."""
        return replace(self, cuda_home=work / "cuda")


@dataclass(frozen=True)
class Manifest:
    """``kiln-toolkit.json`` of a cached toolkit."""

    cuda: str
    requested: list[str]
    packages: list[tuple[str, str]]
    root: str
    """The CUDA home inside the cache entry, relative to it (``site/nvidia/cu13``)."""
    nvcc_version: str
    index_url: str = ""

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"cuda": self.cuda, "requested": self.requested,
                                    "packages": [list(p) for p in self.packages], "root": self.root,
                                    "nvcc_version": self.nvcc_version, "index_url": self.index_url},
                                   indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        return cls(cuda=str(data["cuda"]), requested=[str(r) for r in data["requested"]],
                   packages=[(str(n), str(v)) for n, v in data["packages"]], root=str(data["root"]),
                   nvcc_version=str(data["nvcc_version"]), index_url=str(data.get("index_url", "")))


def cache_dir(home_root: Path) -> Path:
    """Where a kiln home keeps the toolkits it installed."""
    return home_root / "cache" / "cuda"


def entry_dir(cache: Path, cuda: str, spec: CudaSpec) -> Path:
    """The cache entry of one CUDA release's package list: ``13.0-<12 hex digits>``."""
    key = hashlib.sha256("\n".join(sorted(requirements(cuda, spec))).encode()).hexdigest()[:12]
    return cache / f"{cuda}-{key}"


def cached(cache: Path, cuda: str, spec: CudaSpec) -> Toolkit | None:
    """The toolkit of ``cuda`` installed in ``cache`` earlier, if any."""
    entry = entry_dir(cache, cuda, spec)
    try:
        manifest = Manifest.read(entry / MANIFEST)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    root = entry / manifest.root
    if not (root / "bin" / "nvcc").is_file():
        return None
    return Toolkit("index", root, manifest.nvcc_version, tuple(manifest.packages))


@contextmanager
def _locked(path: Path, log: TextIO) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"kiln: CUDA toolkit: waiting for {path} (another build is installing it)", file=log, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def install(cache: Path, cuda: str, spec: CudaSpec, index_url: str, log: TextIO) -> Toolkit:
    """The index's toolkit of CUDA release ``cuda``: from ``cache``, else installed there (uv, no
    dependencies, binaries only, from ``index_url``) under a lock, in a temporary directory renamed
    into place once nvcc in it answers with the release asked for."""
    if found := cached(cache, cuda, spec):
        return found
    entry = entry_dir(cache, cuda, spec)
    with _locked(cache / f".{entry.name}.lock", log):
        if found := cached(cache, cuda, spec):
            return found
        wanted = list(requirements(cuda, spec))
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=cache))
        try:
            print(f"kiln: CUDA toolkit: installing {' '.join(wanted)} from {index_url} into {entry}",
                  file=log, flush=True)
            run_logged([uv(), "pip", "install", "--quiet", "--no-deps", "--no-build", "--python", sys.executable,
                        "--target", str(tmp / "site"), "--default-index", index_url, *wanted], log,
                       env=installer_env())
            root = _toolkit_root(tmp / "site", cuda)
            link_libraries(root / "lib")
            if not (root / "lib64").exists():
                (root / "lib64").symlink_to("lib")
            version = nvcc_version(root)
            if version != cuda:
                raise BuildError(f"nvcc of {', '.join(wanted)} says CUDA {version or '(no answer)'}, not {cuda}")
            packages = _installed(tmp / "site", spec)
            Manifest(cuda, wanted, packages, str(root.relative_to(tmp)), version, index_url).write(tmp / MANIFEST)
            if entry.exists():  # an incomplete entry (no manifest) of an older kiln
                shutil.rmtree(entry)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    found = cached(cache, cuda, spec)
    assert found is not None
    print(f"kiln: CUDA toolkit: {found.describe()} at {found.root}", file=log, flush=True)
    return found


def _toolkit_root(site: Path, cuda: str) -> Path:
    """The CUDA home inside the installed packages: ``nvidia/cu13``, where ``bin/nvcc`` is."""
    major = cuda.split(".")[0]
    for root in [site / "nvidia" / f"cu{major}", *sorted(site.glob("nvidia/*"))]:
        if (root / "bin" / "nvcc").is_file():
            return root
    raise BuildError(f"the CUDA {cuda} packages brought no bin/nvcc (looked in {site / 'nvidia'}): "
                     "check toolchains.yaml's cuda.\"" + cuda + "\".toolkit")


def _installed(site: Path, spec: CudaSpec) -> list[tuple[str, str]]:
    """(project, version) of each package of ``spec`` found in ``site``, in the table's order."""
    found = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions(path=[str(site)])}
    missing = [n for n in spec.toolkit if canonicalize_name(n) not in found]
    if missing:
        raise BuildError(f"the CUDA toolkit install lacks {', '.join(missing)}")
    return [(n, found[canonicalize_name(n)]) for n in spec.toolkit]


_VERSIONED = re.compile(r"^(?P<stem>lib[^/]+?\.so)(?:\.\d+)+$")


def link_libraries(lib: Path) -> None:
    """``libcudart.so`` -> ``libcudart.so.13`` for each versioned library without its unversioned
    name in ``lib``: what ``-lcudart`` links (the packages ship only the versioned names)."""
    if not lib.is_dir():
        return
    names = sorted(os.listdir(lib))
    for name in names:
        m = _VERSIONED.match(name)
        if m and not os.path.lexists(lib / m.group("stem")):
            (lib / m.group("stem")).symlink_to(name)


def cell_home(toolkit: Toolkit, site_packages: Path | None, dest: Path) -> Path:
    """A CUDA home for one cell at ``dest``, of links: the toolkit's ``bin`` and ``nvvm``; an
    ``include`` and a ``lib64`` (``lib`` too) holding the toolkit's entries, then those of the CUDA
    packages in the build environment (``site-packages/nvidia/cu13``, where torch's CUDA wheel puts
    cuBLAS, cuSPARSE... headers and libraries) that the toolkit lacks; the toolkit's win."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    root = toolkit.root
    for name in ("bin", "nvvm"):
        if (root / name).exists():
            (dest / name).symlink_to(root / name)
    major = toolkit.nvcc_version.split(".")[0]
    sources = [root]
    if site_packages is not None:
        first = site_packages / "nvidia" / f"cu{major}"
        sources += [first, *(p for p in sorted(site_packages.glob("nvidia/*")) if p.is_dir() and p != first)]
    for sub, names in (("include", ("include",)), ("lib64", ("lib64", "lib"))):
        (dest / sub).mkdir()
        for src in sources:
            for name in names:
                folder = src / name
                if not folder.is_dir():
                    continue
                for entry in sorted(os.listdir(folder)):
                    if not os.path.lexists(dest / sub / entry):
                        (dest / sub / entry).symlink_to((folder / entry).resolve())
                break  # lib64 and lib of one source are the same libraries
    link_libraries(dest / "lib64")
    (dest / "lib").symlink_to("lib64")
    return dest


def prepare(cuda: str, toolchains: Toolchains, home_root: Path, work: Path, index_url: str,
            log: TextIO) -> Toolkit:
    """The toolkit a CUDA cell of ``cuda`` builds with here, installed into the home's cache first
    when it comes from the index; a BuildError says why there is none."""
    choice = choose(cuda, toolchains)
    if choice.source is None:
        raise BuildError(choice.why)
    if choice.source == "host":
        host = choice.host
        assert host.cuda_home is not None and host.nvcc_version is not None
        print(f"kiln: CUDA toolkit: {choice.describe()}", file=log, flush=True)
        return Toolkit("host", host.cuda_home, host.nvcc_version).for_cell(work)
    spec = toolchains.cuda[cuda]
    why = ("KILN_CUDA_TOOLKIT=index" if mode() == "index" else
           f"no nvcc {cuda.split('.')[0]} here" if choice.host.nvcc_version is None
           else f"nvcc here is CUDA {choice.host.nvcc_version}")
    print(f"kiln: CUDA toolkit: the index's CUDA {cuda} packages ({why})", file=log, flush=True)
    return install(cache_dir(home_root), cuda, spec, index_url, log).for_cell(work)


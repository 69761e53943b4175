"""`kiln bump --toolchains`: the toolchain table's edits, read from torch's own wheels.

A newer patch release of a minor the table has sets that minor's ``release``. A new minor is
added (first: the table lists the newest minor first) with what its wheels say, never a guess:

- ``python``: the ``cpXY`` tags of the release's Linux wheels (for ``ci.arch``) on the default
  index, of the Pythons kiln knows (kiln.matrix.DEFAULT_PYTHONS and the table's own);
- ``builds``: the default index's wheel's CUDA build (``cuda = '13.0'`` in its
  ``torch/version.py``, what ``torch.version.cuda`` says; None: a CPU build), and ``cpu`` from the
  default index as the table's other minors have it; then each CUDA build of the table's ``cuda``
  that an index of ``indexes`` (the PyTorch index: ``<url>/cu128``) has a wheel of the release for;
- ``cxx_std`` and ``cxx11_abi``: from the CMake config torch ships for C++ consumers,
  ``torch/share/cmake/Torch/TorchConfig.cmake``: the standard its ``torch`` target asks for
  (``CXX_STANDARD 20``, or ``cxx_std_20`` as a compile feature from 2.15), and the
  ``-D_GLIBCXX_USE_CXX11_ABI=`` of its ``TORCH_CXX_FLAGS`` where it sets one; newer torch sets none
  (the C++11 ABI is its only one), and then ``torch/lib/libc10.so``'s symbols say it (``__cxx11``).

Those files of one wheel are read: by HTTP range requests where the index serves ranges (a zip's
directory is at its end), else the one wheel is downloaded to a temporary directory. What cannot be
read is named, and that minor is not written.
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from kiln.errors import ConfigError, SourceError
from kiln.matrix import DEFAULT_PYTHONS
from kiln.outdated import Finding, Kind, release_wheels, wheel_pythons
from kiln.source import index_files
from kiln.toolchains import PYPI, Toolchains, TorchSpec, load_toolchains
from kiln.yamlsrc import dump_round_trip, round_trip

TORCH = "torch"
VERSION_PY = "torch/version.py"
TORCH_CONFIG = "torch/share/cmake/Torch/TorchConfig.cmake"
LIBC10 = "torch/lib/libc10.so"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelFacts:
    """What one torch wheel says about its build; None where it does not say."""

    cuda: str | None
    """``torch.version.cuda`` (``13.0``), None for a CPU build."""
    cxx_std: int | None
    cxx11_abi: bool | None


@dataclass
class NewMinor:
    """A new torch minor as its wheels describe it: ``spec`` when all was read, else ``missing``."""

    minor: str
    release: str
    spec: TorchSpec | None = None
    missing: list[str] = field(default_factory=list)


class _NoRanges(Exception):
    """The server answered a range request with the whole file."""


class _HttpRange(io.RawIOBase):
    """A remote file read by HTTP range requests, seekable, for zipfile."""

    def __init__(self, url: str, size: int) -> None:
        self.url, self.size, self.pos = url, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b: Any) -> int:
        if self.pos >= self.size:
            return 0
        end = min(self.pos + len(b), self.size) - 1
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end}"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            if resp.status != 206:
                raise _NoRanges
            data = resp.read()
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


@contextmanager
def _open_remote(url: str) -> Iterator[zipfile.ZipFile]:
    """The wheel at ``url`` as a zip: ranged when the server serves ranges, else downloaded (that
    one file) to a temporary directory."""
    req = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        total = re.fullmatch(r"bytes 0-0/(\d+)", resp.headers.get("Content-Range", "") or "")
        if resp.status == 206 and total:
            raw = _HttpRange(url, int(total.group(1)))
            with zipfile.ZipFile(io.BufferedReader(raw, buffer_size=_CHUNK)) as zf:
                yield zf
            return
        with tempfile.TemporaryDirectory(prefix="kiln-torch-") as tmp:
            dest = Path(tmp) / "torch.whl"
            with dest.open("wb") as out:
                shutil.copyfileobj(resp, out, _CHUNK)
            with zipfile.ZipFile(dest) as zf:
                yield zf


def _read(zf: zipfile.ZipFile, name: str) -> str | None:
    try:
        return zf.read(name).decode("utf-8", "replace")
    except KeyError:
        return None


def cuda_of_version_py(text: str) -> tuple[bool, str | None]:
    """(found, value) of the ``cuda`` assignment in torch's ``version.py`` (a string or None)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False, None
    for node in tree.body:
        target: ast.expr
        expr: ast.expr | None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, expr = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, expr = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "cuda" and isinstance(expr, ast.Constant):
            value = expr.value
            if value is None or isinstance(value, str):
                return True, value
    return False, None


def cmake_facts(text: str) -> tuple[int | None, bool | None]:
    """(the C++ standard, the ``_GLIBCXX_USE_CXX11_ABI`` flag) of torch's TorchConfig.cmake: the
    standard its ``torch`` target asks consumers for, ``CXX_STANDARD 20`` (torch 2.14 and older) or
    ``target_compile_features(torch INTERFACE cxx_std_20)`` (2.15); the ABI flag of its
    ``TORCH_CXX_FLAGS`` where it sets one (newer torch sets none: see :func:`libc10_abi`)."""
    stds = [int(a or b) for a, b in re.findall(r"\bCXX_STANDARD\s+(\d+)\b|\bcxx_std_(\d+)\b", text)]
    abi = re.search(r"-D_GLIBCXX_USE_CXX11_ABI=([01])\b", text)
    return (max(stds) if stds else None), (abi.group(1) == "1" if abi else None)


def libc10_abi(data: bytes) -> bool:
    """Whether torch's ``libc10.so`` is built with the C++11 ABI: its symbols name
    ``std::__cxx11::basic_string`` (mangled ``St7__cxx11``), which the old ABI has no such name for."""
    return b"St7__cxx11" in data


def wheel_facts(url: str) -> tuple[WheelFacts, list[str]]:
    """What the torch wheel at ``url`` says of its CUDA build and C++; what it does not say."""
    missing: list[str] = []
    try:
        with _open_remote(url) as zf:
            version_py, config = _read(zf, VERSION_PY), _read(zf, TORCH_CONFIG)
            std, abi = cmake_facts(config) if config is not None else (None, None)
            if abi is None and LIBC10 in zf.namelist():
                abi = libc10_abi(zf.read(LIBC10))
    except (OSError, urllib.error.URLError, zipfile.BadZipFile, _NoRanges) as exc:
        name = url.rsplit("/", 1)[-1]
        return WheelFacts(None, None, None), [f"{name}: could not be read ({getattr(exc, 'reason', exc)})"]
    found, cuda = cuda_of_version_py(version_py) if version_py is not None else (False, None)
    if not found:
        missing.append(f"its CUDA build: no `cuda =` in {VERSION_PY}")
    if std is None:
        missing.append(f"its C++ standard: no CXX_STANDARD or cxx_std_NN in {TORCH_CONFIG}")
    if abi is None:
        missing.append(f"its C++11 ABI: no -D_GLIBCXX_USE_CXX11_ABI in {TORCH_CONFIG}, no {LIBC10}")
    return WheelFacts(cuda, std, abi), missing


def new_minor(release: str, toolchains: Toolchains, index_url: str) -> NewMinor:
    """The table entry of torch ``release``'s minor, read from its wheels (see the module)."""
    want = Version(release)
    entry = NewMinor(f"{want.major}.{want.minor}", release)
    arch = toolchains.ci.arch
    try:
        default = release_wheels(index_files(TORCH, index_url), want, arch)
    except SourceError as exc:
        entry.missing.append(f"the default index's torch page: {exc.message}")
        return entry
    if not default:
        entry.missing.append(f"its wheels: no Linux {arch} wheel of torch {release} on the default index")
        return entry
    known = set(DEFAULT_PYTHONS) | {py for spec in toolchains.torch.values() for py in spec.python}
    pythons = sorted(wheel_pythons([f for f, _ in default], want, arch) & known, key=Version)
    if not pythons:
        entry.missing.append(f"its Pythons: no cpXY wheel of torch {release} for one of {sorted(known, key=Version)}")
    facts, missing = wheel_facts(sorted(default, key=lambda w: w[0].filename)[0][0].url)
    entry.missing += missing
    builds: dict[str, str] = {}
    if facts.cuda is not None and not missing:
        cuda = ".".join(facts.cuda.split(".")[:2])
        if cuda not in toolchains.cuda:
            entry.missing.append(f"CUDA {cuda}, the default index's build: no entry in the table's `cuda` "
                                 "(the GPUs its indexes serve; add it by hand)")
        builds[cuda] = PYPI
    if not missing:
        builds["cpu"] = PYPI
    for name, index in toolchains.indexes.items():
        for cuda in toolchains.cuda:
            if cuda in builds:
                continue
            build = "cu" + cuda.replace(".", "")
            url = index.url(build)
            if url is None:
                entry.missing.append(f"the {name} index's CUDA builds: {index.url_env} is not set")
                break
            try:
                if release_wheels(index_files(TORCH, url), want, arch):
                    builds[cuda] = name
            except SourceError as exc:
                entry.missing.append(f"the {name} index's {build} build: {exc.message}")
    if entry.missing:
        return entry
    order = sorted((k for k in builds if k != "cpu"), key=Version, reverse=True) + ["cpu"]
    entry.spec = TorchSpec(release=release, python=pythons, cxx11_abi=bool(facts.cxx11_abi),
                           cxx_std=int(facts.cxx_std or 0), builds={k: builds[k] for k in order})
    return entry


def edit_table(text: str, where: Path, releases: dict[str, str], minors: list[NewMinor]) -> str:
    """``text`` (toolchains.yaml) with each minor's new ``release`` set and the new minors added
    first under ``torch``, newest first, styled as the newest entry already there (quoted keys and
    versions, flow lists); every comment and the rest of the file kept byte for byte."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString

    yml, data = round_trip(text, where)
    table = data.get("torch") if isinstance(data, CommentedMap) else None
    if not isinstance(table, CommentedMap):
        raise ConfigError(f"{where}: expected a mapping at 'torch'")
    for minor, release in releases.items():
        spec = table[minor]
        old = spec["release"]
        spec["release"] = type(old)(release) if isinstance(old, ScalarString) else DoubleQuotedScalarString(release)
    q = DoubleQuotedScalarString
    for entry in sorted(minors, key=lambda m: Version(m.minor)):
        assert entry.spec is not None
        s = entry.spec
        python = CommentedSeq(q(p) for p in s.python)
        python.fa.set_flow_style()
        builds = CommentedMap((k if k == "cpu" else q(k), v) for k, v in s.builds.items())
        table.insert(0, q(entry.minor), CommentedMap([
            ("release", q(s.release)), ("python", python), ("cxx11_abi", s.cxx11_abi), ("cxx_std", s.cxx_std),
            ("builds", builds)]))
    return dump_round_trip(yml, data)


def write_table(path: Path, text: str) -> None:
    """Replace the table at ``path`` with ``text`` once ``text`` loads as a valid table."""
    with tempfile.TemporaryDirectory(prefix="kiln-table-") as tmp:
        trial = Path(tmp) / path.name
        trial.write_text(text)
        try:
            load_toolchains(Path(tmp))
        except ConfigError as exc:
            raise ConfigError(f"{path}: the edited table does not load ({exc.message}); not written") from None
        staged = path.with_name(f".{path.name}.bump")
        staged.write_text(text)
        staged.replace(path)


@dataclass
class TableBump:
    """What `kiln bump --toolchains` did to the table: lines said, and the minors it could not add."""

    lines: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


TableCheck = Callable[[Toolchains, set[str]], list[str]]
"""Builds the cells a new table changes (the edited table, the torch minors it changed) before
the table is written; returns a line per cell that failed (kiln.bump.verify_table)."""


def bump_table(findings: list[Finding], table: Path, toolchains: Toolchains, index_url: str,
               check: TableCheck | None = None) -> TableBump:
    """Apply the torch findings to the table at ``table``: new releases set, new minors added
    (those whose wheels said all), in one edit, written once ``check`` (None: ``--no-build``)
    built the cells it changes; when one fails, nothing is written."""
    result = TableBump()
    releases = {_minor(f.new): f.new for f in findings if f.kind == Kind.TORCH_RELEASE}
    minors = []
    for f in findings:
        if f.kind != Kind.TORCH_MINOR:
            continue
        entry = new_minor(f.new, toolchains, index_url)
        if entry.spec is None:
            result.refused.append(f"torch {entry.minor} ({entry.release}) not added to {table}, its wheels do "
                                  "not say: " + "; ".join(entry.missing))
        else:
            minors.append(entry)
    if not releases and not minors:
        return result
    text = edit_table(table.read_text(), table, releases, minors)
    if check is not None:
        with tempfile.TemporaryDirectory(prefix="kiln-table-") as tmp:
            (Path(tmp) / table.name).write_text(text)
            trial = load_toolchains(Path(tmp))
        if failed := check(trial, set(releases) | {m.minor for m in minors}):
            result.refused += [f"{table} not written: {line}" for line in failed]
            return result
    write_table(table, text)
    for minor, release in releases.items():
        result.lines.append(f"torch {minor}: release {release} in {table}")
    for entry in minors:
        s = entry.spec
        assert s is not None
        builds = ", ".join(f"{k} from {v}" for k, v in s.builds.items())
        result.lines.append(f"added torch {entry.minor} ({s.release}; Pythons {', '.join(s.python)}; builds {builds}; "
                            f"C++{s.cxx_std}, cxx11_abi {str(s.cxx11_abi).lower()}) to {table}")
    return result


def _minor(release: str) -> str:
    v = Version(release)
    return f"{v.major}.{v.minor}"

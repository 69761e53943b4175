"""Cells that cannot exist, named instead of failed: `kiln build` records them as not buildable.

A cell is impossible when

- the package's own Requires-Python excludes the cell's Python (`check_python`: the sdist's
  ``PKG-INFO``, else ``pyproject.toml``'s ``[project].requires-python``), found before anything is
  installed; or
- a build requirement whose project publishes wheels on the index has none for the cell's Python
  within the requirement and the recipe's constraints (`install`). Such a project is never
  compiled from its sdist in a build environment: ``numpy<2`` on cp313 would compile numpy 1.26
  for minutes, and the package's own code then fails against 3.13 anyway.

`install` puts a build environment's requirements in with wheels only (uv's ``--only-binary
:all:``). When they all have wheels, which is the common case, that one install is the whole
cost: kiln looks at no index page of its own. When it does not resolve, kiln reads the index
page of each requirement (once per run) and installs again with sdists allowed for the projects
that publish no wheel at all, so sdist-only build requirements build as before. When that fails
too, the first requirement that publishes wheels but has none for the cell is the reason the
cell is not buildable (`NotBuildable`); otherwise the install's own failure stands. A project that
only a build requirement requires (not named by a tier) may still be built from its sdist when
some requirement has no wheel.
"""

from __future__ import annotations

import functools
import subprocess
import sysconfig
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.metadata import parse_email
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from kiln import source, uv
from kiln.errors import BuildError, NotBuildable, SourceError
from kiln.host import find_python
from kiln.matrix import Cell

if TYPE_CHECKING:
    from kiln.backends import CompileJob
    from kiln.buildreqs import BuildRequirements

TORCH = "the cell's torch"
FRONTEND = "kiln's PEP 517 frontend"
BACKEND = "backend get_requires_for_build_wheel"


@dataclass(frozen=True)
class Wanted:
    """A build requirement as its tier wrote it, and the tier (what the reason's line names)."""

    requirement: str
    origin: str


def first_tiers(reqs: BuildRequirements, torch_release: str | None) -> list[Wanted]:
    """What a build environment holds before the backend hook is asked: the cell's torch, kiln's
    frontend (`build`), tiers 1 and 2, each with where it came from."""
    system = "PEP 517's default (no [build-system] table)" if reqs.default else "[build-system].requires"
    wanted = [Wanted(f"torch=={torch_release}", TORCH)] if torch_release else []
    wanted.append(Wanted("build", FRONTEND))
    wanted += [Wanted(r, system) for r in reqs.build_system]
    wanted += [Wanted(r, "recipe build.requires") for r in reqs.recipe]
    return wanted


def backend_tier(requirements: Iterable[str]) -> list[Wanted]:
    """Tier 3, the backend hook's answer."""
    return [Wanted(r, BACKEND) for r in requirements]


# ----------------------------------------------------------------------------- Requires-Python


@functools.cache
def interpreter_version(minor: str) -> Version:
    """The full version of the interpreter a cell of Python ``minor`` builds with (``3.12.1``);
    ``minor`` itself when none is found (the build then says so)."""
    interp = find_python(minor)
    if interp is not None:
        res = subprocess.run([str(interp), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True)
        try:
            return Version(res.stdout.strip())
        except InvalidVersion:
            pass
    return Version(minor)


def requires_python(source_dir: Path) -> tuple[str, str] | None:
    """The package's Requires-Python as written, and where: its sdist's ``PKG-INFO``, else
    ``pyproject.toml``'s ``[project].requires-python``; None when neither says."""
    pkg_info = source_dir / "PKG-INFO"
    if pkg_info.is_file():
        raw, _ = parse_email(pkg_info.read_bytes())
        if written := (raw.get("requires_python") or "").strip():
            return written, "PKG-INFO"
    pyproject = source_dir / "pyproject.toml"
    if pyproject.is_file():
        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None
        spec = project.get("requires-python") if isinstance(project, dict) else None
        if isinstance(spec, str) and spec.strip():
            return spec.strip(), "pyproject.toml"
    return None


def python_excluded(cell: Cell, source_dir: Path) -> str | None:
    """Why the package's Requires-Python excludes the cell's Python, or None when it does not
    (or says nothing, or says it in a form no tool can read)."""
    found = requires_python(source_dir)
    if found is None:
        return None
    text, where = found
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier:
        return None
    version = interpreter_version(cell.python)
    if spec.contains(version, prereleases=True):
        return None
    return (f"{cell.project} {cell.version} requires Python {text} (Requires-Python in its {where}), "
            f"not {version} ({cell.python_tag})")


def check_python(cell: Cell, source_dir: Path) -> None:
    """Refuse, as not buildable, a cell whose Python the package's Requires-Python excludes."""
    if why := python_excluded(cell, source_dir):
        raise NotBuildable(why)


# ----------------------------------------------------------------------------- build requirements


def install(job: CompileJob, python: Path, wanted: list[Wanted]) -> None:
    """Install ``wanted`` into the build environment of ``python``: wheels only, else sdists
    allowed for the projects that publish no wheel; raises NotBuildable naming a requirement that
    publishes wheels but has none for the cell, else the install's BuildError."""
    if not wanted:
        return
    reqs = [w.requirement for w in wanted]
    indexes = uv.index_args(job.cell.index_urls(job.toolchains, job.index_url))
    try:
        uv.install(python, [*indexes, "--only-binary", ":all:", *reqs], job.log, job.constraints)
        return
    except BuildError:
        pass
    published = wheel_files(wanted, job)
    print(f"kiln: the build requirements do not install from wheels alone for {job.cell.python_tag}; again, "
          f"with wheels only for those that publish any ({', '.join(sorted(published)) or 'none'})",
          file=job.log, flush=True)
    only = [arg for name in sorted(published) for arg in ("--only-binary", name)]
    try:
        uv.install(python, [*indexes, *only, *reqs], job.log, job.constraints)
    except BuildError as failure:
        if why := missing_wheel(wanted, published, job.cell, read_constraints(job.constraints)):
            raise NotBuildable(why) from None
        raise failure from None


def _name(wanted: Wanted) -> str:
    """The canonical project name of a requirement kiln may look up; empty for a URL or an
    unreadable one."""
    try:
        req = Requirement(wanted.requirement)
    except InvalidRequirement:
        return ""
    return "" if req.url else canonicalize_name(req.name)


def wheel_files(wanted: list[Wanted], job: CompileJob) -> dict[NormalizedName, list[source.IndexFile]]:
    """Project -> its files on the index uv installs it from (the torch build's index first, then
    the default, as uv's first-index strategy takes them), for every project of ``wanted`` that
    publishes at least one wheel there."""
    urls = list(reversed(job.cell.index_urls(job.toolchains, job.index_url)))
    published: dict[NormalizedName, list[source.IndexFile]] = {}
    for name in sorted({_name(w) for w in wanted} - {""}):
        for url in urls:
            files = _index_files(name, url)
            if files:
                if any(f.filename.endswith(".whl") for f in files):
                    published[canonicalize_name(name)] = list(files)
                break
    return published


@functools.lru_cache(maxsize=1024)
def _index_files(project: str, index_url: str) -> tuple[source.IndexFile, ...]:
    """A project's files on an index, read once per run; none when the index cannot say (the
    install's own failure then stands)."""
    try:
        return tuple(source.index_files(project, index_url))
    except SourceError:
        return ()


def read_constraints(path: Path | None) -> list[Requirement]:
    """The requirements of a constraints file (the recipe's build.constraints, torch's release)."""
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        try:
            out.append(Requirement(line))
        except InvalidRequirement:
            continue
    return out


def missing_wheel(wanted: list[Wanted], published: dict[NormalizedName, list[source.IndexFile]], cell: Cell,
                  constraints: list[Requirement]) -> str | None:
    """The reason the cell is not buildable: the first requirement of ``wanted`` whose project
    publishes wheels (``published``), and has releases within the requirement and ``constraints``,
    but no wheel among them the cell's Python installs (prereleases and yanked files count: only a
    requirement no file could satisfy is named); None when each has one, or has no release at all
    within its bounds (a requirement no release satisfies is the recipe's error, not the cell's)."""
    from kiln.closure import cell_tags

    version = interpreter_version(cell.python)
    env = {"python_version": cell.python, "python_full_version": str(version)}
    accepted = cell_tags(cell.python)
    kinds = {(t.interpreter, t.abi) for t in accepted}
    for w in wanted:
        try:
            req = Requirement(w.requirement)
        except InvalidRequirement:
            continue
        name = canonicalize_name(req.name)
        if req.url or name not in published or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        bounds = [c for c in constraints if canonicalize_name(c.name) == name
                  and (c.marker is None or c.marker.evaluate(env))]
        spec = req.specifier
        for c in bounds:
            spec &= c.specifier
        releases: list[tuple[source.IndexFile, frozenset[Tag]]] = []
        for f in published[name]:
            parsed = _parse(f.filename, name)
            if parsed is not None and spec.contains(parsed[0], prereleases=True):
                releases.append((f, parsed[1]))
        if not releases:  # no release satisfies it at all: the install's own failure says so
            continue
        wheels = [tags for f, tags in releases if tags and _admits(f.requires_python, version)]
        if any(tags & accepted for tags in wheels):
            continue
        python_ok = any({(t.interpreter, t.abi) for t in tags} & kinds for tags in wheels)
        where = f" on {sysconfig.get_platform().replace('-', '_').replace('.', '_')}" if python_ok else ""
        within = f"; constraint {', '.join(str(c) for c in bounds)}" if bounds else ""
        return (f"{w.requirement} has no wheel for {cell.python_tag}{where} "
                f"(a build requirement: {w.origin}{within})")
    return None


def _parse(filename: str, name: NormalizedName) -> tuple[Version, frozenset[Tag]] | None:
    """The version and wheel tags of a file of project ``name`` (no tags for an sdist); None for
    a file of another project or a name no tool reads."""
    try:
        if filename.endswith(".whl"):
            project, version, _, tags = parse_wheel_filename(filename)
        else:
            project, version = parse_sdist_filename(filename)
            tags = frozenset()
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    return (version, tags) if project == name else None


def _admits(requires: str | None, version: Version) -> bool:
    """Whether a file's Requires-Python admits ``version`` (an unreadable one admits it)."""
    if not requires:
        return True
    try:
        return SpecifierSet(requires).contains(version, prereleases=True)
    except InvalidSpecifier:
        return True

"""`kiln outdated`: the releases on the index newer than what the recipes and the toolchain table pin.

The index is asked through kiln.source.index_files (PEP 691 JSON, with PEP 700 upload-time and
PEP 592 yanked), the code that fetches sdists. A release counts when it is final (no pre- or dev
release), not yanked (some file of it is not) and older than the cooldown: fromager's release-age
rule, so that a bump never takes a release uploaded minutes ago (the time of its first file).
"""

from __future__ import annotations

import enum
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from kiln.recipe import Recipe
from kiln.source import IndexFile, index_files
from kiln.toolchains import Toolchains

DEFAULT_COOLDOWN_DAYS = 3
TORCH = "torch"


@dataclass(frozen=True)
class Release:
    """One version of a project on the index: when its first file came, whether all are yanked."""

    version: Version
    uploaded: datetime | None
    yanked: bool


def releases(project: str, index_url: str, timeout: float = 60) -> list[Release]:
    """The releases of ``project`` on the index, oldest version first (none when it has no page)."""
    return releases_of(project, index_files(project, index_url, timeout))


def releases_of(project: str, files: list[IndexFile]) -> list[Release]:
    """The releases of ``project`` among ``files`` (its index page's), oldest version first."""
    uploaded: dict[Version, list[datetime]] = defaultdict(list)
    live: dict[Version, bool] = {}
    want = canonicalize_name(project)
    for f in files:
        try:
            if f.filename.endswith(".whl"):
                name, version, _, _ = parse_wheel_filename(f.filename)
            else:
                name, version = parse_sdist_filename(f.filename)
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            continue
        if name != want:
            continue
        live[version] = live.get(version, False) or not f.yanked
        if f.upload_time:
            uploaded[version].append(f.upload_time)
    return [Release(v, min(uploaded[v]) if uploaded[v] else None, not live[v]) for v in sorted(live)]


class Kind(enum.StrEnum):
    RECIPE = "recipe"
    """A recipe's project has a release newer than its newest `versions` entry."""
    TORCH_RELEASE = "torch-release"
    """A torch minor of the table has a patch release newer than its `release`."""
    TORCH_MINOR = "torch-minor"
    """torch has a minor newer than the table's newest."""
    TORCH_PYTHON = "torch-python"
    """A torch minor's release has wheels for Pythons its `python` list lacks (newer than its oldest)."""


@dataclass(frozen=True)
class Finding:
    """One newer release: what it is newer than, and when it was uploaded."""

    kind: Kind
    project: str
    current: str
    """The recipe's newest version; the minor's release; for a new minor, the table's newest minor."""
    new: str
    """The newer release."""
    uploaded: datetime | None
    recipe: Path | None = None
    """The recipe (or toolchain table) that pins ``current``."""

    def line(self) -> str:
        when = f"uploaded {self.uploaded:%Y-%m-%d}" if self.uploaded else "upload time unknown"
        if self.kind == Kind.RECIPE:
            return f"{self.project}: {self.current} -> {self.new} ({when})"
        if self.kind == Kind.TORCH_PYTHON:
            return f"torch {_minor(Version(self.current))}: {self.current} has wheels for Python {self.new}, " \
                   f"which the table's python list lacks ({when})"
        if self.kind == Kind.TORCH_RELEASE:
            return f"torch {_minor(Version(self.new))}: {self.current} -> {self.new} ({when})"
        return f"torch: new minor {_minor(Version(self.new))} (newest in the table: {self.current}): " \
               f"{self.new} ({when})"

    def to_json(self) -> dict[str, str | None]:
        return {"kind": self.kind.value, "project": self.project, "current": self.current, "new": self.new,
                "uploaded": self.uploaded.isoformat() if self.uploaded else None,
                "file": str(self.recipe) if self.recipe else None}


@dataclass(frozen=True)
class Query:
    """Where to ask, and how old a release must be to count."""

    index_url: str
    cooldown: timedelta = timedelta(days=DEFAULT_COOLDOWN_DAYS)
    now: datetime = field(default_factory=lambda: datetime.now().astimezone())

    def cooling(self, release: Release) -> bool:
        """Whether ``release`` was uploaded within the cooldown (an unknown time does not hold it back)."""
        return release.uploaded is not None and self.now - release.uploaded < self.cooldown


@dataclass
class Report:
    """What is newer: ``findings`` count; ``held`` are newer but inside the cooldown."""

    findings: list[Finding] = field(default_factory=list)
    held: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding, release: Release, query: Query) -> None:
        (self.held if query.cooling(release) else self.findings).append(finding)

    def held_lines(self, query: Query) -> list[str]:
        days = query.cooldown.days
        return [f"{f.line().removesuffix(')')}, inside the {days}-day cooldown: held back)" for f in self.held]


def _minor(v: Version) -> str:
    return f"{v.major}.{v.minor}"


def newest_final(project: str, index_url: str, timeout: float = 60) -> Version | None:
    """The newest final, unyanked release of ``project`` on the index (no cooldown); None: none."""
    found = _counted(releases(project, index_url, timeout))
    return found[-1].version if found else None


def _counted(found: list[Release]) -> list[Release]:
    """Final releases that are not yanked."""
    return [r for r in found if not (r.version.is_prerelease or r.version.is_devrelease or r.yanked)]


def check_recipe(recipe: Recipe, query: Query, report: Report) -> None:
    """The releases of the recipe's project newer than its newest `versions` entry."""
    newest = max(Version(v) for v in recipe.versions)
    for r in _counted(releases(recipe.project, query.index_url)):
        if r.version > newest:
            report.add(Finding(Kind.RECIPE, recipe.project, str(newest), str(r.version), r.uploaded, recipe.path),
                       r, query)


def check_toolchains(toolchains: Toolchains, table: Path, query: Query, report: Report) -> None:
    """torch patch releases newer than each minor's `release` (the newest of each), and the newest
    release of each torch minor newer than the table's newest."""
    files = index_files(TORCH, query.index_url)
    every = releases_of(TORCH, files)
    found = _counted(every)
    minors = {m: Version(m) for m in toolchains.torch}
    for minor, spec in toolchains.torch.items():
        pinned = Version(spec.release)
        lacking = new_pythons(files, pinned, spec.python, toolchains.ci.arch)
        release = next((r for r in every if r.version == pinned), None)
        if lacking and release is not None:
            report.add(Finding(Kind.TORCH_PYTHON, TORCH, spec.release, ", ".join(lacking), release.uploaded, table),
                       release, query)
        patches = [r for r in found if _minor(r.version) == minor and r.version > pinned]
        fresh = [r for r in patches if not query.cooling(r)]
        pick = (fresh or patches)[-1:]  # the newest out of the cooldown, else the newest held
        for r in pick:
            report.add(Finding(Kind.TORCH_RELEASE, TORCH, spec.release, str(r.version), r.uploaded, table), r, query)
    if not minors:
        return
    top = max(minors.values())
    by_minor: dict[str, list[Release]] = defaultdict(list)
    for r in found:
        if Version(_minor(r.version)) > top:
            by_minor[_minor(r.version)].append(r)
    for rels in by_minor.values():
        fresh = [r for r in rels if not query.cooling(r)]
        r = (fresh or rels)[-1]
        report.add(Finding(Kind.TORCH_MINOR, TORCH, str(top), str(r.version), r.uploaded, table), r, query)


def release_wheels(files: list[IndexFile], release: Version, arch: str) -> list[tuple[IndexFile, list[Tag]]]:
    """The unyanked wheels of torch ``release`` (``2.15.0+cu128`` counts as 2.15.0), each with its
    Linux ``arch`` tags (a wheel with none is left out)."""
    out = []
    for f in files:
        if f.yanked or not f.filename.endswith(".whl"):
            continue
        try:
            name, version, _, tags = parse_wheel_filename(f.filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        linux = [t for t in tags if t.platform.startswith(("linux", "manylinux")) and t.platform.endswith(arch)]
        if name == canonicalize_name(TORCH) and Version(version.public) == release and linux:
            out.append((f, linux))
    return out


def wheel_pythons(files: list[IndexFile], release: Version, arch: str) -> set[str]:
    """The Pythons (``3.12``) whose CPython ABI (``cp312-cp312``; not free-threaded ``cp313t``) the
    unyanked Linux ``arch`` wheels of torch ``release`` carry."""
    found = set()
    for _, tags in release_wheels(files, release, arch):
        for t in tags:
            if (m := re.fullmatch(r"cp(\d)(\d+)", t.interpreter)) and t.abi == t.interpreter:
                found.add(f"{m.group(1)}.{m.group(2)}")
    return found


def new_pythons(files: list[IndexFile], release: Version, table: list[str], arch: str) -> list[str]:
    """The Pythons torch ``release`` has wheels for that ``table`` (a minor's `python`) lacks,
    newer than its oldest (an old Python the table left out on purpose is not named)."""
    oldest = min((Version(p) for p in table), default=Version("0"))
    return sorted((p for p in wheel_pythons(files, release, arch) - set(table) if Version(p) > oldest), key=Version)


def outdated(recipes: list[Recipe], toolchains: tuple[Toolchains, Path] | None, query: Query) -> Report:
    """Every newer release of the recipes' projects and, with ``toolchains`` (the table and its
    file), of torch against the table."""
    report = Report()
    for recipe in recipes:
        check_recipe(recipe, query, report)
    if toolchains is not None:
        check_toolchains(*toolchains, query, report)
    return report

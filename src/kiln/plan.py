"""The status of every cell: published, built, stale, narrow, failed, not buildable here, or missing.

A wheel in the wheelhouse built from another recipe (its provenance's recipe_sha256 differs) is
stale: `kiln up` rebuilds it and never publishes it. The closure cells recorded in the home
(runtime requirements kiln built without a recipe) are listed after the cell that needed them.

A cell's wheels are those of its project, version and tags whose build number (the wheel's build
tag) is at least the recipe's `build.number`; the one with the highest is the cell's wheel, the one
installers pick. A CUDA cell whose wheel holds fewer architectures than the cell wants (a wheel of
`kiln up --profile host`, built for this host's GPUs, seen by `--profile all`) is narrow: it is
rebuilt for the union of both lists under the next build number, and the narrower wheel stays
published. What a wheel was built for is its provenance's `cuda_archs` (and `cuda_archs_found`),
read from the wheelhouse, else from the cell's last result here; a wheel known by neither counts
as wide enough.

A cell is not buildable for a reason of this host (no such Python, no nvcc of its CUDA major, its
torch's index unset), or because its last build here found it impossible (kiln.feasible: the
package's Requires-Python excludes its Python, or a build requirement publishes wheels but none for
it). The second holds for the recipe that build had (its sha256): `kiln build` and `kiln up` skip
the cell until the recipe changes, or `kiln build --force` tries it again.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version
from rich.markup import escape
from rich.table import Table

from kiln import archs, closure, cuda
from kiln.home import CellOutcome, CellResult, Home, set_aside
from kiln.matrix import Cell, not_buildable
from kiln.provenance import CudaArchs, Provenance, ProvenanceError
from kiln.toolchains import Toolchains
from kiln.wheel import wanted_archs


class Status(StrEnum):
    PUBLISHED = "published"
    BUILT = "built"
    STALE = "stale"
    FAILED = "failed"
    NOT_BUILDABLE = "not-buildable"
    MISSING = "missing"
    NARROW = "narrow"
    """Its wheel holds fewer CUDA architectures than the cell wants: rebuilt under the next build number."""
    UNSERVED = "unserved"
    """Its wheel holds no code for some GPU its variant index serves (built before the arch contract, or
    for a wider list since): rebuilt under the next build number, and `kiln up` moves it off the index."""


@dataclass(frozen=True)
class Colour:
    """How a status is shown: in the terminal (a rich colour) and on the status page (CSS)."""

    terminal: str
    background: str
    border: str


COLOURS: dict[Status, Colour] = {
    Status.PUBLISHED: Colour("green", "#d3f2d9", "#2e7d32"),
    Status.BUILT: Colour("cyan", "#d6e9fb", "#1565c0"),
    Status.FAILED: Colour("red", "#fbd5d5", "#c62828"),
    Status.STALE: Colour("magenta", "#ecdcf7", "#7b1fa2"),
    Status.NARROW: Colour("dark_orange", "#fde3cf", "#e65100"),
    Status.UNSERVED: Colour("red", "#fbd5d5", "#ad1457"),
    Status.NOT_BUILDABLE: Colour("yellow", "#fdf1c7", "#a67c00"),
    Status.MISSING: Colour("white", "#ececec", "#757575"),
}
"""The one table of status colours, for `kiln plan` and the status page."""



@dataclass
class CellStatus:
    """One row of `kiln plan`."""

    cell: str
    project: str
    version: str
    python: str
    variant: str
    torch: str | None
    cuda: str | None
    cuda_archs: str | None
    """For a CUDA cell: the architectures it wants (the profile's, the recipe's or toolchains.yaml's)."""
    status: Status
    detail: str = ""
    wheel: str | None = None
    closure_of: str | None = None
    """For a closure cell: the cell whose runtime requirement it is."""
    cuda_archs_found: dict[str, list[str]] | None = None
    """For a CUDA cell: the SASS and PTX cuobjdump found in its wheel (kiln.wheel.CudaArchs.to_json),
    from the wheel's provenance, else from the cell's last build here."""
    wheel_archs: str | None = None
    """For a CUDA cell with a wheel: the architectures it was built for (its provenance's
    cuda_archs, e.g. ``9.0`` for a host build, ``upstream``); None when unknown."""
    build_number: int | None = None
    """The build number of the cell's wheel (its build tag; 0 for none)."""
    rebuild_number: int | None = None
    """For a narrow cell: the build number its rebuild takes, above every wheel of the cell."""
    rebuild_archs: str | None = None
    """For a narrow or unserved cell: the architectures its rebuild is built for (both lists)."""
    unserved: list[str] | None = None
    """For an unserved cell: the GPUs its index serves that its wheel holds no code for (``sm_75``)."""
    on_mirror: bool = False
    """Whether the cell's wheel is on the mirror's index (an unserved one is moved off it)."""
    not_here: str | None = None
    """For an unserved cell: why this host cannot rebuild it (another host, or CI, does)."""
    cuda_toolkit: str | None = None
    """For a CUDA cell: the nvcc a build here uses (kiln.cuda): ``host nvcc 13.0 (/usr/local/cuda)``,
    or NVIDIA's compiler packages from the index, ``index CUDA 13.0.* (...)`` (``index CUDA 13.0.88``
    once in the home's cache); None when there is none here (the cell is not buildable)."""
    impossible: bool = False
    """For a not-buildable cell: whether its last build here found it impossible (kiln.feasible), with
    the recipe it has now, rather than this host lacking something."""
    upstream: str | None = None
    """The newest final release of the cell's project on the index (kiln.plan.upstream_versions);
    None when not asked or unknown."""
    upstream_on_mirror: bool | None = None
    """Whether the mirror has that release (a published cell of it); None when it is unknown."""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def wheel_matches(filename: str, cell: Cell) -> bool:
    """Whether a wheel filename is one of this cell's finished wheels: its project, version and
    a tag the cell's Python installs, with a build number no lower than the recipe's."""
    try:
        name, version, build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return (name == canonicalize_name(cell.project) and version == Version(cell.wheel_version)
            and _number(build) >= cell.recipe.build.number and any(_serves(t, cell) for t in tags))


def _number(build: tuple[()] | tuple[int, str]) -> int:
    return build[0] if build else 0


def build_number(filename: str) -> int:
    """The build number of a wheel filename (its build tag; 0 without one)."""
    return _number(parse_wheel_filename(filename)[2])


def newest(filenames: list[str]) -> str | None:
    """The wheel installers pick among a cell's wheels: the highest build tag."""
    return max(filenames, key=lambda f: (parse_wheel_filename(f)[2], f)) if filenames else None


def archs_cover(built: str | None, found: dict[str, list[str]] | None, wanted: str) -> bool:
    """Whether a wheel built for ``built`` (holding ``found``, cuobjdump's record) has every
    architecture a cell wanting ``wanted`` asks for; ``upstream`` (each package's own list) is
    covered only by itself, and a wheel whose build is unknown counts as covering."""
    if wanted == "upstream":
        return built in (None, "upstream")
    want_sass, want_ptx = wanted_archs(wanted)
    record = CudaArchs.from_json(found)
    if record is not None and not record.empty:
        return set(want_sass) <= set(record.sass) and set(want_ptx) <= set(record.ptx)
    if built in (None, "upstream"):
        return True
    have_sass, have_ptx = wanted_archs(built)
    return set(want_sass) <= set(have_sass) and set(want_ptx) <= set(have_ptx)


def widen(built: str | None, wanted: str) -> str | None:
    """The architectures a rebuild of a narrow wheel is built for: ``wanted`` and every one the
    wheel had (``8.0`` + ``9.0+PTX`` -> ``8.0;9.0+PTX``); None when the wheel was built for
    ``upstream`` (or unknown), whose list cannot be added to."""
    if wanted == "upstream":
        return wanted
    if built in (None, "upstream"):
        return None
    parts: dict[str, bool] = {}
    for part in f"{built};{wanted}".split(";"):
        arch, ptx = (part[:-4], True) if part.upper().endswith("+PTX") else (part, False)
        parts[arch] = parts.get(arch, False) or ptx
    order = sorted(parts, key=lambda a: tuple(int(x) for x in a.rstrip("abf").split(".")))
    return ";".join(f"{a}+PTX" if parts[a] else a for a in order)


def _serves(tag: Tag, cell: Cell) -> bool:
    """Whether a wheel tag is one the cell's Python installs: its own interpreter, py3, or the
    stable ABI (``cp39-abi3``) of an interpreter no newer than the cell's."""
    if tag.interpreter in (cell.python_tag, "py3"):
        return True
    if tag.abi != "abi3" or not tag.interpreter.startswith("cp3"):
        return False
    try:
        return int(tag.interpreter[3:]) <= int(cell.python.split(".")[1])
    except ValueError:
        return False


def stale(wheel: Path, cell: Cell) -> bool:
    """Whether ``wheel`` was built from another recipe than the cell's."""
    if cell.closure_of is not None:
        return False
    try:
        return Provenance.read(wheel).recipe_sha256 != cell.recipe.sha256
    except ProvenanceError:
        return True


def intact_wheels(wheelhouse: Path) -> list[Path]:
    """The wheels in ``wheelhouse`` that open as zip archives; one that does not (truncated or
    damaged outside kiln) is set aside as ``<name>.bad``, so its cell counts as missing and is
    built again."""
    found = []
    for path in sorted(wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []:
        try:
            with zipfile.ZipFile(path) as zf:
                zf.getinfo(zf.namelist()[-1])
        except (zipfile.BadZipFile, IndexError, OSError) as exc:
            set_aside(path, f"not a readable wheel ({exc or 'empty'})")
            continue
        found.append(path)
    return found


def archs_found(wheel: Path | None, result: CellResult | None) -> dict[str, list[str]] | None:
    """The CUDA architectures found in a cell's wheel: its provenance's record when the wheel is
    here, else the cell result's."""
    record: object = None
    if wheel is not None:
        try:
            record = Provenance.read(wheel).cuda_archs_found
        except ProvenanceError:
            record = None
    if record is None and result is not None:
        record = result.cuda_archs_found
    found = CudaArchs.from_json(record)
    return found.to_json() if found else None


def wheel_archs(wheel: Path | None, filename: str, result: CellResult | None) -> str | None:
    """The architectures a cell's wheel was built for: its provenance's, else the cell result's
    when that result made this wheel."""
    if wheel is not None:
        try:
            built = Provenance.read(wheel).cuda_archs
        except ProvenanceError:
            built = None
        if built is not None:
            return built
    if result is not None and result.wheel == filename and result.cuda_archs:
        return result.cuda_archs
    return None


def cell_status(cells: list[Cell], toolchains: Toolchains, home: Home, wheelhouse: Path,
                published: dict[str, list[str]] | None = None) -> list[CellStatus]:
    """Status rows of ``cells`` and of their closure cells recorded in the home; ``published``
    maps variant name -> filenames on its mirror index."""
    local = [p.name for p in intact_wheels(wheelhouse)]
    rows = []
    for cell in closure.with_closure(cells, home):
        v = cell.variant
        archs = cell.cuda_archs if v.cuda_major else None
        row = CellStatus(cell=cell.id, project=cell.project, version=cell.version, python=cell.python,
                         variant=v.name, torch=cell.torch_release, cuda=v.cuda, cuda_archs=archs,
                         status=Status.MISSING, closure_of=cell.closure_of)
        result = CellResult.load(home, cell.id)
        on_mirror = [f for f in (published or {}).get(v.name, []) if wheel_matches(f, cell)]
        built = [f for f in local if wheel_matches(f, cell)]
        wheel = newest(sorted({*on_mirror, *built}))
        here = wheelhouse / wheel if wheel in built else None
        if v.cuda_major:
            row.cuda_archs_found = archs_found(here, result)
            row.cuda_toolkit = toolkit_line(v.cuda, toolchains, home)
        if wheel is not None:
            row.wheel, row.build_number = wheel, build_number(wheel)
            row.wheel_archs = wheel_archs(here, wheel, result) if v.cuda_major else None
        if wheel is not None and here is not None and wheel not in on_mirror and stale(here, cell):
            row.status = Status.STALE
            row.detail = f"{wheel} was built from another {cell.recipe.path.name}: rebuild"
        elif wheel is not None:
            row.status = Status.PUBLISHED if wheel in on_mirror else Status.BUILT
            row.on_mirror = wheel in on_mirror
            if archs is not None and (gaps := unserved(row.cuda_archs_found, cell.archs_served)):
                _unserved(row, cell, toolchains, archs, gaps)
            elif archs is not None and not archs_cover(row.wheel_archs, row.cuda_archs_found, archs):
                _narrow(row, cell, toolchains, archs)
        elif result and result.status == CellOutcome.FAILED:
            row.status, row.detail = Status.FAILED, f"{result.error} (log: {result.log})"
        elif impossible(result, cell):
            assert result is not None
            row.status, row.impossible = Status.NOT_BUILDABLE, True
            row.detail = result.error or "found not buildable by its last build"
        elif reason := not_buildable(cell, toolchains):
            row.status, row.detail = Status.NOT_BUILDABLE, reason
        elif row.cuda_toolkit:
            row.detail = f"nvcc: {row.cuda_toolkit}"
        rows.append(row)
    return rows


def replan(rows: list[CellStatus], built: list[Cell], toolchains: Toolchains, home: Home, wheelhouse: Path,
           published: dict[str, list[str]] | None = None) -> list[CellStatus]:
    """The run's plan after ``built`` were built: their rows (and those of closure cells recorded
    for them since) worked out again from what the build left; every other row as it was."""
    fresh = {r.cell: r for r in cell_status(built, toolchains, home, wheelhouse, published)}
    return [fresh.pop(r.cell, r) for r in rows] + list(fresh.values())


def impossible(result: CellResult | None, cell: Cell) -> bool:
    """Whether the cell's last build found it not buildable (kiln.feasible) with the recipe it has
    now; a changed recipe (another sha256) makes it a cell to try again."""
    return (result is not None and result.status == CellOutcome.NOT_BUILDABLE
            and result.recipe_sha256 == cell.recipe.sha256)


def toolkit_line(cuda_version: str | None, toolchains: Toolchains, home: Home) -> str | None:
    """The nvcc a CUDA cell of ``cuda_version`` builds with here (kiln.cuda.choose), the index's
    with the versions in the home's cache once it is there; None when there is none."""
    if cuda_version is None:
        return None
    choice = cuda.choose(cuda_version, toolchains)
    if choice.source != "index":
        return choice.describe() if choice.source else None
    found = cuda.cached(cuda.cache_dir(home.root), cuda_version, toolchains.cuda[cuda_version])
    return f"index CUDA {found.release} (in the home's cache)" if found else choice.describe()


def unserved(found: dict[str, list[str]] | None, served: tuple[str, ...]) -> list[str]:
    """The GPUs of ``served`` a wheel holding ``found`` (cuobjdump's record) has no code for; none
    when the record is unknown (a wheel known by neither its provenance nor a cell result)."""
    record = CudaArchs.from_json(found)
    if record is None or not served:
        return []
    return archs.missing(served, record.sass, record.ptx)


def _unserved(row: CellStatus, cell: Cell, toolchains: Toolchains, wanted: str, gaps: list[str]) -> None:
    """Mark a row whose wheel breaks its index's arch contract unserved, rebuilt as the next build."""
    assert row.wheel is not None and row.build_number is not None
    row.status, row.unserved = Status.UNSERVED, gaps
    rebuild = widen(row.wheel_archs, wanted) or wanted
    index = f"kiln/{cell.variant.name}"
    row.rebuild_number, row.rebuild_archs = row.build_number + 1, rebuild
    row.not_here = not_buildable(cell, toolchains)
    row.detail = (f"{row.wheel} has no code for {', '.join(gaps)}, which {index} serves: rebuilds as build "
                  f"{row.rebuild_number}" + (f" (not here: {row.not_here})" if row.not_here else "")
                  + ("; kiln up moves it off the index" if row.on_mirror else ""))


def _narrow(row: CellStatus, cell: Cell, toolchains: Toolchains, wanted: str) -> None:
    """Mark a row whose wheel holds fewer architectures than ``wanted`` narrow, with the build
    number and architectures of its rebuild; a wheel that cannot be widened here keeps its status."""
    assert row.wheel is not None and row.build_number is not None
    built = row.wheel_archs or "upstream"
    rebuild = widen(row.wheel_archs, wanted)
    if rebuild is None:
        row.detail = f"{row.wheel} was built for {built}, which lacks some of {wanted}"
        return
    if reason := not_buildable(cell, toolchains):
        row.detail = f"{row.wheel} was built for {built}, fewer archs than {wanted}; not rebuilt here: {reason}"
        return
    row.status, row.rebuild_number, row.rebuild_archs = Status.NARROW, row.build_number + 1, rebuild
    row.detail = (f"{row.wheel} was built for {built}, fewer archs than {wanted}: rebuilds for "
                  f"{rebuild} as build {row.rebuild_number}")


def to_build(cells: list[Cell], rows: list[CellStatus], home: Home,
             force: bool = False) -> tuple[list[Cell], list[str]]:
    """The cells a build runs (missing, failed, stale, narrow; every buildable one with ``force``),
    and why each other one is skipped. A closure cell whose parent builds anyway is left to it. A
    narrow cell's build takes its row's rebuild number and architectures."""
    by_id = {r.cell: r for r in rows}
    todo: list[Cell] = []
    skipped: list[str] = []
    for cell in closure.with_closure(cells, home):
        row = by_id[cell.id]
        if cell.closure_of is not None and any(t.id == cell.closure_of for t in todo):
            continue
        if row.status == Status.NOT_BUILDABLE and row.impossible:
            if force:
                todo.append(cell)
            else:
                skipped.append(f"{cell.id}: not buildable: {row.detail} (found by its last build; "
                               "a changed recipe, or --force, tries again)")
        elif row.status == Status.NOT_BUILDABLE:
            skipped.append(f"{cell.id}: not buildable here: {row.detail}")
        elif row.status == Status.PUBLISHED and not force:
            skipped.append(f"{cell.id}: already published ({row.wheel})")
        elif row.status == Status.BUILT and not force:
            skipped.append(f"{cell.id}: already built ({row.wheel})")
        elif row.status == Status.UNSERVED and row.not_here:
            skipped.append(f"{cell.id}: not rebuilt here: {row.not_here}")
        elif row.status in (Status.NARROW, Status.UNSERVED):
            todo.append(replace(cell, build=row.rebuild_number, cuda_archs=row.rebuild_archs or cell.cuda_archs))
        elif row.status == Status.STALE and row.build_number is not None:
            todo.append(replace(cell, build=row.build_number))  # the stale wheel is replaced, never published
        else:
            todo.append(cell)
    return todo, skipped


@dataclass(frozen=True)
class Upstream:
    """A project's newest final release on the index (kiln.outdated.newest_final), asked once per
    run; ``newest`` None with ``why``: unknown (offline, the index unreachable)."""

    newest: str | None
    why: str = ""

    def text(self) -> str:
        if self.newest:
            return self.newest
        return f"unknown ({self.why})" if self.why else "none on the index"


UPSTREAM_TIMEOUT = 10.0
"""Seconds each project's index page may take before its newest release is unknown."""
OFFLINE_ENV = "KILN_OFFLINE"
"""Set (to anything but empty or 0): `kiln plan` and the status page do not ask the index."""


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def upstream_versions(projects: list[str], index_url: str | None) -> dict[str, Upstream]:
    """Each project's newest final release on ``index_url`` (None: unknown, offline), keyed by its
    canonical name; asked in parallel, never failing: an unreachable index or a bad page is an
    unknown, with why."""
    from concurrent.futures import ThreadPoolExecutor

    from kiln.errors import KilnError
    from kiln.outdated import newest_final

    names = sorted({canonicalize_name(p) for p in projects})
    if index_url is None:
        return {n: Upstream(None, "offline") for n in names}

    def ask(name: str) -> Upstream:
        try:
            found = newest_final(name, index_url, UPSTREAM_TIMEOUT)
        except KilnError as exc:
            return Upstream(None, exc.message)
        except (OSError, ValueError) as exc:
            return Upstream(None, str(exc) or type(exc).__name__)
        return Upstream(str(found) if found else None)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(names, pool.map(ask, names), strict=True))


def mirror_has(rows: list[CellStatus], project: str, version: str | None) -> bool | None:
    """Whether the mirror has ``version`` of ``project``: a published cell of that version; None
    when the version is unknown."""
    if version is None:
        return None
    want, name = Version(version), canonicalize_name(project)
    return any(r.on_mirror or r.status == Status.PUBLISHED for r in rows
               if canonicalize_name(r.project) == name and Version(r.version) == want)


def with_upstream(rows: list[CellStatus], upstream: dict[str, Upstream]) -> list[CellStatus]:
    """``rows`` with each one's project's newest upstream release and whether the mirror has it."""
    for r in rows:
        up = upstream.get(canonicalize_name(r.project))
        if up is not None:
            r.upstream, r.upstream_on_mirror = up.newest, mirror_has(rows, r.project, up.newest)
    return rows


def upstream_table(rows: list[CellStatus], upstream: dict[str, Upstream]) -> Table:
    """`kiln plan`'s second table: per project, the newest upstream release and whether the mirror has it."""
    out = Table("project", "newest upstream", "on the mirror")
    for name in sorted({canonicalize_name(r.project) for r in rows}):
        up = upstream.get(name)
        if up is None:
            continue
        has = mirror_has(rows, name, up.newest)
        mirrored = ("unknown" if up.why else "-") if has is None else ("yes" if has else "[yellow]no")
        out.add_row(name, escape(up.text()), mirrored)
    return out


def table(rows: list[CellStatus]) -> Table:
    """`kiln plan`'s table: per cell its variant, archs (and those cuobjdump found, when any cell
    has them), status in its colour (COLOURS), and the wheel or why."""
    found = any(r.cuda_archs_found for r in rows)  # the archs cuobjdump found, for CUDA cells built
    out = Table("cell", "variant", "archs", *(["archs found"] if found else []), "status", "detail")
    for r in rows:
        color = COLOURS[r.status].terminal
        detail = r.detail if r.status in (Status.STALE, Status.NARROW, Status.UNSERVED) else (r.wheel or r.detail)
        if r.wheel_archs and r.status in (Status.PUBLISHED, Status.BUILT) and r.wheel_archs != r.cuda_archs:
            detail = f"{detail} (built for {r.wheel_archs})"
        if r.closure_of:
            detail = f"{detail} (closure of {r.closure_of})".lstrip()
        archs_found = [str(CudaArchs.from_json(r.cuda_archs_found) or "")] if found else []
        out.add_row(r.cell, r.variant, r.cuda_archs or "", *archs_found, f"[{color}]{r.status}", escape(detail))
    return out

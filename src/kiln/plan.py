"""The status of every cell: published, built, stale, failed, not buildable here, or missing.

A wheel in the wheelhouse built from another recipe (its provenance's recipe_sha256 differs) is
stale: `kiln up` rebuilds it and never publishes it. The closure cells recorded in the home
(runtime requirements kiln built without a recipe) are listed after the cell that needed them.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from kiln import closure
from kiln.home import CellResult, Home, set_aside
from kiln.matrix import Cell, not_buildable
from kiln.toolchains import Toolchains
from kiln.wheel import CudaArchs, read_provenance


class Status(StrEnum):
    PUBLISHED = "published"
    BUILT = "built"
    STALE = "stale"
    FAILED = "failed"
    NOT_BUILDABLE = "not-buildable"
    MISSING = "missing"


PUBLISHED, BUILT, STALE, FAILED, NOT_BUILDABLE, MISSING = (
    Status.PUBLISHED, Status.BUILT, Status.STALE, Status.FAILED, Status.NOT_BUILDABLE, Status.MISSING)


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
    status: Status
    detail: str = ""
    wheel: str | None = None
    closure_of: str | None = None
    """For a closure cell: the cell whose runtime requirement it is."""
    cuda_archs_found: dict[str, list[str]] | None = None
    """For a CUDA cell: the SASS and PTX cuobjdump found in its wheel (kiln.wheel.CudaArchs.to_json),
    from the wheel's provenance, else from the cell's last build here."""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def wheel_matches(filename: str, cell: Cell) -> bool:
    """Whether a wheel filename is this cell's finished wheel."""
    try:
        name, version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    build = parse_wheel_filename(filename)[2]
    want_build = (cell.build_number, "") if cell.build_number else ()
    return (name == canonicalize_name(cell.project) and version == Version(cell.wheel_version)
            and build == want_build and any(_serves(t, cell) for t in tags))


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
        return read_provenance(wheel).get("recipe_sha256") != cell.recipe.sha256
    except (OSError, ValueError, KeyError):
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
            record = read_provenance(wheel).get("cuda_archs_found")
        except (OSError, ValueError, KeyError):
            record = None
    if record is None and result is not None:
        record = result.cuda_archs_found
    found = CudaArchs.from_json(record)
    return found.to_json() if found else None


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
                         status=MISSING, closure_of=cell.closure_of)
        result = CellResult.load(home, cell.id)
        on_mirror = [f for f in (published or {}).get(v.name, []) if wheel_matches(f, cell)]
        built = [f for f in local if wheel_matches(f, cell)]
        if result and result.cuda_archs:
            row.cuda_archs = result.cuda_archs
        if v.cuda_major:
            row.cuda_archs_found = archs_found(wheelhouse / built[0] if built else None, result)
        if on_mirror:
            row.status, row.wheel = PUBLISHED, on_mirror[0]
        elif built and stale(wheelhouse / built[0], cell):
            row.status, row.wheel = STALE, built[0]
            row.detail = f"{built[0]} was built from another {cell.recipe.path.name}: rebuild"
        elif built:
            row.status, row.wheel = BUILT, built[0]
        elif result and result.status == "failed":
            row.status, row.detail = FAILED, f"{result.error} (log: {result.log})"
        elif reason := not_buildable(cell, toolchains):
            row.status, row.detail = NOT_BUILDABLE, reason
        rows.append(row)
    return rows


def to_build(cells: list[Cell], rows: list[CellStatus], home: Home,
             force: bool = False) -> tuple[list[Cell], list[str]]:
    """The cells a build runs (missing, failed, stale; every buildable one with ``force``), and
    why each other one is skipped. A closure cell whose parent builds anyway is left to it."""
    by_id = {r.cell: r for r in rows}
    todo: list[Cell] = []
    skipped: list[str] = []
    for cell in closure.with_closure(cells, home):
        row = by_id[cell.id]
        if cell.closure_of is not None and any(t.id == cell.closure_of for t in todo):
            continue
        if row.status == NOT_BUILDABLE:
            skipped.append(f"{cell.id}: not buildable here: {row.detail}")
        elif row.status == PUBLISHED and not force:
            skipped.append(f"{cell.id}: already published ({row.wheel})")
        elif row.status == BUILT and not force:
            skipped.append(f"{cell.id}: already built ({row.wheel})")
        else:
            todo.append(cell)
    return todo, skipped

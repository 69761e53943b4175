"""The status of every cell: published, built, failed, not buildable here, or missing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from kiln.home import CellResult, Home
from kiln.matrix import Cell, not_buildable
from kiln.toolchains import Toolchains

PUBLISHED, BUILT, FAILED, NOT_BUILDABLE, MISSING = "published", "built", "failed", "not-buildable", "missing"


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
    status: str
    detail: str = ""
    wheel: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def wheel_matches(filename: str, cell: Cell) -> bool:
    """Whether a wheel filename is this cell's finished wheel."""
    try:
        name, version, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return (name == canonicalize_name(cell.project) and version == Version(cell.wheel_version)
            and any(t.interpreter in (cell.python_tag, "py3") for t in tags))


def cell_status(cells: list[Cell], toolchains: Toolchains, home: Home, wheelhouse: Path,
                published: dict[str, list[str]] | None = None) -> list[CellStatus]:
    """Status rows; ``published`` maps variant name -> filenames on its mirror index."""
    local = sorted(p.name for p in wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []
    rows = []
    for cell in cells:
        v = cell.variant
        archs = cell.cuda_archs if v.cuda_major else None
        row = CellStatus(cell=cell.id, project=cell.project, version=cell.version, python=cell.python,
                         variant=v.name, torch=cell.torch_release, cuda=v.cuda, cuda_archs=archs,
                         status=MISSING)
        result = CellResult.load(home, cell.id)
        on_mirror = [f for f in (published or {}).get(v.name, []) if wheel_matches(f, cell)]
        built = [f for f in local if wheel_matches(f, cell)]
        if result and result.cuda_archs:
            row.cuda_archs = result.cuda_archs
        if on_mirror:
            row.status, row.wheel = PUBLISHED, on_mirror[0]
        elif built:
            row.status, row.wheel = BUILT, built[0]
        elif result and result.status == "failed":
            row.status, row.detail = FAILED, f"{result.error} (log: {result.log})"
        elif reason := not_buildable(cell, toolchains):
            row.status, row.detail = NOT_BUILDABLE, reason
        rows.append(row)
    return rows

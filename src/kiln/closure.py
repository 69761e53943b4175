"""The dependency closure: runtime requirements with no usable wheel upstream, built as cells.

After a wheel is finished, its runtime requirements are resolved for the cell (its Python, this
platform, the torch pin) with uv, binaries only, against the upstream index and this run's
wheels. When that fails, the resolution is repeated with sdists allowed, and every pinned
requirement that has no wheel for the cell's tags (on the indexes or among this run's wheels)
becomes a closure cell: the sdist from the index (hash-checked), built as upstream declares it,
no recipe needed, finished and smoke-tested like any cell. Each parent's closure is recorded in
the kiln home, so `kiln plan` lists those cells and `kiln up` publishes them.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from kiln import source
from kiln.errors import BuildError, ConfigError
from kiln.home import Home, read_json, set_aside, write_atomic
from kiln.host import find_python
from kiln.logs import decisive_line
from kiln.matrix import Cell, Variant
from kiln.recipe import Recipe, load_recipe
from kiln.sandbox import installer_env
from kiln.uv import uv

_FAILED_TO_BUILD = re.compile(r"Failed to build `([^`=@ ]+)(?:==|@)([^`]+)`")
_PY_CAUSE = re.compile(r"^\s*((?:[\w.]+\.)?\w*Error: .+)$", re.MULTILINE)


@dataclass(frozen=True)
class Need:
    """A runtime requirement pinned by the resolution that has no wheel for the cell."""

    project: str
    version: str

    def cell(self, parent: Cell) -> Cell:
        """The closure cell that builds it for ``parent``'s Python: with the recipe beside the
        parent's when there is one for this version (what upstream forgot, said once), else
        with none (built as upstream declares it)."""
        recipe = self.recipe_beside(parent)
        variant = parent.variant if recipe.uses_torch else Variant()
        release = parent.torch_release if recipe.uses_torch else None
        return Cell(recipe, self.project, self.version, parent.python, variant, torch_release=release,
                    closure_of=parent.id)

    def recipe_beside(self, parent: Cell) -> Recipe:
        path = parent.recipe.path.parent / f"{self.project}.yaml"
        if path.is_file() and path != parent.recipe.path:
            try:
                recipe = load_recipe(path)
            except ConfigError:
                recipe = None
            if recipe is not None and Version(self.version) in {Version(v) for v in recipe.versions}:
                return recipe
        return Recipe.for_closure(self.project, self.version, parent.recipe.path)


def cell_tags(python: str) -> set[tags.Tag]:
    """The wheel tags an interpreter of CPython ``python`` on this platform accepts."""
    version = tuple(int(p) for p in python.split("."))
    platforms = list(tags.platform_tags())
    interpreter = "cp" + "".join(str(p) for p in version)
    return (set(tags.cpython_tags(version, platforms=platforms))
            | set(tags.compatible_tags(version, interpreter, platforms)))


def has_wheel(filenames: list[str], project: str, version: str, accepted: set[tags.Tag]) -> bool:
    want_name, want_version = canonicalize_name(project), Version(version)
    for filename in filenames:
        try:
            name, ver, _, wheel_tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        if name == want_name and ver == want_version and wheel_tags & accepted:
            return True
    return False


def _compile(wheel: Path, cell: Cell, indexes: list[str], find_links: list[Path], work: Path,
             binaries_only: bool) -> subprocess.CompletedProcess[str]:
    interp = find_python(cell.python)
    if interp is None:
        raise BuildError(f"Python {cell.python} not found")
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "closure.in"
    name = parse_wheel_filename(wheel.name)[0]
    spec.write_text(f"{name} @ {wheel.absolute().as_uri()}\n")
    cmd = [uv(), "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--python", str(interp),
           "--default-index", indexes[0]]
    for url in indexes[1:]:
        cmd += ["--index", url]
    for d in find_links:
        if d.is_dir():
            cmd += ["--find-links", str(d)]
    if binaries_only:
        cmd += ["--only-binary", ":all:"]
    # uv may build an sdist here to read its metadata: kiln's own credentials stay out of it.
    return subprocess.run([*cmd, str(spec)], capture_output=True, text=True, env=installer_env())


def missing(wheel: Path, cell: Cell, indexes: list[str], find_links: list[Path], work: Path,
            log: TextIO) -> list[Need]:
    """The runtime requirements of ``wheel`` that have no usable wheel for ``cell``."""
    binaries = _compile(wheel, cell, indexes, find_links, work, binaries_only=True)
    if binaries.returncode == 0:
        print("kiln: closure: every runtime requirement has a wheel", file=log, flush=True)
        return []
    print(f"kiln: closure: binaries only, the runtime requirements do not resolve:\n{binaries.stderr}",
          file=log, flush=True)
    anything = _compile(wheel, cell, indexes, find_links, work, binaries_only=False)
    log.write(anything.stderr)
    if anything.returncode != 0:
        if m := _FAILED_TO_BUILD.search(anything.stderr):
            # A requirement with only an sdist whose metadata does not build in isolation: built
            # from its recipe when there is one beside, else it needs one.
            name, version = canonicalize_name(m.group(1)), m.group(2)
            need = Need(name, version)
            if need.recipe_beside(cell).sha256:
                print(f"kiln: closure: {name} {version} does not build in isolation; it has a recipe",
                      file=log, flush=True)
                return [need]
            causes = _PY_CAUSE.findall(anything.stderr[m.end():]) or [decisive_line(anything.stderr[m.end():]) or "?"]
            raise BuildError(f"{name} {version}, a runtime requirement with no wheel for {cell.python_tag}, does not "
                             f"build as upstream declares it ({causes[-1].strip()}); it needs a recipe: "
                             f"{cell.recipe.path.parent / (name + '.yaml')}")
        why = decisive_line(anything.stderr) or f"uv exited {anything.returncode}"
        raise BuildError(f"the runtime requirements of {wheel.name} do not resolve: {why}")
    own = canonicalize_name(cell.project)
    accepted = cell_tags(cell.python)
    local = [p.name for d in find_links if d.is_dir() for p in d.glob("*.whl")]
    needs = []
    for line in anything.stdout.splitlines():
        try:
            req = Requirement(line.split("#")[0].strip())
        except InvalidRequirement:
            continue
        pins = [s.version for s in req.specifier if s.operator == "=="]
        if req.url or len(pins) != 1 or canonicalize_name(req.name) == own:
            continue
        name, version = canonicalize_name(req.name), pins[0]
        if has_wheel(local, name, version, accepted):
            continue
        upstream = [f.filename for url in indexes for f in source.index_files(name, url)]
        if not has_wheel(upstream, name, version, accepted):
            needs.append(Need(name, version))
    print(f"kiln: closure: no wheel for {cell.python_tag}: "
          f"{', '.join(f'{n.project}=={n.version}' for n in needs) or '(none)'}", file=log, flush=True)
    return needs


# ----------------------------------------------------------------------------- the record


def _record(home: Home, parent: str) -> Path:
    return home.root / "closure" / f"{parent}.json"


def save(home: Home, parent: Cell, needs: list[Need]) -> None:
    """Record ``parent``'s closure for `kiln plan` and `kiln up`."""
    write_atomic(_record(home, parent.id), json.dumps([asdict(n) for n in needs], indent=2) + "\n")


def cells_of(home: Home, parent: Cell) -> list[Cell]:
    """The closure cells recorded for ``parent`` in the home."""
    path = _record(home, parent.id)
    data = read_json(path)
    if data is None:
        return []
    try:
        return [Need(str(d["project"]), str(d["version"])).cell(parent) for d in data]
    except (ValueError, KeyError, TypeError) as exc:
        set_aside(path, f"not a closure record ({type(exc).__name__}: {exc})")
        return []


def with_closure(cells: list[Cell], home: Home) -> list[Cell]:
    """``cells``, each followed by its recorded closure cells (each closure cell once)."""
    out: list[Cell] = []
    seen: set[str] = set()
    own = {c.id for c in cells}  # a recipe's own cell is listed as such, never as another's closure
    for cell in cells:
        for c in [cell, *(d for d in cells_of(home, cell) if d.id not in own)]:
            if c.id not in seen:
                seen.add(c.id)
                out.append(c)
    return out


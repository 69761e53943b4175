"""`kiln bump`: add the new versions `kiln outdated` found to their recipes, as a person would.

Before a recipe is written, each new version's host-profile cells (kiln.profile's ``host``: what
`kiln up` builds here) are built, finished and smoke-tested (kiln.build.build_cells); only the
versions all of whose cells passed are added. The edit is ruamel.yaml's round trip
(kiln.yamlsrc.append_to_list): comments, key order and quoting stay byte for byte; the edited
recipe is validated before it replaces the old one (atomically).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.version import Version
from rich.console import Console

from kiln.build import BuildContext, build_cells
from kiln.errors import KilnError
from kiln.home import CellOutcome
from kiln.matrix import expand
from kiln.outdated import Finding, Kind
from kiln.profile import HOST, HostFacts, select
from kiln.recipe import Recipe, load_recipe
from kiln.toolchains import Toolchains
from kiln.yamlsrc import append_to_list


@dataclass
class BumpResult:
    """What a bump did: per recipe file the versions added; the versions refused, one line each."""

    written: dict[Path, list[str]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    """One line per cell built and smoke-tested."""


@dataclass(frozen=True)
class Verify:
    """How new versions are checked before they are written: the run's build context, this
    host's facts (the host profile's cells) and where progress goes."""

    ctx: BuildContext
    facts: HostFacts
    console: Console


def verify(recipe: Recipe, version: str, how: Verify, result: BumpResult) -> bool:
    """Build the host profile's cells of ``recipe`` at ``version``; whether every one passed."""
    trial = recipe.model_copy(update={"versions": [version]})
    cells = list(select(expand([trial], how.ctx.toolchains), how.ctx.toolchains, HOST, how.facts).cells)
    if not cells:
        result.failed.append(f"{recipe.project} {version}: none of its cells builds on this host "
                             "(the host profile picks none); `kiln bump --no-build` adds it unbuilt")
        return False
    ok = True
    for r in build_cells(cells, how.ctx, how.console):
        if r.status == CellOutcome.FAILED:
            result.failed.append(f"{r.cell}: {r.error} (log: {r.log})")
            ok = False
        elif r.status == CellOutcome.BUILT:
            result.built.append(f"built {r.cell}: {r.wheel} ({r.seconds:.0f}s)")
        else:
            result.built.append(f"not buildable {r.cell}: {r.error}")
    return ok


def verify_table(toolchains: Toolchains, minors: set[str], recipes: list[Recipe], how: Verify,
                 result: BumpResult) -> list[str]:
    """Build the host profile's cells of ``recipes`` that use the torch ``minors`` an edited table
    (``toolchains``) changed, against it; the failed cells, one line each (none: write it)."""
    picked = select(expand(recipes, toolchains), toolchains, HOST, how.facts).cells
    cells = [c for c in picked if c.variant.torch in minors]
    if not cells:
        result.built.append(f"no recipe builds a cell of torch {', '.join(sorted(minors))} on this host: "
                            "nothing to build before the table is written")
        return []
    failed = []
    for r in build_cells(cells, replace(how.ctx, toolchains=toolchains), how.console):
        if r.status == CellOutcome.FAILED:
            failed.append(f"{r.cell}: {r.error} (log: {r.log})")
        elif r.status == CellOutcome.BUILT:
            result.built.append(f"built {r.cell}: {r.wheel} ({r.seconds:.0f}s)")
        else:
            result.built.append(f"not buildable {r.cell}: {r.error}")
    return failed


def bump(findings: list[Finding], recipes: list[Recipe], how: Verify | None) -> BumpResult:
    """Add each recipe finding's version to its recipe; ``how`` None: unbuilt (``--no-build``)."""
    by_path = {r.path: r for r in recipes}
    new: dict[Path, list[str]] = defaultdict(list)
    for f in findings:
        if f.kind == Kind.RECIPE and f.recipe in by_path:
            new[f.recipe].append(f.new)
    result = BumpResult()
    for path, versions in new.items():
        recipe = by_path[path]
        keep = [v for v in sorted(set(versions), key=Version) if how is None or verify(recipe, v, how, result)]
        if keep:
            write(path, append_to_list(path.read_text(), "versions", keep, path))
            result.written[path] = keep
    return result


def write(path: Path, text: str) -> None:
    """Replace the recipe at ``path`` with ``text`` once ``text`` loads as a valid recipe."""
    tmp = path.with_name(f".{path.name}.bump")
    try:
        tmp.write_text(text)
        try:
            load_recipe(tmp)
        except KilnError as exc:
            raise type(exc)(f"{path}: the edited recipe does not load ({exc.message}); not written") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

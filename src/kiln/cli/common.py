"""What the commands share: the consoles, and the recipes, cells and toolchain table their
options name."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from kiln.errors import KilnError
from kiln.home import Home
from kiln.matrix import Cell, expand
from kiln.recipe import Recipe
from kiln.recipe import load_recipes as load_recipe_dir
from kiln.toolchains import Toolchains, load_toolchains

if TYPE_CHECKING:
    from kiln.plan import Upstream

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)


def load(args: argparse.Namespace) -> tuple[Toolchains, list[Cell]]:
    toolchains, _, cells = load_recipes(args)
    return toolchains, cells


def load_recipes(args: argparse.Namespace) -> tuple[Toolchains, list[Recipe], list[Cell]]:
    """The toolchain table, the recipes (``--only``) and their cells (``--variant``, ``--python``)."""
    recipes_dir = Path(args.recipes)
    toolchains = load_toolchains(recipes_dir)
    recipes = load_recipe_dir(recipes_dir, getattr(args, "only", None))
    cells = expand(recipes, toolchains, getattr(args, "variant", None), getattr(args, "cuda_archs", None))
    if getattr(args, "python", None):
        cells = [c for c in cells if c.python in args.python]
    return toolchains, recipes, cells


def profile(args: argparse.Namespace, toolchains: Toolchains, cells: list[Cell]) -> list[Cell]:
    """The cells of ``--profile`` (host: what this host builds and uses), said in one line on stderr."""
    from kiln.profile import probe_facts, select

    picked = select(cells, toolchains, args.profile, probe_facts(), args.python, args.cuda_archs)
    err_console.print(picked.describe(), markup=False, highlight=False)
    return list(picked.cells)


def cell_of(args: argparse.Namespace) -> tuple[Toolchains, Cell]:
    """The cell ``args.cell`` names, with ``--build-number``/``--cuda-archs`` where given (CI
    passes the plan's for a narrow cell it rebuilds)."""
    from kiln.ci import find_cell, load_cells

    toolchains, cells = load_cells(Path(args.recipes))
    cell = find_cell(cells, args.cell)
    if getattr(args, "build_number", None) is not None:
        cell = dataclasses.replace(cell, build=args.build_number)
    if getattr(args, "cuda_archs", None) and cell.variant.cuda not in (None, "cpu"):
        cell = dataclasses.replace(cell, cuda_archs=args.cuda_archs)
    return toolchains, cell


def refresh_status(home: Home, cells: list[Cell], toolchains: Toolchains) -> None:
    """Rewrite the page the home's running mirror serves at /+kiln/; a failure is said, never fatal."""
    from kiln import status

    try:
        page = status.refresh(home, cells, toolchains)
    except (OSError, KilnError) as exc:
        err_console.print(f"note: status page not updated: {exc}", markup=False, highlight=False)
        return
    if page:
        err_console.print(f"status page: {page}", markup=False, highlight=False)


def upstream_of(args: argparse.Namespace, projects: list[str]) -> dict[str, Upstream]:
    """Each project's newest upstream release (kiln.plan.upstream_versions), asked once for the
    run: of ``--index-url`` or the default index; unknown with ``--offline`` or KILN_OFFLINE, or
    when there is no index to ask."""
    from kiln.errors import SourceError
    from kiln.plan import offline, upstream_versions
    from kiln.source import default_index_url

    if getattr(args, "offline", False) or offline():
        return upstream_versions(projects, None)
    try:
        url = args.index_url or default_index_url()
    except SourceError:
        url = None
    return upstream_versions(projects, url)

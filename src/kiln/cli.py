"""The `kiln` commands. Each parses, calls one function, prints; errors end in one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

import kiln
from kiln.errors import KilnError
from kiln.home import Home, default_home
from kiln.matrix import Cell, expand
from kiln.recipe import load_recipes
from kiln.toolchains import Toolchains, load_toolchains

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _load(args: argparse.Namespace) -> tuple[Toolchains, list[Cell]]:
    recipes_dir = Path(args.recipes)
    toolchains = load_toolchains(recipes_dir)
    recipes = load_recipes(recipes_dir, getattr(args, "only", None))
    cells = expand(recipes, toolchains, getattr(args, "variant", None), getattr(args, "cuda_archs", None))
    return toolchains, cells


def cmd_check(args: argparse.Namespace) -> int:
    toolchains, cells = _load(args)
    projects = sorted({c.project for c in cells})
    console.print(f"ok: {len(projects)} recipes, {len(toolchains.torch)} torch minors, {len(cells)} cells")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from kiln.plan import MISSING, cell_status

    toolchains, cells = _load(args)
    home = Home(Path(args.home))
    published = _published(args, toolchains, cells)
    rows = cell_status(cells, toolchains, home, Path(args.out or home.wheelhouse), published)
    if args.missing:
        rows = [r for r in rows if r.status == MISSING]
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    table = Table("cell", "variant", "archs", "status", "detail")
    colors = {"published": "green", "built": "cyan", "failed": "red", "not-buildable": "yellow"}
    for r in rows:
        color = colors.get(r.status, "white")
        table.add_row(r.cell, r.variant, r.cuda_archs or "", f"[{color}]{r.status}", r.wheel or r.detail)
    console.print(table)
    return 0


def _published(args: argparse.Namespace, toolchains: Toolchains, cells: list[Cell]) -> dict[str, list[str]] | None:
    """Filenames on the mirror per variant, when a mirror is given or running in the home."""
    try:
        from kiln import mirror
    except ImportError:
        return None
    return mirror.published_for(args, sorted({c.variant.name for c in cells}))


def cmd_build(args: argparse.Namespace) -> int:
    from kiln.backends import get_backend
    from kiln.build import build_cells
    from kiln.plan import MISSING, cell_status

    toolchains, cells = _load(args)
    home = Home(Path(args.home))
    out = Path(args.out) if args.out else home.wheelhouse
    rows = {r.cell: r for r in cell_status(cells, toolchains, home, out)}
    todo, skipped = [], []
    for cell in cells:
        row = rows[cell.id]
        if row.status == "built" and not args.force:
            skipped.append(f"{cell.id}: already built ({row.wheel})")
        elif row.status == "not-buildable":
            skipped.append(f"{cell.id}: not buildable here: {row.detail}")
        else:
            todo.append(cell)
    for line in skipped:
        err_console.print(f"[dim]skip {line}")
    results = build_cells(todo, toolchains, home, out, get_backend(args.backend), args.index_url, err_console)
    failed = [r for r in results if r.status == "failed"]
    for r in results:
        if r.status == "built":
            console.print(f"built {out / r.wheel}  ({r.seconds:.0f}s)")
        else:
            console.print(f"FAILED {r.cell}: {r.error} (log: {r.log})")
    return 4 if failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description=kiln.__doc__)
    p.add_argument("--version", action="version", version=f"kiln {kiln.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def recipes_args(sp: argparse.ArgumentParser, only: bool = True) -> None:
        sp.add_argument("--recipes", default="recipes", help="directory of recipes (default: recipes)")
        sp.add_argument("--home", default=str(default_home()), help="kiln home (default: $KILN_HOME or ./.kiln)")
        if only:
            sp.add_argument("--only", nargs="+", metavar="PROJECT", help="only these projects")
            sp.add_argument("--variant", help="only this variant, e.g. cu130-torch2.14")
            sp.add_argument("--cuda-archs", help="GPU architectures, e.g. '8.0;9.0' (overrides recipes)")

    sp = sub.add_parser("check", help="validate recipes and the toolchain table")
    recipes_args(sp)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("plan", help="every cell and its status")
    recipes_args(sp)
    sp.add_argument("--out", help="wheelhouse to look in (default: <home>/wheelhouse)")
    sp.add_argument("--mirror", help="mirror URL to look for published wheels")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("--missing", action="store_true", help="only cells still missing")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("build", help="build, finish and smoke-test wheels")
    recipes_args(sp)
    sp.add_argument("--out", help="where finished wheels go (default: <home>/wheelhouse)")
    sp.add_argument("--backend", default="local", help="local (default) or cibuildwheel")
    sp.add_argument("--index-url", help="index sdists come from (default: KILN_INDEX_URL, uv/pip settings)")
    sp.add_argument("--force", action="store_true", help="rebuild cells already built")
    sp.set_defaults(func=cmd_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KilnError as exc:
        err_console.print(f"kiln: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("kiln: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

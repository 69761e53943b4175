"""The commands over recipes, cells and wheels: check, plan, build, up, infer, and the steps CI
runs apart (source, cibw-env, finish, ci)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.markup import escape

from kiln.cli.common import cell_of, console, err_console, load, load_recipes, profile, upstream_of
from kiln.errors import BuildError
from kiln.home import CellOutcome, Home
from kiln.matrix import Cell


def cmd_check(args: argparse.Namespace) -> int:
    toolchains, recipes, cells = load_recipes(args)
    if not (args.variant or args.python):  # with a filter, a recipe may have no cells in it on purpose
        for recipe in recipes:
            if not any(c.recipe is recipe for c in cells):
                where = ("matrix", "exclude") if recipe.matrix.exclude else ("matrix",)
                err_console.print(f"kiln: warning: {recipe.path}:{recipe.line(*where)}: {recipe.project} has no "
                                  "cells: its matrix less matrix.exclude leaves none, so kiln builds nothing for it",
                                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"ok: {len(recipes)} recipes, {len(toolchains.torch)} torch minors, {len(cells)} cells")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from kiln.plan import Status, cell_status, table, upstream_table, with_upstream

    toolchains, cells = load(args)
    cells = profile(args, toolchains, cells)
    home = Home(Path(args.home))
    published = on_mirror(Home(Path(args.home)), args.mirror, cells)
    rows = cell_status(cells, toolchains, home, Path(args.out or home.wheelhouse), published)
    upstream = upstream_of(args, [r.project for r in rows])
    every = with_upstream(rows, upstream)
    if args.missing:
        rows = [r for r in rows if r.status == Status.MISSING]
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    console.print(table(rows))
    if upstream:
        console.print(upstream_table(every, upstream))
    return 0


def on_mirror(home: Home, mirror_url: str | None, cells: list[Cell]) -> dict[str, list[str]] | None:
    """Filenames on the mirror per variant of ``cells``, when a mirror is given or running in the home."""
    try:
        from kiln import mirror
    except ImportError:
        return None
    return mirror.published_for(home, mirror_url, sorted({c.variant.name for c in cells}))


def cmd_build(args: argparse.Namespace) -> int:
    from kiln.backends.registry import get_backend
    from kiln.build import BuildContext, build_cells
    from kiln.plan import cell_status, to_build

    toolchains, cells = load(args)
    home = Home(Path(args.home))
    out = Path(args.out) if args.out else home.wheelhouse
    rows = cell_status(cells, toolchains, home, out)
    todo, skipped = to_build(cells, rows, home, args.force)
    for line in skipped:
        err_console.print(f"[dim]skip {escape(line)}")
    results = build_cells(todo, BuildContext.of(toolchains, home, out, get_backend(args.backend), args.index_url),
                          err_console)
    failed = [r for r in results if r.status == CellOutcome.FAILED]
    for r in results:
        if r.status == CellOutcome.BUILT and r.wheel:
            console.print(f"built {out / r.wheel}  ({r.seconds:.0f}s)")
            for wheel in r.closure_built:
                console.print(f"built {out / wheel}  (closure of {r.cell})")
        elif r.status == CellOutcome.NOT_BUILDABLE:  # the cell cannot exist: said, not counted as a failure
            console.print(f"not buildable {r.cell}: {r.error}", markup=False, highlight=False)
        else:
            console.print(f"FAILED {r.cell}: {r.error} (log: {r.log})")
    return BuildError.exit_code if failed else 0


def cmd_up(args: argparse.Namespace) -> int:
    from kiln.backends.registry import get_backend
    from kiln.build import BuildContext
    from kiln.mirror.server import ServeOptions
    from kiln.up import up

    toolchains, picked = load(args)
    _, everything = load(argparse.Namespace(**{**vars(args), "only": None, "variant": None}))
    picked = profile(args, toolchains, picked)
    home = Home(Path(args.home))
    run = BuildContext.of(toolchains, home, home.wheelhouse, get_backend("local"), args.index_url)
    serving = ServeOptions(host=args.host, port=args.port, upstream=args.upstream)
    report = up(picked, everything, run, serving, console=err_console)
    console.print(f"mirror: {report.url} ({'started' if report.started else 'reused'}; "
                  f"stop it with `kiln stop --home {home.root}`)")
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {note}")
    for line in report.skipped:
        console.print(f"not buildable here: {line}", markup=False, highlight=False)
    for line in report.impossible:
        console.print(f"not buildable: {line}", markup=False, highlight=False)
    console.print(f"built {len(report.built)}, uploaded {len(report.uploaded)}, "
                  f"already published {len(report.already)}, failed {len(report.failed)}")
    for line in report.failed:
        console.print(f"FAILED {line}")
    for line in report.install:
        console.print(line)
    if report.status_page:
        console.print(f"status page: {report.status_page}")
    return BuildError.exit_code if report.failed else 0


def cmd_infer(args: argparse.Namespace) -> int:
    from kiln.infer import InferOptions, infer

    python = args.python or f"{sys.version_info.major}.{sys.version_info.minor}"
    result = infer(args.project, Path(args.recipes), Home(Path(args.home)),
                   InferOptions(python, args.index_url, args.max_tries, sys.stdout))
    console.print(f"wrote {result.recipe} after {result.tries} tries")
    return 0


def cmd_source(args: argparse.Namespace) -> int:
    from kiln.build import export_source

    _, cell = cell_of(args)
    print(export_source(cell, Home(Path(args.home)), Path(args.out), args.index_url))
    return 0


def cmd_cibw_env(args: argparse.Namespace) -> int:
    from kiln.backends.cibuildwheel import environment, format_env
    from kiln.build import source_requirements

    toolchains, cell = cell_of(args)
    ccache = Path(args.ccache_dir) if args.ccache_dir else None
    home = Home(Path(args.home))
    reqs = source_requirements(cell, home, Path(args.source) if args.source else None, args.index_url)
    env = environment(cell, toolchains, reqs, ccache, home)
    if args.format == "json":
        print(json.dumps(env, indent=2))
    else:
        print(format_env(env), end="")
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    from kiln.backends.registry import get_backend
    from kiln.build import BuildContext, finish_raw

    toolchains, cell = cell_of(args)
    home = Home(Path(args.home))
    out = Path(args.out) if args.out else home.wheelhouse
    ctx = BuildContext.of(toolchains, home, out, get_backend("cibuildwheel"), args.index_url)
    dest = finish_raw(Path(args.wheel), cell, ctx, Path(args.source) if args.source else None,
                      Path(args.build_record) if args.build_record else None)
    print(dest)
    return 0


def cmd_ci(args: argparse.Namespace) -> int:
    from kiln import ci

    if args.ci_command == "render":
        console.print(f"wrote {ci.write(Path(args.recipes), Path(args.workflow))}")
    else:
        ci.check(Path(args.recipes), Path(args.workflow))
        console.print(f"ok: {args.workflow} matches the recipes")
    return 0

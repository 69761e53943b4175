"""The commands that keep the recipes current: outdated (what is newer on the index) and bump
(add it to the recipes, built first)."""

from __future__ import annotations

import argparse
import contextlib
import json
from datetime import timedelta
from pathlib import Path

from kiln.cli.common import console, err_console
from kiln.errors import BumpError, ConfigError
from kiln.home import Home
from kiln.outdated import TORCH, Query, Report, outdated
from kiln.recipe import TOOLCHAINS_FILE, Recipe, load_recipes
from kiln.source import default_index_url
from kiln.toolchains import load_toolchains


def _report(args: argparse.Namespace, with_toolchains: bool) -> tuple[list[Recipe], Report, Query]:
    """The recipes ``args.projects`` names (all when none; ``torch`` names the toolchain table) and
    what is newer than them on the index."""
    if args.cooldown_days < 0:
        raise ConfigError(f"--cooldown-days {args.cooldown_days}: expected 0 or more days")
    recipes_dir = Path(args.recipes)
    toolchains = load_toolchains(recipes_dir)
    named = [p for p in args.projects if p != TORCH]
    recipes = load_recipes(recipes_dir, named) if named or not args.projects else []
    table = (toolchains, recipes_dir / TOOLCHAINS_FILE) if with_toolchains and (
        not args.projects or TORCH in args.projects or getattr(args, "toolchains", False)) else None
    query = Query(args.index_url or default_index_url(), timedelta(days=args.cooldown_days))
    return recipes, outdated(recipes, table, query), query


def _say_held(report: Report, query: Query) -> None:
    for line in report.held_lines(query):
        err_console.print(line, markup=False, highlight=False)


def cmd_outdated(args: argparse.Namespace) -> int:
    _, report, query = _report(args, with_toolchains=True)
    if args.json:
        print(json.dumps({"outdated": [f.to_json() for f in report.findings],
                          "held_back": [f.to_json() for f in report.held]}, indent=2))
    else:
        _say_held(report, query)
        for f in report.findings:
            console.print(f.line(), markup=False, highlight=False)
    return 1 if report.findings else 0


def cmd_bump(args: argparse.Namespace) -> int:
    from kiln.bump import BumpResult, Verify, bump, verify_table

    recipes, report, query = _report(args, with_toolchains=args.toolchains)
    _say_held(report, query)
    if not report.findings:
        console.print("current: no newer releases", markup=False, highlight=False)
        return 0
    for f in report.findings:
        console.print(f.line(), markup=False, highlight=False)
    refused: list[str] = []
    with contextlib.ExitStack() as stack:
        how: Verify | None = None
        if not args.no_build:
            from kiln.backends.registry import get_backend
            from kiln.build import BuildContext
            from kiln.profile import probe_facts

            home = Home(Path(args.home))
            stack.enter_context(home.lock("kiln bump", wait=not args.no_wait))
            ctx = BuildContext.of(load_toolchains(Path(args.recipes)), home, home.wheelhouse,
                                  get_backend("local"), query.index_url)
            how = Verify(ctx, probe_facts(), err_console)
        result = BumpResult()
        if args.toolchains:
            from kiln.torchtable import bump_table

            recipes_dir = Path(args.recipes)
            verified, every = how, load_recipes(recipes_dir)  # any recipe may build on the changed minors
            check = None if verified is None else (
                lambda trial, minors: verify_table(trial, minors, every, verified, result))
            table = bump_table(report.findings, recipes_dir / TOOLCHAINS_FILE, load_toolchains(recipes_dir),
                               query.index_url, check)
            for line in result.built:  # the cells the table changes, built before it was written
                console.print(line, markup=False, highlight=False)
            result.built = []
            for line in table.lines:
                console.print(line, markup=False, highlight=False)
            refused = table.refused
            for line in refused:
                console.print(f"FAILED {line}", markup=False, highlight=False)
        recipe_result = bump(report.findings, recipes, how)
        result.written, result.failed = recipe_result.written, recipe_result.failed
        result.built += recipe_result.built
    for line in result.built:
        console.print(line, markup=False, highlight=False)
    for path, versions in result.written.items():
        console.print(f"added {', '.join(versions)} to {path}", markup=False, highlight=False)
    for line in result.failed:
        console.print(f"FAILED {line}", markup=False, highlight=False)
    if refused:
        raise BumpError(refused[0] if len(refused) == 1 else f"{len(refused)} torch minors not added: "
                        + " | ".join(refused))
    if result.failed:
        raise BumpError(f"{len(result.failed)} new version(s) not added: they did not build and pass "
                        "their smoke test here (the recipes hold what did)")
    return 0

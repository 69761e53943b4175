"""The `kiln` commands. Each parses, calls one function, prints; errors end in one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import kiln
from kiln.errors import ConfigError, KilnError
from kiln.home import Home, default_home
from kiln.matrix import Cell, Variant, expand
from kiln.profile import PROFILES
from kiln.recipe import Recipe, load_recipes
from kiln.toolchains import Toolchains, load_toolchains

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)


def _load(args: argparse.Namespace) -> tuple[Toolchains, list[Cell]]:
    toolchains, _, cells = _load_recipes(args)
    return toolchains, cells


def _load_recipes(args: argparse.Namespace) -> tuple[Toolchains, list[Recipe], list[Cell]]:
    """The toolchain table, the recipes (``--only``) and their cells (``--variant``, ``--python``)."""
    recipes_dir = Path(args.recipes)
    toolchains = load_toolchains(recipes_dir)
    recipes = load_recipes(recipes_dir, getattr(args, "only", None))
    cells = expand(recipes, toolchains, getattr(args, "variant", None), getattr(args, "cuda_archs", None))
    if getattr(args, "python", None):
        cells = [c for c in cells if c.python in args.python]
    return toolchains, recipes, cells


def _profile(args: argparse.Namespace, toolchains: Toolchains, cells: list[Cell]) -> list[Cell]:
    """The cells of ``--profile`` (host: what this host builds and uses), said in one line on stderr."""
    from kiln.profile import probe_facts, select

    picked = select(cells, toolchains, args.profile, probe_facts(), args.python, args.cuda_archs)
    err_console.print(picked.describe(), markup=False, highlight=False)
    return list(picked.cells)


def cmd_check(args: argparse.Namespace) -> int:
    toolchains, recipes, cells = _load_recipes(args)
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
    from kiln.plan import MISSING, cell_status
    from kiln.wheel import CudaArchs

    toolchains, cells = _load(args)
    cells = _profile(args, toolchains, cells)
    home = Home(Path(args.home))
    published = _published(args, toolchains, cells)
    rows = cell_status(cells, toolchains, home, Path(args.out or home.wheelhouse), published)
    if args.missing:
        rows = [r for r in rows if r.status == MISSING]
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    found = any(r.cuda_archs_found for r in rows)  # the archs cuobjdump found, for CUDA cells built
    table = Table("cell", "variant", "archs", *(["archs found"] if found else []), "status", "detail")
    colors = {"published": "green", "built": "cyan", "stale": "magenta", "narrow": "dark_orange",
              "unserved": "red", "failed": "red", "not-buildable": "yellow"}
    for r in rows:
        color = colors.get(r.status, "white")
        detail = r.detail if r.status in ("stale", "narrow", "unserved") else (r.wheel or r.detail)
        if r.wheel_archs and r.status in ("published", "built") and r.wheel_archs != r.cuda_archs:
            detail = f"{detail} (built for {r.wheel_archs})"
        if r.closure_of:
            detail = f"{detail} (closure of {r.closure_of})".lstrip()
        archs_found = [str(CudaArchs.from_json(r.cuda_archs_found) or "")] if found else []
        table.add_row(r.cell, r.variant, r.cuda_archs or "", *archs_found, f"[{color}]{r.status}", escape(detail))
    console.print(table)
    return 0


def _published(args: argparse.Namespace, toolchains: Toolchains, cells: list[Cell]) -> dict[str, list[str]] | None:
    """Filenames on the mirror per variant, when a mirror is given or running in the home."""
    try:
        from kiln import mirror
    except ImportError:
        return None
    return mirror.published_for(args, sorted({c.variant.name for c in cells}))


def cmd_status(args: argparse.Namespace) -> int:
    from kiln import status
    from kiln.mirror import running

    toolchains, cells = _load(args)
    home = Home(Path(args.home))
    published = _published(args, toolchains, cells)
    current = None if args.mirror else running(home)
    url = args.mirror.rstrip("/") if args.mirror else (current.url if current else None)
    page = status.collect(cells, toolchains, home, url, published, Path(args.out) if args.out else None)
    if args.json:
        print(status.render_json(page), end="")
    if args.html:
        out = Path(args.html)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(status.render_html(page), encoding="utf-8")
        err_console.print(f"wrote {out}", markup=False, highlight=False)
    if not args.json and not args.html:
        counts = ", ".join(f"{n} {s}" for s, n in page.counts.items() if n)
        console.print(f"{sum(page.counts.values())} cells: {counts or 'none'}; --html FILE writes the page, "
                      "--json prints its data" + (f"; the mirror serves it at {url}{status.PATH}" if current else ""),
                      markup=False, highlight=False)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from kiln.backends import get_backend
    from kiln.build import build_cells
    from kiln.plan import cell_status, to_build

    toolchains, cells = _load(args)
    home = Home(Path(args.home))
    out = Path(args.out) if args.out else home.wheelhouse
    rows = cell_status(cells, toolchains, home, out)
    todo, skipped = to_build(cells, rows, home, args.force)
    for line in skipped:
        err_console.print(f"[dim]skip {escape(line)}")
    results = build_cells(todo, toolchains, home, out, get_backend(args.backend), args.index_url, err_console)
    failed = [r for r in results if r.status == "failed"]
    for r in results:
        if r.status == "built" and r.wheel:
            console.print(f"built {out / r.wheel}  ({r.seconds:.0f}s)")
            for wheel in r.closure_built:
                console.print(f"built {out / wheel}  (closure of {r.cell})")
        elif r.status == "not-buildable":  # the cell cannot exist: said, not counted as a failure
            console.print(f"not buildable {r.cell}: {r.error}", markup=False, highlight=False)
        else:
            console.print(f"FAILED {r.cell}: {r.error} (log: {r.log})")
    return 4 if failed else 0


def _variants_of(args: argparse.Namespace) -> tuple[Toolchains | None, list[Variant]]:
    """The toolchain table and every variant the recipes declare (none without recipes)."""
    recipes_dir = Path(args.recipes)
    if not (recipes_dir / "toolchains.yaml").is_file():
        return None, []
    toolchains = load_toolchains(recipes_dir)
    cells = expand(load_recipes(recipes_dir, None), toolchains)
    return toolchains, sorted({c.variant for c in cells}, key=str)


def cmd_serve(args: argparse.Namespace) -> int:
    from kiln import mirror

    home = Home(Path(args.home))
    toolchains, variants = _variants_of(args)
    with home.lock("kiln serve", wait=not args.no_wait):
        served, procs = mirror.serve(home, args.host, args.port, variants, toolchains, args.upstream,
                                     background=args.background, storage=args.storage,
                                     replica_of=args.replica_of)
    for note in served.notes:
        err_console.print(f"[yellow]note:[/] {note}")
    state = "started" if served.started else "already running"
    console.print(f"mirror {state} at {served.url} (nginx in front of devpi-server pid {served.pid}, "
                  f"home {home.root})")
    if args.replica_of:
        console.print(f"a replica of {args.replica_of}: its indexes follow the primary's")
    else:
        console.print(f"indexes: {', '.join(served.indexes)}"
                      + (f" (created or updated: {', '.join(served.changed)})" if served.changed else ""))
    if not procs or args.background:
        if args.background and served.started:
            console.print(f"stop it with: kiln stop --home {home.root}")
        return 0
    console.print("serving in the foreground; Ctrl-C stops it")
    return mirror.wait(home, procs)


def cmd_stop(args: argparse.Namespace) -> int:
    from kiln import mirror

    home = Home(Path(args.home))
    stopped = mirror.stop(home)
    console.print(f"stopped the mirror at {stopped.url} (pid {stopped.pid})" if stopped
                  else f"no mirror running for {home.root}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from kiln.mirror.publish import mirror_url, publish, wheels_at

    home = Home(Path(args.home))
    path = Path(args.wheelhouse) if args.wheelhouse else home.wheelhouse
    wheels = wheels_at(path)
    if not wheels:
        console.print(f"no wheels in {path}")
        return 0
    url = mirror_url(home, args.mirror)
    toolchains, cells = _load(args)
    for res in publish(wheels, url, home, cells):
        console.print(f"{'uploaded' if res.uploaded else 'already there'}: {res.index} {res.wheel}")
    _refresh_status(home, cells, toolchains)
    return 0


def _refresh_status(home: Home, cells: list[Cell], toolchains: Toolchains) -> None:
    """Rewrite the page the home's running mirror serves at /+kiln/; a failure is said, never fatal."""
    from kiln import status

    try:
        page = status.refresh(home, cells, toolchains)
    except (OSError, KilnError) as exc:
        err_console.print(f"note: status page not updated: {exc}", markup=False, highlight=False)
        return
    if page:
        err_console.print(f"status page: {page}", markup=False, highlight=False)


def cmd_token(args: argparse.Namespace) -> int:
    from kiln.mirror import tokens
    from kiln.mirror.publish import mirror_url
    from kiln.mirror.server import root_credentials

    home = Home(Path(args.home))
    url = mirror_url(home, args.mirror)
    root = root_credentials(home)
    if args.token_command == "list":
        from datetime import UTC, datetime

        table = Table("id", "expires", "may", "indexes")
        now = datetime.now(UTC)
        for t in tokens.tokens(url, root):
            expired = " (expired)" if t.expires and t.expires <= now else ""
            when = f"{t.expires:%Y-%m-%d %H:%M} UTC{expired}" if t.expires else "never"
            table.add_row(t.id, when, ",".join(t.allowed) or "anything its user may", ",".join(t.indexes) or "any")
        console.print(table)
        return 0
    if args.token_command == "revoke":
        if not args.id:
            raise KilnError("kiln token revoke ID: name the token (`kiln token list` shows them)")
        tokens.revoke(url, root, args.id)
        console.print(f"revoked token {args.id}: {url} refuses it from now on")
        return 0
    issued = tokens.create(url, root, args.days, args.variant)
    print(issued.token)  # the only place it is ever shown: stdout alone, for `> file` or a CI secret
    err_console.print(f"token {issued.id} of user {issued.user}: may upload to "
                      f"{', '.join(issued.indexes) or 'every kiln index'} on {url} until "
                      f"{issued.expires:%Y-%m-%d %H:%M} UTC, nothing else; give it to CI as the secret "
                      f"KILN_MIRROR_TOKEN (or `uv publish --token`); `kiln token revoke {issued.id}` ends it",
                      markup=False, highlight=False)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from kiln.up import up

    toolchains, picked = _load(args)
    _, everything = _load(argparse.Namespace(**{**vars(args), "only": None, "variant": None}))
    picked = _profile(args, toolchains, picked)
    home = Home(Path(args.home))
    report = up(picked, toolchains, home, args.host, args.port, everything, args.upstream,
                args.index_url, console=err_console)
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
    return 4 if report.failed else 0


def cmd_config(args: argparse.Namespace) -> int:
    from kiln import clientconfig

    if args.variant == "auto":
        found = clientconfig.detect(args.python_exe, args.mirror)
        err_console.print(f"found {found.describe()}", markup=False, highlight=False)
        variant = found.variant
    else:
        variant = Variant.parse(args.variant)
    formats = [args.format] if args.format else list(clientconfig.FORMATS)
    blocks = [clientconfig.render(variant, args.mirror or clientconfig.default_mirror(), f) for f in formats]
    print("\n\n".join(blocks))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from kiln.clientconfig import current_python
    from kiln.doctor import doctor
    from kiln.errors import DoctorProblems

    report = doctor(args.python_exe or current_python(), args.mirror)
    for line in report.render():
        print(line)
    if report.problems:
        n = len(report.problems)
        raise DoctorProblems(f"{n} problem{'s' if n > 1 else ''} with the kiln wheels in {report.python}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from kiln.infer import infer

    python = args.python or f"{sys.version_info.major}.{sys.version_info.minor}"
    result = infer(args.project, Path(args.recipes), Home(Path(args.home)), python, args.index_url,
                   args.max_tries, sys.stdout)
    console.print(f"wrote {result.recipe} after {result.tries} tries")
    return 0


def _cell(args: argparse.Namespace) -> tuple[Toolchains, Cell]:
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


def cmd_source(args: argparse.Namespace) -> int:
    from kiln.build import export_source

    _, cell = _cell(args)
    print(export_source(cell, Home(Path(args.home)), Path(args.out), args.index_url))
    return 0


def cmd_cibw_env(args: argparse.Namespace) -> int:
    from kiln.backends.cibuildwheel import environment, format_env
    from kiln.build import source_requirements

    toolchains, cell = _cell(args)
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
    from kiln.build import finish_raw

    toolchains, cell = _cell(args)
    home = Home(Path(args.home))
    out = Path(args.out) if args.out else home.wheelhouse
    dest = finish_raw(Path(args.wheel), cell, toolchains, home, out,
                      Path(args.source) if args.source else None,
                      Path(args.build_record) if args.build_record else None, args.index_url)
    print(dest)
    return 0


def _build_number(text: str) -> int | None:
    """``--build-number``: a non-negative integer, or empty for the recipe's (a CI expression that
    finds no rebuild number renders as nothing)."""
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a build number: {text!r} (a non-negative integer)")
    return int(text)


def _archs(text: str) -> str | None:
    """``--cuda-archs`` of a cell command: an arch list as recipes write it, or empty for the recipes'."""
    from kiln.recipe import check_archs

    if not text.strip():
        return None
    try:
        return check_archs(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_ci(args: argparse.Namespace) -> int:
    from kiln import ci

    if args.ci_command == "render":
        console.print(f"wrote {ci.write(Path(args.recipes), Path(args.workflow))}")
    else:
        ci.check(Path(args.recipes), Path(args.workflow))
        console.print(f"ok: {args.workflow} matches the recipes")
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from kiln.mirror import deploy

    dest = Path(args.dir)
    if args.mirror_command == "render":
        for path in deploy.render(dest):
            console.print(f"wrote {path}")
        return 0
    stale = deploy.stale(dest)
    if stale:
        raise ConfigError(f"{dest}: {', '.join(stale)} differ from what kiln renders; run `kiln mirror render`")
    console.print(f"ok: {dest} matches what kiln renders")
    console.print(f"ok: nginx -t: {deploy.nginx_test(dest / 'nginx' / 'nginx.conf')}")
    checked = deploy.compose_config(dest / "compose.yaml")
    console.print(f"ok: {dest / 'compose.yaml'}: {checked}" if checked
                  else f"skipped: {dest / 'compose.yaml'}: neither docker compose nor check-jsonschema is here")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kiln import mirror

    count = mirror.export(Home(Path(args.home)), Path(args.dir))
    console.print(f"exported the mirror of {args.home} to {args.dir}: {count} release files, every user and index; "
                  "it holds the mirror's passwords: keep it private")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from kiln import mirror

    home = Home(Path(args.home))
    mirror.import_(home, Path(args.dir), args.storage)
    console.print(f"imported {args.dir} into {home.root}; start it with `kiln serve --home {home.root}`")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description=kiln.__doc__)
    p.add_argument("--version", action="version", version=f"kiln {kiln.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def writer(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's own word
        """A command that writes the home: it waits for the home's lock, or fails with --no-wait."""
        sp = add_parser(name, help=help)
        sp.add_argument("--no-wait", action="store_true",
                        help="fail at once when another kiln process writes the home (default: wait for it)")
        return sp

    def recipes_args(sp: argparse.ArgumentParser, only: bool = True) -> None:
        sp.add_argument("--recipes", default="recipes", help="directory of recipes (default: recipes)")
        sp.add_argument("--home", default=str(default_home()), help="kiln home (default: $KILN_HOME or ./.kiln)")
        if only:
            sp.add_argument("--only", nargs="+", metavar="PROJECT", help="only these projects")
            sp.add_argument("--variant", help="only this variant, e.g. cu130-torch2.14")
            sp.add_argument("--cuda-archs", help="GPU architectures, e.g. '8.0;9.0' (overrides recipes)")
            sp.add_argument("--python", nargs="+", metavar="X.Y", help="only these Pythons")

    sp = sub.add_parser("check", help="validate recipes and the toolchain table")
    recipes_args(sp)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("plan", help="every cell and its status")
    recipes_args(sp)
    sp.add_argument("--out", help="wheelhouse to look in (default: <home>/wheelhouse)")
    sp.add_argument("--mirror", help="mirror URL to look for published wheels")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("--missing", action="store_true", help="only cells still missing")
    sp.add_argument("--profile", choices=PROFILES, default="all",
                    help="all (default): every cell; host: the cells `kiln up` builds here by default")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("status", help="the status page of every cell (HTML, or its JSON)")
    recipes_args(sp)
    sp.add_argument("--out", help="wheelhouse to look in (default: <home>/wheelhouse)")
    sp.add_argument("--mirror", help="mirror URL to look for published wheels (default: the home's running mirror)")
    sp.add_argument("--html", metavar="FILE", help="write the page (one self-contained HTML file) to FILE")
    sp.add_argument("--json", action="store_true", help="print the page's data as JSON")
    sp.set_defaults(func=cmd_status)

    sp = writer("build", help="build, finish and smoke-test wheels")
    recipes_args(sp)
    sp.add_argument("--out", help="where finished wheels go (default: <home>/wheelhouse)")
    sp.add_argument("--backend", default="local", help="local (default) or cibuildwheel")
    sp.add_argument("--index-url", help="index sdists come from (default: KILN_INDEX_URL, uv/pip settings)")
    sp.add_argument("--force", action="store_true", help="rebuild cells already built")
    sp.set_defaults(func=cmd_build)

    def mirror_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
        sp.add_argument("--port", type=int, default=3141, help="port (default: 3141)")
        sp.add_argument("--upstream", default=os.environ.get("KILN_UPSTREAM_URL"),
                        help="simple index root/pypi mirrors (default: $KILN_UPSTREAM_URL, else PyPI)")

    sp = writer("serve", help="run the devpi mirror with one index per variant")
    sp.add_argument("--recipes", default="recipes", help="directory of recipes (default: recipes)")
    sp.add_argument("--home", default=str(default_home()), help="kiln home (default: $KILN_HOME or ./.kiln)")
    mirror_args(sp)
    sp.add_argument("--background", action="store_true", help="detach; `kiln stop` stops it")
    sp.add_argument("--storage", metavar="URL", default=os.environ.get("KILN_MIRROR_STORAGE"),
                    help="keep devpi's database in PostgreSQL (postgresql://USER:PASSWORD@HOST:PORT/DB; "
                    "default: $KILN_MIRROR_STORAGE, else SQLite in the home)")
    sp.add_argument("--replica-of", metavar="URL", help="run a read-only replica of the mirror at URL")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("stop", help="stop the mirror started for a kiln home")
    sp.add_argument("--home", default=str(default_home()), help="kiln home (default: $KILN_HOME or ./.kiln)")
    sp.set_defaults(func=cmd_stop)

    sp = writer("publish", help="upload finished wheels to the index of their variant")
    sp.add_argument("wheelhouse", nargs="?", help="a wheel or a directory of wheels (default: <home>/wheelhouse)")
    sp.add_argument("--home", default=str(default_home()), help="kiln home (default: $KILN_HOME or ./.kiln)")
    sp.add_argument("--mirror", help="mirror URL (default: the home's running mirror); credentials from "
                    "KILN_MIRROR_TOKEN (`kiln token`), else KILN_MIRROR_USER/KILN_MIRROR_PASSWORD, else the home")
    sp.add_argument("--recipes", default="recipes", help="directory of recipes: only their projects (and "
                    "their closures) are published (default: recipes)")
    sp.set_defaults(func=cmd_publish)

    sp = sub.add_parser("token", help="upload tokens for CI: may upload to kiln's indexes, nothing else")
    sp.add_argument("token_command", nargs="?", choices=["create", "list", "revoke"], default="create",
                    help="create (default): print a new token once; list: the tokens the mirror holds; "
                    "revoke ID: refuse that token from now on")
    sp.add_argument("id", nargs="?", help="with revoke: the token's id")
    sp.add_argument("--home", default=str(default_home()), help="kiln home of the mirror, whose root issues "
                    "tokens (default: $KILN_HOME or ./.kiln)")
    sp.add_argument("--mirror", help="mirror URL (default: the home's running mirror)")
    sp.add_argument("--days", type=int, default=90,
                    help="with create: days until it expires (default: 90, at most 366)")
    sp.add_argument("--variant", nargs="+", metavar="VARIANT", help="with create: only these variants' indexes, "
                    "e.g. main cu130-torch2.14 (default: every kiln index)")
    sp.set_defaults(func=cmd_token)

    sp = writer("up", help="the main job: mirror up, build what is missing, publish")
    recipes_args(sp)
    mirror_args(sp)
    sp.add_argument("--index-url", help="index sdists come from (default: KILN_INDEX_URL, uv/pip settings)")
    sp.add_argument("--profile", choices=PROFILES, default="host",
                    help="host (default): every cell without CUDA, and the CUDA cells this host uses (kiln's "
                    "Python or --python, the newest torch for this nvcc, this host's GPU archs or toolchains.yaml's "
                    "host_archs); all: every cell, full arch lists (CI, a build box)")
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser("infer", help="draft a working recipe from failing builds")
    sp.add_argument("project", help="PROJECT or PROJECT==VERSION (default: its newest sdist)")
    sp.add_argument("--recipes", default="recipes", help="where the recipe is written (default: recipes)")
    sp.add_argument("--home", default=str(default_home()), help="kiln home (default: $KILN_HOME or ./.kiln)")
    sp.add_argument("--python", help="the Python to build for (default: kiln's own)")
    sp.add_argument("--max-tries", type=int, default=8, help="builds to try before giving up (default: 8)")
    sp.add_argument("--index-url", help="index sdists come from (default: KILN_INDEX_URL, uv/pip settings)")
    sp.set_defaults(func=cmd_infer)

    sp = sub.add_parser("config", help="the lines that point uv, pip, Docker or pixi at the mirror")
    sp.add_argument("--variant", required=True, help="a variant, e.g. cu130-torch2.14 or main; "
                    "'auto': the torch installed in the current Python environment")
    sp.add_argument("--mirror", help="mirror URL (default: $KILN_MIRROR_URL or http://127.0.0.1:3141)")
    sp.add_argument("--format", choices=["uv", "pip", "docker", "pixi"], help="one format (default: all)")
    sp.add_argument("--python", dest="python_exe", help="with --variant auto: the Python to look in "
                    "(default: $VIRTUAL_ENV's, $CONDA_PREFIX's, a .venv here or above, else python3); without "
                    "torch there, the GPU's driver picks the newest variant on the mirror it runs")
    sp.set_defaults(func=cmd_config)

    sp = sub.add_parser("doctor", help="check the kiln wheels installed in an environment against its torch, "
                        "the GPUs and the driver")
    sp.add_argument("--python", dest="python_exe", help="the Python whose environment to check (default: "
                    "$VIRTUAL_ENV's, $CONDA_PREFIX's, a .venv here or above, else python3)")
    sp.add_argument("--mirror", help="mirror URL, so that a fix names a variant it has (default: fixes by rule)")
    sp.set_defaults(func=cmd_doctor)

    def rebuild_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--build-number", type=_build_number, metavar="N",
                        help="the wheel's build number (default, or empty: the recipe's); CI passes the plan's "
                             "rebuild_number for a narrow cell it rebuilds for every arch")
        sp.add_argument("--cuda-archs", type=_archs, metavar="ARCHS",
                        help="a CUDA cell's GPU architectures (default, or empty: the recipes'); CI passes the "
                             "plan's rebuild_archs for a narrow cell")

    def cell_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--recipes", default="recipes", help="directory of recipes (default: recipes)")
        sp.add_argument("--home", default=str(default_home()), help="kiln home (default: $KILN_HOME or ./.kiln)")

    sp = sub.add_parser("source", help="fetch, unpack and patch one cell's source")
    sp.add_argument("cell", help="a cell id, e.g. causal-conv1d-1.7.0-cp311-cu130-torch2.14")
    cell_args(sp)
    sp.add_argument("--out", required=True, help="the directory to put the source tree in (new or empty)")
    sp.add_argument("--index-url", help="index sdists come from (default: KILN_INDEX_URL, uv/pip settings)")
    sp.set_defaults(func=cmd_source)

    sp = sub.add_parser("cibw-env", help="the cibuildwheel environment that builds one cell")
    sp.add_argument("cell", help="a cell id, e.g. causal-conv1d-1.7.0-cp311-cu130-torch2.14")
    cell_args(sp)
    sp.add_argument("--format", choices=["env", "json"], default="env",
                    help="env: `export` lines for eval (default); json: an object")
    sp.add_argument("--ccache-dir", help="the host's compiler cache (default: <home>/cache/ccache)")
    sp.add_argument("--source", help="the tree `kiln source` made, whose [build-system] is read "
                    "(default: the cell's source, fetched)")
    sp.add_argument("--index-url", help="index sdists come from, without --source")
    rebuild_args(sp)
    sp.set_defaults(func=cmd_cibw_env)

    sp = writer("finish", help="finish and smoke-test a raw wheel of one cell")
    sp.add_argument("wheel", help="the raw wheel (e.g. cibuildwheel's)")
    sp.add_argument("--cell", required=True, help="its cell id")
    cell_args(sp)
    sp.add_argument("--out", help="where the finished wheel goes (default: <home>/wheelhouse)")
    sp.add_argument("--source", help="the tree `kiln source` made (its record names the sdist)")
    sp.add_argument("--build-record", help="the build record (default: kiln-build-env.txt beside the wheel)")
    sp.add_argument("--index-url", help="index sdists come from, without --source")
    rebuild_args(sp)
    sp.set_defaults(func=cmd_finish)

    sp = sub.add_parser("ci", help="the CI workflow rendered from the recipes")
    sp.add_argument("ci_command", choices=["render", "check"],
                    help="render: write the workflow; check: fail when the committed one is stale")
    sp.add_argument("--recipes", default="recipes", help="directory of recipes (default: recipes)")
    sp.add_argument("--workflow", default=".github/workflows/kiln-wheels.yml",
                    help="the workflow file (default: .github/workflows/kiln-wheels.yml)")
    sp.set_defaults(func=cmd_ci)

    sp = sub.add_parser("mirror", help="mirror/: what a team deploys (nginx, devpi, systemd, compose)")
    sp.add_argument("mirror_command", choices=["render", "check"],
                    help="render: write the files; check: fail when they are stale or nginx -t or the "
                    "compose check fails")
    sp.add_argument("--dir", default="mirror", help="the directory (default: mirror)")
    sp.set_defaults(func=cmd_mirror)

    home_help = "kiln home (default: $KILN_HOME or ./.kiln)"
    sp = sub.add_parser("export", help="write the whole mirror (indexes, users, files) to a directory")
    sp.add_argument("dir", help="a new directory")
    sp.add_argument("--home", default=str(default_home()), help=home_help)
    sp.set_defaults(func=cmd_export)

    sp = writer("import", help="make a new home's mirror the one `kiln export` wrote")
    sp.add_argument("dir", help="what `kiln export` wrote")
    sp.add_argument("--home", default=str(default_home()), help=home_help)
    sp.add_argument("--storage", metavar="URL", help="keep devpi's database in PostgreSQL (postgresql://...)")
    sp.set_defaults(func=cmd_import)
    return p


WRITERS = ("build", "up", "publish", "finish", "import")
"""The commands that write a home and hold its lock throughout (`serve` holds it while it starts)."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in WRITERS:
            with Home(Path(args.home)).lock(f"kiln {args.command}", wait=not args.no_wait):
                return int(args.func(args))
        return int(args.func(args))
    except KilnError as exc:
        err_console.print(f"kiln: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("kiln: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

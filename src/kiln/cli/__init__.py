"""The `kiln` commands. Each parses, calls library functions with values, prints; errors end in
one line (kiln.errors: the message, and the error's own exit code).

The parser is here; the commands are in kiln.cli.build (recipes, cells, wheels) and
kiln.cli.mirror (the mirror, its users and clients); the options they share in kiln.cli.options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kiln
from kiln.cli import build, keep, mirror
from kiln.cli import options as opt
from kiln.cli.common import err_console
from kiln.errors import KilnError
from kiln.home import Home


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description=kiln.__doc__)
    p.add_argument("--version", action="version", version=f"kiln {kiln.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def writer(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's own word
        """A command that writes the home: it waits for the home's lock, or fails with --no-wait."""
        sp = sub.add_parser(name, help=help)
        opt.no_wait(sp)
        return sp

    sp = sub.add_parser("check", help="validate recipes and the toolchain table")
    opt.recipe_cells(sp)
    sp.set_defaults(func=build.cmd_check)

    sp = sub.add_parser("plan", help="every cell and its status")
    opt.recipe_cells(sp)
    opt.out(sp, "wheelhouse to look in (default: <home>/wheelhouse)")
    opt.mirror(sp, "mirror URL to look for published wheels")
    opt.json_output(sp)
    sp.add_argument("--missing", action="store_true", help="only cells still missing")
    opt.profile(sp, "all", "all (default): every cell; host: the cells `kiln up` builds here by default")
    opt.upstream(sp)
    sp.set_defaults(func=build.cmd_plan)

    sp = sub.add_parser("status", help="the status page of every cell (HTML, or its JSON)")
    opt.recipe_cells(sp)
    opt.out(sp, "wheelhouse to look in (default: <home>/wheelhouse)")
    opt.mirror(sp, "mirror URL to look for published wheels (default: the home's running mirror)")
    sp.add_argument("--html", metavar="FILE", help="write the page (one self-contained HTML file) to FILE")
    opt.json_output(sp, "print the page's data as JSON")
    opt.upstream(sp)
    sp.set_defaults(func=mirror.cmd_status)

    sp = writer("build", help="build, finish and smoke-test wheels")
    opt.recipe_cells(sp)
    opt.out(sp, "where finished wheels go (default: <home>/wheelhouse)")
    sp.add_argument("--backend", default="local", help="local (default) or cibuildwheel")
    opt.index_url(sp)
    sp.add_argument("--force", action="store_true", help="rebuild cells already built")
    sp.set_defaults(func=build.cmd_build)

    sp = writer("serve", help="run the devpi mirror with one index per variant")
    opt.recipes(sp)
    opt.home(sp)
    opt.listen(sp)
    sp.add_argument("--background", action="store_true", help="detach; `kiln stop` stops it")
    opt.storage(sp, "keep devpi's database in PostgreSQL (postgresql://USER:PASSWORD@HOST:PORT/DB; "
                "default: $KILN_MIRROR_STORAGE, else SQLite in the home)")
    sp.add_argument("--replica-of", metavar="URL", help="run a read-only replica of the mirror at URL")
    sp.set_defaults(func=mirror.cmd_serve)

    sp = sub.add_parser("stop", help="stop the mirror started for a kiln home")
    opt.home(sp)
    sp.set_defaults(func=mirror.cmd_stop)

    sp = writer("publish", help="upload finished wheels to the index of their variant")
    sp.add_argument("wheelhouse", nargs="?", help="a wheel or a directory of wheels (default: <home>/wheelhouse)")
    opt.home(sp)
    opt.mirror(sp, "mirror URL (default: the home's running mirror); credentials from KILN_MIRROR_TOKEN "
               "(`kiln token`), else KILN_MIRROR_USER/KILN_MIRROR_PASSWORD, else the home")
    opt.recipes(sp, "directory of recipes: only their projects (and their closures) are published "
                "(default: recipes)")
    sp.set_defaults(func=mirror.cmd_publish)

    sp = sub.add_parser("token", help="upload tokens for CI: may upload to kiln's indexes, nothing else")
    sp.add_argument("token_command", nargs="?", choices=["create", "list", "revoke"], default="create",
                    help="create (default): print a new token once; list: the tokens the mirror holds; "
                    "revoke ID: refuse that token from now on")
    sp.add_argument("id", nargs="?", help="with revoke: the token's id")
    opt.home(sp, "kiln home of the mirror, whose root issues tokens (default: $KILN_HOME or ./.kiln)")
    opt.mirror(sp)
    sp.add_argument("--days", type=int, default=90,
                    help="with create: days until it expires (default: 90, at most 366)")
    sp.add_argument("--variant", nargs="+", metavar="VARIANT", help="with create: only these variants' indexes, "
                    "e.g. main cu130-torch2.14 (default: every kiln index)")
    sp.set_defaults(func=mirror.cmd_token)

    sp = writer("up", help="the main job: mirror up, build what is missing, publish")
    opt.recipe_cells(sp)
    opt.listen(sp)
    opt.index_url(sp)
    opt.profile(sp, "host", "host (default): every cell without CUDA, and the CUDA cells this host uses (kiln's "
                "Python or --python, the newest torch for this nvcc, this host's GPU archs or toolchains.yaml's "
                "host_archs); all: every cell, full arch lists (CI, a build box)")
    sp.set_defaults(func=build.cmd_up)

    sp = sub.add_parser("outdated", help="releases on the index newer than the recipes and the toolchain table; "
                        "exit 1 when any")
    sp.add_argument("projects", nargs="*", metavar="PROJECT",
                    help="only these recipes (torch: the toolchain table; default: every recipe and the table)")
    opt.recipes(sp)
    opt.index_url(sp, "index to ask (default: KILN_INDEX_URL, uv/pip settings)")
    opt.json_output(sp)
    opt.cooldown(sp)
    sp.set_defaults(func=keep.cmd_outdated)

    sp = sub.add_parser("bump", help="add the new versions `kiln outdated` finds to their recipes, built first")
    sp.add_argument("projects", nargs="*", metavar="PROJECT", help="only these recipes (default: every recipe)")
    opt.recipes(sp)
    opt.index_url(sp)
    opt.home(sp)
    opt.no_wait(sp)
    opt.cooldown(sp)
    sp.add_argument("--no-build", action="store_true",
                    help="add them without building (CI, whose build workflow builds them on the pull request)")
    sp.add_argument("--toolchains", action="store_true",
                    help="also the toolchain table: new torch releases and minors, read from torch's wheels")
    sp.set_defaults(func=keep.cmd_bump)

    sp = sub.add_parser("infer", help="draft a working recipe from failing builds")
    sp.add_argument("project", help="PROJECT or PROJECT==VERSION (default: its newest sdist)")
    opt.recipes(sp, "where the recipe is written (default: recipes)")
    opt.home(sp)
    sp.add_argument("--python", help="the Python to build for (default: kiln's own)")
    sp.add_argument("--max-tries", type=int, default=8, help="builds to try before giving up (default: 8)")
    opt.index_url(sp)
    sp.set_defaults(func=build.cmd_infer)

    sp = sub.add_parser("config", help="the lines that point uv, pip, Docker or pixi at the mirror")
    sp.add_argument("--variant", required=True, help="a variant, e.g. cu130-torch2.14 or main; "
                    "'auto': the torch installed in the current Python environment")
    opt.mirror(sp, "mirror URL (default: $KILN_MIRROR_URL or http://127.0.0.1:3141)")
    sp.add_argument("--format", choices=["uv", "pip", "docker", "pixi"], help="one format (default: all)")
    opt.client_python(sp, "with --variant auto: the Python to look in (default: $VIRTUAL_ENV's, $CONDA_PREFIX's, "
                      "a .venv here or above, else python3); without torch there, the GPU's driver picks the "
                      "newest variant on the mirror it runs")
    sp.set_defaults(func=mirror.cmd_config)

    sp = sub.add_parser("doctor", help="check the kiln wheels installed in an environment against its torch, "
                        "the GPUs and the driver")
    opt.client_python(sp, "the Python whose environment to check (default: $VIRTUAL_ENV's, $CONDA_PREFIX's, "
                      "a .venv here or above, else python3)")
    opt.mirror(sp, "mirror URL, so that a fix names a variant it has (default: fixes by rule)")
    sp.set_defaults(func=mirror.cmd_doctor)

    sp = sub.add_parser("source", help="fetch, unpack and patch one cell's source")
    sp.add_argument("cell", help="a cell id, e.g. causal-conv1d-1.7.0-cp311-cu130-torch2.14")
    opt.one_cell(sp)
    sp.add_argument("--out", required=True, help="the directory to put the source tree in (new or empty)")
    opt.index_url(sp)
    sp.set_defaults(func=build.cmd_source)

    sp = sub.add_parser("cibw-env", help="the cibuildwheel environment that builds one cell")
    sp.add_argument("cell", help="a cell id, e.g. causal-conv1d-1.7.0-cp311-cu130-torch2.14")
    opt.one_cell(sp)
    sp.add_argument("--format", choices=["env", "json"], default="env",
                    help="env: `export` lines for eval (default); json: an object")
    sp.add_argument("--ccache-dir", help="the host's compiler cache (default: <home>/cache/ccache)")
    sp.add_argument("--source", help="the tree `kiln source` made, whose [build-system] is read "
                    "(default: the cell's source, fetched)")
    opt.index_url(sp, "index sdists come from, without --source")
    opt.rebuild(sp)
    sp.set_defaults(func=build.cmd_cibw_env)

    sp = writer("finish", help="finish and smoke-test a raw wheel of one cell")
    sp.add_argument("wheel", help="the raw wheel (e.g. cibuildwheel's)")
    sp.add_argument("--cell", required=True, help="its cell id")
    opt.one_cell(sp)
    opt.out(sp, "where the finished wheel goes (default: <home>/wheelhouse)")
    sp.add_argument("--source", help="the tree `kiln source` made (its record names the sdist)")
    sp.add_argument("--build-record", help="the build record (default: kiln-build-env.txt beside the wheel)")
    opt.index_url(sp, "index sdists come from, without --source")
    opt.rebuild(sp)
    sp.set_defaults(func=build.cmd_finish)

    sp = sub.add_parser("ci", help="the CI workflow rendered from the recipes")
    sp.add_argument("ci_command", choices=["render", "check"],
                    help="render: write the workflow; check: fail when the committed one is stale")
    opt.recipes(sp)
    sp.add_argument("--workflow", default=".github/workflows/kiln-wheels.yml",
                    help="the workflow file (default: .github/workflows/kiln-wheels.yml)")
    sp.set_defaults(func=build.cmd_ci)

    sp = sub.add_parser("mirror", help="mirror/: what a team deploys (nginx, devpi, systemd, compose)")
    sp.add_argument("mirror_command", choices=["render", "check"],
                    help="render: write the files; check: fail when they are stale or nginx -t or the "
                    "compose check fails")
    sp.add_argument("--dir", default="mirror", help="the directory (default: mirror)")
    sp.set_defaults(func=mirror.cmd_mirror)

    sp = sub.add_parser("export", help="write the whole mirror (indexes, users, files) to a directory")
    sp.add_argument("dir", help="a new directory")
    opt.home(sp)
    sp.set_defaults(func=mirror.cmd_export)

    sp = writer("import", help="make a new home's mirror the one `kiln export` wrote")
    sp.add_argument("dir", help="what `kiln export` wrote")
    opt.home(sp)
    opt.storage(sp, "keep devpi's database in PostgreSQL (postgresql://...)", from_env=False)
    sp.set_defaults(func=mirror.cmd_import)
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

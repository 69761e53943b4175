"""The options several `kiln` commands share, each declared once: its flag, default and help
(a command may say more in its own help, never declare it again); and the value types of
options that check their argument."""

from __future__ import annotations

import argparse
import os

from kiln.home import default_home

HOME_HELP = "kiln home (default: $KILN_HOME or ./.kiln)"
INDEX_HELP = "index sdists come from (default: KILN_INDEX_URL, uv/pip settings)"


def home(sp: argparse.ArgumentParser, help: str = HOME_HELP) -> None:  # noqa: A002 - argparse's own word
    sp.add_argument("--home", default=str(default_home()), help=help)


def recipes(sp: argparse.ArgumentParser, help: str = "directory of recipes (default: recipes)") -> None:  # noqa: A002
    sp.add_argument("--recipes", default="recipes", help=help)


def index_url(sp: argparse.ArgumentParser, help: str = INDEX_HELP) -> None:  # noqa: A002
    sp.add_argument("--index-url", help=help)


def mirror(sp: argparse.ArgumentParser, help: str = "mirror URL (default: the home's running mirror)") -> None:  # noqa: A002
    sp.add_argument("--mirror", help=help)


def out(sp: argparse.ArgumentParser, help: str) -> None:  # noqa: A002
    sp.add_argument("--out", help=help)


def json_output(sp: argparse.ArgumentParser, help: str = "print JSON") -> None:  # noqa: A002
    sp.add_argument("--json", action="store_true", help=help)


def no_wait(sp: argparse.ArgumentParser) -> None:
    """For a command that writes the home: it waits for the home's lock, or fails with --no-wait."""
    sp.add_argument("--no-wait", action="store_true",
                    help="fail at once when another kiln process writes the home (default: wait for it)")


def selection(sp: argparse.ArgumentParser) -> None:
    """Which of the recipes' cells a command takes."""
    sp.add_argument("--only", nargs="+", metavar="PROJECT", help="only these projects")
    sp.add_argument("--variant", help="only this variant, e.g. cu130-torch2.14")
    sp.add_argument("--cuda-archs", help="GPU architectures, e.g. '8.0;9.0' (overrides recipes)")
    sp.add_argument("--python", nargs="+", metavar="X.Y", help="only these Pythons")


def recipe_cells(sp: argparse.ArgumentParser) -> None:
    """--recipes, --home and the cell selection: what a command over the recipes' cells takes."""
    recipes(sp)
    home(sp)
    selection(sp)


def profile(sp: argparse.ArgumentParser, default: str, help: str) -> None:  # noqa: A002
    from kiln.profile import PROFILES

    sp.add_argument("--profile", choices=PROFILES, default=default, help=help)


def listen(sp: argparse.ArgumentParser) -> None:
    """Where a mirror this command starts listens, and what its root/pypi mirrors."""
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sp.add_argument("--port", type=int, default=3141, help="port (default: 3141)")
    sp.add_argument("--upstream", default=os.environ.get("KILN_UPSTREAM_URL"),
                    help="simple index root/pypi mirrors (default: $KILN_UPSTREAM_URL, else PyPI)")


def storage(sp: argparse.ArgumentParser, help: str, from_env: bool = True) -> None:  # noqa: A002
    """Where devpi keeps its database: PostgreSQL at URL; ``from_env``: $KILN_MIRROR_STORAGE by default."""
    sp.add_argument("--storage", metavar="URL", default=os.environ.get("KILN_MIRROR_STORAGE") if from_env else None,
                    help=help)


def client_python(sp: argparse.ArgumentParser, help: str) -> None:  # noqa: A002
    sp.add_argument("--python", dest="python_exe", help=help)


def one_cell(sp: argparse.ArgumentParser) -> None:
    """A command over one cell, named by its id: the recipes it comes from and the home."""
    recipes(sp)
    home(sp)


def rebuild(sp: argparse.ArgumentParser) -> None:
    """What CI passes for a narrow cell it rebuilds for every arch (the plan's rebuild_*)."""
    sp.add_argument("--build-number", type=build_number, metavar="N",
                    help="the wheel's build number (default, or empty: the recipe's); CI passes the plan's "
                         "rebuild_number for a narrow cell it rebuilds for every arch")
    sp.add_argument("--cuda-archs", type=archs, metavar="ARCHS",
                    help="a CUDA cell's GPU architectures (default, or empty: the recipes'); CI passes the "
                         "plan's rebuild_archs for a narrow cell")


def build_number(text: str) -> int | None:
    """``--build-number``: a non-negative integer, or empty for the recipe's (a CI expression that
    finds no rebuild number renders as nothing)."""
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a build number: {text!r} (a non-negative integer)")
    return int(text)


def archs(text: str) -> str | None:
    """``--cuda-archs`` of a cell command: an arch list as recipes write it, or empty for the recipes'."""
    from kiln.recipe import check_archs

    if not text.strip():
        return None
    try:
        return check_archs(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cooldown(sp: argparse.ArgumentParser) -> None:
    """How old a release must be before `kiln outdated` and `kiln bump` take it."""
    from kiln.outdated import DEFAULT_COOLDOWN_DAYS

    sp.add_argument("--cooldown-days", type=int, default=DEFAULT_COOLDOWN_DAYS, metavar="N",
                    help=f"skip releases uploaded less than N days ago (default: {DEFAULT_COOLDOWN_DAYS})")


def upstream(sp: argparse.ArgumentParser) -> None:
    """Where `kiln plan` and `kiln status` ask for each project's newest release, or not at all."""
    from kiln.plan import OFFLINE_ENV

    index_url(sp, "index asked for each project's newest release (default: KILN_INDEX_URL, uv/pip settings)")
    sp.add_argument("--offline", action="store_true",
                    help=f"do not ask the index (newest upstream: unknown); also {OFFLINE_ENV}=1")

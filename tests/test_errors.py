"""The error table: every error a user can cause exits with a code of its own, defined in
kiln.errors (the docs list them from there)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import kiln
from kiln import errors
from kiln.errors import KilnError


def every_error() -> list[type[KilnError]]:
    """KilnError and its subclasses, with every kiln module imported (so none is missed)."""
    for mod in pkgutil.walk_packages(kiln.__path__, "kiln."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    found: list[type[KilnError]] = []
    todo: list[type[KilnError]] = [KilnError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_exit_code_is_unique_and_defined_in_the_error_table() -> None:
    coded = [cls for cls in every_error() if "exit_code" in vars(cls)]
    assert all(cls.__module__ == errors.__name__ for cls in coded), \
        [f"{cls.__module__}.{cls.__name__}" for cls in coded if cls.__module__ != errors.__name__]
    codes = [cls.exit_code for cls in coded]
    assert len(codes) == len(set(codes)), sorted((cls.exit_code, cls.__name__) for cls in coded)
    # 0 is success, 2 argparse's own usage error too (and ConfigError's: both are bad input), 130 an interrupt
    assert all(0 < code < 126 for code in codes)
    assert {"ConfigError", "BuildError", "HostError", "InferError", "NotBuildable",
            "StaleWorkflowError"} <= {cls.__name__ for cls in coded}


def test_an_error_elsewhere_is_a_kind_of_one_in_the_table() -> None:
    """A subclass outside kiln.errors (one that carries more data) keeps its parent's code."""
    for cls in every_error():
        if cls.__module__ != errors.__name__:
            assert "exit_code" not in vars(cls), cls
            assert any(base.__module__ == errors.__name__ for base in cls.__mro__[1:]), cls


def test_a_failed_build_exits_with_build_errors_code(tmp_path: object) -> None:
    """`kiln build` of a recipe whose source cannot be had: the cell fails, the run says so and
    exits with BuildError's code (not a bare number of the CLI's own)."""
    from pathlib import Path

    from kiln_testing.fixtures import recipes_dir

    tmp = Path(str(tmp_path))
    recipes = recipes_dir(tmp / "recipes", ("kilnnone.yaml", "project: kilnnone\nversions: [\"1.0.0\"]\n"
                                            "matrix:\n  python: [\"3.11\"]\n"))
    res = subprocess.run([sys.executable, "-m", "kiln.cli", "build", "--recipes", str(recipes), "--home",
                          str(tmp / "home"), "--index-url", (tmp / "nowhere").as_uri()],
                         capture_output=True, text=True)
    assert res.returncode == errors.BuildError.exit_code, res.stdout + res.stderr
    assert "FAILED kilnnone-1.0.0-cp311-main: " in res.stdout

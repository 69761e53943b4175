"""The setup.py shim (kiln.setupshim): setuptools' PEP 517 backend runs setup.py with
``__builtins__`` as ``python setup.py`` has it, the builtins module.

The kilnbuiltins fixture's setup.py says ``__builtins__.__KILNBUILTINS_SETUP__ = True`` (numpy's
``__NUMPY_SETUP__`` trick, copied into many old setup.py files). setuptools.build_meta, in a real
environment, fails on it without the shim (``'dict' object has no attribute``) and builds with it,
saying so; code that does not name ``__builtins__``, and ``exec`` anywhere else, is untouched; then
``kiln build`` builds the fixture as it is, and cibuildwheel's before-build puts the shim into the
container's Python before the backend hook runs setup.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kiln_testing.fixtures import FIXTURES, REPO_RECIPES, recipes_dir
from kiln_testing.index import StaticIndex

from kiln import pthshim, setupshim
from kiln.backends.cibuildwheel import before_build
from kiln.buildreqs import static
from kiln.cli import main
from kiln.matrix import expand
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains

SDIST = FIXTURES / "kilnbuiltins-1.0.0.tar.gz"
CELL = "kilnbuiltins-1.0.0-cp311-main"
SAID = ("kiln: setup.py shim: {file} uses __builtins__ as the builtins module, as under `python setup.py`; "
        "setuptools.build_meta runs it with a dict there, so kiln gives it the module (see kiln.sandbox)")
BUILD = "import os, sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"


def test_code_that_names_builtins_is_told_apart() -> None:
    assert setupshim.names_builtins("__builtins__.__NUMPY_SETUP__ = False\n")
    assert setupshim.names_builtins(b"x = __builtins__")
    assert setupshim.names_builtins(compile("__builtins__.X = 1", "setup.py", "exec"))
    assert setupshim.names_builtins(compile("def f():\n    return __builtins__\n", "setup.py", "exec"))
    assert not setupshim.names_builtins("import builtins\nbuiltins.X = 1\n")
    assert not setupshim.names_builtins(compile("x = 1", "setup.py", "exec"))
    assert not setupshim.names_builtins("# __builtins__.__NUMPY_SETUP__ = False, numpy once said\nx = 1\n")
    assert not setupshim.names_builtins(None)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream_wheels: list[Path]) -> Path:
    """A venv of this Python with setuptools and wheel (no shim); returns its python."""
    tmp = tmp_path_factory.mktemp("setup-shim")
    subprocess.run([sys.executable, "-m", "uv", "venv", "--quiet", "--python", sys.executable, str(tmp / "v")],
                   check=True)
    python = tmp / "v" / "bin" / "python"
    wheels = [str(w) for w in upstream_wheels if w.name.startswith(("setuptools-", "wheel-"))]
    subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--offline", "--python", str(python),
                    *wheels], check=True)
    return python


def _source(tmp: Path) -> Path:
    with tarfile.open(SDIST) as tf:
        tf.extractall(tmp, filter="data")
    return tmp / "kilnbuiltins-1.0.0"


def _site(python: Path) -> Path:
    (site,) = python.parent.parent.glob("lib/python*/site-packages")
    return site


def _build(python: Path, src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    out.mkdir()
    return subprocess.run([str(python), "-c", BUILD, str(out)], cwd=src, capture_output=True, text=True)


def test_without_the_shim_setuptools_backend_fails_on_the_setup_py(env: Path, tmp_path: Path) -> None:
    """What kiln meets in a build environment of its own otherwise: the fixture stands for the real failure."""
    for name in (setupshim.PTH, f"{setupshim.MODULE}.py"):
        (_site(env) / name).unlink(missing_ok=True)
    res = _build(env, _source(tmp_path), tmp_path / "out")
    assert res.returncode != 0
    assert "AttributeError: 'dict' object has no attribute '__KILNBUILTINS_SETUP__'" in res.stderr


@pytest.fixture
def shimmed(env: Path) -> Path:
    assert pthshim.install_into(setupshim, _site(env)) == _site(env) / "_kiln_setup_shim.pth"
    return env


def test_with_the_shim_setup_py_gets_the_builtins_module_and_the_log_says_so(shimmed: Path, tmp_path: Path) -> None:
    src = _source(tmp_path)
    res = _build(shimmed, src, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines().count(SAID.format(file=src / "setup.py")) == 1
    assert (src / "kilnbuiltins" / "_built.py").read_text() == "SETUP_SAW_THE_BUILTINS_MODULE = True\n"


def test_a_setup_py_that_does_not_name_builtins_runs_as_before(shimmed: Path, tmp_path: Path) -> None:
    src = _source(tmp_path)
    text = (src / "setup.py").read_text()
    (src / "setup.py").write_text(text.replace("__builtins__.__KILNBUILTINS", "builtins.__KILNBUILTINS"))
    res = _build(shimmed, src, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "kiln: setup.py shim" not in res.stderr


def test_exec_elsewhere_is_untouched(shimmed: Path) -> None:
    code = ("import setuptools.build_meta as bm, builtins; g = {}; exec('x = __builtins__', g); "
            "print(type(g['x']).__name__, bm.exec is not builtins.exec, bm.__loader__.__class__.__name__)")
    res = subprocess.run([str(shimmed), "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["dict", "True", "SourceFileLoader"]
    assert res.stderr == ""


@pytest.fixture(scope="module")
def builtins_index(tmp_path_factory: pytest.TempPathFactory, upstream_wheels: list[Path]) -> Iterator[StaticIndex]:
    index = StaticIndex(tmp_path_factory.mktemp("builtins-upstream"))
    index.add([SDIST, *upstream_wheels])
    index.start()
    yield index
    index.stop()


def test_kiln_builds_the_fixture_as_it_is(tmp_path: Path, builtins_index: StaticIndex) -> None:
    recipes = recipes_dir(tmp_path / "recipes", ("kilnbuiltins.yaml",
                                                 'project: kilnbuiltins\nversions: ["1.0.0"]\n'
                                                 'matrix:\n  python: ["3.11"]\n'))
    home = tmp_path / "home"
    rc = main(["build", "--recipes", str(recipes), "--home", str(home), "--index-url", builtins_index.simple])
    log = (home / "logs" / f"{CELL}.log").read_text()
    assert rc == 0, log
    assert "kiln: setup.py shim: " in log and "setuptools.build_meta runs it with a dict there" in log


def test_cibuildwheel_puts_the_shim_into_the_container_s_python_before_the_hook(tmp_path: Path) -> None:
    recipes = recipes_dir(tmp_path / "recipes", ("kilnbuiltins.yaml",
                                                 'project: kilnbuiltins\nversions: ["1.0.0"]\n'
                                                 'matrix:\n  python: ["3.11"]\n'))
    shutil.copy(REPO_RECIPES / "toolchains.yaml", recipes / "toolchains.yaml")  # with ci.images
    tc = load_toolchains(recipes)
    (cell,) = expand(load_recipes(recipes), tc)
    steps = before_build(cell, tc, static(_source(tmp_path), cell.recipe)).split(" && ")
    install = next(i for i, step in enumerate(steps) if "_kiln_setup_shim.pth" in step)
    hook = next(i for i, step in enumerate(steps) if "get_requires_for_build" in step)
    assert install < hook

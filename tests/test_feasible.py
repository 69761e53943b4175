"""Impossible cells are named, not failed (kiln.feasible): a cell whose Python the package's
Requires-Python excludes, or whose build requirement publishes wheels but none for its Python, is
`not buildable` with its reason; the other cells build and `kiln build` exits 0.

The fixtures are written here: kilnpicky 1.0.0, a C extension whose sdist says Requires-Python
>=3.11 and whose [build-system] requires kilnnarrow<2; kilnnarrow, a build requirement with an
sdist of 1.0.0 (which builds), a wheel of 1.0.0 tagged cp311 only and a py3 wheel of 2.0.0. They
are served with the session's upstream files from an index of their own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from kiln_testing.deploy import Embedded
from kiln_testing.fixtures import kilnfix_recipe, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.tools import BIN
from packaging.requirements import Requirement

from kiln.cli import main
from kiln.feasible import Wanted, interpreter_version, missing_wheel, python_excluded
from kiln.home import CellResult, Home
from kiln.host import find_python
from kiln.matrix import Cell, expand
from kiln.plan import cell_status, to_build
from kiln.recipe import load_recipes
from kiln.source import IndexFile, index_files, sha256_of
from kiln.toolchains import load_toolchains

UV = [sys.executable, "-m", "uv"]
PYTHONS = ("3.10", "3.11", "3.12")
HAS_PYTHONS = all(find_python(p) is not None for p in PYTHONS)
needs_pythons = pytest.mark.skipif(not HAS_PYTHONS, reason=f"needs Pythons {', '.join(PYTHONS)} (PATH, uv, pyenv)")

PICKY = {
    "pyproject.toml": ('[build-system]\nrequires = ["setuptools>=40.8.0", "kilnnarrow<2"]\n'
                       'build-backend = "setuptools.build_meta"\n'),
    "setup.py": ('from setuptools import Extension, setup\n\n'
                 'setup(name="kilnpicky", version="1.0.0", packages=["kilnpicky"], python_requires=">=3.11",\n'
                 '      ext_modules=[Extension("kilnpicky._core", sources=["kilnpicky/_core.c"])])\n'),
    "PKG-INFO": "Metadata-Version: 2.1\nName: kilnpicky\nVersion: 1.0.0\nRequires-Python: >=3.11\n",
    "kilnpicky/__init__.py": "",
    "kilnpicky/_core.c": ('#include <Python.h>\n'
                          'static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "_core", NULL, -1, NULL};\n'
                          'PyMODINIT_FUNC PyInit__core(void) { return PyModule_Create(&m); }\n'),
}
NARROW = {
    "pyproject.toml": ('[build-system]\nrequires = ["setuptools>=40.8.0"]\nbuild-backend = "setuptools.build_meta"\n\n'
                       '[project]\nname = "kilnnarrow"\nversion = "1.0.0"\n'),
    "PKG-INFO": "Metadata-Version: 2.1\nName: kilnnarrow\nVersion: 1.0.0\n",
    "kilnnarrow/__init__.py": "",
}
NO_WHEEL_312 = "kilnnarrow<2 has no wheel for cp312 (a build requirement: [build-system].requires)"


def sdist(name: str, version: str, files: dict[str, str], dest: Path) -> Path:
    """An sdist ``<name>-<version>.tar.gz`` holding ``files`` under its top directory."""
    out = dest / f"{name}-{version}.tar.gz"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tf:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{path}")
            info.size, info.mtime = len(data), 315532800
            tf.addfile(info, io.BytesIO(data))
    return out


def tagged_wheel(name: str, version: str, tag: str, dest: Path) -> Path:
    """A pure wheel of ``name`` ``version`` tagged ``tag`` (``cp311-none-any``)."""
    root = dest / f"{name}-{version}-{tag}-tree"
    info = root / f"{name}-{version}.dist-info"
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: {tag}\n")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(dest), str(root)],
                   check=True, capture_output=True)
    return dest / f"{name}-{version}-{tag}.whl"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> Iterator[StaticIndex]:
    """The session's upstream files and kilnnarrow's: an sdist of 1.0.0, a cp311 wheel of 1.0.0
    and a py3 wheel of 2.0.0."""
    made = tmp_path_factory.mktemp("narrow")
    own = StaticIndex(tmp_path_factory.mktemp("index"))
    upstream_files = [f for f in (upstream.root / "files").iterdir() if not f.name.endswith(".metadata")]
    own.add([*upstream_files, sdist("kilnnarrow", "1.0.0", NARROW, made),
             tagged_wheel("kilnnarrow", "1.0.0", "cp311-none-any", made),
             tagged_wheel("kilnnarrow", "2.0.0", "py3-none-any", made)])
    own.start()
    yield own
    own.stop()


def picky_recipe(dest: Path, pythons: tuple[str, ...] = PYTHONS, extra: str = "") -> Path:
    """A recipes directory with kilnpicky's recipe (its sdist written beside it)."""
    src = sdist("kilnpicky", "1.0.0", PICKY, dest / "sources")
    text = (f"project: kilnpicky\nversions: [\"1.0.0\"]\nsource:\n  url: {src}\n  sha256: {sha256_of(src)}\n"
            f"matrix:\n  python: {json.dumps(list(pythons))}\ntest:\n  imports: [kilnpicky, kilnpicky._core]\n{extra}")
    return recipes_dir(dest / "recipes", ("kilnpicky.yaml", text))


def build(recipes: Path, home: Path, index: StaticIndex, *args: str) -> int:
    return main(["build", "--recipes", str(recipes), "--home", str(home), "--index-url", index.simple, *args])


def plan(recipes: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    capsys.readouterr()
    assert main(["plan", "--recipes", str(recipes), "--home", str(home), "--json"]) == 0
    return {r["cell"]: r for r in json.loads(capsys.readouterr().out)}


@dataclass
class Built:
    rc: int
    out: str
    err: str
    home: Path
    recipes: Path

    def log(self, python: str) -> str:
        return (self.home / "logs" / f"kilnpicky-1.0.0-cp{python.replace('.', '')}-main.log").read_text()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, index: StaticIndex) -> Built:
    """`kiln build` of kilnpicky for 3.10, 3.11 and 3.12, its output captured."""
    if not HAS_PYTHONS:
        pytest.skip(f"needs Pythons {', '.join(PYTHONS)} (PATH, uv, pyenv)")
    tmp = tmp_path_factory.mktemp("picky")
    recipes = picky_recipe(tmp)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = build(recipes, tmp / "home", index)
    return Built(rc, out.getvalue(), err.getvalue(), tmp / "home", recipes)


def python_line() -> str:
    return (f"kilnpicky 1.0.0 requires Python >=3.11 (Requires-Python in its PKG-INFO), "
            f"not {interpreter_version('3.10')} (cp310)")


# ----------------------------------------------------------------------------- kiln build


@needs_pythons
def test_impossible_cells_are_not_buildable_and_the_build_exits_0(built: Built) -> None:
    """The cp311 cell builds; cp310 (excluded by Requires-Python) and cp312 (kilnnarrow<2 has no
    cp312 wheel) are not buildable, each with its reason in the summary, and the exit code is 0."""
    assert built.rc == 0, built.out + built.err
    lines = built.out.splitlines()
    assert any(ln.startswith(f"built {built.home / 'wheelhouse'}/kilnpicky-1.0.0-cp311-cp311-") for ln in lines), lines
    assert f"not buildable kilnpicky-1.0.0-cp310-main: {python_line()}" in lines
    assert f"not buildable kilnpicky-1.0.0-cp312-main: {NO_WHEEL_312}" in lines
    assert not any(ln.startswith("FAILED") for ln in lines)
    assert [p.name.split("-")[2] for p in (built.home / "wheelhouse").glob("*.whl")] == ["cp311"]
    results = {p: CellResult.load(Home(built.home), f"kilnpicky-1.0.0-cp{p.replace('.', '')}-main") for p in PYTHONS}
    assert {p: r.status if r else None for p, r in results.items()} == {
        "3.10": "not-buildable", "3.11": "built", "3.12": "not-buildable"}
    assert results["3.12"] is not None and results["3.12"].error == NO_WHEEL_312


@needs_pythons
def test_a_python_the_package_excludes_is_found_before_anything_is_installed(built: Built) -> None:
    log = built.log("3.10")
    assert f"kiln: not buildable: {python_line()}" in log
    assert not any(ln.startswith("$ ") for ln in log.splitlines()), log  # no uv venv, no install


@needs_pythons
def test_a_build_requirement_with_wheels_is_never_built_from_its_sdist(built: Built, index: StaticIndex,
                                                                       tmp_path: Path) -> None:
    """uv would build kilnnarrow 1.0.0 from its sdist for 3.12 (shown here, outside kiln); kiln
    installs wheels only, then names the requirement."""
    log = built.log("3.12")
    assert "Building kilnnarrow" not in log and "Built kilnnarrow" not in log, log
    assert f"kiln: not buildable: {NO_WHEEL_312}" in log
    py = find_python("3.12")
    subprocess.run([*UV, "venv", "--quiet", "--python", str(py), str(tmp_path / "v")], check=True)
    res = subprocess.run([*UV, "pip", "install", "--python", str(tmp_path / "v" / "bin" / "python"),
                          "--index-url", index.simple, "kilnnarrow<2"], capture_output=True, text=True)
    assert res.returncode == 0 and "Built kilnnarrow==1.0.0" in res.stderr, res.stderr


@needs_pythons
def test_plan_and_status_show_the_reason(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    rows = plan(built.recipes, built.home, capsys)
    assert {c: (r["status"], r["detail"], r["impossible"]) for c, r in rows.items() if r["status"] != "built"} == {
        "kilnpicky-1.0.0-cp310-main": ("not-buildable", python_line(), True),
        "kilnpicky-1.0.0-cp312-main": ("not-buildable", NO_WHEEL_312, True)}
    assert main(["plan", "--recipes", str(built.recipes), "--home", str(built.home)]) == 0
    table = capsys.readouterr().out
    assert "[build-system].requires" in table  # the reason's brackets are text, not markup

    assert main(["status", "--recipes", str(built.recipes), "--home", str(built.home), "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    cells = {c["cell"]: c for p in page["projects"] for c in p["cells"]}
    assert (cells["kilnpicky-1.0.0-cp312-main"]["status"], cells["kilnpicky-1.0.0-cp312-main"]["detail"]) == (
        "not-buildable", NO_WHEEL_312)
    assert page["counts"]["not-buildable"] == 2 and page["counts"]["failed"] == 0
    html = built.home.parent / "status.html"
    assert main(["status", "--recipes", str(built.recipes), "--home", str(built.home), "--html", str(html)]) == 0
    assert "kilnnarrow&lt;2 has no wheel for cp312 (a build requirement: [build-system].requires)" in html.read_text()


@needs_pythons
def test_a_second_build_skips_the_impossible_cells_until_the_recipe_changes(
        built: Built, index: StaticIndex, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert build(built.recipes, built.home, index) == 0
    out, err = capsys.readouterr()
    assert out == ""  # nothing built, nothing failed
    assert (f"skip kilnpicky-1.0.0-cp312-main: not buildable: {NO_WHEEL_312} (found by its last build; a changed "
            "recipe, or --force, tries again)") in " ".join(err.split())

    toolchains = load_toolchains(built.recipes)
    cells = expand(load_recipes(built.recipes, None), toolchains)
    home = Home(built.home)
    rows = cell_status(cells, toolchains, home, home.wheelhouse)
    forced, _ = to_build(cells, rows, home, force=True)
    assert {c.id for c in forced} == {c.id for c in cells}  # --force tries them again

    recipe = built.recipes / "kilnpicky.yaml"
    changed = built.home.parent / "changed"
    changed.mkdir()
    recipes = recipes_dir(changed, ("kilnpicky.yaml", recipe.read_text() + "# kilnnarrow 1.x has cp312 wheels now\n"))
    assert {c: r["status"] for c, r in plan(recipes, built.home, capsys).items()} == {
        "kilnpicky-1.0.0-cp310-main": "missing", "kilnpicky-1.0.0-cp311-main": "stale",
        "kilnpicky-1.0.0-cp312-main": "missing"}


# ----------------------------------------------------------------------------- kiln up


@pytest.mark.e2e
@needs_pythons
def test_up_names_the_impossible_cell_publishes_the_rest_and_exits_0(tmp_path: Path, index: StaticIndex) -> None:
    """`kiln up` on a real mirror: the cp311 wheel is published, the cp312 cell is said to be not
    buildable (not "here": no host would build it), and the exit code counts no failure; a second
    run does not try it again."""
    dep = Embedded(home=tmp_path / "home", upstream=index.simple)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_")) and k != "VIRTUAL_ENV"}
    env["UV_DEFAULT_INDEX"] = index.simple
    recipes = picky_recipe(tmp_path, ("3.11", "3.12"))
    up = [str(BIN / "kiln"), "up", "--recipes", str(recipes), "--home", str(dep.home), "--port", str(dep.port)]
    try:
        first = subprocess.run(up, capture_output=True, text=True, env=env, timeout=900)
        again = subprocess.run(up, capture_output=True, text=True, env=env, timeout=900)
    finally:
        dep.close()
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert f"not buildable: kilnpicky-1.0.0-cp312-main: {NO_WHEEL_312}" in lines
    assert "built 1, uploaded 1, already published 0, failed 0" in lines
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"not buildable: kilnpicky-1.0.0-cp312-main: {NO_WHEEL_312}" in again.stdout.splitlines()
    assert "built 0, uploaded 0, already published 1, failed 0" in again.stdout.splitlines()
    assert "kilnpicky-1.0.0-cp312-main: started" not in again.stderr


# ----------------------------------------------------------------------------- sdist-only build requirements


def test_a_build_requirement_that_only_ships_sdists_still_builds(tmp_path: Path, index: StaticIndex,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """kilnlib publishes only an sdist: the wheels-only install does not resolve, and the second
    one builds kilnlib from its sdist, as before."""
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe(**{
        '"kilnfix-helper==1.4.0"': '"kilnfix-helper==1.4.0", "kilnlib"', '["3.11", "3.12"]': '["3.11"]'})))
    home = tmp_path / "home"
    rc = build(recipes, home, index)
    out = capsys.readouterr().out
    log = (home / "logs" / "kilnfix-1.0.0-cp311-main.log").read_text()
    assert rc == 0, out + log
    assert out.startswith(f"built {home / 'wheelhouse'}/kilnfix-1.0.0-cp311-cp311-")
    assert ("kiln: the build requirements do not install from wheels alone for cp311; again, with wheels only for "
            "those that publish any (build, kilnfix-helper, setuptools)") in log
    assert "Built kilnlib==1.0.0" in log


# ----------------------------------------------------------------------------- the rule, without a build


def cell_for(tmp_path: Path, python: str) -> Cell:
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe(**{
        '["3.11", "3.12"]': json.dumps([python])})))
    (cell,) = expand(load_recipes(recipes, None), load_toolchains(recipes))
    return cell


def files(*names: str, requires_python: str | None = None) -> list[IndexFile]:
    return [IndexFile(n, f"https://files.example/{n}", None, requires_python) for n in names]


NUMPY = files("numpy-1.26.4.tar.gz", "numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
              "numpy-2.1.0-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
SYSTEM = "[build-system].requires"


def test_a_requirement_with_wheels_for_other_pythons_only_is_the_reason(tmp_path: Path) -> None:
    cell = cell_for(tmp_path, "3.13")
    assert missing_wheel([Wanted("setuptools", SYSTEM), Wanted("numpy<2", SYSTEM)], {"numpy": NUMPY}, cell, []) == (
        "numpy<2 has no wheel for cp313 (a build requirement: [build-system].requires)")
    assert missing_wheel([Wanted("numpy", SYSTEM)], {"numpy": NUMPY}, cell, []) is None
    assert missing_wheel([Wanted("numpy", "recipe build.requires")], {"numpy": NUMPY}, cell,
                         [Requirement("numpy<1.27")]) == (
        "numpy has no wheel for cp313 (a build requirement: recipe build.requires; constraint numpy<1.27)")
    assert missing_wheel([Wanted('numpy<2; python_version < "3.13"', SYSTEM)], {"numpy": NUMPY}, cell, []) is None


def test_a_requirement_no_release_satisfies_is_left_to_the_install(tmp_path: Path) -> None:
    """numpy==9.9 names no release: a recipe's error, which the install's failure says."""
    assert missing_wheel([Wanted("numpy==9.9", SYSTEM)], {"numpy": NUMPY}, cell_for(tmp_path, "3.12"), []) is None


def test_a_wheel_s_requires_python_and_platform_count(tmp_path: Path) -> None:
    cell = cell_for(tmp_path, "3.12")
    old = files("kilnold-1.0.tar.gz", "kilnold-1.0-py3-none-any.whl", requires_python="<3.12")
    assert missing_wheel([Wanted("kilnold", SYSTEM)], {"kilnold": old}, cell, []) == (
        "kilnold has no wheel for cp312 (a build requirement: [build-system].requires)")
    mac = files("kilnmac-1.0.tar.gz", "kilnmac-1.0-cp312-cp312-macosx_11_0_arm64.whl")
    why = missing_wheel([Wanted("kilnmac", SYSTEM)], {"kilnmac": mac}, cell, [])
    assert why is not None and why.startswith("kilnmac has no wheel for cp312 on linux_")


def test_index_files_carry_each_file_s_requires_python(tmp_path: Path) -> None:
    page = tmp_path / "simple" / "kilnold"
    page.mkdir(parents=True)
    page.joinpath("index.json").write_text(json.dumps({"meta": {"api-version": "1.1"}, "name": "kilnold", "files": [
        {"filename": "kilnold-1.0-py3-none-any.whl", "url": "../../files/kilnold-1.0-py3-none-any.whl",
         "hashes": {"sha256": "0" * 64}, "requires-python": "<3.12"},
        {"filename": "kilnold-1.0.tar.gz", "url": "../../files/kilnold-1.0.tar.gz", "hashes": {}}]}))
    served = StaticIndex(tmp_path)
    served.start()
    try:
        got = index_files("kilnold", served.simple)
    finally:
        served.stop()
    assert [(f.filename, f.requires_python) for f in got] == [("kilnold-1.0-py3-none-any.whl", "<3.12"),
                                                              ("kilnold-1.0.tar.gz", None)]


def test_requires_python_of_the_sdist_or_pyproject(tmp_path: Path) -> None:
    cell = cell_for(tmp_path, "3.11")
    src = tmp_path / "src"
    src.mkdir()
    assert python_excluded(cell, src) is None  # says nothing
    (src / "pyproject.toml").write_text('[project]\nname = "kilnfix"\nrequires-python = ">=3.12"\n')
    assert python_excluded(cell, src) == (f"kilnfix 1.0.0 requires Python >=3.12 (Requires-Python in its "
                                          f"pyproject.toml), not {interpreter_version('3.11')} (cp311)")
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: kilnfix\nVersion: 1.0.0\nRequires-Python: >=3.8\n")
    assert python_excluded(cell, src) is None  # PKG-INFO first
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: kilnfix\nVersion: 1.0.0\nRequires-Python: >=3.6.*\n")
    assert python_excluded(cell, src) is None  # a form no tool reads excludes nothing


# ----------------------------------------------------------------------------- kiln infer


@needs_pythons
def test_infer_narrows_matrix_python_to_one_that_can_build(tmp_path: Path, index: StaticIndex,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """No cp312 wheel of kilnnarrow<2: infer drafts for 3.12, learns the cell is not buildable, and
    goes to the next Python down, saying why in the written recipe. A try found not buildable is
    no build: --max-tries 1 still leaves the one build that works."""
    index.add([sdist("kilnpicky", "1.0.0", PICKY, tmp_path / "sources")])
    recipes = recipes_dir(tmp_path / "recipes")
    assert main(["infer", "kilnpicky==1.0.0", "--recipes", str(recipes), "--home", str(tmp_path / "home"),
                 "--python", "3.12", "--index-url", index.simple, "--max-tries", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    wrote = recipes / "kilnpicky.yaml"
    assert out[:2] == [f"try 1: not buildable on Python 3.12: {NO_WHEEL_312} -> matrix.python = [3.11]",
                       f"try 2: built and smoke-tested kilnpicky-1.0.0-cp311-main -> wrote {wrote}"]
    text = (recipes / "kilnpicky.yaml").read_text()
    assert f'  python: ["3.11"]    # not 3.12: {NO_WHEEL_312}\n' in text
    assert load_recipes(recipes)[0].matrix.python == ["3.11"]

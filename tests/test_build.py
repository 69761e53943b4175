"""Building the fixtures the way a user meets them: real uv, real compiler, real `python -m
build`, everything from the local upstream index (no public index).

- kilnfix: a legacy setup.py with an undeclared import, on Python 3.11 and 3.12, from a recipe
  that lists only that import;
- kilncuda: a "CUDA if found" setup.py built as a cpu cell on a host with nvcc;
- kilnapp: a runtime dependency (kilnlib) with only an sdist upstream;
- smoke tests without the build constraints, run-exports, failure lines, stale wheels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from kiln_testing.fixtures import FIXTURE_RECIPES, FIXTURE_SDIST, FIXTURES, MORE_RECIPES, kilnfix_recipe, recipes_dir
from kiln_testing.index import StaticIndex
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from kiln.backends import CompileResult
from kiln.build import finish_cell
from kiln.cli import main
from kiln.errors import BuildError
from kiln.host import find_python
from kiln.matrix import expand
from kiln.provenance import Provenance
from kiln.recipe import load_recipes
from kiln.source import Source, sha256_of
from kiln.toolchains import load_toolchains
from kiln.wheel import cuda_content

UV = [sys.executable, "-m", "uv"]
HAS_312 = find_python("3.12") is not None


def build(recipes: Path, home: Path, upstream: StaticIndex, *args: str) -> int:
    return main(["build", "--recipes", str(recipes), "--home", str(home), "--index-url", upstream.simple, *args])


def venv(path: Path) -> Path:
    subprocess.run([*UV, "venv", "--quiet", "--python", sys.executable, str(path)], check=True)
    return path / "bin" / "python"


def install(py: Path, upstream: StaticIndex, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UV, "pip", "install", "--python", str(py), "--no-build", "--index-url", upstream.simple,
                           *args], capture_output=True, text=True)


def metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode().splitlines()


# ----------------------------------------------------------------------------- a legacy setup.py


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> tuple[int, Path]:
    home = tmp_path_factory.mktemp("home")
    return build(FIXTURE_RECIPES, home, upstream), home


def test_isolated_uv_install_of_the_sdist_fails(tmp_path: Path, upstream: StaticIndex) -> None:
    py = venv(tmp_path / "v")
    res = subprocess.run([*UV, "pip", "install", "--python", str(py), "--index-url", upstream.simple, "kilnfix"],
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert "No module named 'kilnfix_helper'" in res.stderr


def test_kiln_build_makes_a_finished_smoke_tested_wheel(built: tuple[int, Path]) -> None:
    rc, home = built
    log = (home / "logs" / "kilnfix-1.0.0-cp311-main.log").read_text()
    assert rc == 0, log
    wheel = next((home / "wheelhouse").glob("kilnfix-1.0.0-cp311-*.whl"))
    name, version, _, tags = parse_wheel_filename(wheel.name)
    assert (name, version) == ("kilnfix", Version("1.0.0"))
    assert all(t.platform.startswith("manylinux") for t in tags), "auditwheel's tag, not linux_x86_64"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    prov = Provenance.read(wheel)
    assert "Requires-Dist: kilnfix-helper==1.4.*" in metadata(wheel)
    assert prov.source_sha256 == "a7005b134f28175956dbc211b911bbd685ecc4d5fd31570b571c0fd7bd2ab871"
    assert prov.recipe == "kilnfix.yaml" and len(prov.recipe_sha256) == 64
    assert any(line.startswith("kilnfix-helper==1.4.0") for line in prov.build_env)
    assert prov.python.startswith("3.11.")
    assert any(n.startswith("kilnfix/_speedup.cpython-311") for n in names)


def test_build_requirements_come_in_three_recorded_tiers(built: tuple[int, Path]) -> None:
    """No [build-system] table: PEP 517's default setuptools is installed though the recipe names
    only the undeclared import; each tier is in the log and in the provenance."""
    _, home = built
    wheel = next((home / "wheelhouse").glob("kilnfix-1.0.0-cp311-*.whl"))
    reqs = Provenance.read(wheel).build_requires
    assert reqs["build_system"] == ["setuptools>=40.8.0"] and reqs["default"] is True  # type: ignore[index]
    assert reqs["recipe"] == ["kilnfix-helper==1.4.0"]  # type: ignore[index]
    assert isinstance(reqs["backend"], list)  # type: ignore[index]
    log = (home / "logs" / "kilnfix-1.0.0-cp311-main.log").read_text()
    assert "build requirements 1/3, PEP 517 default (no [build-system] table): setuptools>=40.8.0" in log
    assert "build requirements 2/3, recipe build.requires: kilnfix-helper==1.4.0" in log
    assert "build requirements 3/3, backend get_requires_for_build_wheel:" in log
    assert "--skip-dependency-check" not in log
    assert any(line.startswith("setuptools==") for line in Provenance.read(wheel).build_env)


@pytest.mark.skipif(not HAS_312, reason="no Python 3.12 here (PATH, uv, pyenv)")
def test_legacy_setup_py_builds_on_python_312(built: tuple[int, Path]) -> None:
    """Python 3.12 has no setuptools of its own: it comes from the PEP 517 default."""
    rc, home = built
    assert rc == 0, (home / "logs" / "kilnfix-1.0.0-cp312-main.log").read_text()
    (wheel,) = (home / "wheelhouse").glob("kilnfix-1.0.0-cp312-*.whl")
    assert Provenance.read(wheel).python.startswith("3.12.")


def test_the_build_step_cannot_reach_the_index_kiln_reached(built: tuple[int, Path], upstream: StaticIndex) -> None:
    """The probe dials the index the build environment was just installed from: reachable
    outside the sandbox (the build used it), unreachable inside."""
    _, home = built
    log = (home / "logs" / "kilnfix-1.0.0-cp311-main.log").read_text()
    port = upstream.url.rsplit(":", 1)[1]
    assert f"network probe: 127.0.0.1:{port} unreachable" in log
    assert f"REACHED 127.0.0.1:{port}" not in log


def test_finished_wheel_installs_with_uv_and_runs(built: tuple[int, Path], upstream: StaticIndex,
                                                  tmp_path: Path) -> None:
    _, home = built
    wheel = next((home / "wheelhouse").glob("kilnfix-1.0.0-cp311-*.whl"))
    py = venv(tmp_path / "v")
    res = install(py, upstream, str(wheel))
    assert res.returncode == 0, res.stderr
    out = subprocess.run([str(py), "-c", "import kilnfix; print(kilnfix.add(2, 3))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "5"


def test_uv_rejects_a_wheel_whose_filename_and_metadata_disagree(built: tuple[int, Path],
                                                                 tmp_path: Path, upstream: StaticIndex) -> None:
    """The check the finished wheel passes is real: renaming a wheel (as upstream's renamed
    wheels are) makes uv refuse it."""
    _, home = built
    wheel = next((home / "wheelhouse").glob("kilnfix-1.0.0-cp311-*.whl"))
    renamed = tmp_path / wheel.name.replace("1.0.0", "1.0.1")
    renamed.write_bytes(wheel.read_bytes())
    res = install(venv(tmp_path / "v"), upstream, str(renamed))
    assert res.returncode != 0
    assert re.search(r"Wheel version does not match filename\W+1\.0\.0 != 1\.0\.1", res.stderr), res.stderr


def test_second_build_skips_what_is_built(built: tuple[int, Path], upstream: StaticIndex,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, home = built
    assert build(FIXTURE_RECIPES, home, upstream) == 0
    assert "kilnfix-1.0.0-cp311-main: already built" in capsys.readouterr().err


# ----------------------------------------------------------------------------- failures


def test_failed_build_names_the_cause_and_keeps_its_log(tmp_path: Path, upstream: StaticIndex,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """kilnfix-helper 9.9.9 is on no index: the cell fails with uv's reason, not "exited 1"; its
    log is kept, the exit code is 4 and nothing lands in the wheelhouse."""
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe(**{
        "kilnfix-helper==1.4.0": "kilnfix-helper==9.9.9", '["3.11", "3.12"]': '["3.11"]'})))
    home = tmp_path / "home"
    assert build(recipes, home, upstream) == 4
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAILED"))
    assert line.startswith("FAILED kilnfix-1.0.0-cp311-main: Because there is no version of kilnfix-helper==9.9.9")
    assert line.endswith(f"(log: {home / 'logs' / 'kilnfix-1.0.0-cp311-main.log'})")
    assert (home / "logs" / "kilnfix-1.0.0-cp311-main.log").is_file()
    assert not list(home.glob("wheelhouse/*.whl"))


def test_a_missing_undeclared_import_is_the_failure_line(tmp_path: Path, upstream: StaticIndex,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Without the recipe's one line, the log's decisive line is the failure: the import."""
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe(**{
        'build:\n  requires: ["kilnfix-helper==1.4.0"]\n': "", '["3.11", "3.12"]': '["3.11"]',
        "runtime:\n  pin: [kilnfix-helper]": "runtime:\n  pin: []"})))
    assert build(recipes, tmp_path / "home", upstream) == 4
    out = capsys.readouterr().out
    assert "FAILED kilnfix-1.0.0-cp311-main: ModuleNotFoundError: No module named 'kilnfix_helper'" in out


def test_an_exception_inside_a_cell_fails_only_that_cell(tmp_path: Path, upstream: StaticIndex,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An sdist holding a link to an absolute path is refused while unpacking: that cell fails
    with the exception, its traceback in its log, and the other cell still builds."""
    evil = tmp_path / "evil-1.0.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        info = tarfile.TarInfo("evil-1.0/setup.py")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    evil_recipe = (f"project: evil\nversions: [\"1.0\"]\nsource:\n  url: {evil}\n"
                   f"  sha256: {sha256_of(evil)}\nmatrix:\n  python: [\"3.11\"]\n")
    recipes = recipes_dir(tmp_path / "recipes", ("evil.yaml", evil_recipe),
                          ("kilnfix.yaml", kilnfix_recipe(**{'["3.11", "3.12"]': '["3.11"]'})))
    home = tmp_path / "home"
    assert build(recipes, home, upstream) == 4
    out = capsys.readouterr().out
    assert "FAILED evil-1.0-cp311-main: AbsoluteLinkError: 'evil-1.0/setup.py' is a link to an absolute path" in out
    assert "Traceback (most recent call last)" in (home / "logs" / "evil-1.0-cp311-main.log").read_text()
    assert len(list((home / "wheelhouse").glob("kilnfix-1.0.0-cp311-*.whl"))) == 1


# ----------------------------------------------------------------------------- honest cpu cells


def build_more(tmp: Path, upstream: StaticIndex, name: str) -> tuple[int, Path, Path]:
    """Build the fixture recipe ``more/<name>.yaml`` alone: (exit code, home, recipes)."""
    recipes = recipes_dir(tmp / "recipes", (f"{name}.yaml", (MORE_RECIPES / f"{name}.yaml").read_text()))
    return build(recipes, tmp / "home", upstream), tmp / "home", recipes


@pytest.fixture(scope="module")
def cpu_built(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> tuple[int, Path, Path]:
    return build_more(tmp_path_factory.mktemp("cpu"), upstream, "kilncuda")


def test_cpu_cell_builds_the_cpu_extension_with_nvcc_installed(cpu_built: tuple[int, Path, Path]) -> None:
    rc, home, _ = cpu_built
    log = (home / "logs" / "kilncuda-1.0.0-cp311-cpu-torch2.14.log").read_text()
    assert rc == 0, log
    assert "kilncuda: no CUDA toolkit found, building the CPU extension" in log
    assert "no CUDA toolkit (private mount namespace)" in log
    (wheel,) = (home / "wheelhouse").glob("*.whl")
    assert parse_wheel_filename(wheel.name)[1] == Version("1.0.0+cpu.torch2.14")
    assert cuda_content(wheel) == []
    assert "Requires-Dist: torch==2.14.*" in metadata(wheel)


@pytest.fixture(scope="module")
def cuda_linked(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> Path:
    """The same sdist built outside kiln's sandbox, on this host: its setup.py finds the toolkit."""
    if not shutil.which("nvcc") and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("no CUDA toolkit on this host: the fixture builds its CPU extension anyway")
    tmp = tmp_path_factory.mktemp("cuda-linked")
    py = venv(tmp / "env")
    assert install(py, upstream, "setuptools", "build").returncode == 0
    src = shutil.copytree(FIXTURES / "src" / "kilncuda-1.0.0", tmp / "src")  # never build in the fixture's tree
    res = subprocess.run([str(py), "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"),
                          str(src)], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{py.parent}{os.pathsep}{os.environ['PATH']}"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kilncuda: building the CUDA extension" in res.stdout
    (wheel,) = (tmp / "dist").glob("*.whl")
    return wheel


def test_outside_the_sandbox_the_fixture_links_cudart(cuda_linked: Path) -> None:
    """The cpu test above can fail: here, unsandboxed, the fixture links the CUDA runtime."""
    found = cuda_content(cuda_linked)
    assert any(": links libcudart.so" in line for line in found), found


def test_a_cpu_wheel_holding_cuda_is_refused(cuda_linked: Path, tmp_path: Path) -> None:
    tc = load_toolchains(FIXTURE_RECIPES)
    recipes = recipes_dir(tmp_path / "r", ("kilncuda.yaml", (MORE_RECIPES / "kilncuda.yaml").read_text()))
    (cell,) = expand(load_recipes(recipes), tc)
    res = CompileResult(wheel=cuda_linked, installed={"torch": "2.14.1"}, freeze=[], python="3.11", compiler="gcc")
    src = Source(FIXTURE_SDIST, "file:///x", "0" * 64)
    with open(tmp_path / "log", "w") as log, pytest.raises(BuildError) as exc:
        finish_cell(cell, tc, res, src, tmp_path / "work", log)
    assert exc.value.message.startswith(f"{cuda_linked.name} was built without CUDA but holds CUDA: "
                                        "kilncuda/_ext.")
    assert ": links libcudart.so" in exc.value.message


# ----------------------------------------------------------------------------- the closure


@pytest.fixture(scope="module")
def closure_built(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> tuple[int, Path, Path]:
    return build_more(tmp_path_factory.mktemp("closure"), upstream, "kilnapp")


def test_sdist_only_runtime_dependency_is_built_too(closure_built: tuple[int, Path, Path]) -> None:
    rc, home, _ = closure_built
    assert rc == 0, (home / "logs" / "kilnapp-1.0.0-cp311-main.log").read_text()
    names = sorted(parse_wheel_filename(w.name)[0] for w in (home / "wheelhouse").glob("*.whl"))
    assert names == ["kilnapp", "kilnlib"]
    (lib,) = (home / "wheelhouse").glob("kilnlib-*.whl")
    assert Provenance.read(lib).closure_of == "kilnapp-1.0.0-cp311-main"
    lib_log = (home / "logs" / "kilnlib-1.0.0-cp311-main.log").read_text()
    assert "kiln: import kilnlib: ok" in lib_log and "kiln: import kilnlib._native: ok" in lib_log


def test_closure_installs_with_no_build(closure_built: tuple[int, Path, Path], upstream: StaticIndex,
                                        tmp_path: Path) -> None:
    _, home, _ = closure_built
    py = venv(tmp_path / "v")
    res = install(py, upstream, "--find-links", str(home / "wheelhouse"), "kilnapp")
    assert res.returncode == 0, res.stderr
    out = subprocess.run([str(py), "-c", "import kilnapp; print(kilnapp.nine())"], capture_output=True, text=True)
    assert out.stdout.strip() == "9", out.stderr


def test_without_its_closure_the_wheel_does_not_install(closure_built: tuple[int, Path, Path],
                                                         upstream: StaticIndex, tmp_path: Path) -> None:
    """What the closure fixes: kilnapp's own wheel alone, with the upstream, fails on kilnlib,
    which has no wheel there."""
    _, home, _ = closure_built
    alone = tmp_path / "alone"
    alone.mkdir()
    for wheel in (home / "wheelhouse").glob("kilnapp-*.whl"):
        shutil.copy(wheel, alone)
    res = install(venv(tmp_path / "v"), upstream, "--find-links", str(alone), "kilnapp")
    assert res.returncode != 0
    assert re.search(r"kilnlib[\s\S]*(--no-build|building from source is disabled)", res.stderr), res.stderr


def test_a_closure_dependency_that_does_not_build_names_the_recipe_it_needs(
        tmp_path: Path, upstream: StaticIndex, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = 'project: kilnneeds\nversions: ["1.0.0"]\nmatrix:\n  python: ["3.11"]\n'
    home = tmp_path / "home"
    assert build(recipes_dir(tmp_path / "recipes", ("kilnneeds.yaml", recipe)), home, upstream) == 4
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAILED"))
    assert line.startswith("FAILED kilnneeds-1.0.0-cp311-main: kilnbroken 1.0.0, a runtime requirement with no "
                           "wheel for cp311, does not build as upstream declares it (RuntimeError: kilnbroken: this "
                           f"platform is not supported); it needs a recipe: {tmp_path / 'recipes' / 'kilnbroken.yaml'}")
    assert not list(home.glob("wheelhouse/*.whl"))


def test_the_closure_uses_a_dependency_s_recipe_when_there_is_one(tmp_path: Path, upstream: StaticIndex) -> None:
    """A recipe beside says what the dependency's upstream forgot: the closure builds with it
    (here its build number shows it was used)."""
    lib = 'project: kilnlib\nversions: ["1.0.0"]\nbuild:\n  number: 3\nmatrix:\n  python: ["3.11"]\n'
    home = tmp_path / "home"
    recipes = recipes_dir(tmp_path / "recipes", ("kilnapp.yaml", (MORE_RECIPES / "kilnapp.yaml").read_text()),
                          ("kilnlib.yaml", lib))
    assert main(["build", "--recipes", str(recipes), "--home", str(home), "--index-url", upstream.simple,
                 "--only", "kilnapp"]) == 0
    (wheel,) = (home / "wheelhouse").glob("kilnlib-*.whl")
    assert wheel.name.startswith("kilnlib-1.0.0-3-cp311-")
    assert Provenance.read(wheel).closure_of == "kilnapp-1.0.0-cp311-main"


def test_plan_lists_closure_cells(closure_built: tuple[int, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, home, recipes = closure_built
    capsys.readouterr()
    assert main(["plan", "--recipes", str(recipes), "--home", str(home), "--json"]) == 0
    rows = {r["cell"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["kilnapp-1.0.0-cp311-main"]["status"] == "built"
    assert rows["kilnapp-1.0.0-cp311-main"]["closure_of"] is None
    assert rows["kilnlib-1.0.0-cp311-main"]["status"] == "built"
    assert rows["kilnlib-1.0.0-cp311-main"]["closure_of"] == "kilnapp-1.0.0-cp311-main"


# ----------------------------------------------------------------------------- smoke tests and run-exports


def test_smoke_test_installs_without_the_build_constraints(tmp_path: Path, upstream: StaticIndex,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Built under `kilnfix-helper<2` (ABI 1) with no run-export: a user gets helper 2.0.0 and the
    import fails; so does the smoke test, which installs what a user installs."""
    text = kilnfix_recipe(**{'["kilnfix-helper==1.4.0"]': '[kilnfix-helper]\n  constraints: ["kilnfix-helper<2"]',
                             '["3.11", "3.12"]': '["3.11"]',
                             "runtime:\n  pin: [kilnfix-helper]": "runtime:\n  pin: []"})
    home = tmp_path / "home"
    assert build(recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", text)), home, upstream) == 4
    out = capsys.readouterr().out
    assert ("FAILED kilnfix-1.0.0-cp311-main: smoke test: import kilnfix failed: ImportError: kilnfix was built "
            "against kilnfix-helper ABI 1, found 2") in out
    assert list((home / "failed").glob("kilnfix-*.whl")) and not list(home.glob("wheelhouse/*.whl"))


def test_a_run_export_bounds_the_runtime(tmp_path: Path, upstream: StaticIndex) -> None:
    text = kilnfix_recipe(**{'["kilnfix-helper==1.4.0"]': '[kilnfix-helper]\n  constraints: ["kilnfix-helper<2"]',
                             '["3.11", "3.12"]': '["3.11"]',
                             "runtime:\n  pin: [kilnfix-helper]": "runtime:\n  run_exports: {kilnfix-helper: major}"})
    home = tmp_path / "home"
    assert build(recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", text)), home, upstream) == 0
    (wheel,) = (home / "wheelhouse").glob("*.whl")
    assert "Requires-Dist: kilnfix-helper<2,>=1.4" in metadata(wheel)


KILNOLD = 'project: kilnold\nversions: ["1.0.0"]\nmatrix:\n  python: ["3.11"]\n'
"""kilnold's Requires-Dist: `kilnfix-helper<1.0` (no such release) and `kilnlib>=1.0; python_version < "3.6"`."""


def test_an_upstream_bound_no_release_satisfies_fails_the_cell(tmp_path: Path, upstream: StaticIndex,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert build(recipes_dir(tmp_path / "recipes", ("kilnold.yaml", KILNOLD)), home, upstream) == 4
    out = capsys.readouterr().out
    assert ("FAILED kilnold-1.0.0-cp311-main: the runtime requirements of kilnold-1.0.0-py3-none-any.whl do not "
            "resolve: Because only kilnfix-helper>=1.4.0 is available and kilnold==1.0.0 depends on "
            "kilnfix-helper<1.0, ") in out
    assert not list(home.glob("wheelhouse/*.whl"))


def test_runtime_replace_rewrites_upstream_requirements_and_the_smoke_test_installs_them(
        tmp_path: Path, upstream: StaticIndex) -> None:
    text = KILNOLD + 'runtime:\n  replace: {"kilnfix-helper<1.0": kilnfix-helper, kilnlib: null}\n'
    home = tmp_path / "home"
    assert build(recipes_dir(tmp_path / "recipes", ("kilnold.yaml", text)), home, upstream) == 0
    (wheel,) = (home / "wheelhouse").glob("kilnold-*.whl")
    requires = [ln for ln in metadata(wheel) if ln.startswith("Requires-Dist:")]
    assert requires == ["Requires-Dist: kilnfix-helper"]
    assert Provenance.read(wheel).runtime_replaced == {"kilnfix-helper<1.0": "kilnfix-helper",
                                                          'kilnlib>=1.0; python_version < "3.6"': None}
    log = (home / "logs" / "kilnold-1.0.0-cp311-main.log").read_text()
    assert "kiln: runtime.replace: kilnfix-helper<1.0 -> kilnfix-helper\n" in log
    assert 'kiln: runtime.replace: kilnlib>=1.0; python_version < "3.6" -> (dropped)\n' in log
    py = venv(tmp_path / "v")
    assert install(py, upstream, "--find-links", str(home / "wheelhouse"), "kilnold").returncode == 0
    res = subprocess.run([str(py), "-c", "import kilnold; print(kilnold.HELPER_ABI)"], capture_output=True, text=True)
    assert res.stdout.strip() == "2"  # the newest kilnfix-helper, which upstream's bound refused


def test_runtime_replace_keeps_upstream_s_marker_when_its_value_has_none(tmp_path: Path, upstream: StaticIndex) -> None:
    text = KILNOLD + ('runtime:\n  replace:\n    "kilnfix-helper<1.0": kilnfix-helper\n'
                      '    "kilnlib>=1.0": "kilnlib>=2"\n')
    home = tmp_path / "home"
    assert build(recipes_dir(tmp_path / "recipes", ("kilnold.yaml", text)), home, upstream) == 0
    (wheel,) = (home / "wheelhouse").glob("kilnold-*.whl")
    assert 'Requires-Dist: kilnlib>=2; python_version < "3.6"' in metadata(wheel)


def test_a_runtime_replace_key_that_matches_nothing_fails_the_cell_naming_its_line(
        tmp_path: Path, upstream: StaticIndex, capsys: pytest.CaptureFixture[str]) -> None:
    text = KILNOLD + 'runtime:\n  replace:\n    "kilnfix-helper<1.0": kilnfix-helper\n    "scipy<1": null\n'
    recipes = recipes_dir(tmp_path / "recipes", ("kilnold.yaml", text))
    assert build(recipes, tmp_path / "home", upstream) == 4
    assert (f"FAILED kilnold-1.0.0-cp311-main: {recipes / 'kilnold.yaml'}:8: runtime.replace: scipy<1 matches none "
            "of kilnold 1.0.0's requirements (kilnfix-helper<1.0, kilnlib>=1.0; python_version < \"3.6\")"
            ) in capsys.readouterr().out


# ----------------------------------------------------------------------------- stale wheels, build numbers


def test_a_changed_recipe_makes_the_wheel_stale_and_a_build_number_tags_it(
        built: tuple[int, Path], tmp_path: Path, upstream: StaticIndex, capsys: pytest.CaptureFixture[str]) -> None:
    _, built_home = built
    home = tmp_path / "home"
    shutil.copytree(built_home / "wheelhouse", home / "wheelhouse")
    text = kilnfix_recipe(**{'["3.11", "3.12"]': '["3.11"]'})
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", text + "# a changed recipe\n"))
    capsys.readouterr()
    assert main(["plan", "--recipes", str(recipes), "--home", str(home), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "stale"
    assert row["detail"].endswith("was built from another kilnfix.yaml: rebuild")

    (recipes / "kilnfix.yaml").write_text(text.replace("build:\n", "build:\n  number: 1\n"))
    assert build(recipes, home, upstream) == 0
    (tagged,) = (home / "wheelhouse").glob("kilnfix-1.0.0-1-cp311-*.whl")
    assert parse_wheel_filename(tagged.name)[2] == (1, "")
    capsys.readouterr()
    assert main(["plan", "--recipes", str(recipes), "--home", str(home), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "built" and row["wheel"] == tagged.name


def test_closure_cells_run_as_cells_of_the_run_and_their_results_go_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """build_cell's loop, with stand-in cell builds: app needs lib and util, lib needs base. Each
    closure cell runs after the cell that needs it has stopped at its closure, is reported to the
    progress as a cell of its own, and its result is handed back to the cell that waits."""
    import dataclasses

    from kiln import build as build_mod
    from kiln.build import BuildContext, build_cell
    from kiln.home import CellOutcome, CellResult, Home

    tc = load_toolchains(FIXTURE_RECIPES)
    template = expand(load_recipes(FIXTURE_RECIPES), tc)[0]
    cells = {name: dataclasses.replace(template, project=name) for name in ("app", "lib", "util", "base")}
    needs = {"app": ["lib", "util"], "lib": ["base"]}
    got: dict[str, list[str]] = {}

    def run(cell, ctx, building):  # type: ignore[no-untyped-def]
        name = cell.project
        if name in needs:
            results = yield [cells[n] for n in needs[name]]
            got[name] = [r.cell for r in results]
        return CellResult(cell=cell.id, status=CellOutcome.BUILT, log="", seconds=0.0, wheel=f"{name}.whl")

    events: list[str] = []

    class Progress:
        def start(self, cell_id: str, log: Path, label: str) -> None:
            events.append(f"start {label}")

        def end(self, result: CellResult) -> None:
            events.append(f"end {result.cell}")

    monkeypatch.setattr(build_mod, "_cell_run", run)
    ctx = dataclasses.replace(BuildContext(tc, Home(tmp_path), tmp_path / "out", None, "file:///x"),  # type: ignore[arg-type]
                              progress=Progress())  # type: ignore[arg-type]
    result = build_cell(cells["app"], ctx)
    app, lib, util, base = (cells[n].id for n in ("app", "lib", "util", "base"))
    assert result.cell == app and result.wheel == "app.whl"
    assert got == {"lib": [base], "app": [lib, util]}
    assert events == [f"start {lib} (closure of {app})", f"start {base} (closure of {lib})", f"end {base}",
                      f"end {lib}", f"start {util} (closure of {app})", f"end {util}"]


def test_a_closure_cell_that_would_need_itself_is_refused(tmp_path: Path) -> None:
    from kiln.build import BuildContext, _closure_cell
    from kiln.closure import Need
    from kiln.home import Home

    tc = load_toolchains(FIXTURE_RECIPES)
    cell = expand(load_recipes(FIXTURE_RECIPES), tc)[0]
    dep = Need("kilnlib", "1.0.0").cell(cell)
    ctx = BuildContext(tc, Home(tmp_path), tmp_path / "out", None, "file:///x")  # type: ignore[arg-type]
    with open(tmp_path / "log", "w") as log, pytest.raises(BuildError) as exc:
        _closure_cell(Need("kilnlib", "1.0.0"), cell, ctx, log, frozenset({cell.id, dep.id}))
    assert exc.value.message == f"closure: {dep.id} depends on itself through {cell.id}"

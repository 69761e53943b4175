"""End-to-end: the first install through a fresh mirror whose upstream answers slowly (kiln
issue 11: "there is no version of tilelang==0.1.8" on a team's first install, fine a minute later).

The upstream here holds only kilnfix-helper, and every simple page of it (the project list and
each project's page) answers later than devpi-server waits for an upstream. A wheel published
to a kiln variant index requires kilnfix-helper, so installing it needs root/pypi's page of a
project devpi has never fetched. Before the fix devpi answered that page, on the kiln index,
with no files (or 404), and uv failed at once; now the mirror answers 503 until devpi has the
upstream's answer, and uv's own retries get it. See kiln/mirror/plugin.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from devpi_server.config import DEFAULT_REQUEST_TIMEOUT
from kiln_testing.deploy import Deployment
from kiln_testing.index import SIMPLE_JSON, StaticIndex
from kiln_testing.provenance import provenance_json
from kiln_testing.tools import BIN
from kiln_testing.wheels import make_helper_wheel, make_wheel

from kiln import mirror
from kiln.home import Home
from kiln.matrix import Variant
from kiln.mirror.deploy import Site
from kiln.mirror.server import upload_credentials
from kiln.provenance import PROVENANCE

pytestmark = pytest.mark.e2e

VARIANT = "cpu-torch2.14"


def devpi_wait_s() -> float:
    """How long kiln's devpi-server waits for an upstream page before it answers a client."""
    site = Site("127.0.0.1:1", 1, Path("serverdir"), Path("secret"))
    return float(site.devpi_options().get("request-timeout", DEFAULT_REQUEST_TIMEOUT))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticIndex]:
    """This module's upstream (it overrides conftest's, so the ``deployment`` fixture mirrors it):
    kilnfix-helper 1.4.0 alone, every simple page 2 s slower than devpi waits."""
    root = tmp_path_factory.mktemp("slow-upstream")
    wheels = tmp_path_factory.mktemp("slow-upstream-wheels")
    index = StaticIndex(root, delay=devpi_wait_s() + 2)
    index.add([make_helper_wheel("1.4.0", wheels)])
    index.start()
    yield index
    index.stop()


def wheel_requiring(name: str, version: str, requires: list[str], dest: Path, variant: str) -> Path:
    """A pure-Python wheel of ``name`` ``version`` whose metadata requires ``requires``, with
    kiln's provenance for ``variant`` (the mirror takes no other wheel on a kiln index)."""
    module = name.replace("-", "_")
    kiln_json = provenance_json(f"{name}-{version.split('+')[0]}-py3-{variant}", variant)
    files = {f"{module}/__init__.py": "", f"{module}-{version}.dist-info/{PROVENANCE}": kiln_json}
    return make_wheel(name, version, files, dest, tuple(requires))


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_")) and k != "VIRTUAL_ENV"}


@pytest.fixture(scope="module")
def published(deployment: Deployment, upstream: StaticIndex, tmp_path_factory: pytest.TempPathFactory) -> str:
    """kilncold 1.0+cpu.torch2.14, requiring kilnfix-helper==1.4.0, uploaded to kiln/cpu-torch2.14
    as user kiln (straight with `uv publish`: no recipe names kilncold, which `kiln publish`
    refuses); the index URL clients use."""
    home = Home(deployment.home)
    primary = mirror.url_for("127.0.0.1", deployment.port)
    mirror.configure(home, primary, [Variant.parse(VARIANT)], None, upstream.simple)
    wheel = wheel_requiring("kilncold", "1.0+cpu.torch2.14", ["kilnfix-helper==1.4.0"],
                            tmp_path_factory.mktemp("kilncold"), VARIANT)
    creds = upload_credentials(home)
    # credentials through the environment: never on argv (and a password may start with "-")
    env = {**clean_env(), "UV_PUBLISH_USERNAME": creds.user, "UV_PUBLISH_PASSWORD": creds.password}
    res = subprocess.run([str(BIN / "uv"), "publish", "--no-progress", "--publish-url",
                          f"{primary}/{mirror.index_name(VARIANT)}/", str(wheel)], check=False, capture_output=True,
                         text=True, env=env)
    assert res.returncode == 0, res.stderr
    deployment.settle()
    return mirror.simple_url(deployment.url, VARIANT)


def test_first_install_through_a_cold_mirror_succeeds(published: str, client_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    """The issue's command, first thing on a fresh mirror: nothing built, nothing cached."""
    subprocess.run([str(BIN / "uv"), "venv", "--quiet", "--python", sys.executable, str(tmp_path / "venv")],
                   check=True, env=client_env)
    py = tmp_path / "venv" / "bin" / "python"
    res = subprocess.run([str(BIN / "uv"), "pip", "install", "--python", str(py), "--no-build", "--no-cache",
                          "--index-url", published, "kilncold"], check=False, capture_output=True, text=True,
                         env=client_env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    version = subprocess.run([str(py), "-c", "import kilnfix_helper; print(kilnfix_helper.__version__)"],
                             check=False, capture_output=True, text=True)
    assert version.stdout.strip() == "1.4.0", version.stderr


def get(url: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_a_project_the_upstream_lacks_is_503_until_known_then_404(published: str) -> None:
    """The mirror says "try again" only while it does not know: once the slow upstream has
    answered 404, the kiln index answers 404 too (an installer then says "not found")."""
    page = f"{published}kilnnosuch/"
    status, headers = get(page)
    assert status == 503, status
    assert headers.get("Retry-After") and headers.get("Cache-Control") == "no-store", headers
    statuses = [status]
    while statuses[-1] == 503 and len(statuses) < 20:  # each try waits for devpi's upstream fetch
        statuses.append(get(page)[0])
    assert statuses[-1] == 404, statuses

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

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from devpi_server.config import DEFAULT_REQUEST_TIMEOUT
from kiln_testing.deploy import Deployment, upload
from kiln_testing.index import SIMPLE_JSON, StaticIndex
from kiln_testing.tools import BIN
from kiln_testing.wheels import make_helper_wheel, make_kiln_wheel, make_wheel

from kiln import mirror
from kiln.home import Home
from kiln.matrix import Variant
from kiln.mirror.deploy import Site
from kiln.mirror.pages import CACHED_ACCEPT

pytestmark = pytest.mark.e2e

VARIANT = "cpu-torch2.14"


def devpi_wait_s() -> float:
    """How long kiln's devpi-server waits for an upstream page before it answers a client."""
    site = Site("127.0.0.1:1", 1, Path("serverdir"), Path("secret"))
    return float(site.devpi_options().get("request-timeout", DEFAULT_REQUEST_TIMEOUT))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticIndex]:
    """This module's upstream (it overrides conftest's, so the ``deployment`` fixture mirrors it):
    kilnfix-helper 1.4.0 and kilnslow 1.0, every simple page 2 s slower than devpi waits."""
    root = tmp_path_factory.mktemp("slow-upstream")
    wheels = tmp_path_factory.mktemp("slow-upstream-wheels")
    index = StaticIndex(root, delay=devpi_wait_s() + 2)
    index.add([make_helper_wheel("1.4.0", wheels), make_wheel("kilnslow", "1.0", {"kilnslow/__init__.py": ""}, wheels)])
    index.start()
    yield index
    index.stop()


@pytest.fixture(scope="module")
def published(deployment: Deployment, upstream: StaticIndex, tmp_path_factory: pytest.TempPathFactory) -> str:
    """kilncold 1.0+cpu.torch2.14, requiring kilnfix-helper==1.4.0, uploaded to kiln/cpu-torch2.14
    as user kiln (straight with `uv publish`: no recipe names kilncold, which `kiln publish`
    refuses); the index URL clients use."""
    home = Home(deployment.home)
    primary = mirror.url_for("127.0.0.1", deployment.port)
    mirror.configure(home, primary, [Variant.parse(VARIANT)], None, upstream.simple)
    wheel = make_kiln_wheel("kilncold", "1.0", VARIANT, tmp_path_factory.mktemp("kilncold"),
                            ("kilnfix-helper==1.4.0",))
    upload(deployment, VARIANT, wheel)
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


def get(url: str, accept: str = SIMPLE_JSON) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_a_project_the_upstream_lacks_is_503_until_known_then_404(published: str) -> None:
    """The mirror says "try again" only while it does not know: once the slow upstream has
    answered 404, the kiln index answers 404 too (an installer then says "not found")."""
    page = f"{published}kilnnosuch/"
    status, headers, _ = get(page)
    assert status == 503, status
    assert headers.get("Retry-After") and headers.get("Cache-Control") == "no-store", headers
    statuses = [status]
    while statuses[-1] == 503 and len(statuses) < 20:  # each try waits for devpi's upstream fetch
        statuses.append(get(page)[0])
    assert statuses[-1] == 404, statuses


def test_the_cold_answer_is_never_kept(published: str) -> None:
    """uv's own request, the one whose pages nginx serves from kiln's page store once kept
    (kiln/mirror/pages.py): the 503 a cold mirror answers is not kept, and the page with the
    upstream's file is, once devpi has it."""
    page = f"{published}kilnslow/"
    uv_accept = CACHED_ACCEPT[1]
    answers = [get(page, uv_accept)]
    assert answers[0][0] == 503, answers[0][:2]
    while answers[-1][0] == 503 and len(answers) < 20:
        answers.append(get(page, uv_accept))
    status, headers, body = answers[-1]
    assert status == 200 and b"kilnslow-1.0-py3-none-any.whl" in body, (status, body[:300])
    assert "X-Devpi-Serial" in headers  # devpi's answer, which it keeps
    kept = get(page, uv_accept)
    assert kept[0] == 200 and "X-Devpi-Serial" not in kept[1] and kept[2] == body, kept[:2]

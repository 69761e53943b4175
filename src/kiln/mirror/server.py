"""The processes of a kiln home's mirror: devpi-server on a private loopback port, nginx in
front of it on the public address; their files, secrets, start, stop and readiness."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import HostError, MirrorError
from kiln.home import Home, read_json, set_aside, write_atomic
from kiln.mirror.api import Credentials, Devpi
from kiln.mirror.deploy import Site, Storage, devpi_config, nginx_conf, nginx_exe
from kiln.mirror.layout import USER

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3141
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ServerFiles:
    """Where one kiln home keeps its mirror: state, secrets, configs, pids and logs."""

    home: Home

    @property
    def root(self) -> Path:
        return self.home.server

    @property
    def serverdir(self) -> Path:
        """devpi-server's own directory: the SQLite database and the release files."""
        return self.root / "server"

    @property
    def secretfile(self) -> Path:
        return self.root / "secret"

    @property
    def root_password(self) -> Path:
        return self.root / "root.password"

    @property
    def kiln_password(self) -> Path:
        return self.root / "kiln.password"

    @property
    def state(self) -> Path:
        """The running mirror: pids and URLs, removed when it stops."""
        return self.root / "server.json"

    @property
    def deployment(self) -> Path:
        """What this home's mirror is: its storage and the primary it replicates (0600)."""
        return self.root / "deployment.json"

    @property
    def devpi_config(self) -> Path:
        return self.root / "devpi.yaml"

    @property
    def nginx(self) -> Path:
        """nginx's prefix: its config, pid, logs and temp files."""
        return self.root / "nginx"

    @property
    def access_log(self) -> Path:
        return self.nginx / "access.log"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def initialized(self) -> bool:
        return (self.serverdir / ".nodeinfo").exists()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, atomically (temp file, then rename)."""
    write_atomic(path, text, mode=0o600)


def _secret_file(path: Path, make: bool = True) -> str:
    """The password in ``path``, generated (0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    if not make:
        raise MirrorError(f"{path}: missing; run `kiln serve` on this home first")
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def root_credentials(home: Home) -> Credentials:
    return Credentials("root", _secret_file(ServerFiles(home).root_password, make=False))


def upload_credentials(home: Home) -> Credentials:
    """Who uploads: KILN_MIRROR_USER/KILN_MIRROR_PASSWORD, else user kiln from the home."""
    password = os.environ.get("KILN_MIRROR_PASSWORD")
    if password:
        return Credentials(os.environ.get("KILN_MIRROR_USER", USER), password)
    return Credentials(USER, _secret_file(ServerFiles(home).kiln_password, make=False))


# ----------------------------------------------------------------------------- what the home is


@dataclass(frozen=True)
class Deployment:
    """What a home's mirror is, kept in the home so that `kiln up` and `kiln serve` without
    options start the same one again."""

    storage: Storage = Storage()
    primary_url: str | None = None

    @property
    def kind(self) -> str:
        return "replica" if self.primary_url else ("postgresql" if self.storage.url else "sqlite")


def deployment_of(home: Home, storage: str | None = None, primary_url: str | None = None) -> Deployment:
    """The home's recorded deployment, with ``storage``/``primary_url`` where given. A home that
    already holds a mirror keeps what it was created with."""
    files = ServerFiles(home)
    recorded = Deployment()
    if files.deployment.exists():
        try:
            data = json.loads(files.deployment.read_text())
            recorded = Deployment(Storage(data.get("storage")), data.get("primary_url"))
        except (ValueError, AttributeError) as exc:
            raise MirrorError(f"{files.deployment}: unreadable ({exc}); move it aside") from None
    wanted = Deployment(Storage(storage) if storage else recorded.storage, primary_url or recorded.primary_url)
    if files.initialized and wanted != recorded:
        raise MirrorError(f"{home.root} holds a {recorded.kind} mirror ({_describe(recorded)}); it cannot become "
                          f"{_describe(wanted)}: use another --home")
    return wanted


def _describe(dep: Deployment) -> str:
    if dep.primary_url:
        return f"a replica of {dep.primary_url}"
    return f"storage {dep.storage.redacted}"


def _record(home: Home, dep: Deployment) -> None:
    _write_private(ServerFiles(home).deployment,
                   json.dumps({"storage": dep.storage.url, "primary_url": dep.primary_url}))


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Running:
    """A mirror started by kiln for a home: devpi-server and the nginx in front of it."""

    pid: int          # devpi-server
    nginx_pid: int
    url: str          # nginx: what clients and kiln use
    devpi_url: str    # devpi-server on its private port


def devpi_exe(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        raise HostError(f"{name} not found: install kiln with its dependencies (./dev does)")
    return found


def _alive(pid: int, program: bytes) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child, or a pid reused by another program, is not ours
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return program in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def running(home: Home) -> Running | None:
    """The mirror this home started, when it is still running."""
    files = ServerFiles(home)
    state = read_json(files.state)
    if state is None:
        return None
    try:
        current = Running(pid=int(state["pid"]), nginx_pid=int(state["nginx_pid"]), url=str(state["url"]),
                          devpi_url=str(state["devpi_url"]))
    except (ValueError, KeyError, TypeError) as exc:
        set_aside(files.state, f"not a mirror's state (missing or bad {exc})")
        return None
    if not _alive(current.pid, b"devpi-server"):
        if _alive(current.nginx_pid, b"nginx"):
            _terminate(current.nginx_pid, b"nginx", 10.0)
        files.state.unlink(missing_ok=True)
        return None
    return current


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip() or "?").splitlines()[-1]
        raise MirrorError(f"{what} failed: {last}")


def init_server(home: Home, site: Site) -> None:
    """Secrets, then devpi-init with a generated root password, once per home (not for a
    replica: it takes everything from its primary). The password goes through the
    environment, never the command line."""
    files = ServerFiles(home)
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    _write_private(files.devpi_config, devpi_config(site))
    if site.primary_url and not files.secretfile.exists():
        raise MirrorError(f"a replica signs in to its primary with the primary's secret: copy the primary "
                          f"home's {files.secretfile.relative_to(home.root)} to {files.secretfile} (mode 0600)")
    if not files.secretfile.exists():
        _run([devpi_exe("devpi-gen-secret"), "--secretfile", str(files.secretfile)], "devpi-gen-secret")
    if files.initialized:
        return
    if site.primary_url:
        _run([devpi_exe("devpi-init"), "--configfile", str(files.devpi_config)], "devpi-init")
        return
    _secret_file(files.kiln_password)
    password = _secret_file(files.root_password)
    _run([devpi_exe("devpi-init"), "--configfile", str(files.devpi_config)], "devpi-init",
         env={**os.environ, "DEVPISERVER_ROOT_PASSWD": password})


EXPORT_DEVPI = "devpi"   # devpi-export's dump, inside an export directory
EXPORT_SECRETS = "kiln"  # the home's passwords: root's and kiln's, as the dump's users have them


def export(home: Home, dest: Path) -> int:
    """Write the whole mirror to ``dest``: users, indexes, every published wheel and the upstream
    files devpi has fetched (devpi-export), plus the home's passwords. Works while it runs.
    Returns the number of release files exported."""
    files = ServerFiles(home)
    if not files.initialized or not files.devpi_config.exists():
        raise MirrorError(f"{home.root} holds no mirror to export")
    if dest.exists() and any(dest.iterdir()):
        raise MirrorError(f"{dest}: not empty; export into a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    _run([devpi_exe("devpi-export"), "--configfile", str(files.devpi_config), "--include-mirrored-files",
          str(dest / EXPORT_DEVPI)], "devpi-export")
    for secret in (files.root_password, files.kiln_password):
        if secret.exists():
            _write_private(dest / EXPORT_SECRETS / secret.name, secret.read_text())
    return sum(1 for p in (dest / EXPORT_DEVPI).rglob("*") if p.is_file() and p.suffix in (".whl", ".gz", ".zip"))


def import_(home: Home, src: Path, storage: str | None = None) -> None:
    """Make ``home``'s mirror the one exported to ``src`` (devpi-import into a new serverdir)."""
    files = ServerFiles(home)
    if not (src / EXPORT_DEVPI / "dataindex.json").is_file():
        raise MirrorError(f"{src}: not a `kiln export` directory (no {EXPORT_DEVPI}/dataindex.json)")
    if files.initialized:
        raise MirrorError(f"{home.root} already holds a mirror; import into a new --home")
    dep = deployment_of(home, storage)
    site = Site(listen="127.0.0.1:0", devpi_port=_free_loopback_port(), serverdir=files.serverdir,
                secretfile=files.secretfile, storage=dep.storage)
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    _write_private(files.devpi_config, devpi_config(site))
    if not files.secretfile.exists():
        _run([devpi_exe("devpi-gen-secret"), "--secretfile", str(files.secretfile)], "devpi-gen-secret")
    _run([devpi_exe("devpi-import"), "--configfile", str(files.devpi_config), str(src / EXPORT_DEVPI)],
         "devpi-import")
    _record(home, dep)
    for secret in (files.root_password, files.kiln_password):
        kept = src / EXPORT_SECRETS / secret.name
        if kept.exists():
            _write_private(secret, kept.read_text())


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def nginx_user() -> str | None:
    """nginx's workers drop to `nobody` when started by root; they must read the home."""
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwuid(os.geteuid())
    return pw.pw_name


@dataclass(frozen=True)
class ServeOptions:
    """How a home's mirror is served: nginx on ``host``:``port``; ``upstream``: the index
    root/pypi mirrors (None: PyPI); ``background``: its processes outlive kiln (their own
    session); ``storage``: a PostgreSQL URL (None: SQLite, or what the home recorded);
    ``replica_of``: the primary's URL, for a replica (None: what the home recorded)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    upstream: str | None = None
    background: bool = True
    storage: str | None = None
    replica_of: str | None = None


def start(home: Home, options: ServeOptions = ServeOptions()) -> tuple[Running, list[subprocess.Popen[bytes]]]:
    """Start the home's mirror (or reuse the one running on the same address); ``options.upstream``
    is not start's: it is configured once the mirror runs (kiln.mirror.configure).

    Returns the mirror and the processes this call started (none when reused).
    """
    host, port, background = options.host, options.port, options.background
    url = url_for(host, port)
    dep = deployment_of(home, options.storage, options.replica_of)
    current = running(home)
    if current:
        if current.url != url:
            raise MirrorError(f"this home's mirror already runs at {current.url} (pid {current.pid}); "
                              f"`kiln stop --home {home.root}` first")
        return current, []
    files = ServerFiles(home)
    if not port_free(host, port):
        raise MirrorError(f"{host}:{port} is in use by another program; pick another --port")
    site = Site(listen=f"{host}:{port}", devpi_port=_free_loopback_port(), serverdir=files.serverdir,
                secretfile=files.secretfile, storage=dep.storage, primary_url=dep.primary_url)
    init_server(home, site)
    _record(home, dep)
    nginx_dir = files.nginx
    (nginx_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (nginx_dir / "nginx.conf").write_text(nginx_conf(site, user=nginx_user()))
    devpi_url = f"http://127.0.0.1:{site.devpi_port}"
    procs: list[subprocess.Popen[bytes]] = []
    log = files.log.open("ab")
    try:
        procs.append(subprocess.Popen([devpi_exe("devpi-server"), "--configfile", str(files.devpi_config)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=background))
        procs.append(subprocess.Popen([nginx_exe(), "-p", str(nginx_dir), "-c", "nginx.conf", "-e", "error.log",
                                       "-g", "daemon off;"],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=background))
    except BaseException:
        for p in procs:
            _terminate(p.pid, b"", 10.0)
        raise
    finally:
        log.close()
    server = Running(pid=procs[0].pid, nginx_pid=procs[1].pid, url=url, devpi_url=devpi_url)
    _write_private(files.state, json.dumps({"pid": server.pid, "nginx_pid": server.nginx_pid, "url": url,
                                            "devpi_url": devpi_url}))
    try:
        wait_ready(procs[0], devpi_url, "devpi-server", files.log)
        wait_ready(procs[1], url, "nginx", nginx_dir / "error.log")
    except BaseException:  # not ready, or Ctrl-C while waiting: leave nothing running
        stop(home)
        raise
    return server, procs


def wait_ready(proc: subprocess.Popen[bytes], url: str, what: str, log: Path) -> None:
    """Wait until ``url`` answers devpi's API; one line naming ``log`` when ``proc`` dies or is too slow."""
    api = Devpi(url, timeout=5)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not api.ping():
        if proc.poll() is not None:
            raise MirrorError(f"{what} exited {proc.returncode}: {_last_line(log)} (log: {log})")
        if time.monotonic() > deadline:
            raise MirrorError(f"{what} did not answer on {url} within {READY_TIMEOUT_S:.0f}s (log: {log})")
        time.sleep(0.2)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "?"
    return lines[-1] if lines else "?"


def stop(home: Home, timeout: float = 30.0) -> Running | None:
    """Stop the home's nginx and devpi-server by their pids; the mirror that was stopped, or None."""
    current = running(home)
    if current is None:
        return None
    _terminate(current.nginx_pid, b"nginx", timeout)
    _terminate(current.pid, b"devpi-server", timeout)
    ServerFiles(home).state.unlink(missing_ok=True)
    return current


def _terminate(pid: int, program: bytes, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, program) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _alive(pid, program):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (started in this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_replicated(primary_url: str, replica_url: str, timeout: float = 60.0) -> None:
    """Wait until the replica has every change the primary had when this was called."""
    target = Devpi(primary_url).serial()
    replica = Devpi(replica_url)
    deadline = time.monotonic() + timeout
    while replica.serial() < target:
        if time.monotonic() > deadline:
            raise MirrorError(f"replica {replica_url} is at serial {replica.serial()}, its primary "
                              f"{primary_url} at {target}, after {timeout:.0f}s")
        time.sleep(0.2)


def wait(home: Home, procs: list[subprocess.Popen[bytes]]) -> int:
    """Keep a foreground mirror running until one of its processes exits or Ctrl-C; then stop it."""
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return next(p.returncode for p in procs if p.returncode is not None)
    except KeyboardInterrupt:
        raise
    finally:
        stop(home)
        ServerFiles(home).state.unlink(missing_ok=True)

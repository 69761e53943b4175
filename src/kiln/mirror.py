"""The devpi mirror: server lifecycle, kiln's indexes, publishing wheels, what is already there.

One devpi-server per kiln home, its SQLite storage under ``<home>/devpi``. kiln talks to it
only through its HTTP API (JSON) and uploads with ``uv publish``; it never touches the
server's files. Index layout:

- ``root/pypi``: devpi's mirror of the upstream index (``--upstream`` sets its mirror_url)
- ``kiln/main``: wheels that need no torch; bases ``root/pypi``
- ``kiln/<variant>``: bases ``kiln/main``, ``root/pypi`` and, where the default index lacks
  that build of torch, a mirror of the PyTorch index (e.g. ``root/pytorch-cu128``)

Every kiln index is non-volatile with an empty ``mirror_whitelist``: once kiln serves a
project, devpi hides the upstream releases of that project (its sdist above all), so an
installer never silently falls back to a source build.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from kiln.errors import ConfigError, HostError, MirrorError
from kiln.home import Home
from kiln.matrix import MAIN, Variant
from kiln.source import sha256_of
from kiln.toolchains import PYPI, Toolchains

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3141
USER = "kiln"
PYPI_INDEX = "root/pypi"
MAIN_INDEX = f"{USER}/{MAIN}"
READY_TIMEOUT_S = 120.0


def index_name(variant: str) -> str:
    """``cu130-torch2.14`` -> ``kiln/cu130-torch2.14``."""
    return f"{USER}/{variant}"


def simple_url(mirror_url: str, variant: str) -> str:
    """The index URL installers use for a variant."""
    return f"{mirror_url.rstrip('/')}/{index_name(variant)}/+simple/"


def variant_of_wheel(filename: str) -> Variant:
    """The variant a finished wheel belongs to, from its local version label."""
    try:
        _, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise MirrorError(f"{filename}: not a wheel filename ({exc})") from None
    try:
        return Variant.from_label(version.local)
    except ConfigError as exc:
        raise MirrorError(f"{filename}: local label +{version.local} is no kiln variant: {exc.message}") from None


# ----------------------------------------------------------------------------- files in the home


@dataclass(frozen=True)
class ServerFiles:
    """Where one kiln home keeps its devpi-server: state, secrets, pid and log."""

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
        """The running server: pid and URL, removed when it stops."""
        return self.root / "server.json"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def initialized(self) -> bool:
        return (self.serverdir / ".nodeinfo").exists()


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


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()


def root_credentials(home: Home) -> Credentials:
    return Credentials("root", _secret_file(ServerFiles(home).root_password, make=False))


def upload_credentials(home: Home) -> Credentials:
    """Who uploads: KILN_MIRROR_USER/KILN_MIRROR_PASSWORD, else user kiln from the home."""
    password = os.environ.get("KILN_MIRROR_PASSWORD")
    if password:
        return Credentials(os.environ.get("KILN_MIRROR_USER", USER), password)
    return Credentials(USER, _secret_file(ServerFiles(home).kiln_password, make=False))


# ----------------------------------------------------------------------------- the HTTP API


@dataclass(frozen=True)
class IndexConfig:
    """The settings kiln keeps on one devpi index."""

    name: str
    type: str = "stage"
    bases: tuple[str, ...] = ()
    mirror_url: str | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"type": self.type, "volatile": False}
        if self.type == "stage":
            data.update(bases=list(self.bases), mirror_whitelist=[], acl_upload=[USER])
        if self.mirror_url:
            data["mirror_url"] = self.mirror_url
        return data


@dataclass(frozen=True)
class ReleaseFile:
    filename: str
    sha256: str
    url: str


class Devpi:
    """A devpi-server's JSON API."""

    def __init__(self, url: str, auth: Credentials | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.timeout = timeout

    def request(self, method: str, path: str, data: object | None = None) -> dict[str, object] | None:
        """The decoded JSON answer; None for 404."""
        headers = {"Accept": "application/json"}
        body = None
        if data is not None:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
        if self.auth:
            headers["Authorization"] = self.auth.header()
        req = urllib.request.Request(f"{self.url}/{path.lstrip('/')}", data=body, headers=headers,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = _error_message(exc.read())
            raise MirrorError(f"{method} {self.url}/{path.lstrip('/')}: HTTP {exc.code} {detail}".rstrip()) from None
        except (urllib.error.URLError, OSError) as exc:
            raise MirrorError(f"{self.url}: unreachable ({getattr(exc, 'reason', exc)})") from None
        return json.loads(raw) if raw else {}

    def ping(self) -> bool:
        try:
            return self.request("GET", "+api") is not None
        except MirrorError:
            return False

    def index(self, name: str) -> dict[str, object] | None:
        """An index's config, without the project list (a mirror's list is huge)."""
        res = self.request("GET", f"{name}?no_projects=")
        return res["result"] if res else None  # type: ignore[return-value]

    def ensure_user(self, user: str, password: str) -> None:
        if self.request("GET", user) is None:
            self.request("PUT", user, {"password": password})

    def ensure_index(self, config: IndexConfig) -> bool:
        """Create the index or bring its settings to ``config``; True when anything changed."""
        want = config.to_json()
        have = self.index(config.name)
        if have is None:
            self.request("PUT", config.name, want)
            return True
        if have.get("type") != config.type:
            raise MirrorError(f"{self.url}/{config.name} is a {have.get('type')} index, kiln expects a {config.type}")
        if all(have.get(k) == v for k, v in want.items()):
            return False
        self.request("PATCH", config.name, {**have, **want})
        return True

    def files(self, index: str) -> dict[str, ReleaseFile]:
        """The release files uploaded to ``index`` itself (not its bases), by filename."""
        res = self.request("GET", index)
        if res is None:
            return {}
        result: dict[str, object] = res["result"]  # type: ignore[assignment]
        if result.get("type") != "stage":
            return {}
        out: dict[str, ReleaseFile] = {}
        for project in result.get("projects", []):  # type: ignore[attr-defined]
            proj = self.request("GET", f"{index}/{canonicalize_name(project)}?ignore_bases")
            for verdata in ((proj or {}).get("result") or {}).values():  # type: ignore[attr-defined]
                for link in verdata.get("+links", []):
                    if link.get("rel") != "releasefile":
                        continue
                    href = link["href"]
                    if f"/{index}/+f/" not in urllib.parse.urlparse(href).path:
                        continue
                    name = urllib.parse.unquote(href.rsplit("/", 1)[-1])
                    sha = (link.get("hashes") or {}).get("sha256") or link.get("hash_spec", "").partition("=")[2]
                    out[name] = ReleaseFile(name, sha, href)
        return out


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("message", ""))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace").strip().splitlines()[0] if raw.strip() else ""


# ----------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Running:
    """A devpi-server started by kiln for a home."""

    pid: int
    url: str


def _devpi_exe(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        raise HostError(f"{name} not found: install kiln with its dependencies (./dev does)")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child, or a pid reused by another program, is not our server
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return b"devpi-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def running(home: Home) -> Running | None:
    """The server this home started, when it is still running."""
    files = ServerFiles(home)
    try:
        state = json.loads(files.state.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state["pid"])):
        files.state.unlink(missing_ok=True)
        return None
    return Running(pid=int(state["pid"]), url=str(state["url"]))


def init_server(home: Home) -> None:
    """devpi-init with a generated root password, once per home; the secret file too."""
    files = ServerFiles(home)
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    _secret_file(files.kiln_password)
    password = _secret_file(files.root_password)
    if not files.secretfile.exists():
        _run([_devpi_exe("devpi-gen-secret"), "--secretfile", str(files.secretfile)], "devpi-gen-secret")
    if not files.initialized:
        _run([_devpi_exe("devpi-init"), "--serverdir", str(files.serverdir), f"--root-passwd={password}"],
             "devpi-init")


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip() or "?").splitlines()[-1]
        raise MirrorError(f"{what} failed: {last}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def start(home: Home, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          background: bool = True) -> tuple[Running, subprocess.Popen[bytes] | None]:
    """Start the home's devpi-server (or reuse the one running on the same address).

    Returns the server and, when this call started it, its process.
    """
    url = url_for(host, port)
    current = running(home)
    if current:
        if current.url != url:
            raise MirrorError(f"this home's mirror already runs at {current.url} (pid {current.pid}); "
                              f"`kiln stop --home {home.root}` first")
        return current, None
    init_server(home)
    files = ServerFiles(home)
    if not _port_free(host, port):
        raise MirrorError(f"{host}:{port} is in use by another program; pick another --port")
    cmd = [_devpi_exe("devpi-server"), "--serverdir", str(files.serverdir), "--secretfile",
           str(files.secretfile), "--restrict-modify", "root", "--host", host, "--port", str(port)]
    log = files.log.open("ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=background)
    log.close()
    files.state.write_text(json.dumps({"pid": proc.pid, "url": url}))
    server = Running(pid=proc.pid, url=url)
    try:
        _wait_ready(home, proc, url)
    except BaseException:  # not ready, or Ctrl-C while waiting: leave nothing running
        stop(home)
        raise
    return server, proc


def _wait_ready(home: Home, proc: subprocess.Popen[bytes], url: str) -> None:
    files = ServerFiles(home)
    api = Devpi(url, timeout=5)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not api.ping():
        if proc.poll() is not None:
            raise MirrorError(f"devpi-server exited {proc.returncode}: {_last_line(files.log)} (log: {files.log})")
        if time.monotonic() > deadline:
            raise MirrorError(f"devpi-server did not answer on {url} within {READY_TIMEOUT_S:.0f}s (log: {files.log})")
        time.sleep(0.2)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "?"
    return lines[-1] if lines else "?"


def stop(home: Home, timeout: float = 30.0) -> Running | None:
    """Stop the home's server by its pid; the server that was stopped, or None."""
    current = running(home)
    files = ServerFiles(home)
    if current is None:
        return None
    try:
        os.kill(current.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(current.pid) and time.monotonic() < deadline:
            _reap(current.pid)
            time.sleep(0.1)
        if _alive(current.pid):
            os.kill(current.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(current.pid)
    files.state.unlink(missing_ok=True)
    return current


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child (started in this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ----------------------------------------------------------------------------- the indexes


@dataclass
class Layout:
    """The indexes kiln keeps on the mirror, and what it had to leave out."""

    indexes: list[IndexConfig] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def layout(variants: list[Variant], toolchains: Toolchains | None) -> Layout:
    """kiln/main, one kiln/<variant> per variant, and the PyTorch mirrors they need."""
    out = Layout()
    mirrors: dict[str, IndexConfig] = {}
    variant_indexes = [IndexConfig(MAIN_INDEX, bases=(PYPI_INDEX,))]
    for v in sorted(set(variants), key=str):
        if v.torch is None:
            continue
        bases = [MAIN_INDEX, PYPI_INDEX]
        if toolchains is not None and v.cuda is not None and v.torch in toolchains.torch:
            source = toolchains.torch[v.torch].builds.get(v.cuda, PYPI)
            if source != PYPI:
                url = toolchains.index_url(v.torch, v.cuda)
                build = "cpu" if v.cuda == "cpu" else v.accelerator
                if url:
                    name = f"root/{source}-{build}"
                    mirrors[name] = IndexConfig(name, type="mirror", mirror_url=url.rstrip("/") + "/")
                    bases.append(name)
                else:
                    env = toolchains.indexes[source].url_env
                    out.notes.append(f"{index_name(v.name)}: torch {v.torch} {build} comes from index "
                                     f"{source!r}; set {env} to mirror it")
        variant_indexes.append(IndexConfig(index_name(v.name), bases=tuple(bases)))
    out.indexes = [*mirrors.values(), *variant_indexes]
    return out


@dataclass
class Served:
    """What `kiln serve` set up."""

    url: str
    pid: int
    started: bool
    indexes: list[str]
    changed: list[str]
    notes: list[str]


def configure(home: Home, url: str, variants: list[Variant], toolchains: Toolchains | None,
              upstream: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """Make the mirror's users and indexes what kiln expects; idempotent.

    Returns (index names, the ones created or changed, notes).
    """
    files = ServerFiles(home)
    api = Devpi(url, root_credentials(home))
    changed = []
    if upstream:
        if api.ensure_index(IndexConfig(PYPI_INDEX, type="mirror", mirror_url=upstream)):
            changed.append(PYPI_INDEX)
    api.ensure_user(USER, _secret_file(files.kiln_password))
    plan = layout(variants, toolchains)
    for config in plan.indexes:
        if api.ensure_index(config):
            changed.append(config.name)
    return [c.name for c in plan.indexes], changed, plan.notes


def serve(home: Home, host: str, port: int, variants: list[Variant], toolchains: Toolchains | None,
          upstream: str | None = None, background: bool = True) -> tuple[Served, subprocess.Popen[bytes] | None]:
    """Start (or reuse) the server and configure it. The process is returned when started here."""
    server, proc = start(home, host, port, background)
    try:
        names, changed, notes = configure(home, server.url, variants, toolchains, upstream)
    except BaseException:
        if proc is not None:
            stop(home)
        raise
    return Served(server.url, server.pid, proc is not None, names, changed, notes), proc


def wait(home: Home, proc: subprocess.Popen[bytes]) -> int:
    """Keep a foreground server running until it exits or Ctrl-C; then stop it."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(home)
        raise
    finally:
        ServerFiles(home).state.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class Published:
    """One wheel's outcome: uploaded, or already there with the same bytes."""

    wheel: str
    index: str
    sha256: str
    uploaded: bool


def mirror_url(home: Home, mirror: str | None) -> str:
    """``--mirror`` when given, else the home's running server."""
    if mirror:
        return mirror.rstrip("/")
    current = running(home)
    if current is None:
        raise MirrorError(f"no mirror running for home {home.root}: start one with `kiln serve` "
                          "or pass --mirror URL")
    return current.url


def publish(wheels: list[Path], url: str, home: Home) -> list[Published]:
    """Upload wheels to the index of their variant; refuse to replace any published file.

    Every wheel is checked before anything is uploaded: same filename and same sha256 is
    skipped; same filename and other bytes is refused (MirrorError) and nothing changes.
    """
    creds = upload_credentials(home)
    api = Devpi(url, creds)
    by_index: dict[str, list[tuple[Path, str]]] = {}
    for wheel in sorted(wheels):
        by_index.setdefault(index_name(variant_of_wheel(wheel.name).name), []).append((wheel, sha256_of(wheel)))
    results: list[Published] = []
    todo: dict[str, list[Path]] = {}
    for index, items in by_index.items():
        if api.index(index) is None:
            _create_variant_index(home, url, index)
        have = api.files(index)
        for wheel, sha in items:
            there = have.get(wheel.name)
            if there is None:
                todo.setdefault(index, []).append(wheel)
            elif there.sha256 == sha:
                results.append(Published(wheel.name, index, sha, uploaded=False))
            else:
                raise MirrorError(f"{wheel.name} is already on {url}/{index} with sha256 {there.sha256[:16]}, "
                                  f"this file has {sha[:16]}: published files are immutable; bump the "
                                  "version or rebuild the same bytes")
    for index, paths in todo.items():
        _upload(paths, f"{url}/{index}/", creds)
        have = api.files(index)
        for wheel in paths:
            sha = sha256_of(wheel)
            there = have.get(wheel.name)
            if there is None or there.sha256 != sha:
                got = there.sha256[:16] if there else "nothing"
                raise MirrorError(f"{wheel.name}: {url}/{index} reports {got} after upload, expected {sha[:16]}")
            results.append(Published(wheel.name, index, sha, uploaded=True))
    return results


def _create_variant_index(home: Home, url: str, index: str) -> None:
    """A variant index missing on the home's own server is created; elsewhere it is an error."""
    current = running(home)
    if current is None or current.url != url or not ServerFiles(home).root_password.exists():
        raise MirrorError(f"{url}/{index} does not exist: create it with `kiln serve --recipes ...` on the mirror")
    variant = Variant.parse(index.split("/", 1)[1])
    api = Devpi(url, root_credentials(home))
    for config in layout([variant], None).indexes:
        api.ensure_index(config)


def _upload(wheels: list[Path], publish_url: str, creds: Credentials) -> None:
    from kiln.backends.local import uv

    env = dict(os.environ, UV_PUBLISH_USERNAME=creds.user, UV_PUBLISH_PASSWORD=creds.password)
    env.pop("UV_PUBLISH_TOKEN", None)
    res = subprocess.run([uv(), "publish", "--no-progress", "--publish-url", publish_url,
                          *[str(w) for w in wheels]], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit {res.returncode}"
        raise MirrorError(f"uv publish to {publish_url} failed: {reason}")


# ----------------------------------------------------------------------------- what is there


def published(url: str, variants: list[str]) -> dict[str, list[str]]:
    """variant -> the wheel filenames uploaded to kiln/<variant> on the mirror at ``url``."""
    api = Devpi(url)
    return {v: sorted(api.files(index_name(v))) for v in variants}


def published_for(args: Namespace, variants: list[str]) -> dict[str, list[str]] | None:
    """What `kiln plan` shows as published: from --mirror, or the home's running server; None
    when there is neither."""
    mirror = getattr(args, "mirror", None)
    if mirror:
        return published(mirror, variants)
    current = running(Home(Path(args.home)))
    if current is None:
        return None
    return published(current.url, variants)

"""How many bytes a resolver pulls from the mirror, with and without kiln: PEP 658 at work.

Starts two mirrors side by side, each nginx in front of a fresh devpi-server in a temp dir on
free 127.0.0.1 ports, and publishes the same wheels to both:

  before: bare devpi. devpi-server of the same version from a temp venv holding devpi-server
          alone (so kiln's plugin is not loaded), without --enable-core-metadata, behind an nginx
          that only proxies (no release files from disk, no forced byte ranges): no
          core-metadata, no Range but what devpi itself answers.
  after:  kiln's mirror as `kiln serve` starts it (kiln.mirror.serve): nginx serving release
          files from devpi's store, devpi with core metadata and kiln's plugin.

Then it runs, in this order and each with an empty uv cache, against each mirror
  `uv pip compile` of the top-level projects (--no-build, --python-version X.Y), and
  `uv lock` of a small project that depends on them (with this interpreter),
sums $body_bytes_sent of the requests each command made in that nginx's access log, and prints
it as a share of the resolved wheels' bytes (for each pin, the wheel uv would install for this
Python and platform: the published file, or for a project from the upstream the size kiln's
mirror lists), with after/before. The goal: after <= 1% of the wheel bytes. Column 206 counts
byte-range answers; -v lists every request.

The wheels: the CUDA variant with the most bytes in a kiln home's wheelhouse (--home, default
$KILN_HOME or ./.kiln; --wheels DIR for another directory) with kiln/main's wheels, else its
largest wheels on kiln/main; the --count largest projects are asked for. With none usable, four
synthetic wheels (20-50 MB of incompressible payload each, Requires-Dist on each other) so the
benchmark always runs (--synthetic forces them).

Upstream: with --upstream URL (default $KILN_UPSTREAM_URL) both mirrors' root/pypi mirror that
index and kiln's indexes have root/pypi as a base, as `kiln serve --upstream` sets up; `uv lock`
then finds on each mirror the upstream files that `uv pip compile` made devpi fetch. Without it
the indexes have no root/pypi base: only what is published resolves (a project whose
requirements are not all published is not asked for), and neither mirror reaches anything
outside this machine. The only other outside access is installing devpi-server into the temp
venv, with uv's own configuration (from uv's cache when it has it).

    python benchmarks/metadata_bytes.py [--home DIR | --wheels DIR] [--count N] [--upstream URL] [-v]
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # kiln_testing: see its __init__

from kiln_testing.index import SIMPLE_JSON
from kiln_testing.tools import free_port, uv
from kiln_testing.wheels import make_payload_wheel

from kiln import mirror
from kiln.errors import KilnError
from kiln.home import Home, default_home
from kiln.matrix import MAIN, Variant
from kiln.mirror.api import Credentials, Devpi
from kiln.mirror.deploy import (
    ACCESS_LOG_FORMAT,
    Site,
    nginx_conf,
    nginx_exe,
)
from kiln.mirror.layout import (
    MAIN_INDEX,
    PYPI_INDEX,
    USER,
    IndexConfig,
    index_name,
    variant_of_wheel,
)
from kiln.mirror.server import nginx_user, root_credentials, upload_credentials, wait_ready

GOAL = 0.01  # after: at most 1% of the wheel bytes
LOG_LINE = re.compile(r'^\S+ \[[^\]]*\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<sent>\d+) \S+ "[^"]*"$')
# Synthetic stand-ins for a CUDA stack: (project, version, MB of payload, Requires-Dist).
SYNTHETIC = [
    ("kilnbench-cudart", "12.8.90", 50, []),
    ("kilnbench-kernels", "2.3.1", 40, ["kilnbench-cudart>=12.8"]),
    ("kilnbench-attn", "2.8.3", 30, ["kilnbench-kernels>=2.3", "kilnbench-cudart>=12.8"]),
    ("kilnbench-ssm", "1.7.0", 20, ["kilnbench-attn>=2.8", "kilnbench-kernels>=2"]),
]
SYNTHETIC_TOP = ["kilnbench-ssm", "kilnbench-attn"]
# uv reads these besides its command line; the commands must read the mirror alone
UV_INDEX_ENV = ("UV_INDEX", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS",
                "UV_NO_INDEX", "UV_CONFIG_FILE", "UV_OFFLINE", "UV_NO_CACHE")


class BenchError(Exception):
    """A step failed: the message says which, the benchmark exits 1."""


def run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        stdin: str | None = None) -> str:
    """stdout of ``cmd``; BenchError with the end of stderr when it fails."""
    res = subprocess.run(cmd, input=stdin, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise BenchError(f"{what} failed (exit {res.returncode}):\n{res.stderr.strip()[-2000:]}")
    return res.stdout


# ----------------------------------------------------------------------------- the wheels


@dataclass(frozen=True)
class Target:
    """The Python the commands resolve for, on this platform."""

    python: str  # "3.11"

    @cached_property
    def ranks(self) -> dict[Tag, int]:
        """Every wheel tag this Python installs, to its preference (lower is better)."""
        version = tuple(int(x) for x in self.python.split("."))
        ordered = [*cpython_tags(python_version=version), *compatible_tags(python_version=version)]
        return {t: i for i, t in reversed(list(enumerate(ordered)))}

    def rank(self, filename: str) -> int | None:
        """The preference of a wheel for this Python; None when it cannot install it."""
        found = [self.ranks[t] for t in parse_wheel_filename(filename)[3] if t in self.ranks]
        return min(found) if found else None

    def marker_env(self) -> dict[str, str]:
        env = {k: str(v) for k, v in default_environment().items()}
        return {**env, "python_version": self.python, "python_full_version": f"{self.python}.0", "extra": ""}


@dataclass
class Content:
    """What both mirrors publish and what the commands ask for."""

    wheels: list[Path]
    top: list[str]
    variant: str  # the commands read kiln/<variant>
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def index(self) -> str:
        return index_name(self.variant)

    def by_index(self) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        for w in self.wheels:
            out.setdefault(index_name(variant_of_wheel(w.name).name), []).append(w)
        return out


def _requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        if name is None:
            return []
        meta = email.parser.Parser().parsestr(zf.read(name).decode(errors="replace"), headersonly=True)
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        try:
            out.append(Requirement(line))
        except InvalidRequirement:
            continue
    return out


def _unmet(project: NormalizedName, versions: dict[NormalizedName, dict[Version, Path]], env: dict[str, str],
           seen: set[NormalizedName] | None = None) -> set[str]:
    """The requirements in ``project``'s closure (newest versions first, as a resolver starts) that
    no published wheel meets."""
    seen = seen if seen is not None else set()
    if project in seen:
        return set()
    seen.add(project)
    newest = max(versions[project])
    missing: set[str] = set()
    for req in _requires(versions[project][newest]):
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        meets = [v for v in versions.get(name, {}) if req.specifier.contains(v, prereleases=True)]
        if not meets:
            missing.add(str(req))
            continue
        missing |= _unmet(name, {**versions, name: {v: versions[name][v] for v in meets}}, env, seen)
    return missing


def from_wheelhouse(wheelhouse: Path, count: int, target: Target, upstream: str | None) -> Content | None:
    """The CUDA variant of the wheelhouse with the most bytes (with kiln/main under it), else its
    largest wheels; None when it has no wheel this Python installs."""
    notes: list[str] = []
    by_variant: dict[str, list[Path]] = {}
    for wheel in sorted(wheelhouse.glob("*.whl")):
        try:
            usable = target.rank(wheel.name) is not None
            variant = variant_of_wheel(wheel.name).name
        except (InvalidWheelFilename, KilnError):
            notes.append(f"{wheel.name}: left out (no kiln variant)")
            continue
        if usable:
            by_variant.setdefault(variant, []).append(wheel)
    cuda = {v: ws for v, ws in by_variant.items() if Variant.parse(v).cuda_major}
    if cuda:
        variant = max(cuda, key=lambda v: sum(w.stat().st_size for w in cuda[v]))
        asked = cuda[variant]
    elif MAIN in by_variant:
        variant, asked = MAIN, by_variant[MAIN]
    else:
        return None
    wheels = sorted({*by_variant.get(MAIN, []), *asked})
    largest: dict[NormalizedName, int] = {}
    for w in asked:
        name = parse_wheel_filename(w.name)[0]
        largest[name] = max(largest.get(name, 0), w.stat().st_size)
    top = sorted(largest, key=lambda n: -largest[n])
    if upstream is None:  # nothing outside the published wheels resolves
        versions: dict[NormalizedName, dict[Version, Path]] = {}
        for w in wheels:
            name, version, _, _ = parse_wheel_filename(w.name)
            versions.setdefault(name, {})[version] = w
        env = target.marker_env()
        kept = []
        for name in top:
            unmet = _unmet(name, versions, env)
            if unmet:
                notes.append(f"{name}: left out, needs {', '.join(sorted(unmet))} (not published; pass --upstream)")
            else:
                kept.append(name)
        top = kept
    if not top:
        return None
    return Content(wheels, [str(n) for n in top[:count]], variant, str(wheelhouse), notes)


def synthetic_tag(target: Target) -> str:
    """A CUDA extension's tag (cpXY manylinux_2_28) where this platform installs it, else py3-none-any."""
    cp = "cp" + target.python.replace(".", "")
    for tag in target.ranks:
        if tag.interpreter == cp and tag.abi == cp and tag.platform.startswith("manylinux_2_28_"):
            return str(tag)
    return "py3-none-any"


def synthetic(dest: Path, target: Target) -> Content:
    dest.mkdir(parents=True, exist_ok=True)
    tag = synthetic_tag(target)
    wheels = [make_payload_wheel(dest, p, v, mb, reqs, tag) for p, v, mb, reqs in SYNTHETIC]
    return Content(wheels, SYNTHETIC_TOP, MAIN, f"synthetic ({len(wheels)} wheels, {tag})")


# ----------------------------------------------------------------------------- the two mirrors


def index_configs(variant: str, upstream: str | None) -> list[IndexConfig]:
    """kiln's indexes as `kiln serve` lays them out; without an upstream, without root/pypi."""
    pypi = (PYPI_INDEX,) if upstream else ()
    configs = [IndexConfig(MAIN_INDEX, bases=pypi)]
    if variant != MAIN:
        configs.append(IndexConfig(index_name(variant), bases=(MAIN_INDEX, *pypi)))
    return configs


@dataclass
class Setup:
    """One mirror: nginx's URL and access log, devpi's private URL."""

    name: str
    url: str
    devpi_url: str
    access_log: Path
    plugins: str


def _plugins(python: str) -> list[str]:
    """The distributions that register devpi-server plugins in ``python``'s environment."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps(sorted({e.dist.name for e in m.entry_points(group='devpi_server') if e.dist})))")
    return list(json.loads(run([python, "-c", code], "listing devpi-server plugins")))


class BareMirror:
    """devpi-server from a venv of its own (no kiln plugin), without core metadata, behind a
    proxy-only nginx."""

    def __init__(self, root: Path, devpi_version: str) -> None:
        self.root = root
        self.devpi_version = devpi_version
        self.venv = root / "venv"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.password = secrets.token_urlsafe(18)
        self.upload_password = secrets.token_urlsafe(18)
        self.port = free_port()
        self.site = Site(listen=f"127.0.0.1:{self.port}", devpi_port=free_port(), serverdir=root / "server",
                         secretfile=root / "secret")

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def install(self) -> str:
        """devpi-server alone in a fresh venv; the plugins found there, for the report."""
        run([uv(), "venv", "--quiet", "--python", sys.executable, str(self.venv)], "uv venv")
        cmd = [uv(), "pip", "install", "--quiet", "--python", str(self.bin / "python"),
               f"devpi-server=={self.devpi_version}"]
        try:
            run(cmd, f"installing devpi-server {self.devpi_version}")
        except BenchError:  # no network: what uv's cache has
            run([*cmd, "--offline"], f"installing devpi-server {self.devpi_version} (offline)")
        plugins = _plugins(str(self.bin / "python"))
        if any(canonicalize_name(p).startswith("kiln") for p in plugins):
            raise BenchError(f"{self.venv}: kiln's devpi plugin is installed there ({plugins})")
        return ", ".join(plugins)

    def start(self) -> None:
        """devpi-init and both processes, not waiting for them (see ``wait``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        options = {k: v for k, v in self.site.devpi_options().items() if k != "enable-core-metadata"}
        config = self.root / "devpi.yaml"
        config.write_text("devpi-server:\n" + "".join(f"  {k}: {v}\n" for k, v in options.items()))
        run([str(self.bin / "devpi-gen-secret"), "--secretfile", str(self.site.secretfile)], "devpi-gen-secret")
        run([str(self.bin / "devpi-init"), "--configfile", str(config)], "devpi-init",
            env={**os.environ, "DEVPISERVER_ROOT_PASSWD": self.password})
        nginx_dir = self.root / "nginx"
        (nginx_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (nginx_dir / "nginx.conf").write_text(nginx_conf(self.site, user=nginx_user(), static_files=False))
        with (self.root / "server.log").open("ab") as log:
            self.procs.append(subprocess.Popen([str(self.bin / "devpi-server"), "--configfile", str(config)],
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
            self.procs.append(subprocess.Popen([nginx_exe(), "-p", str(nginx_dir), "-c", "nginx.conf",
                                                "-e", "error.log", "-g", "daemon off;"],
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def wait(self, plugins: str) -> Setup:
        log = self.root / "server.log"
        devpi_url = f"http://127.0.0.1:{self.site.devpi_port}"
        wait_ready(self.procs[0], devpi_url, "bare devpi-server", log)
        url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.procs[1], url, "bare nginx", self.root / "nginx" / "error.log")
        return Setup("before", url, devpi_url, self.root / "nginx" / "access.log", plugins)

    def configure(self, setup: Setup, content: Content, upstream: str | None) -> None:
        api = Devpi(setup.url, Credentials("root", self.password))
        if upstream:
            have = api.index(PYPI_INDEX) or {}
            api.request("PATCH", PYPI_INDEX, {**have, "mirror_url": upstream})
        api.ensure_user(USER, self.upload_password)
        for config in index_configs(content.variant, upstream):
            api.ensure_index(config)
        upload(setup.url, content.by_index(), Credentials(USER, self.upload_password), "the bare mirror")

    def stop(self) -> None:
        for proc in reversed(self.procs):  # nginx first, then devpi
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def upload(url: str, by_index: dict[str, list[Path]], creds: Credentials, what: str) -> None:
    """``uv publish`` of each index's wheels to the devpi at ``url`` as ``creds`` (through uv's
    environment, never argv)."""
    env = dict(os.environ, UV_PUBLISH_USERNAME=creds.user, UV_PUBLISH_PASSWORD=creds.password)
    env.pop("UV_PUBLISH_TOKEN", None)
    for index, wheels in by_index.items():
        run([uv(), "publish", "--no-progress", "--publish-url", f"{url}/{index}/", *map(str, wheels)],
            f"uv publish to {what}'s {index}", env=env)


def start_kiln(home: Home, content: Content, upstream: str | None) -> Setup:
    """kiln's mirror, as `kiln serve` starts it, with the wheels published by kiln."""
    variants = [] if content.variant == MAIN else [Variant.parse(content.variant)]
    served, _ = mirror.serve(home, variants, None,
                             mirror.ServeOptions(host="127.0.0.1", port=free_port(), upstream=upstream))
    api = Devpi(served.url, root_credentials(home))
    for config in index_configs(content.variant, upstream):
        api.ensure_index(config)  # without an upstream: no root/pypi base
    # the corpus's wheels are not kiln's own builds (`kiln publish` refuses those): kiln's
    # upload user puts them on the index of their variant, as for the bare mirror
    upload(served.url, content.by_index(), upload_credentials(home), "kiln's mirror")
    current = mirror.running(home)
    if current is None:
        raise BenchError("kiln's mirror stopped after publishing")
    plugins = ", ".join(_plugins(sys.executable))
    return Setup("after", served.url, current.devpi_url, mirror.ServerFiles(home).access_log, plugins)


# ----------------------------------------------------------------------------- measuring


Request = tuple[str, int, int]  # nginx's "$request", $status, $body_bytes_sent


@dataclass
class Row:
    """One command against one mirror: what nginx sent, and what uv resolved."""

    setup: str
    command: str
    requests: list[Request]
    pins: list[tuple[str, str]]
    wheel_bytes: int = 0
    unsized: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(r[2] for r in self.requests)

    @property
    def ranged(self) -> int:
        return sum(1 for r in self.requests if r[1] == 206)

    @property
    def share(self) -> float:
        return self.sent / self.wheel_bytes if self.wheel_bytes else float("nan")

    def size_with(self, sizes: Sizes) -> None:
        for name, version in self.pins:
            size = sizes.of(name, version)
            if size is None:
                self.unsized.append(f"{name}=={version}")
            else:
                self.wheel_bytes += size


def log_since(path: Path, offset: int) -> list[Request]:
    """(request, status, body bytes sent) of each request in nginx's access log past ``offset``."""
    time.sleep(0.3)  # nginx logs a request once its last byte is out; let that line land
    with path.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for line in lines:
        m = LOG_LINE.match(line)
        if m is None:
            raise BenchError(f"{path}: a line not in kiln's format ({ACCESS_LOG_FORMAT}): {line[:200]}")
        out.append((m.group("request"), int(m.group("status")), int(m.group("sent"))))
    return out


def uv_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UV_INDEX_ENV}
    env.update(UV_CACHE_DIR=str(cache), UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    return env


def pins_of_compile(out: str) -> list[tuple[str, str]]:
    pins = []
    for line in out.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if m:
            pins.append((m.group(1), m.group(2)))
    return pins


def pins_of_lock(lock: Path) -> list[tuple[str, str]]:
    data = tomllib.loads(lock.read_text())
    return [(p["name"], p["version"]) for p in data.get("package", [])
            if "registry" in p.get("source", {}) and "version" in p]


class Sizes:
    """The bytes of the wheel uv would install for each pin: a published file, else (a package
    from the upstream) the size kiln's mirror lists for it."""

    def __init__(self, content: Content, target: Target, after: Setup) -> None:
        self.target = target
        self.after = after
        self.index = content.index
        self.files: dict[tuple[NormalizedName, Version], list[tuple[str, int]]] = {}
        for w in content.wheels:
            name, version, _, _ = parse_wheel_filename(w.name)
            self.files.setdefault((name, version), []).append((w.name, w.stat().st_size))

    def of(self, name: str, version: str) -> int | None:
        key = (canonicalize_name(name), Version(version))
        if key not in self.files:
            self.files[key] = self._listed(*key)
        ranked = [(r, size) for fn, size in self.files[key] if (r := self.target.rank(fn)) is not None]
        return min(ranked)[1] if ranked else None

    def _listed(self, name: NormalizedName, version: Version) -> list[tuple[str, int]]:
        req = urllib.request.Request(f"{self.after.devpi_url}/{self.index}/+simple/{name}/",
                                     headers={"Accept": SIMPLE_JSON})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                files = json.load(resp).get("files", [])
        except (urllib.error.URLError, OSError, ValueError):
            return []
        out = []
        for f in files:
            try:
                if (f["filename"].endswith(".whl") and isinstance(f.get("size"), int)
                        and parse_wheel_filename(f["filename"])[1] == version):
                    out.append((f["filename"], f["size"]))
            except InvalidWheelFilename:
                continue
        return out


def measure(setup: Setup, command: str, content: Content, target: Target, work: Path) -> Row:
    """Run ``command`` against ``setup`` with an empty uv cache; the requests nginx logged meanwhile."""
    here = work / f"{setup.name}-{command.replace(' ', '-')}"
    here.mkdir(parents=True)
    env = uv_env(here / "uv-cache")
    index = f"{setup.url}/{content.index}/+simple/"
    offset = setup.access_log.stat().st_size
    what = f"`{command}` against {setup.name} ({index})"
    if command == "uv pip compile":
        out = run([uv(), "pip", "compile", "--no-config", "--no-header", "--no-annotate", "--no-build",
                   "--python", sys.executable, "--python-version", target.python, "--default-index", index, "-"],
                  what, env=env, cwd=here, stdin="\n".join(content.top) + "\n")
        pins = pins_of_compile(out)
    else:
        deps = ", ".join(json.dumps(n) for n in content.top)
        (here / "pyproject.toml").write_text(
            f'[project]\nname = "kiln-metadata-bench"\nversion = "0"\nrequires-python = "=={target.python}.*"\n'
            f"dependencies = [{deps}]\n")
        run([uv(), "lock", "--no-config", "--no-build", "--python", sys.executable, "--default-index", index],
            what, env=env, cwd=here)
        pins = pins_of_lock(here / "uv.lock")
    requests = log_since(setup.access_log, offset)
    if not pins:
        raise BenchError(f"{what} resolved nothing")
    return Row(setup.name, command, requests, pins)


def report(rows: list[Row], verbose: bool) -> None:
    """The table, then after/before and the goal for each command."""
    head = (f"{'setup':<7} {'command':<15} {'requests':>8} {'206':>4} {'bytes sent':>13} {'wheel bytes':>13} "
            f"{'sent/wheels':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.setup:<7} {r.command:<15} {len(r.requests):>8} {r.ranged:>4} {r.sent:>13,} {r.wheel_bytes:>13,} "
              f"{r.share * 100:>10.3f}%")
    print()
    for command in dict.fromkeys(r.command for r in rows):
        before = next(r for r in rows if r.command == command and r.setup == "before")
        after = next(r for r in rows if r.command == command and r.setup == "after")
        verdict = "met" if after.share <= GOAL else "MISSED"
        print(f"{command}: after/before = {after.sent / before.sent * 100:.4f}% of the bytes "
              f"({before.sent / max(after.sent, 1):,.0f}x fewer); after = {after.share * 100:.3f}% of the wheel "
              f"bytes, goal <= {GOAL * 100:g}%: {verdict}")
        for r in (before, after):
            if r.unsized:
                print(f"  {r.setup}: no size known for {', '.join(r.unsized)} (not counted in wheel bytes)")
    if verbose:
        for r in rows:
            print(f"\n{r.setup} {r.command}: resolved {', '.join(f'{n}=={v}' for n, v in r.pins)}")
            for request, status, sent in r.requests:
                print(f"  {status} {sent:>13,}  {request}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=str(default_home()), help="kiln home whose wheelhouse is published")
    p.add_argument("--wheels", help="a directory of wheels to publish instead of the home's wheelhouse")
    p.add_argument("--count", type=int, default=4, help="top-level projects the commands ask for")
    p.add_argument("--upstream", default=os.environ.get("KILN_UPSTREAM_URL"),
                   help="what root/pypi mirrors (default $KILN_UPSTREAM_URL; none: no root/pypi base)")
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="--python-version of `uv pip compile` (uv lock uses this interpreter)")
    p.add_argument("--synthetic", action="store_true", help="publish synthetic wheels even when there are real ones")
    p.add_argument("-v", "--verbose", action="store_true", help="also list each command's requests")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    target = Target(args.python)
    devpi_version = importlib.metadata.version("devpi-server")

    with tempfile.TemporaryDirectory(prefix="kiln-metadata-bench-") as tmp:
        work = Path(tmp)
        bare = BareMirror(work / "before", devpi_version)
        kiln_home = Home(work / "after")
        try:
            wheelhouse = Path(args.wheels) if args.wheels else Home(Path(args.home)).wheelhouse
            content = None if args.synthetic else from_wheelhouse(wheelhouse, args.count, target, args.upstream)
            if content is None:
                content = synthetic(work / "wheels", target)
            for note in content.notes:
                print(f"note: {note}")
            total = sum(w.stat().st_size for w in content.wheels)
            print(f"wheels: {content.source}: {len(content.wheels)} published to {content.index} and below "
                  f"({total:,} bytes); asking for {', '.join(content.top)}")
            print(f"upstream: {args.upstream or 'none (indexes without root/pypi)'}; "
                  f"uv {run([uv(), '--version'], 'uv --version').split()[1]}; Python {target.python}")
            bare_plugins = bare.install()
            bare.start()
            after = start_kiln(kiln_home, content, args.upstream)
            before = bare.wait(bare_plugins)
            bare.configure(before, content, args.upstream)
            print(f"before: {before.url} devpi-server {devpi_version} (plugins from: {before.plugins}), "
                  "no core metadata, nginx proxy only")
            print(f"after:  {after.url} devpi-server {devpi_version} (plugins from: {after.plugins}), "
                  "kiln's mirror")
            print()
            rows = [measure(setup, command, content, target, work)
                    for command in ("uv pip compile", "uv lock") for setup in (before, after)]
            sizes = Sizes(content, target, after)
            for row in rows:
                row.size_with(sizes)
            report(rows, args.verbose)
        except (BenchError, KilnError) as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 1
        finally:
            bare.stop()
            mirror.stop(kiln_home)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

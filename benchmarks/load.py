"""The mirror under load: many `uv pip install --no-cache` clients at once, against kiln's mirror
and against nginx serving the same wheels statically, in one run.

Starts, on free 127.0.0.1 ports (nothing listens beyond loopback):
  static: nginx (kiln's nginx.conf tuning, deploy.nginx_main_conf) serving two simple-index
          trees from disk (PEP 503 HTML, PEP 691 JSON to a client that asks, PEP 658 metadata):
          /all/simple/ (every wheel, what the static clients read) and /upstream/simple/ (the
          upstream's wheels alone, the local upstream of the mirror);
  mirror: kiln's mirror as `kiln serve` starts it (kiln.mirror.serve) in a temp home, its
          root/pypi mirroring /upstream/simple/, with synthetic kiln wheels uploaded by kiln's
          upload user (uv publish) to kiln/main and kiln/cpu-torch2.14. Clients read
          kiln/cpu-torch2.14/+simple/, whose bases are kiln/main and root/pypi.

The wheels: three synthetic kiln wheels (4 MB of incompressible payload; one labeled
+cpu.torch2.14), whose top one requires real upstream projects (rich, requests, pyyaml and their
dependencies, 3 MB; downloaded once into --upstream-wheels, the only access beyond this machine).

Then --clients installs run at once (a bounded thread pool, each install in a fresh --target dir,
`uv pip install --no-cache --no-build --index-url ...`; --rounds installs per client), first
against the static tree, then against the mirror, --repeat times alternating. Before timing, two
installs against each warm it (the mirror fetches the upstream's pages and files into root/pypi
in the first, as the first client of a new release would, and the second finds its pages kept;
--cold skips that). The clients write to
--client-dir, /dev/shm by default, so that the servers are measured rather than this machine's
disk (the clients share its CPUs with the servers all the same). Printed: failures (with each
one's first error line), p50/p95 seconds per install, wheels/s and MB/s of wheels installed over
the phase's wall time, what nginx's access log saw (requests, bytes, answers other than 200/206),
error lines the servers logged meanwhile, and mirror/static. Goal: no failures, and the mirror's
wheels/s at least 80% of static nginx's.

With --torch-sized the upstream is instead a synthetic set shaped like torch's dependencies (see
TORCHLIKE_*: ~1000 wheels on the top project's page, 20 pinned projects), with empty payloads: each
install then resolves over pages the size of torch's, which is what the page store (kiln issue 23)
is for.

    python benchmarks/load.py [--clients 64] [--rounds 1] [--repeat 1] [--cold] [--torch-sized] [--client-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # metadata_bytes, when imported from elsewhere (tests/test_load.py)
sys.path.insert(0, str(HERE.parent / "tests"))  # kiln_testing: see its __init__

from kiln_testing.index import SIMPLE_JSON, StaticIndex
from kiln_testing.tools import free_port, uv
from kiln_testing.wheels import make_payload_wheel
from metadata_bytes import (
    UV_INDEX_ENV,
    BenchError,
    Request,
    Target,
    _requires,
    log_since,
    run,
    synthetic_tag,
    upload,
)

from kiln import mirror
from kiln.errors import KilnError
from kiln.home import Home
from kiln.matrix import Variant
from kiln.mirror.deploy import nginx_exe, nginx_main_conf
from kiln.mirror.server import nginx_user, upload_credentials

GOAL = 0.8  # the mirror's wheels/s over static nginx's
VARIANT = "cpu-torch2.14"
# Synthetic kiln wheels: (project, version, MB of payload, Requires-Dist); the first is asked for.
# "{upstream}" stands for the upstream's top projects.
PUBLISHED = [
    ("kilnload-app", "0.4.0", 1, ["kilnload-kernels>=2.3", "kilnload-runtime>=1", "{upstream}"]),
    ("kilnload-kernels", f"2.3.1+{Variant.parse(VARIANT).label}", 2, ["kilnload-runtime>=1"]),
    ("kilnload-runtime", "1.0.0", 1, []),
]
UPSTREAM_TOP = ["rich", "requests", "pyyaml"]
OK_STATUS = (200, 206, 304)


# ----------------------------------------------------------------------------- the wheels


@dataclass
class Content:
    """What both sides serve, what clients ask for, and what each must end up with."""

    published: list[Path]  # kiln's, published to the mirror
    upstream: list[Path]   # the upstream's, reaching the mirror through root/pypi
    top: list[str]
    expected: dict[NormalizedName, Version] = field(default_factory=dict)

    @property
    def wheels(self) -> list[Path]:
        return [*self.published, *self.upstream]

    def install_bytes(self) -> int:
        """The bytes of the wheels one install downloads."""
        return sum(w.stat().st_size for w in self.wheels
                   if parse_wheel_filename(w.name)[:2] in self.expected.items())


def resolve(wheels: list[Path], top: list[str], target: Target) -> dict[NormalizedName, Version]:
    """The versions an install of ``top`` from ``wheels`` must end with: each requirement (markers
    for this Python, no extras) met by the newest version that satisfies it."""
    versions: dict[NormalizedName, dict[Version, Path]] = {}
    for w in wheels:
        if target.rank(w.name) is not None:
            name, version, _, _ = parse_wheel_filename(w.name)
            versions.setdefault(name, {})[version] = w
    env = target.marker_env()
    out: dict[NormalizedName, Version] = {}
    todo: list[tuple[NormalizedName, SpecifierSet | None]] = [(canonicalize_name(t), None) for t in top]
    while todo:
        name, spec = todo.pop()
        have = versions.get(name, {})
        meets = sorted(v for v in have if spec is None or spec.contains(v, prereleases=True))
        if not meets:
            raise BenchError(f"no wheel of {name} meets {spec or 'any version'}: add it to the upstream wheels")
        if name in out:
            continue
        out[name] = meets[-1]
        for req in _requires(have[meets[-1]]):
            if req.marker is None or req.marker.evaluate(env):
                todo.append((canonicalize_name(req.name), req.specifier))
    return out


def upstream_wheels(cache: Path, top: list[str]) -> list[Path]:
    """``top`` and their dependencies as wheels for this Python, downloaded into ``cache`` once."""
    cache.mkdir(parents=True, exist_ok=True)
    have = {parse_wheel_filename(w.name)[0] for w in cache.glob("*.whl")}
    if not all(canonicalize_name(t) in have for t in top):
        run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary",
             ":all:", "--dest", str(cache), *top], f"downloading {', '.join(top)} into {cache}")
    return sorted(cache.glob("*.whl"))


# A dependency set shaped like torch's, for --torch-sized: a top project with TORCHLIKE_VERSIONS
# releases, each with a wheel per Python and platform (torch's page lists about 1000 files), that
# pins TORCHLIKE_DEPS projects (nvidia-*, sympy, jinja2...), each with TORCHLIKE_DEP_VERSIONS
# releases for three platforms. Payloads are empty: resolving, not downloading, is what it loads.
TORCHLIKE_TOP = "kilnload-torch"
TORCHLIKE_VERSIONS = 40
TORCHLIKE_DEPS = 20
TORCHLIKE_DEP_VERSIONS = 12
TORCHLIKE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64", "win_amd64", "macosx_14_0_arm64")
TORCHLIKE_PYTHONS = ("cp310", "cp311", "cp312", "cp313", "cp314")


def torchlike_upstream(dest: Path, target: Target) -> list[Path]:
    """The torch-sized set's wheels (made once into ``dest``): this Python's tag among the others."""
    here = synthetic_tag(target).split("-")
    pythons = sorted({*TORCHLIKE_PYTHONS, here[0]})
    dest.mkdir(parents=True, exist_ok=True)
    done = dest / ".complete"
    if not done.exists():
        deps = [f"kilnload-dep{i:02d}" for i in range(TORCHLIKE_DEPS)]
        newest = f"1.{TORCHLIKE_DEP_VERSIONS - 1}.0"
        for dep in deps:
            for v in range(TORCHLIKE_DEP_VERSIONS):
                for platform in TORCHLIKE_PLATFORMS[:3]:
                    make_payload_wheel(dest, dep, f"1.{v}.0", 0, [], f"py3-none-{platform}")
        for v in range(TORCHLIKE_VERSIONS):
            for py in pythons:
                for platform in TORCHLIKE_PLATFORMS:
                    make_payload_wheel(dest, TORCHLIKE_TOP, f"2.{v}.0", 0, [f"{d}=={newest}" for d in deps],
                                       f"{py}-{py}-{platform}")
        done.touch()
    return sorted(dest.glob("*.whl"))


def make_content(dest: Path, upstream: list[Path], upstream_top: list[str], target: Target) -> Content:
    """The synthetic kiln wheels over ``upstream``; what an install of the top one resolves to."""
    dest.mkdir(parents=True, exist_ok=True)
    tag = synthetic_tag(target)
    published = []
    for project, version, mb, requires in PUBLISHED:
        reqs = [r for req in requires for r in (upstream_top if req == "{upstream}" else [req])]
        published.append(make_payload_wheel(dest, project, version, mb, reqs, tag))
    content = Content(published, upstream, [PUBLISHED[0][0]])
    content.expected = resolve(content.wheels, content.top, target)
    return content


# ----------------------------------------------------------------------------- the two servers


class StaticNginx:
    """nginx with kiln's tuning serving PEP 503 trees from disk under ``root``/tree (here /all/ and
    /upstream/; benchmarks/install_time.py's: what the mirror answered): a ``<page>/index.json``
    to a client that asks for PEP 691 JSON, else ``<page>/index.html``, and every other file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.root / "nginx" / "access.log"

    def write(self, content: Content) -> None:
        StaticIndex(self.root / "tree" / "all").add(content.wheels)
        StaticIndex(self.root / "tree" / "upstream").add(content.upstream)

    def start(self) -> None:
        prefix = self.root / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        # project pages as PEP 691 JSON to a client that asks for it (uv does), else PEP 503 HTML
        server = f"""\
map $http_accept $kiln_bench_page {{
    ~application/vnd\\.pypi\\.simple\\.v1\\+json  index.json;
    default                                      index.html;
}}

server {{
    listen 127.0.0.1:{self.port};
    server_name _;
    access_log access.log kiln;
    root {self.root / "tree"};
    location ~ /\\+?simple/[^/]+/$ {{
        types {{
            {SIMPLE_JSON} json;
            text/html html;
        }}
        try_files $uri$kiln_bench_page =404;
    }}
    location / {{
        try_files $uri $uri/index.html =404;
    }}
}}
"""
        (prefix / "nginx.conf").write_text(nginx_main_conf(server, user=nginx_user()))
        with (self.root / "nginx.log").open("ab") as log:
            self.proc = subprocess.Popen([nginx_exe(), "-p", str(prefix), "-c", "nginx.conf", "-e", "error.log",
                                          "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except (urllib.error.URLError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"static nginx did not start (log: {prefix / 'error.log'})") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Side:
    """One server under load: the index clients read, the access log of its nginx, and the logs
    its servers write their errors to."""

    name: str
    index: str
    access_log: Path
    error_logs: tuple[Path, ...] = ()


# an nginx error-log line at level error or worse; devpi-server's ERROR lines
LOG_ERROR = re.compile(r"\[(error|crit|alert|emerg)\]| ERROR ")


def log_offsets(paths: tuple[Path, ...]) -> list[int]:
    return [p.stat().st_size if p.exists() else 0 for p in paths]


def errors_since(paths: tuple[Path, ...], offsets: list[int]) -> list[str]:
    """The error lines written to ``paths`` past ``offsets``."""
    out = []
    for path, offset in zip(paths, offsets, strict=True):
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                out += [ln for ln in f.read().decode(errors="replace").splitlines() if LOG_ERROR.search(ln)]
    return out


def start_mirror(home: Home, content: Content, upstream: str) -> Side:
    """kiln's mirror as `kiln serve` starts it, with the synthetic wheels uploaded by kiln's upload
    user to the index of their variant (`kiln publish` takes only wheels kiln built)."""
    served, _ = mirror.serve(home, [Variant.parse(VARIANT)], None,
                             mirror.ServeOptions(host="127.0.0.1", port=free_port(), upstream=upstream))
    by_index: dict[str, list[Path]] = {}
    for wheel in content.published:
        by_index.setdefault(mirror.index_name(mirror.variant_of_wheel(wheel.name).name), []).append(wheel)
    upload(served.url, by_index, upload_credentials(home), "the mirror")
    files = mirror.ServerFiles(home)
    return Side("mirror", mirror.simple_url(served.url, VARIANT), files.access_log,
                (files.nginx / "error.log", files.log))


# ----------------------------------------------------------------------------- the clients


@dataclass
class Install:
    """One client's `uv pip install`: how long it took and what it ended with."""

    seconds: float
    error: str | None  # its first error line; None when it installed what was expected
    got: dict[NormalizedName, Version] = field(default_factory=dict)  # what its target holds


@dataclass
class Phase:
    """Every install against one side, run at once."""

    side: str
    clients: int
    installs: list[Install]
    wall: float
    requests: list[Request]
    install_bytes: int
    wheels_each: int
    server_errors: list[str] = field(default_factory=list)  # what its servers logged as errors meanwhile

    @property
    def failures(self) -> list[str]:
        return [i.error for i in self.installs if i.error is not None]

    def quantile(self, q: float) -> float:
        times = sorted(i.seconds for i in self.installs)
        if len(times) < 2:
            return times[0]
        return statistics.quantiles(times, n=100, method="inclusive")[round(q * 100) - 1]

    @property
    def done(self) -> int:
        return len(self.installs) - len(self.failures)

    @property
    def wheels_per_s(self) -> float:
        return self.done * self.wheels_each / self.wall

    @property
    def mb_per_s(self) -> float:
        return self.done * self.install_bytes / self.wall / 1e6

    @property
    def sent(self) -> int:
        return sum(r[2] for r in self.requests)

    @property
    def bad_status(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.requests:
            if r[1] not in OK_STATUS:
                out[r[1]] = out.get(r[1], 0) + 1
        return out


def installed(target: Path) -> dict[NormalizedName, Version]:
    """The distributions an install put into ``target``, from their .dist-info directories."""
    got: dict[NormalizedName, Version] = {}
    for info in target.glob("*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        got[canonicalize_name(name)] = Version(version)
    return got


class Clients:
    """Runs installs, each in its own fresh --target dir; kills what is left on the way out."""

    def __init__(self, work: Path, content: Content) -> None:
        self.work = work
        self.content = content
        work.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k not in UV_INDEX_ENV and k != "VIRTUAL_ENV"}
        # uv's --no-cache cache is a temp dir: beside the targets, so clients write to one place
        self.env.update(UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1", TMPDIR=str(work))
        self.live: set[subprocess.Popen[str]] = set()
        self.lock = threading.Lock()
        self.stopping = False
        self.count = 0

    def install(self, index: str) -> Install:
        with self.lock:
            if self.stopping:
                return Install(0.0, "stopped")
            self.count += 1
            target = self.work / f"client-{self.count}"
        cmd = [uv(), "pip", "install", "--no-cache", "--no-config", "--no-build", "--quiet", "--python",
               sys.executable, "--target", str(target), "--index-url", index, *self.content.top]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        with self.lock:
            self.live.add(proc)
        try:
            _, err = proc.communicate()
        finally:
            with self.lock:
                self.live.discard(proc)
        took = time.perf_counter() - started
        if proc.returncode != 0:
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            first = next((ln for ln in lines if ln.startswith("error")), lines[0] if lines else "")
            return Install(took, f"exit {proc.returncode}: {first}")
        got = installed(target)
        return Install(took, self.check(got), got)

    def check(self, got: dict[NormalizedName, Version]) -> str | None:
        """None when ``got`` is exactly the expected versions; else what differs."""
        if got == self.content.expected:
            return None
        wrong = sorted({*got, *self.content.expected} - {k for k in got if got[k] == self.content.expected.get(k)})
        return "installed " + ", ".join(f"{n} {got.get(n, 'nothing')} (expected {self.content.expected.get(n, 'none')})"
                                       for n in wrong)

    def phase(self, side: Side, clients: int, rounds: int) -> Phase:
        """``clients`` at once, ``rounds`` installs each, against ``side``."""
        offset = side.access_log.stat().st_size
        error_offsets = log_offsets(side.error_logs)
        started = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=clients)
        try:
            installs = list(pool.map(lambda _: self.install(side.index), range(clients * rounds)))
        except BaseException:  # Ctrl-C: kill the installs under way rather than wait for them
            self.stop()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        wall = time.perf_counter() - started
        for d in self.work.glob("client-*"):
            shutil.rmtree(d, ignore_errors=True)
        return Phase(side.name, clients, installs, wall, log_since(side.access_log, offset),
                     self.content.install_bytes(), len(self.content.expected),
                     errors_since(side.error_logs, error_offsets))

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            live = list(self.live)
        for proc in live:
            if proc.poll() is None:
                proc.kill()


# ----------------------------------------------------------------------------- one run


@dataclass
class Result:
    content: Content
    phases: list[Phase]

    def total(self, side: str) -> Phase | None:
        """Every phase against ``side`` as one: all installs, the walls and requests summed."""
        mine = [p for p in self.phases if p.side == side]
        if not mine:
            return None
        return Phase(side, mine[0].clients, [i for p in mine for i in p.installs], sum(p.wall for p in mine),
                     [r for p in mine for r in p.requests], mine[0].install_bytes, mine[0].wheels_each,
                     [e for p in mine for e in p.server_errors])


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def default_client_dir() -> Path | None:
    """A tmpfs for the clients' targets and temp caches, so that the servers are measured rather
    than this machine's disk; None where there is none."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def load(work: Path, upstream: list[Path], upstream_top: list[str], clients: int, rounds: int = 1,
         sides: tuple[str, ...] = ("static", "mirror"), repeat: int = 1, client_dir: Path | None = None,
         cold: bool = False, say: bool = False) -> Result:
    """Start both servers, warm each with one install (not the mirror when ``cold``), then run
    ``clients`` installs at once against each of ``sides`` in turn, ``repeat`` times; stop
    everything started, whatever happens."""
    target = Target(f"{sys.version_info.major}.{sys.version_info.minor}")
    content = make_content(work / "wheels", upstream, upstream_top, target)
    static = StaticNginx(work / "static")
    home = Home(work / "home")
    clients_tmp = Path(tempfile.mkdtemp(prefix="kiln-load-clients-", dir=client_dir or work))
    runner = Clients(clients_tmp, content)
    phases = []
    with _sigterm_as_interrupt():
        try:
            static.write(content)
            static.start()
            by_name = {"static": Side("static", f"{static.url}/all/simple/", static.access_log,
                                      (static.access_log.with_name("error.log"),)),
                       "mirror": start_mirror(home, content, f"{static.url}/upstream/simple/")}
            if say:
                print(f"static: {by_name['static'].index}  (nginx serving a simple-index tree from disk)")
                print(f"mirror: {by_name['mirror'].index}  (kiln's mirror; root/pypi mirrors "
                      f"{static.url}/upstream/simple/)")
                print(f"clients write to {clients_tmp}")
            for side in sides:  # warm-up: untimed, and it must succeed
                if cold and side == "mirror":
                    if say:
                        print("no warm-up of the mirror (--cold): the first clients make it fetch the upstream's files")
                    continue
                # two installs: the first makes the mirror fetch the upstream's files (each a change
                # to its project, whose kept pages then go: kiln.mirror.pages); the second finds
                # the pages as a warm mirror keeps them
                for _ in range(2):
                    warm = runner.install(by_name[side].index)
                    if warm.error:
                        raise BenchError(f"warm-up install against {side} failed: {warm.error}")
                    if say:
                        print(f"warm-up: one install against {side}, untimed ({warm.seconds:.1f} s)")
            for round_ in range(repeat):
                for side in sides:
                    phases.append(runner.phase(by_name[side], clients, rounds))
                    if say:
                        print(f"{side} #{round_ + 1}: {clients * rounds} installs in {phases[-1].wall:.1f} s, "
                              f"{len(phases[-1].failures)} failed")
        finally:
            runner.stop()
            static.stop()
            mirror.stop(home)
            shutil.rmtree(clients_tmp, ignore_errors=True)
    return Result(content, phases)


# ----------------------------------------------------------------------------- the report


def report(result: Result) -> None:
    head = (f"{'side':<10} {'installs':>8} {'failed':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'wall s':>7} "
            f"{'wheels/s':>9} {'MB/s':>7} {'requests':>8} {'MB sent':>8}  other answers")
    rows: list[tuple[str, Phase]] = []
    repeated = len(result.phases) > len({p.side for p in result.phases})
    counts: dict[str, int] = {}
    for p in result.phases:
        counts[p.side] = counts.get(p.side, 0) + 1
        rows.append((f"{p.side} #{counts[p.side]}" if repeated else p.side, p))
    totals = {side: t for side in ("static", "mirror") if (t := result.total(side)) is not None}
    if repeated:
        rows += [(f"{side} all", t) for side, t in totals.items()]
    print()
    print(head)
    print("-" * len(head))
    for label, p in rows:
        bad = ", ".join(f"{n}x {s}" for s, n in sorted(p.bad_status.items())) or "none"
        print(f"{label:<10} {len(p.installs):>8} {len(p.failures):>6} {p.quantile(0.5):>7.2f} "
              f"{p.quantile(0.95):>7.2f} {max(i.seconds for i in p.installs):>7.2f} {p.wall:>7.1f} "
              f"{p.wheels_per_s:>9.1f} {p.mb_per_s:>7.1f} {len(p.requests):>8} {p.sent / 1e6:>8.1f}  {bad}")
    if len(totals) == 2:
        s, m = totals["static"], totals["mirror"]
        ratio = m.wheels_per_s / s.wheels_per_s
        failed = len(s.failures) + len(m.failures)
        verdict = "met" if ratio >= GOAL and failed == 0 else "MISSED"
        print(f"\nmirror/static: wheels/s {ratio:.2f} (MB/s likewise), p50 {m.quantile(0.5) / s.quantile(0.5):.2f}x, "
              f"p95 {m.quantile(0.95) / s.quantile(0.95):.2f}x; goal: 0 failures and wheels/s >= {GOAL:.0%} of "
              f"static: {verdict}")
    for label, p in rows[:len(result.phases)]:
        for i, error in enumerate(p.failures):
            print(f"  {label} failure {i + 1}: {error[:300]}")
        if p.server_errors:
            print(f"  {label}: its servers logged {len(p.server_errors)} error line(s); the first: "
                  f"{p.server_errors[0][:300]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64, help="installs at once (default 64)")
    p.add_argument("--rounds", type=int, default=1, help="installs each client runs one after another (default 1)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run static then mirror this many times, alternating (default 1); totals are over all")
    p.add_argument("--upstream-wheels", default=str(Path.home() / ".cache" / "kiln-bench" / "load-wheels"),
                   help=f"the upstream's wheels: {', '.join(UPSTREAM_TOP)} and their dependencies, downloaded "
                        "there when missing")
    p.add_argument("--client-dir", default=default_client_dir(), type=Path,
                   help="where clients install and keep uv's temp cache (default /dev/shm where it exists)")
    p.add_argument("--only", choices=("static", "mirror"), help="load one side alone")
    p.add_argument("--cold", action="store_true",
                   help="do not warm the mirror: its first phase fetches the upstream's pages and files")
    p.add_argument("--torch-sized", action="store_true",
                   help=f"the upstream is a synthetic dependency set shaped like torch's ({TORCHLIKE_TOP}: "
                        f"{TORCHLIKE_VERSIONS} releases x {len(TORCHLIKE_PYTHONS) * len(TORCHLIKE_PLATFORMS)} "
                        f"wheels, pinning {TORCHLIKE_DEPS} projects of {TORCHLIKE_DEP_VERSIONS} releases), "
                        "so that resolving, not downloading, is what loads the servers")
    args = p.parse_args()
    if min(args.clients, args.rounds, args.repeat) < 1:
        p.error("--clients, --rounds and --repeat must be at least 1")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sides = (args.only,) if args.only else ("static", "mirror")
    try:
        target = Target(f"{sys.version_info.major}.{sys.version_info.minor}")
        if args.torch_sized:
            top = [TORCHLIKE_TOP]
            upstream = torchlike_upstream(Path(args.upstream_wheels).with_name("load-torchlike"), target)
        else:
            top = UPSTREAM_TOP
            upstream = upstream_wheels(Path(args.upstream_wheels), UPSTREAM_TOP)
        with tempfile.TemporaryDirectory(prefix="kiln-load-bench-") as tmp:
            print(f"uv {run([uv(), '--version'], 'uv --version').split()[1]}, Python "
                  f"{sys.version_info.major}.{sys.version_info.minor}, {os.cpu_count()} CPUs shared by the servers "
                  f"and the clients, load average {os.getloadavg()[0]:.1f} at the start (other work on this "
                  "machine makes the figures noisy)")
            print(f"{args.clients} clients at once, {args.rounds} install(s) each: `uv pip install --no-cache "
                  "--no-build --target <fresh dir> --index-url <index>`")
            result = load(Path(tmp), upstream, top, args.clients, args.rounds, sides, args.repeat,
                          args.client_dir, args.cold, say=True)
            c = result.content
            print(f"each install: {len(c.expected)} wheels, {c.install_bytes() / 1e6:.1f} MB ({len(c.published)} "
                  f"published to the mirror, the rest from the upstream through root/pypi): "
                  + ", ".join(f"{n}=={v}" for n, v in sorted(c.expected.items())))
            report(result)
    except (BenchError, KilnError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

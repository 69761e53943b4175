"""How long a user waits for causal-conv1d, with and without the kiln mirror.

Times, side by side in one run on this machine:
  (a) a fresh venv + `uv pip install causal-conv1d` from source, with uv's
      extra-build-dependencies / extra-build-variables (the best a user can do without kiln),
  (b) the same install from the kiln mirror, warm (two untimed installs from it first),
  (c) the same wheel installed from a local file (the floor),
and prints the ratios a/b and b/c. torch is installed into each venv before the clock starts
(it is the same download in all three), so the times are what causal-conv1d itself costs.

Then, against static nginx (kiln's tuning, benchmarks/load.py's StaticNginx) serving a tree of
what the mirror answered (recorded through a loopback proxy during one warm install and one
`uv lock`: every PEP 691 page as it was answered, every file whole), side by side:
  pages:   the p50 latency of the project pages a warm install reads, --page-rounds times each
           over one keep-alive connection with uv's Accept and Accept-Encoding (goal: <= 3x static);
  uv lock: of a project that depends on causal-conv1d (Linux x86_64, this Python), each run with
           an empty uv cache, so that every page and metadata file is read (goal: <= 2x static).
The goal for b/c is <= 1.5x.

With --rebuild it also times `kiln build --force` of one cell with a cold compiler cache (an
empty ccache) against a warm one (the same cell again).

    python benchmarks/install_time.py --mirror http://127.0.0.1:3141 [--skip-source] [--rebuild] [--skip-static]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # load.py's StaticNginx
sys.path.insert(0, str(HERE.parent / "tests"))  # kiln_testing: see its __init__

from kiln_testing.index import SIMPLE_JSON
from kiln_testing.tools import uv
from load import StaticNginx

from kiln.mirror.pages import CACHED_ACCEPT

PROJECT, VERSION = "causal-conv1d", "1.7.0"
CHECK = "import torch, causal_conv1d_cuda, causal_conv1d; print(causal_conv1d.__version__)"


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    started = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - started
    if res.returncode != 0:
        sys.exit(f"benchmark: `{' '.join(cmd[:4])} ...` failed:\n{res.stderr[-2000:]}")
    return took


def fresh_venv(root: Path, python: str, torch: str) -> Path:
    if root.exists():
        shutil.rmtree(root)
    run([uv(), "venv", "--quiet", "--python", python, str(root)])
    py = root / "bin" / "python"
    run([uv(), "pip", "install", "--quiet", "--python", str(py), f"torch=={torch}"])
    return py


def check(py: Path) -> None:
    run([str(py), "-c", CHECK])


def from_source(work: Path, python: str, torch: str, cuda_home: str) -> float:
    """(a): uv builds the sdist itself, told about the dependency setup.py forgot."""
    proj = work / "a"
    proj.mkdir()
    (proj / "uv.toml").write_text(
        f'[extra-build-dependencies]\n"{PROJECT}" = ["torch=={torch}"]\n\n'
        f'[extra-build-variables]\n"{PROJECT}" = {{ CAUSAL_CONV1D_FORCE_BUILD = "TRUE", CUDA_HOME = "{cuda_home}" }}\n')
    py = fresh_venv(proj / ".venv", python, torch)
    # torch wraps its compilers in any ccache on PATH; a user's first build has no warm cache.
    env = dict(os.environ, CUDA_HOME=cuda_home, CCACHE_DISABLE="1")
    took = run([uv(), "pip", "install", "--quiet", "--python", str(py), "--no-binary", PROJECT,
                "--refresh-package", PROJECT, f"{PROJECT}=={VERSION}"], env=env, cwd=proj)
    check(py)
    return took


def from_mirror(work: Path, python: str, torch: str, index: str) -> float:
    """(b): the kiln mirror's variant index."""
    py = fresh_venv(work / "b", python, torch)
    took = run([uv(), "pip", "install", "--quiet", "--python", str(py), "--no-build",
                "--refresh-package", PROJECT, "--index-url", index, PROJECT])
    check(py)
    return took


# ----------------------------------------------------------------------------- pages and uv lock against static nginx

UV_ACCEPT = CACHED_ACCEPT[1]


class Recorder:
    """A loopback proxy in front of the mirror: each GET goes on with the client's Accept and
    Range, and each whole answer is kept in ``tree`` as static nginx serves it (a PEP 691 page as
    ``<path>/index.json``, another file at its path)."""

    def __init__(self, mirror: str, tree: Path) -> None:
        self.mirror = mirror.rstrip("/")
        self.tree = tree
        self.pages: list[str] = []     # the paths of the PEP 691 pages read, in order
        self.partial: set[str] = set()  # files read only in byte ranges
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def keep(self, path: str, content_type: str, body: bytes) -> None:
        if path.endswith("/"):
            if content_type.split(";")[0] != SIMPLE_JSON:
                return
            self.pages.append(path)
            dest = self.tree / path.strip("/") / "index.json"
        else:
            dest = self.tree / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(body)

    def start(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.forward("GET")

            def do_HEAD(self) -> None:
                self.forward("HEAD")

            def forward(self, method: str) -> None:
                path = urllib.parse.urlsplit(self.path).path
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
                req = urllib.request.Request(recorder.mirror + self.path, headers=headers, method=method)
                try:
                    with urllib.request.urlopen(req, timeout=600) as resp:
                        status, answer, body = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as exc:
                    status, answer, body = exc.code, exc.headers, exc.read()
                if method == "GET" and status == 200:
                    recorder.keep(path, answer.get("Content-Type", ""), body)
                elif status in (200, 206):
                    recorder.partial.add(path)  # fetched whole once the client is done
                self.send_response(status)
                for name in ("Content-Type", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified"):
                    if answer.get(name):
                        self.send_header(name, answer[name])
                self.send_header("Content-Length", answer.get("Content-Length", "0") if method == "HEAD"
                                 else str(len(body)))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def complete(self) -> None:
        """Fetch whole, into the tree, each file the client read only in ranges."""
        for path in sorted(self.partial):
            dest = self.tree / path.lstrip("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                urllib.request.urlretrieve(self.mirror + path, dest)


def lock_project(root: Path) -> Path:
    """A project that depends on the seed, locked for Linux x86_64 and this Python."""
    root.mkdir(parents=True, exist_ok=True)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "kiln-seed"\nversion = "0"\nrequires-python = "=={python}.*"\n'
        f'dependencies = ["{PROJECT}"]\n\n[tool.uv]\npackage = false\n'
        f'environments = ["sys_platform == \'linux\' and platform_machine == \'x86_64\'"]\n')
    return root


def uv_lock(project: Path, index: str, cache: Path) -> float:
    """`uv lock` from scratch: no lock file, an empty uv cache."""
    (project / "uv.lock").unlink(missing_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env["UV_CACHE_DIR"] = str(cache)
    return run([uv(), "lock", "--quiet", "--no-progress", "--python", sys.executable, "--index-url", index],
               env=env, cwd=project)


def page_times(base: str, pages: list[str]) -> list[float]:
    """Seconds per page, each read whole over one keep-alive connection as uv asks for it."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    out = []
    try:
        for page in pages:
            started = time.perf_counter()
            conn.request("GET", page, headers={"Accept": UV_ACCEPT, "Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            resp.read()
            out.append(time.perf_counter() - started)
            if resp.status != 200:
                sys.exit(f"benchmark: {base}{page} answered {resp.status}")
    finally:
        conn.close()
    return out


def against_static(work: Path, mirror: str, index: str, python: str, torch: str, rounds: int, repeat: int) -> None:
    """Record what a warm install and `uv lock` read, serve it with static nginx, and time pages
    and `uv lock` against the mirror and the static copy, side by side."""
    work.chmod(0o755)  # a temp dir is the owner's alone; nginx's workers may run as nobody
    tree = work / "static" / "tree"
    recorder = Recorder(mirror, tree)
    recorder.start()
    path = urllib.parse.urlsplit(index).path
    try:
        py = fresh_venv(work / "record", python, torch)
        run([uv(), "pip", "install", "--quiet", "--python", str(py), "--no-build", "--refresh-package", PROJECT,
             "--index-url", recorder.url + path, PROJECT])
        install_pages = list(dict.fromkeys(recorder.pages))
        project = lock_project(work / "lock")
        uv_lock(project, recorder.url + path, work / "lock-cache")
        recorder.complete()
    finally:
        recorder.stop()
    static = StaticNginx(work / "static")
    static.start()
    try:
        mirror_times: list[float] = []
        static_times: list[float] = []
        for _ in range(rounds):
            mirror_times += page_times(mirror, install_pages)
            static_times += page_times(static.url, install_pages)
        m, st = statistics.median(mirror_times), statistics.median(static_times)
        print(f"pages a warm install reads: {len(install_pages)}; p50 from the mirror {m * 1000:.2f} ms, "
              f"from static nginx {st * 1000:.2f} ms ({rounds} rounds)")
        print(f"page p50 mirror/static = {m / st:.2f}x   (goal <= 3x)")
        locks_m, locks_s = [], []
        for _ in range(repeat):
            locks_m.append(uv_lock(project, index, work / "lock-cache"))
            locks_s.append(uv_lock(project, static.url + path, work / "lock-cache"))
        lm, ls = statistics.median(locks_m), statistics.median(locks_s)
        packages = (project / "uv.lock").read_text().count("[[package]]")
        print(f"uv lock of a project on {PROJECT} ({packages} packages, empty uv cache): mirror {lm:.2f} s, "
              f"static nginx {ls:.2f} s (median of {repeat})")
        print(f"uv lock mirror/static = {lm / ls:.2f}x   (goal <= 2x)")
    finally:
        static.stop()


def from_file(work: Path, python: str, torch: str, wheel: Path) -> float:
    """(c): the same wheel from a local file."""
    py = fresh_venv(work / "c", python, torch)
    took = run([uv(), "pip", "install", "--quiet", "--python", str(py), "--no-build", str(wheel)])
    check(py)
    return took


def fetch_wheel(index: str, dest: Path) -> Path:
    """The mirror's wheel for this Python, downloaded once (so (c) installs the same bytes)."""
    page = f"{index.rstrip('/')}/{PROJECT}/"
    req = urllib.request.Request(page, headers={"Accept": SIMPLE_JSON})
    files = json.load(urllib.request.urlopen(req))["files"]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    f = next(f for f in files if f["filename"].endswith(".whl") and f"-{tag}-" in f["filename"])
    url = urllib.parse.urljoin(page, f["url"])
    path = dest / f["filename"]
    urllib.request.urlretrieve(url, path)
    return path


def rebuild(recipes: Path, variant: str, python: str, archs: str, work: Path) -> tuple[float, float]:
    """`kiln build --force` of one cell: cold (empty ccache), then warm (same cache)."""
    home = work / "home"
    cmd = [sys.executable, "-m", "kiln.cli", "build", "--recipes", str(recipes), "--home", str(home),
           "--only", PROJECT, "--variant", variant, "--python", python, "--cuda-archs", archs, "--force"]
    cold = run(cmd)
    warm = run(cmd)
    return cold, warm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mirror", default="http://127.0.0.1:3141")
    p.add_argument("--variant", default="cu130-torch2.14")
    p.add_argument("--torch", default="2.14.1")
    p.add_argument("--cuda-home", default=os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    p.add_argument("--repeat", type=int, default=3, help="runs of (b) and (c); the median is used")
    p.add_argument("--skip-source", action="store_true", help="skip (a), the from-source build")
    p.add_argument("--rebuild", action="store_true", help="also time a cold and a warm rebuild")
    p.add_argument("--recipes", default=str(Path(__file__).parent.parent / "recipes"))
    p.add_argument("--archs", default="9.0", help="archs for --rebuild")
    p.add_argument("--skip-static", action="store_true", help="skip the pages and uv lock against static nginx")
    p.add_argument("--page-rounds", type=int, default=20, help="reads of each page per side")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    index = f"{args.mirror.rstrip('/')}/kiln/{args.variant}/+simple/"

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        work = Path(tmp)
        wheel = fetch_wheel(index, work)
        print(f"wheel: {wheel.name}")
        fresh_venv(work / "warmup", python, args.torch)  # torch into uv's cache, untimed
        # the mirror warm, untimed: the first install makes it fetch the upstream's pages (each a
        # change to its project, whose page is then not kept), the second finds them kept
        for _ in range(2):
            from_mirror(work, python, args.torch, index)
        b = statistics.median(from_mirror(work, python, args.torch, index) for _ in range(args.repeat))
        c = statistics.median(from_file(work, python, args.torch, wheel) for _ in range(args.repeat))
        print(f"(b) from the kiln mirror:   {b:8.2f} s  (median of {args.repeat})")
        print(f"(c) from a local file:      {c:8.2f} s  (median of {args.repeat})")
        if not args.skip_source:
            a = from_source(work, python, args.torch, args.cuda_home)
            print(f"(a) from source with uv:    {a:8.2f} s")
            print(f"a/b = {a / b:.1f}x   (the mirror against building from source)")
        print(f"b/c = {b / c:.2f}x   (the mirror against a local file; goal <= 1.5x)")
        if not args.skip_static:
            against_static(work, args.mirror, index, python, args.torch, args.page_rounds, args.repeat)
        if args.rebuild:
            cold, warm = rebuild(Path(args.recipes), args.variant, python, args.archs, work)
            print(f"rebuild of {PROJECT} {args.variant} cp{python.replace('.', '')} for {args.archs}: "
                  f"cold cache {cold:.0f} s, warm cache {warm:.0f} s, cold/warm = {cold / warm:.1f}x")


if __name__ == "__main__":
    main()

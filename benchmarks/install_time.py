"""How long a user waits for causal-conv1d, with and without the kiln mirror.

Times, side by side in one run on this machine:
  (a) a fresh venv + `uv pip install causal-conv1d` from source, with uv's
      extra-build-dependencies / extra-build-variables (the best a user can do without kiln),
  (b) the same install from the kiln mirror,
  (c) the same wheel installed from a local file (the floor),
and prints the ratios a/b and b/c. torch is installed into each venv before the clock starts
(it is the same download in all three), so the times are what causal-conv1d itself costs.

With --rebuild it also times `kiln build --force` of one cell with a cold compiler cache (an
empty ccache) against a warm one (the same cell again).

    python benchmarks/install_time.py --mirror http://127.0.0.1:3141 [--skip-source] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # kiln_testing: see its __init__

from kiln_testing.index import SIMPLE_JSON
from kiln_testing.tools import uv

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
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as soon as it is measured
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    index = f"{args.mirror.rstrip('/')}/kiln/{args.variant}/+simple/"

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        work = Path(tmp)
        wheel = fetch_wheel(index, work)
        print(f"wheel: {wheel.name}")
        fresh_venv(work / "warmup", python, args.torch)  # torch into uv's cache, untimed
        b = statistics.median(from_mirror(work, python, args.torch, index) for _ in range(args.repeat))
        c = statistics.median(from_file(work, python, args.torch, wheel) for _ in range(args.repeat))
        print(f"(b) from the kiln mirror:   {b:8.2f} s  (median of {args.repeat})")
        print(f"(c) from a local file:      {c:8.2f} s  (median of {args.repeat})")
        if not args.skip_source:
            a = from_source(work, python, args.torch, args.cuda_home)
            print(f"(a) from source with uv:    {a:8.2f} s")
            print(f"a/b = {a / b:.1f}x   (the mirror against building from source)")
        print(f"b/c = {b / c:.2f}x   (the mirror against a local file)")
        if args.rebuild:
            cold, warm = rebuild(Path(args.recipes), args.variant, python, args.archs, work)
            print(f"rebuild of {PROJECT} {args.variant} cp{python.replace('.', '')} for {args.archs}: "
                  f"cold cache {cold:.0f} s, warm cache {warm:.0f} s, cold/warm = {cold / warm:.1f}x")


if __name__ == "__main__":
    main()

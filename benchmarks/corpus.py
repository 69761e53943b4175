"""How kiln does on real sdist-only packages: the corpus in benchmarks/corpus.toml.

For each release, builds its cells from its hand-written recipe (benchmarks/corpus/<name>.yaml)
or, with --infer, from nothing (`kiln infer`, one Python), then installs each built wheel as a
user does (a fresh venv, `uv pip install --no-build`, its top-level modules imported) and prints
a table: package, set, cells built, smoke test, installed with --no-build, tries, seconds, and the
totals, overall and per set. A benchmark, not a test: it may take an hour.

The corpus has sets: `held-out` and `tuning` (the halves of the later releases, split by a fixed
rule before any was built: tune infer's rules on `tuning`, measure them on `held-out`),
`held-out-2` to `held-out-6` (ten more each, picked by a fixed rule after the sets
before them had been seen, each measured once with the rules as they stood) and `original` (the releases
without a `set`). Each package's kiln infer / build gets --timeout seconds.

    python benchmarks/corpus.py [--infer] [--set SET] [--only NAME ...] [--python 3.12] [--timeout 1200]
                                [--home DIR]
    SET: held-out, tuning, held-out-2 ... held-out-6, original
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.metadata import parse_email
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # kiln_testing: see its __init__

from kiln_testing.tools import uv

from kiln.host import find_python
from kiln.smoke import top_level_modules

HERE = Path(__file__).parent
CORPUS = HERE / "corpus.toml"
RECIPES = HERE / "corpus"
TOOLCHAINS = HERE.parent / "recipes" / "toolchains.yaml"
KILN = [sys.executable, "-m", "kiln.cli"]
SETS = ("held-out", "tuning", "held-out-2", "held-out-3", "held-out-4", "held-out-5", "held-out-6", "original")


@dataclass
class Row:
    name: str
    version: str
    kind: str
    set: str = "original"
    cells: int = 0
    built: int = 0
    smoke: bool = False
    installed: int = 0
    tries: int | str = "-"
    seconds: float = 0.0
    failure: str = ""
    recipe_lines: int | None = None
    wheels: list[Path] = field(default_factory=list)


def lines_of(recipe: Path) -> int:
    """A recipe's length without comments and blank lines."""
    return sum(1 for ln in recipe.read_text().splitlines() if ln.split("#")[0].strip())


def set_of(entry: dict[str, Any]) -> str:
    """The corpus set an entry belongs to: its `set`, or `original` for the releases without one."""
    return str(entry.get("set", "original"))


def run_bounded(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
    """``cmd`` run to its end with its output captured, or None when it ran past ``timeout`` seconds:
    then its whole process group (uv, the compilers under it) is killed, so nothing keeps building."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a descendant in a session of its own still holds the pipes
                pass
            return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def requirement_names(wheel: Path) -> set[str]:
    """The projects a wheel's METADATA requires (Requires-Dist), canonical names."""
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    raw, _ = parse_email(meta)
    return {canonicalize_name(Requirement(r).name) for r in raw.get("requires_dist", [])}


def install_check(wheel: Path, wheelhouse: Path, work: Path, pythons: list[str]) -> str | None:
    """None when ``wheel`` installs with --no-build in a fresh venv and its modules import; a
    pure wheel is checked with the first of the Pythons its cells were built for."""
    name, version, _, tags = parse_wheel_filename(wheel.name)
    tag = next(iter(tags)).interpreter
    python = find_python(f"{tag[2]}.{tag[3:]}" if tag.startswith("cp") else pythons[0])
    if python is None:
        return f"no Python for {tag}"
    venv = work / f"venv-{wheel.stem}"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([uv(), "venv", "--quiet", "--python", str(python), str(venv)], check=True)
    res = subprocess.run([uv(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--no-build",
                          "--find-links", str(wheelhouse), str(wheel)], capture_output=True, text=True)
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or ["uv failed"])[-1]
    # A torch extension module links torch's libraries (libc10.so), which `import torch` loads first,
    # as the package's own __init__ does and kiln's smoke test does.
    preload = "import torch; " if "torch" in requirement_names(wheel) else ""
    for module in top_level_modules(wheel):
        res = subprocess.run([str(venv / "bin" / "python"), "-c", f"{preload}import {module}"], capture_output=True,
                             text=True, cwd=work)
        if res.returncode != 0:
            return (res.stderr.strip().splitlines() or ["import failed"])[-1]
    shutil.rmtree(venv, ignore_errors=True)
    return None


def run_one(entry: dict[str, Any], args: argparse.Namespace, home: Path) -> Row:
    name, version = entry["name"], entry["version"]
    row = Row(name, version, entry.get("kind", ""), set_of(entry))
    project = canonicalize_name(name)
    work = home / "corpus" / project
    shutil.rmtree(work, ignore_errors=True)
    recipes = work / "recipes"
    recipes.mkdir(parents=True)
    shutil.copy(TOOLCHAINS, recipes / "toolchains.yaml")
    started = time.monotonic()
    deadline = started + args.timeout  # one budget per package, for its kiln infer / plan / build together
    timed_out = f"timed out after {args.timeout} s"
    for extra in entry.get("also", []):  # recipes of runtime dependencies that need one
        shutil.copy(RECIPES / f"{extra}.yaml", recipes / f"{extra}.yaml")
    if args.infer:
        python = entry.get("python", args.python)
        res = run_bounded([*KILN, "infer", f"{name}=={version}", "--recipes", str(recipes), "--home", str(home),
                           "--python", python], deadline - time.monotonic())
        if res is None:
            row.failure = timed_out
            row.seconds = time.monotonic() - started
            return row
        print(res.stdout, end="", flush=True)
        row.tries = sum(1 for ln in res.stdout.splitlines() if ln.startswith("try ") and not ln.startswith("try 0"))
        if res.returncode != 0:
            row.failure = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
            row.seconds = time.monotonic() - started
            return row
        row.recipe_lines = lines_of(recipes / f"{project}.yaml")
    else:
        shutil.copy(RECIPES / f"{project}.yaml", recipes / f"{project}.yaml")
        if (RECIPES / "patches").is_dir():  # the patches hand-written recipes name
            shutil.copytree(RECIPES / "patches", recipes / "patches", dirs_exist_ok=True)
        row.recipe_lines = lines_of(recipes / f"{project}.yaml")
        row.tries = 1
    wheelhouse = work / "wheelhouse"
    planned: list[dict[str, Any]] = []  # kiln plan's cells (without --infer)
    if args.infer:  # infer built and smoke-tested one cell: its wheel is the result
        built = sorted((home / "infer" / f"{project}-{version}" / "wheelhouse").glob("*.whl"))
        wheelhouse.mkdir(parents=True, exist_ok=True)
        for w in built:
            shutil.copy(w, wheelhouse / w.name)
        row.cells = 1
        row.built = 1
    else:
        plan = run_bounded([*KILN, "plan", "--recipes", str(recipes), "--home", str(work / "home"), "--json"],
                           deadline - time.monotonic())
        if plan is None:
            row.failure = timed_out
            row.seconds = time.monotonic() - started
            return row
        planned = json.loads(plan.stdout or "[]")
        row.cells = len([r for r in planned if r["closure_of"] is None])
        res = run_bounded([*KILN, "build", "--recipes", str(recipes), "--home", str(work / "home"),
                           "--out", str(wheelhouse)], deadline - time.monotonic())
        if res is None:
            row.failure = timed_out
            row.seconds = time.monotonic() - started
            return row
        failed = [ln for ln in res.stdout.splitlines() if ln.startswith("FAILED")]
        row.built = row.cells - len(failed)
        if failed:
            row.failure = failed[0]
    row.seconds = time.monotonic() - started
    row.smoke = row.built == row.cells and row.cells > 0
    own = [w for w in wheelhouse.glob("*.whl") if parse_wheel_filename(w.name)[0] == project]
    pythons = [entry.get("python", args.python)] if args.infer else \
        [r["python"] for r in planned] or [args.python]
    for wheel in own:
        problem = install_check(wheel, wheelhouse, work, pythons)
        if problem is None:
            row.installed += 1
        elif not row.failure:
            row.failure = f"{wheel.name}: --no-build install: {problem}"
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--infer", action="store_true", help="draft each recipe with `kiln infer` instead")
    p.add_argument("--set", choices=SETS, help="only this set of the corpus (original: the entries without a set)")
    p.add_argument("--only", nargs="+", help="only these packages")
    p.add_argument("--python", default="3.12", help="the Python --infer builds for, unless the corpus names one "
                   "(default: 3.12)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds each package's kiln infer / build may take "
                   "before it is killed and recorded as timed out (default: 1200)")
    p.add_argument("--home", default=str(Path(".kiln-corpus").absolute()), help="kiln home (default: ./.kiln-corpus)")
    args = p.parse_args()
    entries = tomllib.loads(CORPUS.read_text())["package"]
    if args.set:
        entries = [e for e in entries if set_of(e) == args.set]
    if args.only:
        wanted = {canonicalize_name(n) for n in args.only}
        entries = [e for e in entries if canonicalize_name(e["name"]) in wanted]
    home = Path(args.home)
    rows = []
    for entry in entries:
        print(f"== {entry['name']} {entry['version']}", flush=True)
        rows.append(run_one(entry, args, home))
    table = Table("package", "set", "kind", "cells built", "smoke test", "--no-build install", "tries", "recipe lines",
                  "seconds", "failure", title=f"kiln corpus ({'kiln infer' if args.infer else 'hand-written recipes'})")
    for r in rows:
        table.add_row(f"{r.name}=={r.version}", r.set, r.kind, f"{r.built}/{r.cells}", "yes" if r.smoke else "no",
                      f"{r.installed}", str(r.tries), str(r.recipe_lines or "-"), f"{r.seconds:.0f}", r.failure)
    console = Console(width=250)
    console.print(table)
    ok = [r for r in rows if r.smoke and r.installed]
    console.print(f"working: {len(ok)}/{len(rows)} ({100 * len(ok) / max(1, len(rows)):.0f}%), "
                  f"cells built {sum(r.built for r in rows)}/{sum(r.cells for r in rows)}, "
                  f"{sum(r.seconds for r in rows) / 60:.1f} minutes")
    for name in SETS:
        in_set = [r for r in rows if r.set == name]
        if in_set:
            working = [r for r in in_set if r.smoke and r.installed]
            console.print(f"  {name}: working {len(working)}/{len(in_set)} "
                          f"({100 * len(working) / len(in_set):.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

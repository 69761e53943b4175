"""How kiln does on real sdist-only packages: the corpus in benchmarks/corpus.toml.

For each release, builds its cells from its hand-written recipe (benchmarks/corpus/<name>.yaml)
or, with --infer, from nothing (`kiln infer`, one Python), then installs each built wheel as a
user does (a fresh venv, `uv pip install --no-build`, its top-level modules imported) and prints
a table: package, cells built, smoke test, installed with --no-build, tries, seconds, and the
totals. A benchmark, not a test: it may take an hour.

    python benchmarks/corpus.py [--infer] [--only NAME ...] [--python 3.12] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from rich.console import Console
from rich.table import Table

from kiln.smoke import top_level_modules
from kiln.toolchains import find_python

HERE = Path(__file__).parent
CORPUS = HERE / "corpus.toml"
RECIPES = HERE / "corpus"
TOOLCHAINS = HERE.parent / "recipes" / "toolchains.yaml"
KILN = [sys.executable, "-m", "kiln.cli"]


@dataclass
class Row:
    name: str
    version: str
    kind: str
    cells: int = 0
    built: int = 0
    smoke: bool = False
    installed: int = 0
    tries: int | str = "-"
    seconds: float = 0.0
    failure: str = ""
    recipe_lines: int | None = None
    wheels: list[Path] = field(default_factory=list)


def uv() -> str:
    return shutil.which("uv") or str(Path(sys.executable).parent / "uv")


def lines_of(recipe: Path) -> int:
    """A recipe's length without comments and blank lines."""
    return sum(1 for ln in recipe.read_text().splitlines() if ln.split("#")[0].strip())


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
    for module in top_level_modules(wheel):
        res = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True,
                             text=True, cwd=work)
        if res.returncode != 0:
            return (res.stderr.strip().splitlines() or ["import failed"])[-1]
    shutil.rmtree(venv, ignore_errors=True)
    return None


def run_one(entry: dict[str, Any], args: argparse.Namespace, home: Path) -> Row:
    name, version = entry["name"], entry["version"]
    row = Row(name, version, entry.get("kind", ""))
    project = canonicalize_name(name)
    work = home / "corpus" / project
    shutil.rmtree(work, ignore_errors=True)
    recipes = work / "recipes"
    recipes.mkdir(parents=True)
    shutil.copy(TOOLCHAINS, recipes / "toolchains.yaml")
    started = time.monotonic()
    for extra in entry.get("also", []):  # recipes of runtime dependencies that need one
        shutil.copy(RECIPES / f"{extra}.yaml", recipes / f"{extra}.yaml")
    if args.infer:
        python = entry.get("python", args.python)
        res = subprocess.run([*KILN, "infer", f"{name}=={version}", "--recipes", str(recipes), "--home", str(home),
                              "--python", python], capture_output=True, text=True)
        print(res.stdout, end="", flush=True)
        row.tries = sum(1 for ln in res.stdout.splitlines() if ln.startswith("try ") and not ln.startswith("try 0"))
        if res.returncode != 0:
            row.failure = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
            row.seconds = time.monotonic() - started
            return row
        row.recipe_lines = lines_of(recipes / f"{project}.yaml")
    else:
        shutil.copy(RECIPES / f"{project}.yaml", recipes / f"{project}.yaml")
        row.recipe_lines = lines_of(recipes / f"{project}.yaml")
        row.tries = 1
    wheelhouse = work / "wheelhouse"
    if args.infer:  # infer built and smoke-tested one cell: its wheel is the result
        built = sorted((home / "infer" / f"{project}-{version}" / "wheelhouse").glob("*.whl"))
        wheelhouse.mkdir(parents=True, exist_ok=True)
        for w in built:
            shutil.copy(w, wheelhouse / w.name)
        row.cells = 1
        row.built = 1
    else:
        plan = subprocess.run([*KILN, "plan", "--recipes", str(recipes), "--home", str(work / "home"), "--json"],
                              capture_output=True, text=True)
        row.cells = len([r for r in json.loads(plan.stdout or "[]") if r["closure_of"] is None])
        res = subprocess.run([*KILN, "build", "--recipes", str(recipes), "--home", str(work / "home"),
                              "--out", str(wheelhouse)], capture_output=True, text=True)
        failed = [ln for ln in res.stdout.splitlines() if ln.startswith("FAILED")]
        row.built = row.cells - len(failed)
        if failed:
            row.failure = failed[0]
    row.seconds = time.monotonic() - started
    row.smoke = row.built == row.cells and row.cells > 0
    own = [w for w in wheelhouse.glob("*.whl") if parse_wheel_filename(w.name)[0] == project]
    pythons = [entry.get("python", args.python)] if args.infer else \
        [r["python"] for r in json.loads(plan.stdout or "[]")] or [args.python]
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
    p.add_argument("--only", nargs="+", help="only these packages")
    p.add_argument("--python", default="3.12", help="the Python --infer builds for, unless the corpus names one "
                   "(default: 3.12)")
    p.add_argument("--home", default=str(Path(".kiln-corpus").absolute()), help="kiln home (default: ./.kiln-corpus)")
    args = p.parse_args()
    entries = tomllib.loads(CORPUS.read_text())["package"]
    if args.only:
        wanted = {canonicalize_name(n) for n in args.only}
        entries = [e for e in entries if canonicalize_name(e["name"]) in wanted]
    home = Path(args.home)
    rows = []
    for entry in entries:
        print(f"== {entry['name']} {entry['version']}", flush=True)
        rows.append(run_one(entry, args, home))
    table = Table("package", "kind", "cells built", "smoke test", "--no-build install", "tries", "recipe lines",
                  "seconds", "failure", title=f"kiln corpus ({'kiln infer' if args.infer else 'hand-written recipes'})")
    for r in rows:
        table.add_row(f"{r.name}=={r.version}", r.kind, f"{r.built}/{r.cells}", "yes" if r.smoke else "no",
                      f"{r.installed}", str(r.tries), str(r.recipe_lines or "-"), f"{r.seconds:.0f}", r.failure)
    console = Console(width=250)
    console.print(table)
    ok = [r for r in rows if r.smoke and r.installed]
    console.print(f"working: {len(ok)}/{len(rows)} ({100 * len(ok) / max(1, len(rows)):.0f}%), "
                  f"cells built {sum(r.built for r in rows)}/{sum(r.cells for r in rows)}, "
                  f"{sum(r.seconds for r in rows) / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

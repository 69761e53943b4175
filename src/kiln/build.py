"""Run one cell's steps in order: fetch, unpack, patch, compile (a backend's), finish, the
closure of runtime requirements without wheels, smoke. What the steps of a run share travels in
one BuildContext.

A failed cell never stops the others; its full log is kept in the kiln home.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import traceback
from collections import deque
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TextIO

from rich.console import Console

import kiln
from kiln import archs, buildreqs, closure, cuda, feasible, smoke, source
from kiln.backends import Backend, CompileJob, CompileResult
from kiln.backends.cibuildwheel import RECORD, BuildRecord
from kiln.buildenv import build_env, write_constraints
from kiln.buildreqs import BuildRequirements
from kiln.errors import BuildError, KilnError, NotBuildable
from kiln.home import CellOutcome, CellResult, Home
from kiln.host import probe_host
from kiln.logs import CellProgress, progress_for
from kiln.matrix import Cell
from kiln.provenance import CudaArchs, Provenance, ProvenanceError
from kiln.sandbox import is_secret_name, secret_paths
from kiln.toolchains import Toolchains
from kiln.wheel import (
    RawWheel,
    check_cuda_archs,
    check_served,
    cuda_archs_found,
    cuda_content,
    find_cuobjdump,
    finish,
    pins_for,
)


@dataclass(frozen=True)
class BuildContext:
    """What every step of a run shares, passed whole instead of as parameter lists (as
    cibuildwheel passes its BuildOptions): the toolchain table, the kiln home, where finished
    wheels land, the backend that compiles, the index build requirements and sdists come from,
    and where progress is reported (closure cells built inside a cell report there too)."""

    toolchains: Toolchains
    home: Home
    out: Path
    backend: Backend
    index_url: str
    progress: CellProgress | None = None

    @classmethod
    def of(cls, toolchains: Toolchains, home: Home, out: Path, backend: Backend,
           index_url: str | None = None) -> BuildContext:
        """A run's context; ``index_url`` None: the default index (kiln.source)."""
        return cls(toolchains, home, out, backend, index_url or source.default_index_url())


CellRun = Generator[list[Cell], list[CellResult], CellResult]
"""One cell's build as the run drives it: it yields the closure cells it needs (runtime
requirements with no wheel upstream), is sent their results once the run has built them, and
returns its own result."""


@dataclass
class _Frame:
    """A cell of the run in progress: its build, the closure cells it waits for, their results."""

    cell: Cell
    run: CellRun
    building: frozenset[str]
    waiting: deque[Cell] = field(default_factory=deque)
    results: list[CellResult] = field(default_factory=list)
    reply: list[CellResult] | None = None


def build_cell(cell: Cell, ctx: BuildContext) -> CellResult:
    """Build, finish and smoke-test one cell, and the closure of runtime requirements that have
    no wheel upstream; never raises for a failure of the cell itself.

    The closure cells are cells of the same run, not builds inside builds: when a cell's build
    needs them it waits, this loop builds each (and what each needs in turn), reporting it to
    ``ctx.progress``, then hands their results back to the cell that waits. A cell that would need
    itself is refused."""
    frames = [_Frame(cell, _cell_run(cell, ctx, frozenset({cell.id})), frozenset({cell.id}))]
    while True:
        top = frames[-1]
        if top.waiting:  # the next closure cell it waits for runs now, as a cell of its own
            dep = top.waiting.popleft()
            if ctx.progress:
                ctx.progress.start(dep.id, ctx.home.logs / f"{dep.id}.log", f"{dep.id} (closure of {top.cell.id})")
            frames.append(_Frame(dep, _cell_run(dep, ctx, top.building | {dep.id}), top.building | {dep.id}))
            continue
        try:
            reply, top.reply = top.reply, None
            needs = top.run.send(reply)  # type: ignore[arg-type]  # None starts it
        except StopIteration as done:
            result: CellResult = done.value
            frames.pop()
            if not frames:
                return result
            if ctx.progress:
                ctx.progress.end(result)
            parent = frames[-1]
            parent.results.append(result)
            if not parent.waiting:
                parent.reply, parent.results = parent.results, []
            continue
        top.waiting.extend(needs)


def _cell_run(cell: Cell, ctx: BuildContext, building: frozenset[str]) -> CellRun:
    """One cell's build (build_cell drives it): its log, its steps, its result, saved. ``building``:
    the ids of this cell and the cells whose closure it is part of (a cycle is refused)."""
    home = ctx.home
    home.logs.mkdir(parents=True, exist_ok=True)
    log_path = home.logs / f"{cell.id}.log"
    work = home.work / cell.id
    started = time.monotonic()
    with log_path.open("w") as log:
        print(f"kiln {kiln.__version__}: building {cell.id} with the {ctx.backend.name} backend"
              + (f" (a runtime requirement of {cell.closure_of} with no wheel upstream)" if cell.closure_of else ""),
              file=log, flush=True)
        closure_built: list[str] = []
        try:
            wheel, archs = yield from _steps(cell, ctx, work, log, building, closure_built)
        except NotBuildable as exc:  # not a failure: the cell cannot exist (kiln.feasible)
            print(f"kiln: not buildable: {exc.message}", file=log, flush=True)
            shutil.rmtree(work, ignore_errors=True)
            result = CellResult(cell=cell.id, status=CellOutcome.NOT_BUILDABLE, log=str(log_path),
                                seconds=time.monotonic() - started, error=exc.message,
                                closure_of=cell.closure_of, recipe_sha256=cell.recipe.sha256)
        except KilnError as exc:
            message = exc.message
            if oom := oom_killed(log_path):
                message = (f"{message}: {oom} was killed (SIGKILL: out of memory, most likely); "
                           f"raise build.memory_per_job_gb (now {cell.recipe.build.memory_per_job_gb})")
            result = _failed(cell, log, log_path, started, message)
        except Exception as exc:  # noqa: BLE001 - a cell's failure never stops the others
            traceback.print_exc(file=log)
            result = _failed(cell, log, log_path, started, f"{type(exc).__name__}: {exc}")
        else:
            print(f"kiln: built {wheel.name}", file=log, flush=True)
            result = CellResult(cell=cell.id, status=CellOutcome.BUILT, log=str(log_path), wheel=wheel.name,
                                seconds=time.monotonic() - started, cuda_archs=archs, closure_of=cell.closure_of,
                                closure_built=closure_built,
                                cuda_archs_found=_archs_found(wheel))
    result.save(home)
    return result


def _archs_found(wheel: Path) -> dict[str, list[str]] | None:
    """The CUDA architectures the finished wheel's provenance records, as the cell result keeps them."""
    try:
        found = CudaArchs.from_json(Provenance.read(wheel).cuda_archs_found)
    except ProvenanceError:
        return None
    return found.to_json() if found else None


def _failed(cell: Cell, log: TextIO, log_path: Path, started: float, message: str) -> CellResult:
    print(f"kiln: FAILED: {message}", file=log, flush=True)
    return CellResult(cell=cell.id, status=CellOutcome.FAILED, log=str(log_path), seconds=time.monotonic() - started,
                      error=message, closure_of=cell.closure_of)


# What a compiler driver prints when the OOM killer takes one of its children.
_OOM_SIGNS = (re.compile(r"(?P<what>\S+): (?:fatal error: )?Killed signal terminated program (?P<prog>\S+)"),
              re.compile(r"(?P<what>\S+) died due to signal 9"),
              re.compile(r"(?P<what>\S+)\W+Killed\W*$", re.MULTILINE))


def oom_killed(log_path: Path) -> str | None:
    """The program the OOM killer took, when the log of a failed build shows one."""
    with log_path.open("rb") as f:
        f.seek(max(0, log_path.stat().st_size - 64 * 1024))
        tail = f.read().decode(errors="replace")
    for sign in _OOM_SIGNS:
        if m := sign.search(tail):
            return m.groupdict().get("prog") or m.group("what")
    return None


def _steps(cell: Cell, ctx: BuildContext, work: Path, log: TextIO, building: frozenset[str],
           closure_built: list[str]) -> Generator[list[Cell], list[CellResult], tuple[Path, str | None]]:
    toolchains, home, backend, index_url = ctx.toolchains, ctx.home, ctx.backend, ctx.index_url
    src, srcdir = prepare_source(cell, home, work / "src", index_url, log)
    feasible.check_python(cell, srcdir)
    constraints = write_constraints(cell, work / "constraints.txt")
    toolkit = (cuda.prepare(cell.variant.cuda, toolchains, home.root, work, index_url, log)
               if cell.variant.cuda and cell.variant.cuda_major and not backend.own_cuda else None)
    env = build_env(cell, toolchains, home, toolkit)
    env["PIP_CONSTRAINT"] = str(constraints)
    env["UV_CONSTRAINT"] = str(constraints)
    for key in sorted(env):
        print(f"kiln: env {key}={'(not shown)' if is_secret_name(key) else env[key]}", file=log, flush=True)
    job = CompileJob(cell=cell, toolchains=toolchains, source_dir=srcdir, work_dir=work, env=env,
                     constraints=constraints, log=log, timeout_s=cell.recipe.build.timeout_minutes * 60,
                     index_url=index_url, hidden=secret_paths(home.root), toolkit=toolkit)
    res = backend.compile(job)
    finished, archs = finish_cell(cell, toolchains, res, src, work, log)
    closure_built += yield from build_closure(cell, finished, ctx, work, log, building)
    dest = smoke_and_keep(finished, cell, ctx, work, log)
    shutil.rmtree(work, ignore_errors=True)
    return dest, archs


def build_closure(cell: Cell, wheel: Path, ctx: BuildContext, work: Path, log: TextIO,
                  building: frozenset[str]) -> Generator[list[Cell], list[CellResult], list[str]]:
    """The runtime requirements of ``wheel`` that have no wheel for the cell upstream, asked of
    the run (yielded) as cells of their own; a closure cell that fails fails this cell, saying it
    needs a recipe. Returns the wheels built (theirs and their own closures')."""
    indexes = cell.index_urls(ctx.toolchains, ctx.index_url)
    built: list[str] = []
    recorded: list[closure.Need] = []
    # Each round builds what the resolution found missing; a dependency built from a recipe can
    # unblock a resolution that stopped at it, so resolve again until nothing is missing.
    for _ in range(MAX_CLOSURE_ROUNDS):
        needs = [n for n in closure.missing(wheel, cell, indexes, [ctx.out], work / "closure", log)
                 if n not in recorded]
        if not needs:
            break
        recorded += needs
        closure.save(ctx.home, cell, recorded)
        deps = [_closure_cell(need, cell, ctx, log, building) for need in needs]
        results = yield deps
        for need, result in zip(needs, results, strict=True):
            built += _closure_built(need, cell, result, log)
    else:
        raise BuildError(f"closure: runtime requirements of {wheel.name} still missing "
                         f"after {MAX_CLOSURE_ROUNDS} rounds")
    closure.save(ctx.home, cell, recorded)
    return built


MAX_CLOSURE_ROUNDS = 10


def _closure_cell(need: closure.Need, cell: Cell, ctx: BuildContext, log: TextIO,
                  building: frozenset[str]) -> Cell:
    """The cell that builds ``need`` for ``cell``, said in the cell's log; a cycle is refused."""
    dep = need.cell(cell)
    if dep.id in building:
        raise BuildError(f"closure: {dep.id} depends on itself through {cell.id}")
    print(f"kiln: closure: building {dep.id} (log: {ctx.home.logs / (dep.id + '.log')})", file=log, flush=True)
    return dep


def _closure_built(need: closure.Need, cell: Cell, result: CellResult, log: TextIO) -> list[str]:
    """The wheels a closure cell built for ``cell``; its failure is the cell's, naming the recipe."""
    dep = need.cell(cell)
    if result.status == CellOutcome.NOT_BUILDABLE:
        raise NotBuildable(f"{need.project} {need.version}, a runtime requirement with no wheel for "
                           f"{cell.python_tag}, is not buildable: {result.error}")
    if result.status != CellOutcome.BUILT:
        advice = "its recipe" if dep.recipe.sha256 else "it needs a recipe"
        raise BuildError(f"{need.project} {need.version}, a runtime requirement with no wheel for "
                         f"{cell.python_tag}, failed to build ({result.error}); {advice}: "
                         f"{cell.recipe.path.parent / (need.project + '.yaml')} (log: {result.log})")
    print(f"kiln: closure: built {result.wheel}", file=log, flush=True)
    return [result.wheel or dep.id, *result.closure_built]


def smoke_and_keep(finished: Path, cell: Cell, ctx: BuildContext, work: Path, log: TextIO) -> Path:
    """Smoke-test a finished wheel against this run's wheels and the index; it lands in the run's
    wheelhouse, or in the home's failed/ when the smoke test fails."""
    job = smoke.SmokeJob(cell, ctx.toolchains, ctx.index_url, [finished.parent, ctx.out],
                         hidden=secret_paths(ctx.home.root))
    try:
        smoke.smoke(finished, job, work, log)
    except BuildError:
        ctx.home.failed.mkdir(parents=True, exist_ok=True)
        shutil.move(finished, ctx.home.failed / finished.name)
        raise
    return place(finished, ctx.out)


def place(wheel: Path, out: Path) -> Path:
    """Move ``wheel`` into ``out`` so that ``out`` never holds a part of it, even when kiln is
    killed on the way or ``out`` is on another file system: copied beside it under a name no
    reader takes for a wheel, then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    dest = out / wheel.name
    part = out / f".{wheel.name}.part"
    shutil.copyfile(wheel, part)
    with part.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    wheel.unlink()
    return dest


def prepare_source(cell: Cell, home: Home, dest: Path, index_url: str | None,
                   log: TextIO) -> tuple[source.Source, Path]:
    """Fetch the cell's source (hash-checked, cached in the home), unpack it into ``dest`` and
    apply the recipe's patches; returns the source and the project's top directory."""
    src = source.fetch(cell.recipe, cell.version, home.sources, index_url)
    print(f"kiln: source {src.url} sha256={src.sha256}", file=log, flush=True)
    srcdir = source.unpack(src, dest)
    for patch in cell.recipe.patch_paths:
        res = subprocess.run(["patch", "-p1", "--forward", "-i", str(patch)], check=False, cwd=srcdir,
                             capture_output=True, text=True)
        print(f"$ patch -p1 -i {patch}\n{res.stdout}{res.stderr}", file=log, flush=True)
        if res.returncode != 0:
            why = (res.stdout + res.stderr).strip().splitlines()[-1:]
            raise BuildError(f"patch {patch.name} does not apply to {cell.project} {cell.version}: {' '.join(why)}")
    return src, srcdir


def finish_cell(cell: Cell, toolchains: Toolchains, res: CompileResult, src: source.Source,
                work: Path, log: TextIO) -> tuple[Path, str | None]:
    """Finish a raw wheel (label, run-exports, provenance, tag) into ``work``/finished; a wheel
    of a cell without CUDA that holds CUDA is refused, and so is one of a CUDA cell whose shared
    objects hold no device code or miss an architecture the cell asked for (cuobjdump's lists)."""
    if cell.variant.cuda_major is None and (found := cuda_content(res.wheel)):
        for line in found:
            print(f"kiln: CUDA in a {cell.variant.name} wheel: {line}", file=log, flush=True)
        raise BuildError(f"{res.wheel.name} was built without CUDA but holds CUDA: {found[0]}"
                         + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    host = probe_host()
    built_for = cell.cuda_archs if cell.variant.cuda_major else None
    device: CudaArchs | None = None
    if cell.variant.cuda_major:
        cuobjdump = find_cuobjdump(host.cuda_home)
        if cuobjdump is None and cell.archs_served:
            raise BuildError(f"{res.wheel.name}: no cuobjdump (CUDA_HOME/bin, PATH, nvidia-cuda-cuobjdump) to "
                             f"check it runs on the GPUs kiln/{cell.variant.name} serves")
        if cuobjdump is None:
            print("kiln: no cuobjdump (CUDA_HOME/bin, PATH, nvidia-cuda-cuobjdump): CUDA architectures not "
                  "checked", file=log, flush=True)
        else:
            device = cuda_archs_found(res.wheel, cuobjdump)
            print(f"kiln: CUDA architectures found by {cuobjdump}: {device}", file=log, flush=True)
            if why := check_cuda_archs(device, cell.cuda_archs):
                raise BuildError(f"{res.wheel.name}: {why}")
            if why := check_served(device, cell.archs_served, f"kiln/{cell.variant.name}"):
                raise BuildError(f"{res.wheel.name}: {why}")
            code = archs.coverage(cell.archs_served, device.sass, device.ptx)
            print(f"kiln: GPUs kiln/{cell.variant.name} serves: "
                  + ", ".join(f"{cc} {how}" for cc, how in code.items()), file=log, flush=True)
    prov = Provenance(
        kiln_version=kiln.__version__, cell=cell.id, variant=cell.variant.name,
        recipe=cell.recipe.path.name, recipe_sha256=cell.recipe.sha256, source_url=src.url,
        source_sha256=src.sha256, python=res.python, torch=res.installed.get("torch"),
        cuda_archs=built_for, nvcc=res.nvcc if res.nvcc is not None else (
            host.nvcc_version if cell.variant.cuda_major else None),
        compiler=res.compiler, build_env=res.freeze, backend=res.backend,
        build_requires=res.build_requires.to_json() if res.build_requires else None,
        closure_of=cell.closure_of, cuda_archs_found=device.to_json() if device else None,
        archs_served=list(cell.archs_served) if device and cell.archs_served else None,
        archs_code={cc: str(how) for cc, how in archs.coverage(cell.archs_served, device.sass, device.ptx).items()}
        if device and cell.archs_served else None,
        gpus_reason=cell.recipe.build.gpus.reason if cell.recipe.build.gpus and cell.variant.cuda_major else None,
        cuda_toolkit=res.cuda_toolkit if cell.variant.cuda_major else None,
        cython_regenerated=dict(res.cython.replaced) if res.cython and res.cython.replaced else None,
        cython_regenerated_by=res.cython.cython if res.cython and res.cython.replaced else None)
    pins = pins_for(cell, toolchains, res.installed, res.wheel)
    for pin in pins:
        print(f"kiln: run-export: {pin}" + (f" ({pin.why})" if pin.why else ""), file=log, flush=True)
    finished = finish(RawWheel(res.wheel, tuple(res.ld_paths)), cell, prov, pins, work / "finished", work / "finish")
    for old, new in (prov.runtime_replaced or {}).items():
        print(f"kiln: runtime.replace: {old} -> {new if new is not None else '(dropped)'}", file=log, flush=True)
    return finished, built_for


def build_cells(cells: list[Cell], ctx: BuildContext, console: Console | None = None) -> list[CellResult]:
    """Build every cell in turn, saying so as it goes (``ctx.progress``, else rich's display on a
    terminal and flushed start/end/heartbeat lines elsewhere); failures are collected, not
    raised."""
    progress = ctx.progress or progress_for(console or Console(stderr=True))
    ctx = replace(ctx, progress=progress)
    results: list[CellResult] = []
    with progress:
        for i, cell in enumerate(cells, 1):
            progress.start(cell.id, ctx.home.logs / f"{cell.id}.log", f"[{i}/{len(cells)}] {cell.id}")
            result = build_cell(cell, ctx)
            progress.end(result)
            results.append(result)
    return results


# ----------------------------------------------------------------------------- steps run apart
# CI runs a cell's steps as separate commands (`kiln source`, cibuildwheel, `kiln finish`);
# these are the same functions `_steps` runs, with what passes between them kept on disk.

SOURCE_RECORD = ".kiln-source.json"
"""Written into an exported source tree: where the source came from, for the provenance."""


@dataclass(frozen=True)
class SourceRecord:
    """What `kiln source` writes into the tree it exports (SOURCE_RECORD): the cell, and the
    sdist's URL and sha256, for the provenance `kiln finish` writes."""

    cell: str
    url: str
    sha256: str

    def write(self, tree: Path) -> None:
        (tree / SOURCE_RECORD).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, tree: Path) -> SourceRecord:
        """The tree's record; BuildError naming it when it is not one."""
        path = tree / SOURCE_RECORD
        try:
            data = json.loads(path.read_text())
            return cls(str(data.get("cell") or ""), str(data["url"]), str(data["sha256"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BuildError(f"{path}: not a source record of `kiln source` ({type(exc).__name__}: {exc})") from None


def export_source(cell: Cell, home: Home, out: Path, index_url: str | None = None) -> Path:
    """The cell's fetched and patched source tree at ``out`` (which must not hold anything)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BuildError(f"{out}: exists and is not empty; give --out a new directory")
    home.logs.mkdir(parents=True, exist_ok=True)
    work = home.work / f"{cell.id}-source"
    with (home.logs / f"{cell.id}.source.log").open("w") as log:
        src, srcdir = prepare_source(cell, home, work, index_url, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    shutil.move(srcdir, out)
    shutil.rmtree(work, ignore_errors=True)
    SourceRecord(cell.id, src.url, src.sha256).write(out)
    return out


def source_requirements(cell: Cell, home: Home, source_dir: Path | None,
                        index_url: str | None = None) -> BuildRequirements:
    """Tiers 1 and 2 of the cell's build requirements, from ``source_dir`` (a tree `kiln source`
    made) or from the cell's source, fetched and unpacked for the purpose."""
    if source_dir is not None:
        return buildreqs.static(source_dir, cell.recipe)
    work = home.work / f"{cell.id}-requirements"
    try:
        with open(os.devnull, "w") as log:
            _, srcdir = prepare_source(cell, home, work, index_url, log)
        return buildreqs.static(srcdir, cell.recipe)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def finish_raw(raw: Path, cell: Cell, ctx: BuildContext, source_dir: Path | None = None,
               build_record: Path | None = None) -> Path:
    """Finish and smoke-test a raw wheel built elsewhere (by cibuildwheel in CI).

    The source's URL and sha256 come from ``source_dir``'s record (else the source is fetched
    again, hash-checked); the build environment from the record cibuildwheel's before-build
    left beside the wheel (``build_record``)."""
    home = ctx.home
    if not raw.is_file():
        raise BuildError(f"{raw}: no such wheel")
    if source_dir is not None and (source_dir / SOURCE_RECORD).is_file():
        rec = SourceRecord.read(source_dir)
        if rec.cell not in ("", cell.id) and not rec.cell.startswith(f"{cell.recipe.name}-{cell.version}-"):
            raise BuildError(f"{source_dir} holds the source of {rec.cell}, not of {cell.id}")
        src = source.Source(source_dir, rec.url, rec.sha256)
    else:
        src = source.fetch(cell.recipe, cell.version, home.sources, ctx.index_url)
    res = BuildRecord.load(build_record or raw.parent / RECORD).result(raw)
    home.logs.mkdir(parents=True, exist_ok=True)
    log_path = home.logs / f"{cell.id}.finish.log"
    work = home.work / f"{cell.id}-finish"
    with log_path.open("w") as log:
        try:
            finished, _ = finish_cell(cell, ctx.toolchains, res, src, work, log)
            dest = smoke_and_keep(finished, cell, ctx, work, log)
        except KilnError as exc:
            raise type(exc)(f"{exc.message} (log: {log_path})") from None
    shutil.rmtree(work, ignore_errors=True)
    return dest

"""`kiln up`, the main job: mirror up, build what is missing, publish, say how to install."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace

from rich.console import Console

from kiln import closure, estimate, mirror
from kiln import status as status_page
from kiln.build import BuildContext, build_cells
from kiln.errors import KilnError
from kiln.home import CellOutcome
from kiln.logs import duration
from kiln.matrix import MAIN, Cell
from kiln.mirror.server import ServeOptions
from kiln.plan import Status, cell_status, offline, replan, to_build, upstream_versions


@dataclass
class UpReport:
    """What `kiln up` did."""

    url: str
    started: bool
    built: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One line per cell this host cannot build (``<cell>: <why>``)."""
    impossible: list[str] = field(default_factory=list)
    """One line per cell a build found cannot exist (kiln.feasible), this run's or an earlier one's."""
    planned: list[estimate.Estimate] = field(default_factory=list)
    """What was to be built, each cell with its estimate, said before the build started."""
    notes: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    """One line per wheel taken off its index (it has no code for GPUs the index serves), kept in the attic."""
    install: list[str] = field(default_factory=list)
    status_page: str | None = None
    """Where the mirror serves the status page (rewritten at the end of every run)."""


def say_plan(todo: list[Cell], planned: list[estimate.Estimate], console: Console) -> None:
    """What a build will make and how long it should take, before it starts: one line per cell
    (its archs and estimate), then the total."""
    console.print(f"kiln up: building {len(todo)} cells, {estimate.summary(planned)}", markup=False, highlight=False)
    for cell, est in zip(todo, planned, strict=True):
        archs = f" archs {cell.cuda_archs}" if cell.variant.cuda_major else ""
        build = f" build {cell.build_number}" if cell.build_number else ""
        console.print(f"  {cell.id}{archs}{build}: ~{duration(est.seconds, about=True)}"
                      f"{'' if est.source == 'here' else ' (from its recipe timeout)'}", markup=False, highlight=False)


def install_lines(url: str, cells: list[Cell]) -> list[str]:
    """One `uv pip install` line per variant, naming its projects."""
    by_variant: dict[str, set[str]] = {}
    for cell in cells:
        by_variant.setdefault(cell.variant.name, set()).add(cell.project)
    return [f"uv pip install --index-url {mirror.simple_url(url, v)} {' '.join(sorted(ps))}"
            for v, ps in sorted(by_variant.items())]


def up(cells: list[Cell], all_variants: list[Cell], run: BuildContext, serving: ServeOptions,
       console: Console | None = None) -> UpReport:
    """Start (or reuse) the home's mirror in the background (``serving``: where it listens, what
    root/pypi mirrors), build every missing cell this host can build (``run``: the toolchains,
    the home, whose wheelhouse they land in, the backend, the index), publish every finished
    wheel of ``cells``.

    ``all_variants``: the cells whose variants get an index (every recipe's, not only the
    ones picked for building).
    """
    toolchains, home = run.toolchains, run.home
    console = console or Console(stderr=True)
    variants = sorted({c.variant for c in all_variants} | {c.variant for c in cells}, key=str)
    say = functools.partial(console.print, markup=False, highlight=False, soft_wrap=True)
    say(f"kiln up: the mirror of {home.root}: starting it, or reusing the one running")
    began = time.monotonic()
    served, _ = mirror.serve(home, variants, toolchains, replace(serving, background=True))
    say(f"kiln up: mirror {served.url}: "
        + (f"started in {duration(time.monotonic() - began, about=True)}" if served.started else "already running"))
    report = UpReport(url=served.url, started=served.started, notes=list(served.notes))
    # The plan, worked out once for this run: every cell the status page shows (the picked cells'
    # decide what is built), updated below with what the build and the publishing did.
    everything = status_page.unique([*all_variants, *cells])
    wheelhouse = run.out
    published = mirror.published(served.url, sorted({c.variant.name for c in closure.with_closure(everything, home)}
                                                    | {MAIN}))
    plan = cell_status(everything, toolchains, home, wheelhouse, published)
    picked = {c.id for c in closure.with_closure(cells, home)}
    status = [r for r in plan if r.cell in picked]
    report.already = [r.wheel or r.cell for r in status if r.status == Status.PUBLISHED]
    report.skipped = [f"{r.cell}: {r.detail}" for r in status if r.status == Status.NOT_BUILDABLE and not r.impossible]
    report.impossible = [f"{r.cell}: {r.detail}" for r in status if r.status == Status.NOT_BUILDABLE and r.impossible]
    todo, _ = to_build(cells, status, home)
    unserved = [r for r in status if r.status == Status.UNSERVED and r.wheel and r.on_mirror]
    if todo:
        report.planned = estimate.estimate(todo, home)
        say_plan(todo, report.planned, console)
        results = build_cells(todo, run, console)
        report.built = [w for r in results if r.status == CellOutcome.BUILT and r.wheel
                        for w in [r.wheel, *r.closure_built]]
        report.failed = [f"{r.cell}: {r.error} (log: {r.log})" for r in results if r.status == CellOutcome.FAILED]
        report.impossible += [f"{r.cell}: {r.error}" for r in results if r.status == CellOutcome.NOT_BUILDABLE]
        plan = replan(plan, todo, toolchains, home, wheelhouse, published)
    picked = {c.id for c in closure.with_closure(cells, home)}  # with the closures this build found
    rows = {r.cell: r for r in plan if r.cell in picked}
    wheels = [wheelhouse / r.wheel for r in rows.values() if r.status == Status.BUILT and r.wheel]
    ok = {c.cell for c in rows.values() if c.status in (Status.BUILT, Status.PUBLISHED)}
    touched = {c.id for c in todo}  # the rows the plan works out again at the end, with what is on the mirror then
    if wheels:
        say(f"kiln up: publishing {len(wheels)} wheel{'s' if len(wheels) != 1 else ''} to {served.url}")
        for res in mirror.publish(wheels, served.url, home, [*all_variants, *cells]):
            (report.uploaded if res.uploaded else report.already).append(res.wheel)
        for row in rows.values():
            if row.status == Status.BUILT and row.wheel:
                published.setdefault(row.variant, []).append(row.wheel)
                touched.add(row.cell)
    for row in unserved:  # after publishing: an index never goes without a wheel it could have
        assert row.wheel is not None and row.unserved is not None
        moved = mirror.move_off(served.url, home, mirror.index_name(row.variant), row.wheel,
                                f"no code for {', '.join(row.unserved)}, which the index serves")
        report.moved.append(moved.line())
        say(f"kiln up: {moved.line()}")
        published[row.variant] = [f for f in published.get(row.variant, []) if f != row.wheel]
        touched.add(row.cell)
    report.install = install_lines(served.url, [c for c in cells if c.id in ok])
    known = closure.with_closure(everything, home)
    plan = replan(plan, [c for c in known if c.id in touched], toolchains, home, wheelhouse, published)
    upstream = upstream_versions([c.project for c in everything], None if offline() else run.index_url)
    try:
        report.status_page = status_page.refresh(home, everything, toolchains, plan, upstream)
    except (OSError, KilnError) as exc:
        report.notes.append(f"status page not updated: {exc}")
    return report

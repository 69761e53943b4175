"""The status page and its JSON: every cell of the build matrix, as a team asks about it.

Per project (and version), a matrix of Python x variant cells coloured by status (published,
built, failed, stale, not buildable, missing; kiln.plan's statuses), each with its wheel's size,
its build time, the CUDA architectures cuobjdump found, and a link to its log or the reason it
cannot build; per variant the lines that install from the mirror with uv, pip and pixi; the
mirror's URL and kiln's version. One HTML file with its style inline, nothing fetched.

`kiln status --html FILE` writes the page anywhere (its log links are the logs' own paths);
`--json` prints the same data. The home's running mirror serves the page at ``/+kiln/``:
`kiln up` and `kiln publish` write it into ``site_dir(home)`` (the nginx prefix's ``status/``),
with the logs of failed cells beside it under ``logs/``.
"""

from __future__ import annotations

import html
import json
import shutil
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

import kiln
from kiln import closure, mirror
from kiln.clientconfig import render
from kiln.home import CellOutcome, CellResult, Home, write_atomic
from kiln.matrix import Cell, Variant
from kiln.mirror.server import ServerFiles
from kiln.plan import COLOURS, CellStatus, Status, Upstream, cell_status, mirror_has
from kiln.provenance import CudaArchs
from kiln.toolchains import Toolchains

STATUS_DIR = "status"
"""The page's directory in the mirror's nginx prefix; nginx serves it at ``PATH``."""
PATH = "/+kiln/"
LOGS = "logs"
CLIENTS = ("uv", "pip", "pixi")
LOG_TAIL_BYTES = 2 * 1024 * 1024
"""A failed cell's log served beside the page keeps its last 2 MiB (the error is at the end)."""

def site_dir(home: Home) -> Path:
    """Where the page the home's mirror serves at ``/+kiln/`` lives: ``<home>/devpi/nginx/status``,
    which nginx (prefix ``<home>/devpi/nginx``) reads with ``alias status/;``."""
    return ServerFiles(home).nginx / STATUS_DIR


@dataclass
class CellView:
    """One cell on the page."""

    cell: str
    project: str
    version: str
    python: str
    variant: str
    status: Status
    detail: str = ""
    """Why it failed, why it cannot be built here, or why it is stale."""
    wheel: str | None = None
    size: int | None = None
    """The wheel's bytes, where the wheelhouse holds it."""
    seconds: float | None = None
    """How long its last build here took."""
    cuda_archs: str | None = None
    """The architectures the cell asks for (``8.0;9.0+PTX``, ``upstream``); None without CUDA."""
    cuda_archs_found: CudaArchs | None = None
    """What cuobjdump found in its wheel."""
    log: str | None = None
    """The log of its last build, in the home."""
    log_href: str | None = None
    """The log's link on the page."""
    closure_of: str | None = None


@dataclass
class VariantView:
    """One variant's index and how to install from it."""

    name: str
    index_url: str
    projects: list[str]
    install: dict[str, str]
    """client (uv, pip, pixi) -> the command that installs the variant's projects."""
    config: dict[str, str]
    """client -> the configuration that points it at the index (`kiln config`'s)."""


@dataclass
class ProjectView:
    """One project version: its cells, and the Pythons and variants its matrix spans."""

    project: str
    version: str
    pythons: list[str]
    variants: list[str]
    cells: list[CellView]

    upstream: str | None = None
    """The project's newest final release on the index (kiln.plan.upstream_versions); None: unknown
    or none (``upstream_why`` says which)."""
    upstream_why: str | None = None
    """Why the newest release is unknown (offline, the index unreachable); None when known or not asked."""
    mirror_has_upstream: bool | None = None
    """Whether the mirror has that release; None when it is unknown."""

    def at(self, python: str, variant: str) -> CellView | None:
        return next((c for c in self.cells if c.python == python and c.variant == variant), None)


@dataclass
class Page:
    """Everything the page and its JSON show."""

    kiln_version: str
    mirror: str | None
    """The mirror's URL; None when none was given and none runs for the home."""
    generated: str
    """When, in UTC (ISO 8601)."""
    counts: dict[str, int]
    projects: list[ProjectView] = field(default_factory=list)
    variants: list[VariantView] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        for project, view in zip(data["projects"], self.projects, strict=True):
            for cell, cv in zip(project["cells"], view.cells, strict=True):
                cell["status"] = str(cv.status)
                cell["cuda_archs_found"] = cv.cuda_archs_found.to_json() if cv.cuda_archs_found else None
        return data


def file_href(log: Path) -> str:
    """A log's link on a page written outside the mirror: the file itself."""
    return log.absolute().as_uri()


def served_href(log: Path) -> str:
    """A log's link on the served page: its copy under ``logs/`` beside it."""
    return f"{LOGS}/{urllib.parse.quote(log.name)}"


def collect(rows: list[CellStatus], cells: list[Cell], home: Home, mirror_url: str | None,
            wheelhouse: Path | None = None, served: bool = False) -> Page:
    """The page's data from the plan's ``rows`` (kiln.plan.cell_status of ``cells``, worked out
    by the caller once). The page the mirror serves (``served``) links the logs of failed cells
    alone, beside it; a page written elsewhere links every log as a file."""
    wheelhouse = wheelhouse or home.wheelhouse
    log_href: Callable[[Path], str] = served_href if served else file_href
    failed_logs_only = served
    by_id = {c.id: c for c in closure.with_closure(unique(cells), home)}
    projects: dict[tuple[str, str], ProjectView] = {}
    for row in rows:
        result = CellResult.load(home, row.cell)
        wheel = wheelhouse / row.wheel if row.wheel else None
        log = Path(result.log) if result and result.log else None
        view = CellView(
            cell=row.cell, project=row.project, version=row.version, python=row.python, variant=row.variant,
            status=row.status, detail=row.detail, wheel=row.wheel,
            size=wheel.stat().st_size if wheel is not None and wheel.is_file() else None,
            seconds=_seconds(row.status, result), cuda_archs=row.cuda_archs,
            cuda_archs_found=CudaArchs.from_json(row.cuda_archs_found),
            log=str(log) if log else None, closure_of=row.closure_of)
        if row.status == Status.FAILED and result is not None:
            view.detail = result.error or row.detail
        if log is not None and log.is_file() and (row.status == Status.FAILED or not failed_logs_only):
            view.log_href = log_href(log)
        key = (row.project, row.version)
        if key not in projects:
            projects[key] = ProjectView(row.project, row.version, [], [], [])
        pv = projects[key]
        pv.cells.append(view)
        if row.python not in pv.pythons:
            pv.pythons.append(row.python)
        if row.variant not in pv.variants:
            pv.variants.append(row.variant)
    for pv in projects.values():
        pv.pythons.sort(key=lambda p: tuple(int(x) for x in p.split(".") if x.isdigit()))
        pv.variants.sort()
    url = mirror_url or _default_mirror()
    variants = [variant_view(Variant.parse(name), url, sorted({c.project for c in by_id.values()
                                                               if c.variant.name == name}))
                for name in sorted({c.variant.name for c in by_id.values()})]
    counts = {str(s): sum(1 for r in rows if r.status == s) for s in Status}
    return Page(kiln_version=kiln.__version__, mirror=mirror_url,
                generated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), counts=counts,
                projects=list(projects.values()), variants=variants)


def with_upstream(page: Page, rows: list[CellStatus], upstream: dict[str, Upstream] | None) -> Page:
    """``page`` with each project's newest upstream release (asked once for the run) and whether
    the mirror has it (from the plan's ``rows``)."""
    for pv in page.projects:
        up = (upstream or {}).get(canonicalize_name(pv.project))
        if up is None:
            continue
        pv.upstream, pv.upstream_why = up.newest, up.why or None
        pv.mirror_has_upstream = mirror_has(rows, pv.project, up.newest)
    return page


def unique(cells: list[Cell]) -> list[Cell]:
    """``cells`` less repeats of a cell (the same id), in order."""
    return list({c.id: c for c in cells}.values())


def _seconds(status: Status, result: CellResult | None) -> float | None:
    """The build time of the cell's last build here, where that build made what the row shows."""
    if result is None:
        return None
    if status == Status.FAILED:
        return result.seconds
    if status in (Status.BUILT, Status.PUBLISHED, Status.STALE) and result.status == CellOutcome.BUILT:
        return result.seconds
    return None


def _default_mirror() -> str:
    from kiln.clientconfig import default_mirror

    return default_mirror()


def variant_view(variant: Variant, url: str, projects: list[str]) -> VariantView:
    """The index of ``variant`` on the mirror at ``url`` and the lines installing ``projects``."""
    index = mirror.simple_url(url, variant.name)
    parsed = urllib.parse.urlparse(index)
    host = parsed.hostname or ""
    local = host in ("127.0.0.1", "localhost", "::1")
    trusted = f" --trusted-host {host}" if parsed.scheme == "http" and not local else ""
    names = " ".join(projects)
    install = {
        "uv": f"uv pip install --index-url {index} {names}",
        "pip": f"pip install --index-url {index}{trusted} {names}",
        "pixi": f"pixi add --pypi {names}",
    }
    return VariantView(name=variant.name, index_url=index, projects=projects, install=install,
                       config={client: render(variant, url, client) for client in CLIENTS})


# ----------------------------------------------------------------------------- the HTML


def size_text(size: int | None) -> str:
    """``1.2 MB``; empty for no size."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    return f"{m}m {s:02d}s" if m < 60 else f"{m // 60}h {m % 60:02d}m"


STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1d1d; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #555; margin-bottom: 12px; } .meta code { color: #1d1d1d; }
.legend span { display: inline-block; padding: 2px 8px; margin: 0 6px 6px 0; border-radius: 4px;
               border-left: 4px solid; }
table.matrix { border-collapse: separate; border-spacing: 4px; }
table.matrix th { font-weight: 600; text-align: left; padding: 2px 6px; white-space: nowrap; }
td.cell { vertical-align: top; min-width: 170px; max-width: 320px; padding: 6px 8px; border-radius: 4px;
          border-left: 4px solid; }
td.none { color: #999; text-align: center; }
.status { font-weight: 600; } .facts { color: #333; font-size: 12px; } .why { font-size: 12px; color: #5a1010;
          word-break: break-word; } .archs { font-family: ui-monospace, monospace; font-size: 12px; }
.variant { margin-bottom: 14px; } pre { background: #f5f5f5; padding: 6px 8px; margin: 4px 0; overflow-x: auto;
          font-size: 12px; } .client { font-weight: 600; margin-top: 6px; }
summary { cursor: pointer; color: #555; font-size: 12px; }
"""


def _cell_html(c: CellView | None) -> str:
    if c is None:
        return '<td class="none">&mdash;</td>'
    bg, border = COLOURS[c.status].background, COLOURS[c.status].border
    parts = [f'<div class="status">{html.escape(str(c.status))}</div>']
    facts = [x for x in (size_text(c.size), seconds_text(c.seconds)) if x]
    if facts:
        parts.append(f'<div class="facts">{html.escape(" · ".join(facts))}</div>')
    if c.cuda_archs_found is not None:
        parts.append(f'<div class="archs" title="what cuobjdump found in the wheel">found '
                     f'{html.escape(str(c.cuda_archs_found))}</div>')
    elif c.cuda_archs and c.cuda_archs != "upstream":
        parts.append(f'<div class="archs" title="asked for">wants {html.escape(c.cuda_archs)}</div>')
    if c.closure_of:
        parts.append(f'<div class="facts">closure of {html.escape(c.closure_of)}</div>')
    if c.detail and c.status in (Status.FAILED, Status.NOT_BUILDABLE, Status.STALE, Status.NARROW,
                                  Status.UNSERVED):
        parts.append(f'<div class="why">{html.escape(c.detail)}</div>')
    if c.log_href:
        parts.append(f'<div class="facts"><a class="log" href="{html.escape(c.log_href, quote=True)}">log</a></div>')
    title = c.wheel or c.cell
    return (f'<td class="cell status-{html.escape(str(c.status))}" data-cell="{html.escape(c.cell, quote=True)}" '
            f'data-status="{html.escape(str(c.status), quote=True)}" title="{html.escape(title, quote=True)}" '
            f'style="background:{bg};border-color:{border}">{"".join(parts)}</td>')


def _upstream_html(p: ProjectView) -> str:
    """The project's newest upstream release and whether the mirror has it; nothing when not asked."""
    if p.upstream is None and p.upstream_why is None:
        return ""
    if p.upstream is None:
        newest, has = f"unknown ({p.upstream_why})", "unknown"
    else:
        newest, has = p.upstream, "yes" if p.mirror_has_upstream else "no"
    return (f'<div class="meta upstream" data-upstream="{html.escape(p.upstream or "unknown", quote=True)}" '
            f'data-on-mirror="{html.escape(has, quote=True)}">newest upstream: {html.escape(newest)} &middot; '
            f"on the mirror: {html.escape(has)}</div>")


def _project_html(p: ProjectView) -> str:
    pid = html.escape(f"{p.project}-{p.version}", quote=True)
    head = "".join(f"<th>{html.escape(v)}</th>" for v in p.variants)
    rows = "".join(f"<tr><th>Python {html.escape(py)}</th>{''.join(_cell_html(p.at(py, v)) for v in p.variants)}</tr>"
                   for py in p.pythons)
    return (f'<section class="project" id="{pid}" data-project="{html.escape(p.project, quote=True)}">'
            f"<h2>{html.escape(p.project)} {html.escape(p.version)}</h2>{_upstream_html(p)}"
            f'<table class="matrix"><tr><th></th>{head}</tr>{rows}</table></section>')


def _variant_html(v: VariantView) -> str:
    blocks = "".join(f'<div class="client">{html.escape(client)}</div>'
                     f'<pre data-client="{html.escape(client, quote=True)}">{html.escape(v.install[client])}</pre>'
                     f"<details><summary>{html.escape(v.config[client].splitlines()[0].lstrip('# '))}</summary>"
                     f"<pre>{html.escape(v.config[client])}</pre></details>" for client in CLIENTS)
    return (f'<div class="variant" data-variant="{html.escape(v.name, quote=True)}"><h3>{html.escape(v.name)}</h3>'
            f'<div class="meta">index <code>{html.escape(v.index_url)}</code>: '
            f"{html.escape(', '.join(v.projects))}</div>{blocks}</div>")


def render_html(page: Page) -> str:
    """The page: one self-contained HTML document (style inline, no script, nothing fetched)."""
    legend = "".join(f'<span class="status-{html.escape(str(s))}" style="background:{COLOURS[s].background};'
                     f'border-color:{COLOURS[s].border}">{html.escape(str(s))}: {page.counts.get(str(s), 0)}</span>'
                     for s in Status)
    mirror_text = (f"<code>{html.escape(page.mirror)}</code>" if page.mirror
                   else "none running (install lines use the default address)")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kiln status</title>
<style>{STYLE}</style></head>
<body>
<h1>kiln status</h1>
<div class="meta">mirror <span id="mirror">{mirror_text}</span> &middot; \
kiln <span id="kiln-version">{html.escape(page.kiln_version)}</span>
 &middot; generated {html.escape(page.generated)}</div>
<div class="legend">{legend}</div>
{"".join(_project_html(p) for p in page.projects) or "<p>No cells: no recipes.</p>"}
<h2>Install</h2>
{"".join(_variant_html(v) for v in page.variants)}
</body></html>
"""


def render_json(page: Page) -> str:
    return json.dumps(page.to_json(), indent=2) + "\n"


# ----------------------------------------------------------------------------- the served page


def write_site(page: Page, dest: Path, logs: list[Path]) -> Path:
    """``dest``/index.html, ``dest``/status.json and the tail of each of ``logs`` under
    ``dest``/logs/ (logs no cell links any more are removed); returns index.html."""
    logs_dir = dest / LOGS
    logs_dir.mkdir(parents=True, exist_ok=True)
    keep = set()
    for log in logs:
        keep.add(log.name)
        _copy_tail(log, logs_dir / log.name)
    for old in logs_dir.iterdir():
        if old.name not in keep:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    write_atomic(dest / "status.json", render_json(page))
    write_atomic(dest / "index.html", render_html(page))
    return dest / "index.html"


def _copy_tail(src: Path, dest: Path) -> None:
    """Copy a log, or its last LOG_TAIL_BYTES from a line's start, saying what was left out."""
    size = src.stat().st_size
    start = max(0, size - LOG_TAIL_BYTES)
    with src.open("rb") as f:
        f.seek(start)
        data = f.read()
    if start:
        newline = data.find(b"\n")
        if 0 <= newline < len(data) - 1:  # start on a whole line where one is left
            data, start = data[newline + 1:], start + newline + 1
        data = f"[kiln: the first {start} bytes of {src.name} left out]\n".encode() + data
    write_atomic(dest, data.decode("utf-8", errors="replace"))


def refresh(home: Home, cells: list[Cell], toolchains: Toolchains, rows: list[CellStatus] | None = None,
            upstream: dict[str, Upstream] | None = None) -> str | None:
    """Write the page the home's running mirror serves at ``/+kiln/``, with the logs of failed
    cells beside it, from ``rows`` (the run's plan), else from a plan of ``cells`` worked out
    here against the mirror, and ``upstream`` (each project's newest release, asked once for the
    run; None: not shown); returns its URL, or None when no mirror runs for the home."""
    current = mirror.running(home)
    if current is None:
        return None
    if rows is None:
        variants = sorted({c.variant.name for c in closure.with_closure(unique(cells), home)})
        published = mirror.published(current.url, variants)
        rows = cell_status(unique(cells), toolchains, home, home.wheelhouse, published)
    page = with_upstream(collect(rows, cells, home, current.url, served=True), rows, upstream)
    logs = [Path(c.log) for p in page.projects for c in p.cells if c.log_href and c.log]
    write_site(page, site_dir(home), logs)
    return current.url.rstrip("/") + PATH

"""Cell logs: a step run into its log, what a failed step's output says, in one line; and what a
running build says as it goes (a rich display on a terminal, flushed lines a CI log can read
elsewhere)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from kiln.errors import BuildError, ConfigError
from kiln.home import CellOutcome, CellResult


def read_from(log: TextIO, start: int) -> str:
    """What was written to the log file ``log`` from offset ``start`` on."""
    log.flush()
    try:
        with open(log.name, encoding="utf-8", errors="replace") as f:
            f.seek(start)
            return f.read()
    except (OSError, AttributeError, TypeError):
        return ""


_COMPILER_ERROR = re.compile(r"^(\S+?(:\d+(:\d+)?:|\(\d+\):) (fatal )?error\b.*"
                             r"|(cc1\w*|ld|collect2): (fatal )?error: .*)",
                             re.IGNORECASE)
_PY_EXCEPTION = re.compile(r"^([\w.]+\.)?\w*(Error|Exception|Exit|Interrupt)(: .*)?$")
_UV_CAUSE = re.compile(r"^(\s*)(?:╰─▶|cause:)\s*(.+)$")
_CMAKE_ERROR = re.compile(r"^CMake Error\b.*")
_ERROR_WORD = re.compile(r"(^|\s)(error|ERROR)\b:?")


def decisive_line(text: str) -> str | None:
    """The line of a failed command's output that says why: the first compiler error, else the
    first CMake error, else uv's reason, else the last Python exception, else the last line that
    says error."""
    raw = text.splitlines()
    lines = [ln.strip() for ln in raw if ln.strip()]
    compiler = [ln for ln in lines if _COMPILER_ERROR.match(ln)]
    # A fatal error first, then the package's own sources before system headers (which fail in
    # the feature probes numpy.distutils and CMake run on purpose).
    for ln in sorted(compiler, key=lambda ln: (" fatal error" not in ln, ln.startswith("/usr/"))):
        return ln
    for i, ln in enumerate(raw):
        if _CMAKE_ERROR.match(ln):  # the message is on the indented lines that follow
            more = next((m.strip() for m in raw[i + 1:i + 4] if m.strip()), "")
            return f"{ln.strip()} {more}".strip()
    for i, ln in enumerate(raw):
        if m := _UV_CAUSE.match(ln):  # uv's reason, wrapped onto indented lines
            parts = [m.group(2).strip()]
            for more in raw[i + 1:]:
                if not more.strip() or len(more) - len(more.lstrip()) <= len(m.group(1)) or _UV_CAUSE.match(more):
                    break
                parts.append(more.strip())
            return " ".join(parts)
    for ln in reversed(lines):
        if _PY_EXCEPTION.match(ln) and not ln.startswith(("subprocess.CalledProcessError", "CalledProcessError")):
            return ln
    for ln in reversed(lines):
        if _ERROR_WORD.search(ln):
            return ln
    return lines[-1] if lines else None


def run_logged(cmd: list[str], log: TextIO, env: dict[str, str] | None = None,
               cwd: Path | None = None, timeout: float | None = None, shown: list[str] | None = None) -> None:
    """Run ``cmd`` with its output in the log; a failure raises a BuildError naming the
    log's decisive line. ``shown``: the command as the log and the error name it."""
    shown = shown or cmd
    print(f"$ {' '.join(shown)}", file=log, flush=True)
    start = log.tell() if log.seekable() else None
    try:
        res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{Path(shown[0]).name} timed out after {timeout:.0f}s") from None
    if res.returncode == 0:
        return
    if res.returncode in (-9, 137):
        raise BuildError("killed by SIGKILL (the OOM killer, most likely): raise build.memory_per_job_gb")
    what = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(shown[:3]))
    cause = decisive_line(read_from(log, start)) if start is not None else None
    exited = f"`{what} ...` exited {res.returncode}"
    raise BuildError(f"{cause} ({exited})" if cause else exited)


# ----------------------------------------------------------------------------- progress


def last_line(path: Path, tail_bytes: int = 16 * 1024) -> str | None:
    """The last non-empty line of the log at ``path`` (None when it has none or cannot be read);
    a carriage return ends a line too, as ninja's and pip's progress use it."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - tail_bytes))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), None)


def duration(seconds: float, about: bool = False) -> str:
    """A time as kiln says it: exactly, as taken (``45s``, ``3m00s``, ``1h02m03s``); or ``about``,
    as an estimate or a wait is said (``45 s``, ``12 min``, ``2 h 05 min``)."""
    if about:
        if seconds < 90:
            return f"{max(1, round(seconds))} s"
        minutes = round(seconds / 60)
        return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


HEARTBEAT_ENV = "KILN_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 60.0
LAST_LINE_CHARS = 300
"""A heartbeat quotes at most this much of the log's last line."""


def heartbeat_interval() -> float:
    """Seconds between heartbeat lines: $KILN_HEARTBEAT_S, else a minute."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{HEARTBEAT_ENV}={raw}: not a number of seconds above 0")
    return value


class CellProgress(Protocol):
    """What a build of cells reports as it goes: a cell started, a cell ended. Used as a context
    manager around the build."""

    def start(self, cell: str, log: Path, label: str) -> None:
        """``cell`` started, writing ``log``; ``label`` is how to name it (``[2/5] <cell>``)."""

    def end(self, result: CellResult) -> None:
        """The cell ``result.cell`` ended."""

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@dataclass
class _Running:
    cell: str
    log: Path
    label: str
    started: float


class LineProgress:
    """One line when a cell starts and one when it ends (status, elapsed, log), and while one
    builds a heartbeat every ``heartbeat_s`` with its log's last line; every line flushed as it
    is written, so a CI log or ``kiln up > up.log 2>&1`` shows the build as it goes."""

    def __init__(self, out: IO[str], heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> None:
        self.out = out
        self.heartbeat_s = heartbeat_s
        self._running: list[_Running] = []  # a closure cell builds inside its parent: innermost last
        self._lock = threading.Lock()
        self._said = time.monotonic()  # when the last line was written
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="kiln-heartbeat", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def start(self, cell: str, log: Path, label: str) -> None:
        with self._lock:
            self._running.append(_Running(cell, log, label, time.monotonic()))
            self._say(f"kiln: {label}: started; log: {log}")

    def end(self, result: CellResult) -> None:
        with self._lock:
            mine = next((r for r in reversed(self._running) if r.cell == result.cell), None)
            if mine is not None:
                self._running.remove(mine)
            label = mine.label if mine else result.cell
            took = f"{result.status} in {duration(result.seconds)}"
            if result.status == CellOutcome.BUILT:
                said = f"{took} ({result.wheel})" if result.wheel else took
            else:
                said = f"{took}: {result.error}"
            self._say(f"kiln: {label}: {said}; log: {result.log}")

    def beat(self) -> None:
        """Write the heartbeat of the innermost running cell (if one runs)."""
        with self._lock:
            if not self._running:
                return
            r = self._running[-1]
            line = last_line(r.log) or "(nothing yet)"
            if len(line) > LAST_LINE_CHARS:
                line = line[:LAST_LINE_CHARS] + "..."
            self._say(f"kiln: {r.cell}: building for {duration(time.monotonic() - r.started)}; log: {r.log}: {line}")

    def _beat(self) -> None:
        tick = min(1.0, self.heartbeat_s / 4)
        while not self._stop.wait(tick):
            if time.monotonic() - self._said >= self.heartbeat_s:
                self.beat()

    def _say(self, line: str) -> None:
        """Write one line and flush it (the caller holds the lock)."""
        self._said = time.monotonic()
        try:
            print(line, file=self.out, flush=True)
        except (OSError, ValueError):  # a closed pipe or stream: the build goes on
            pass


class RichProgress:
    """On a terminal: rich's display, a spinner and the elapsed time per cell."""

    def __init__(self, console: Console) -> None:
        columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn())
        self._progress = Progress(*columns, console=console, transient=False)
        self._tasks: dict[str, tuple[TaskID, str]] = {}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def start(self, cell: str, log: Path, label: str) -> None:
        self._tasks[cell] = (self._progress.add_task(label, total=1), label)

    def end(self, result: CellResult) -> None:
        if result.cell not in self._tasks:
            return
        task, label = self._tasks.pop(result.cell)
        if result.status == CellOutcome.BUILT:
            mark = "[green]built"
        elif result.status == CellOutcome.NOT_BUILDABLE:
            mark = f"[yellow]not buildable ({escape(result.error or '')})"
        else:
            mark = f"[red]FAILED ({escape(result.error or '')}) log: {escape(result.log)}"
        self._progress.update(task, completed=1, description=f"{label}: {mark}")
        self._progress.stop_task(task)


def progress_for(console: Console, heartbeat_s: float | None = None) -> CellProgress:
    """Rich's display where ``console`` writes to a terminal; lines elsewhere. A forced terminal
    (FORCE_COLOR, as CI runners often set) that is not a tty gets the lines: a live display
    there fills the log with redraws."""
    isatty = getattr(console.file, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:
        tty = False
    if console.is_terminal and tty:
        return RichProgress(console)
    return LineProgress(console.file, heartbeat_interval() if heartbeat_s is None else heartbeat_s)

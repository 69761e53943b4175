"""The kiln home: where wheels, logs, caches and the mirror's state live (default ./.kiln).

One writer at a time: `kiln serve` (while it starts), `build`, `up`, `publish`, `finish` and
`import` hold an exclusive ``flock`` on ``<home>/.lock``. A second writer waits for it, saying once
who holds it (as cargo and uv do for their caches); with ``--no-wait`` it fails in one line instead.
The kernel drops the lock when its holder exits, SIGKILL included, so no stale lock is ever left.

State files (a cell's result, the mirror's pids) are written atomically (a temp file in the same
directory, then rename) and read defensively: one that cannot be read is moved aside as
``<name>.bad`` with one line on stderr, and kiln goes on as if it were absent.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from kiln.errors import HomeBusy


def default_home() -> Path:
    return Path(os.environ.get("KILN_HOME", ".kiln")).absolute()


@dataclass(frozen=True)
class Home:
    root: Path

    def __post_init__(self) -> None:
        # Absolute, so that links made inside the home, the build sandbox's mounts and the mirror's
        # own processes (which run elsewhere) all name the same place as `--home DIR` did.
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def wheelhouse(self) -> Path:
        """Finished, smoke-tested wheels."""
        return self.root / "wheelhouse"

    @property
    def attic(self) -> Path:
        """Wheels kiln took off an index they no longer belong on (``<index>/<wheel>``), kept, never deleted."""
        return self.root / "attic"

    @property
    def failed(self) -> Path:
        """Wheels that built but failed their smoke test: kept aside, never published."""
        return self.root / "failed"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def cells(self) -> Path:
        """One JSON result per cell built here."""
        return self.root / "cells"

    @property
    def sources(self) -> Path:
        return self.root / "cache" / "sources"

    @property
    def ccache(self) -> Path:
        """The compiler cache, kept between runs."""
        return self.root / "cache" / "ccache"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def server(self) -> Path:
        """devpi-server's state."""
        return self.root / "devpi"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @contextmanager
    def lock(self, command: str, wait: bool = True) -> Iterator[None]:
        """Hold the home's writer lock for ``command``; wait for it (one line said) or, with
        ``wait`` false, raise HomeBusy naming the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if not wait:
                    raise HomeBusy(f"{self.root} is in use by {holder}; try again when it is done "
                                   "(without --no-wait, kiln waits for it)") from None
                print(f"kiln: waiting for {self.root}: in use by {holder}", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            record = json.dumps({"pid": os.getpid(), "command": command, "since": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data["since"])))
        return f"pid {int(data['pid'])} ({data['command']}, since {since})"
    except (ValueError, KeyError, TypeError):
        return "another kiln process"


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so that a reader, or a crash, sees the old file or the new one,
    never a part: a temp file beside it, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def set_aside(path: Path, why: str) -> Path:
    """Move a file kiln cannot use to ``<name>.bad`` (kept for a look) and say so in one line."""
    aside = path.with_name(path.name + ".bad")
    os.replace(path, aside)
    print(f"kiln: {path}: {why}; moved to {aside.name}", file=sys.stderr, flush=True)
    return aside


def read_json(path: Path) -> Any:
    """The JSON in a state file; None when it is absent, or unreadable (then set aside)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        set_aside(path, f"unreadable ({exc})")
        return None
    try:
        return json.loads(text)
    except ValueError:
        set_aside(path, "not valid JSON" if text.strip() else "empty")
        return None


class CellOutcome(StrEnum):
    """How a cell's last build ended (a StrEnum: saved as its value, equal to it)."""

    BUILT = "built"
    FAILED = "failed"
    NOT_BUILDABLE = "not-buildable"
    """Not a failure: the cell cannot exist (kiln.feasible); the error says why."""
"""How a cell's build ended: a wheel, a failure, or the cell found impossible (kiln.feasible:
the package's Requires-Python excludes its Python, or a build requirement has no wheel for it)."""


@dataclass
class CellResult:
    """What happened to one cell when it was last built here."""

    cell: str
    status: CellOutcome
    log: str
    seconds: float
    wheel: str | None = None
    error: str | None = None
    """Why it failed; for a cell found not buildable, the reason (the requirement and the Python)."""
    cuda_archs: str | None = None
    cuda_archs_found: dict[str, list[str]] | None = None
    """For a CUDA cell: the SASS and PTX cuobjdump found in its wheel (kiln.wheel.CudaArchs.to_json)."""
    closure_of: str | None = None
    """For a closure cell: the cell whose runtime requirement it is."""
    closure_built: list[str] = field(default_factory=list)
    """The wheels of runtime requirements built for this cell (its closure), in this build."""
    recipe_sha256: str | None = None
    """For a cell found not buildable: the sha256 of the recipe it was found with; the finding
    holds until the recipe changes (or `kiln build --force`)."""

    def save(self, home: Home) -> None:
        write_atomic(home.cells / f"{self.cell}.json", json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, home: Home, cell_id: str) -> CellResult | None:
        """The cell's last result; None when there is none or it cannot be read (set aside)."""
        path = home.cells / f"{cell_id}.json"
        data = read_json(path)
        if data is None:
            return None
        known = {f.name for f in fields(cls)}
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            result = cls(**{k: v for k, v in data.items() if k in known})
            if not isinstance(result.cell, str) or result.status not in set(CellOutcome):
                raise TypeError(f"status {result.status!r}")
            result.status = CellOutcome(result.status)
        except TypeError as exc:
            set_aside(path, f"not a cell result ({exc})")
            return None
        return result

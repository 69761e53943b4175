"""Simple project pages kept as files, so that nginx serves a warm page as it serves a wheel.

devpi renders every ``+simple/<project>/`` page in Python on every request, and kiln's plugin
(plugin.py) then reads every linked file's facts out of devpi's database: 10-600 ms a page on a
warm mirror, where nginx serves a file in under a millisecond. So the plugin keeps what it
answered, and nginx serves it until it changes:

- **What is kept:** a PEP 691 JSON project page of any index (``/<user>/<index>/+simple/<project>/``,
  the canonical name, no query), answered 200 to an Accept header in ``CACHED_ACCEPT`` (what uv and
  pip send; devpi answers each of them with JSON), when nginx marks the request (``PAGE_HEADER``)
  because it serves that page from ``<serverdir>/+pages/`` (deploy.py's ``location``). It is
  written as devpi's plugin answered it, byte for byte. Any other
  request (HTML, another Accept, a 503, a 404, a POST) reaches devpi as before.
- **When it goes:** a watcher thread reads devpi's changelog, serial by serial, on a primary and
  on a replica alike (a replica's changes arrive as imported serials), and removes the pages a
  change can touch: every index's page of a project whose versions, files or mirror links
  changed; every page when an index's configuration changed (bases, whitelist) or a change cannot
  be tied to a project. A page the upstream contributed to also goes when devpi's own copy of the
  upstream's page expires (its ``mirror_cache_expiry``), so that the next request asks devpi,
  which then asks the upstream, as without the page store.
- **No stale write:** a page is written only if no change to its project was seen at a serial
  after the one its request read; a change seen later removes it. A page whose upstream facts
  did not arrive (plugin.py's FactsSource) is answered but not kept.
- The store starts empty each time devpi-server starts (what happened while it was down is not
  known to it).

devpi's notifier thread was not used for the removal: on a replica it waits for each changed
file to be replicated before it calls anyone (5 s at a time), and a published wheel must show on
a replica's pages within a second.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

PAGES_DIR = "+pages"              # under devpi's serverdir, which is nginx's root
PAGE_FILE = "page.json"           # <serverdir>/+pages/<user>/<index>/+simple/<project>/page.json
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
PAGE_HEADER = "X-Kiln-Page"       # nginx -> devpi: this page is served from the store once kept
# The Accept headers of uv and pip, and PEP 691's own: devpi answers each with the JSON page.
CACHED_ACCEPT = (
    "application/vnd.pypi.simple.v1+json",
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01",
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01",
)
# the URL paths whose pages are kept: nginx's location and the plugin's check are this one pattern
PAGE_PATH = r"^/[A-Za-z0-9][^/]*/[A-Za-z0-9][^/]*/\+simple/[a-z0-9]([a-z0-9-]*[a-z0-9])?/$"
PAGE_PATH_RE = re.compile(PAGE_PATH)
SWEEP_S = 5.0
# changelog keys (devpi's keyfs) whose relpath is <user>/<index>/<project>/...
PROJECT_KEYS = frozenset({"PROJSIMPLELINKS", "PROJVERSIONS", "PROJVERSION"})
FILE_KEYS = frozenset({"STAGEFILE"})
EVERYTHING_KEYS = frozenset({"USER", "USERLIST", "MIRRORNAMESINIT"})


def name_and_version(filename: str) -> tuple[str, str] | None:
    """The canonical project and the version a release file's name (wheel or sdist) says."""
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    return str(name), str(version)


def project_of_file(relpath: str, value: Any) -> str | None:
    """The canonical project of a release file's changelog entry: its meta, else its name."""
    if isinstance(value, Mapping) and value.get("project"):
        return str(canonicalize_name(str(value["project"])))
    parsed = name_and_version(relpath.rsplit("/", 1)[-1])
    return parsed[0] if parsed else None


def touched(changes: Mapping[str, Any]) -> set[str] | None:
    """The canonical projects whose pages one serial's changes (relpath -> (keyname, back_serial,
    value), devpi's changelog entry) can change; None when it may be any page."""
    projects: set[str] = set()
    for relpath, change in changes.items():
        keyname, value = change[0], change[2]
        if keyname in EVERYTHING_KEYS:
            return None
        if keyname in PROJECT_KEYS:
            parts = relpath.split("/")
            if len(parts) < 3:
                return None
            projects.add(str(canonicalize_name(parts[2])))
        elif keyname in FILE_KEYS:
            project = project_of_file(relpath, value)
            if project is None:
                return None
            projects.add(project)
    return projects


class PageStore:
    """The kept pages under ``root`` and what may still be written there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._changed_at: dict[str, int] = {}   # project -> the last serial that changed it
        self._everything_at = -1                # the last serial that changed any page
        self._expires: dict[Path, float] = {}   # a kept page -> when its upstream part expires
        self.paused = False                     # the watcher cannot read the changelog: keep nothing

    def reset(self) -> None:
        """Start empty: nothing kept before this process is known to be current."""
        with self._lock:
            self._expires.clear()
            _remove_tree(self.root)
            self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, path_info: str) -> Path:
        return self.root / path_info.strip("/") / PAGE_FILE

    def keep(self, path_info: str, project: str, body: bytes, read_at: int, expires: float | None) -> bool:
        """Write the page answered for ``path_info`` from the state at serial ``read_at``; False
        (nothing written) when a change to ``project`` was seen after that serial."""
        if not PAGE_PATH_RE.match(path_info):
            return False
        with self._lock:
            if self.paused or read_at < max(self._everything_at, self._changed_at.get(project, -1)):
                return False
            path = self.path_of(path_info)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, body)
            if expires is not None:
                self._expires[path] = expires
            else:
                self._expires.pop(path, None)
            return True

    def changed(self, serial: int, projects: set[str] | None) -> None:
        """Serial ``serial`` changed ``projects`` (None: anything): remove their pages on every index."""
        with self._lock:
            if projects is None:
                self._everything_at = serial
                self._expires.clear()
                for user in _children(self.root):
                    _remove_tree(user)
                return
            for project in projects:
                self._changed_at[project] = serial
                for page_dir in self.root.glob(f"*/*/+simple/{glob.escape(project)}"):
                    self._remove_page(page_dir / PAGE_FILE)

    def sweep(self, now: float) -> None:
        """Remove the pages whose upstream part expired."""
        with self._lock:
            for path in [p for p, when in self._expires.items() if when <= now]:
                self._remove_page(path)

    def _remove_page(self, path: Path) -> None:
        self._expires.pop(path, None)
        path.unlink(missing_ok=True)


def _children(path: Path) -> Iterable[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        # renamed away first, so that nginx never serves a half-removed tree
        doomed = path.with_name(f".{path.name}.removing-{os.getpid()}-{time.monotonic_ns()}")
        path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # nginx's workers may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Watcher:
    """Reads devpi's changelog as serials are committed (or imported, on a replica) and tells the
    store what changed; sweeps expired pages between serials."""

    def __init__(self, keyfs: Any, store: PageStore, log: Any) -> None:
        self.keyfs = keyfs
        self.store = store
        self.log = log
        self.serial = keyfs.get_current_serial()
        self.thread = threading.Thread(target=self.run, name="kiln-pages", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                self.keyfs.wait_tx_serial(self.serial + 1, timeout=SWEEP_S, recheck=0.1)
                self.catch_up()
                self.store.paused = False
                self.store.sweep(time.time())
            except Exception:  # a database hiccup: every page goes, none is kept until it reads again
                self.log.exception("kiln: the page store's watcher failed; every kept page removed")
                self.store.paused = True
                self.store.changed(self.serial, None)
                time.sleep(1.0)

    def catch_up(self) -> None:
        with self.keyfs.get_connection() as conn:
            current = conn.db_read_last_changelog_serial()
            while self.serial < current:
                serial = self.serial + 1
                self.store.changed(serial, touched(conn.get_changes(serial)))
                self.serial = serial

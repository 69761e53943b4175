"""A local upstream: a PEP 503 simple index of local files, served over HTTP from a thread.

Its pages are written as the public index writes them: PEP 503 HTML, PEP 691 JSON to a client
that asks for it, each wheel's core metadata (PEP 658/714) and upload-time and size (PEP 700).
The tests' upstream is one; benchmarks/load.py writes its static trees with it.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class _SimpleHandler(SimpleHTTPRequestHandler):
    """Static files; a project page as PEP 691 JSON when the client asks for it."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".json": SIMPLE_JSON}

    def __init__(self, *args: object, index: StaticIndex | None = None, **kwargs: object) -> None:
        self.index = index  # set first: the base class answers the request in __init__
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def send_head(self):  # type: ignore[no-untyped-def]
        page = self.path.split("?")[0]
        if self.index is not None and self.index.delay and page.startswith("/simple"):
            time.sleep(self.index.delay)  # a slow upstream: its project list and pages answer late
        if (page.startswith("/simple/") and page.endswith("/") and page.count("/") == 3
                and SIMPLE_JSON in self.headers.get("Accept", "")):
            self.path = page + "index.json"
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclass
class StaticIndex:
    """A PEP 503 simple index of local files, served over HTTP from a thread."""

    root: Path
    url: str = ""
    delay: float = 0.0  # seconds each simple page (the project list too) waits before answering
    upload_times: dict[str, str] = field(default_factory=dict)  # filename -> its PEP 700 upload-time
    yanked: set[str] = field(default_factory=set)  # filenames the JSON page marks yanked (PEP 592)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def simple(self) -> str:
        return f"{self.url}/simple/"

    def add(self, files: list[Path]) -> None:
        store = self.root / "files"
        store.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, store / f.name)
        self._write_pages()

    def _write_pages(self) -> None:
        """PEP 503 HTML and PEP 691 JSON pages as the public index writes them: each wheel's core
        metadata (PEP 658/714, with its `.metadata` file beside it), upload-time and size (PEP 700)."""
        by_project: dict[str, list[Path]] = {}
        for f in sorted((self.root / "files").iterdir()):
            if f.name.endswith(".metadata"):
                continue
            if f.name.endswith(".whl"):
                name = parse_wheel_filename(f.name)[0]
            else:
                name = parse_sdist_filename(f.name)[0]
            by_project.setdefault(canonicalize_name(name), []).append(f)
        simple = self.root / "simple"
        shutil.rmtree(simple, ignore_errors=True)
        simple.mkdir(parents=True)
        links = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(by_project))
        (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
        for project, files in by_project.items():
            (simple / project).mkdir()
            entries = [self._entry(f) for f in files]
            listing = {"meta": {"api-version": "1.1"}, "name": project, "files": entries,
                       "versions": sorted({str(parse_wheel_filename(f.name)[1] if f.name.endswith(".whl")
                                               else parse_sdist_filename(f.name)[1]) for f in files})}
            (simple / project / "index.json").write_text(json.dumps(listing))
            rows = "".join(
                f'<a href="{html.escape(e["url"])}#sha256={e["hashes"]["sha256"]}"'
                + (f' data-core-metadata="sha256={e["core-metadata"]["sha256"]}"' if "core-metadata" in e else "")
                + f">{html.escape(e['filename'])}</a>\n" for e in entries)
            (simple / project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{rows}</body></html>\n")

    UPLOAD_TIME = "2025-06-01T12:00:00.000000Z"

    def _entry(self, f: Path) -> dict[str, object]:
        entry: dict[str, object] = {"filename": f.name, "url": f"../../files/{f.name}",
                                    "hashes": {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()},
                                    "upload-time": self.upload_times.get(f.name, self.UPLOAD_TIME),
                                    "size": f.stat().st_size}
        if f.name in self.yanked:
            entry["yanked"] = "yanked in a test"
        if f.name.endswith(".whl"):
            with zipfile.ZipFile(f) as zf:
                name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
                metadata = zf.read(name)
            f.with_name(f.name + ".metadata").write_bytes(metadata)
            entry["core-metadata"] = {"sha256": hashlib.sha256(metadata).hexdigest()}
        return entry

    def start(self) -> None:
        handler = partial(_SimpleHandler, directory=str(self.root), index=self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

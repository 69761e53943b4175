"""kiln's devpi-server plugin: what installers need from a simple page that devpi leaves out.

devpi-server (with ``--enable-core-metadata``) serves ``<file>.metadata`` but advertises it
only as ``core-metadata: true``, for every wheel of a mirror whether the upstream has it or
not, and sends no PEP 700 ``upload-time`` or ``size``. So ``uv lock`` and ``uv pip compile``
download whole wheels to read their METADATA, and ``--exclude-newer`` cannot work.

This plugin is a pyramid tween under devpi's transaction tween: it rewrites every simple
project page (PEP 503 HTML and PEP 691 JSON) so that each wheel carries

- PEP 658/714 ``core-metadata`` with the sha256 of the METADATA devpi would serve: read from
  the wheel when devpi holds the file (kiln's own uploads, fetched mirror files), else the
  upstream's own advertised hash (passed through from its PEP 691 page); a wheel with neither
  is advertised without metadata, so no client asks for a ``.metadata`` that cannot come;
- PEP 700 ``upload-time`` and ``size`` (JSON only, as the PEP says): the upload's time for a
  file uploaded to devpi, else the upstream's; ``api-version`` 1.1 when every file has a size.

It is a tween, not a change to devpi's views, so that devpi stays unmodified; it is loaded by
every devpi-server in an environment where kiln is installed (entry point ``devpi_server``).

**A cold mirror never answers "no versions"** (kiln issue 11). devpi fetches a mirror's project
page from the upstream when an installer first asks for it, and waits ``--request-timeout``
(5 s) for it. When the upstream is slower, a page of a kiln index (a stage whose bases include
``root/pypi``) is built without the mirror: devpi logs "Failed to check mirror whitelist. Assume
it does not exist" and answers **200 with no files** (or 404 where it cannot tell whether the
project exists; the same happens when the upstream's whole project list, which devpi wants before
it asks for a project, did not arrive in time). uv takes an empty page as the truth ("there is
no version of X==1.0", no retry); it retries only errors (3 times, 5xx included). And devpi's
own fetch of that page gives up after the same 5 s (its HTTP client's read timeout), so a
retry started again from nothing. The cure, where it arises:

- the tween answers **503** (``Retry-After``, ``Cache-Control: no-store``) instead of a page of
  a kiln index that lacks a mirror base which has no answer yet (or whose files, fetched since
  the page was read, the page lacks): uv and pip retry it, and devpi's fetch finishes meanwhile;
  a project the upstream does not have (404 there) keeps its plain 404;
- devpi's HTTP client gets ``UPSTREAM_FETCH_TIMEOUT_S``, so a fetch that outlives the client's
  wait goes on in the background (devpi does this after a timeout) and lands in the cache;
- ``root/pypi`` is set ``mirror_no_project_list`` (layout.py): a fresh mirror asks for the
  project's page at once instead of first loading the upstream's list of every project.

Warming the mirror after publish was not chosen: it covers only what kiln published and its
direct requirements, not the dependencies of upstream packages a user's resolve reaches.

**Warm pages as files** (kiln issue 23): the tween keeps each PEP 691 page it answers to uv's or
pip's Accept in the page store (pages.py), which nginx then serves without asking devpi; a page
that lacks a fact it would have a moment later (an upstream that did not answer, a kiln file a
replica has not received yet) is answered but not kept.

**Only kiln's wheels on kiln's indexes.** A subscriber to pyramid's ContextFound asks of every
upload to a ``kiln/*`` index what `kiln publish` asks before it sends one (a wheel, with kiln's
provenance, naming this wheel, for this index's variant), so that the kiln password or a token
used with another client cannot put a foreign file there, where it would hide the project's
upstream releases. It answers 403 with one line, as devpi words its own refusals.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Literal

from packaging.utils import canonicalize_name
from pluggy import HookimplMarker
from pyramid.httpexceptions import HTTPException  # type: ignore[import-untyped]

from kiln.mirror.layout import USER
from kiln.mirror.pages import (
    CACHED_ACCEPT,
    PAGE_HEADER,
    PAGE_PATH_RE,
    PAGES_DIR,
    SIMPLE_JSON,
    PageStore,
    Watcher,
    name_and_version,
)

hookimpl = HookimplMarker("devpiserver")

PROJECT_PAGE = re.compile(r"^/(?P<user>[^/+][^/]*)/(?P<index>[^/+][^/]*)/\+simple/(?P<project>[^/]+)/?$")
ANCHOR = re.compile(r"<a\s+(?P<attrs>[^>]*)>(?P<text>[^<]*)</a>")
ATTR = re.compile(r'([\w:-]+)="([^"]*)"')
METADATA_ATTRS = ("data-dist-info-metadata", "data-core-metadata")
UPSTREAM_TIMEOUT_S = 30.0
# how long devpi's own fetches from an upstream may take; a client still waits only devpi's
# --request-timeout, then gets 503 and retries while the fetch goes on in the background
UPSTREAM_FETCH_TIMEOUT_S = 60.0
RETRY_AFTER_S = 2
MirrorAnswer = Literal["links", "absent", "unknown"]


@dataclass(frozen=True)
class Facts:
    """What a simple page should say about one file beyond devpi's own fields."""

    metadata_sha256: str | None = None
    upload_time: str | None = None
    size: int | None = None

    def merged(self, other: Facts) -> Facts:
        """These facts, gaps filled from ``other``."""
        return Facts(self.metadata_sha256 or other.metadata_sha256, self.upload_time or other.upload_time,
                     self.size if self.size is not None else other.size)


def iso_time(http_date: str | None) -> str | None:
    """An HTTP date (devpi's ``last_modified``) as PEP 700's ISO 8601 UTC time."""
    if not http_date:
        return None
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FactsSource:
    """Facts about files: from devpi's own store, else from the upstream's PEP 691 pages."""

    def __init__(self, xom: Any) -> None:
        self.xom = xom
        self._metadata: dict[str, str | None] = {}  # a file's content hash -> its METADATA's sha256
        self._upstream: dict[tuple[str, str], tuple[float, dict[str, Facts]]] = {}
        self._lock = threading.Lock()

    def local(self, relpath: str) -> tuple[Facts, bool, bool]:
        """Facts from devpi's store, whether the file's index is a mirror, and whether devpi holds
        the file (a mirror's before its first download, a replica's before it is replicated: not)."""
        entry = self.xom.filestore.get_file_entry(relpath)
        if entry is None or not entry.meta:
            return Facts(), False, False
        user, index = relpath.split("/", 2)[:2]
        stage = self.xom.model.getstage(user, index)
        is_mirror = stage is not None and stage.ixconfig.get("type") == "mirror"
        if not entry.file_exists():
            return Facts(), is_mirror, False
        key = entry.best_available_hash_spec or relpath
        if key not in self._metadata:
            from devpi_server.filestore import get_core_metadata

            with entry.file_open_read() as f:
                data = get_core_metadata(f, entry.project, entry.version, basename=entry.basename)
            self._metadata[key] = hashlib.sha256(data).hexdigest() if data is not None else None
        return Facts(self._metadata[key], None if is_mirror else iso_time(entry.last_modified),
                     entry.file_size()), is_mirror, True

    def upstream(self, stage_name: str, project: str) -> tuple[dict[str, Facts], bool]:
        """filename -> facts from the PEP 691 page of the mirror index ``stage_name``'s upstream,
        kept as long as devpi keeps its own copy of that page; and whether they are current (False:
        the upstream did not answer, these are older facts or none)."""
        user, index = stage_name.split("/")
        stage = self.xom.model.getstage(user, index)
        if stage is None or not stage.ixconfig.get("mirror_url"):
            return {}, True
        expiry = float(stage.ixconfig.get("mirror_cache_expiry") or 1800)
        with self._lock:
            cached = self._upstream.get((stage_name, project))
        if cached and time.monotonic() - cached[0] < expiry:
            return cached[1], True
        url = urllib.parse.urljoin(stage.ixconfig["mirror_url"].rstrip("/") + "/", f"{project}/")
        facts = self._fetch(url)
        if facts is not None:
            with self._lock:
                self._upstream[(stage_name, project)] = (time.monotonic(), facts)
            return facts, True
        return (cached[1] if cached else {}), False

    def _fetch(self, url: str) -> dict[str, Facts] | None:
        try:
            resp = self.xom.http.get(url, allow_redirects=True, timeout=UPSTREAM_TIMEOUT_S,
                                     extra_headers={"Accept": SIMPLE_JSON})
            if getattr(resp, "status_code", None) != 200:
                return None
            if SIMPLE_JSON not in resp.headers.get("content-type", ""):
                return {}  # an HTML-only upstream: no upload-time, no metadata hashes to pass on
            files = resp.json().get("files", [])
        except (ValueError, AttributeError, OSError):
            return None
        out: dict[str, Facts] = {}
        for f in files:
            meta = f.get("core-metadata", f.get("dist-info-metadata"))
            sha = meta.get("sha256") if isinstance(meta, dict) else None
            size = f.get("size")
            out[f["filename"]] = Facts(sha, f.get("upload-time"), size if isinstance(size, int) else None)
        return out


def _relpath(page_url: str, href: str) -> str | None:
    path = urllib.parse.urlsplit(urllib.parse.urljoin(page_url, href)).path
    path = urllib.parse.unquote(path).lstrip("/")
    parts = path.split("/")
    if len(parts) < 4 or parts[2] != "+f":
        return None
    return path


@dataclass
class PageFacts:
    """The facts of the files one project page links, and whether they are all there: every
    upstream answered, every file of a kiln index is in devpi's store."""

    source: FactsSource
    page_url: str
    project: str
    complete: bool = True

    def __call__(self, hrefs: list[str]) -> list[Facts]:
        """The facts of each file linked from the page, in order."""
        out = []
        for href in hrefs:
            relpath = _relpath(self.page_url, href)
            if relpath is None:
                out.append(Facts())
                continue
            facts, is_mirror, present = self.source.local(relpath)
            # a file of kiln's own not here yet (a replica's, before it is replicated): the page
            # lacks its metadata hash, size and time until it is, so it is answered but not kept
            self.complete = self.complete and (present or is_mirror)
            if is_mirror:
                stage = "/".join(relpath.split("/", 2)[:2])
                filename = relpath.rsplit("/", 1)[-1]
                upstream, current = self.source.upstream(stage, self.project)
                self.complete = self.complete and current
                facts = facts.merged(upstream.get(filename, Facts()))
            out.append(facts)
        return out


def _is_wheel(filename: str) -> bool:
    return filename.endswith(".whl")


def rewrite_json(body: bytes, facts_of: Callable[[list[str]], list[Facts]]) -> bytes:
    page = json.loads(body)
    files = page.get("files", [])
    facts = facts_of([f["url"] for f in files])
    versions: set[str] = set()
    for f, fact in zip(files, facts, strict=True):
        f.pop("core-metadata", None)
        f.pop("dist-info-metadata", None)
        if _is_wheel(f["filename"]) and fact.metadata_sha256:
            f["core-metadata"] = {"sha256": fact.metadata_sha256}
        if fact.upload_time:
            f["upload-time"] = fact.upload_time
        if fact.size is not None:
            f["size"] = fact.size
        parsed = name_and_version(f["filename"])
        if parsed:
            versions.add(parsed[1])
    if files and all("size" in f for f in files):
        page["meta"] = {**page.get("meta", {}), "api-version": "1.1"}
        page["versions"] = sorted(versions)
    return json.dumps(page).encode()


def rewrite_html(body: bytes, facts_of: Callable[[list[str]], list[Facts]]) -> bytes:
    text = body.decode()
    anchors = list(ANCHOR.finditer(text))
    hrefs = [dict(ATTR.findall(m.group("attrs"))).get("href", "") for m in anchors]
    facts = facts_of(hrefs)
    out, last = [], 0
    for m, fact in zip(anchors, facts, strict=True):
        attrs = [(k, v) for k, v in ATTR.findall(m.group("attrs")) if k not in METADATA_ATTRS]
        if _is_wheel(m.group("text")) and fact.metadata_sha256:
            attrs += [(k, f"sha256={fact.metadata_sha256}") for k in METADATA_ATTRS]
        out += [text[last:m.start()], "<a ", " ".join(f'{k}="{v}"' for k, v in attrs), ">", m.group("text"), "</a>"]
        last = m.end()
    out.append(text[last:])
    return "".join(out).encode()


# ----------------------------------------------------------------------------- a cold mirror


def consulted_mirrors(stage: Any, project: str) -> list[Any]:
    """The mirror indexes devpi merges into ``stage``'s page of ``project``: every mirror base,
    unless an index before it has the project and no ``mirror_whitelist`` lets the mirror in
    (devpi's rule, ``op_sro_check_mirror_whitelist``)."""
    if not stage.filter_projects([project]):
        return []
    inheritance = stage.get_whitelist_inheritance()
    whitelist: set[str] | None = None
    whitelisted = private = False
    out = []
    for base in stage.sro():
        if base.ixconfig["type"] == "mirror":
            if whitelisted or not private:
                out.append(base)
            continue
        own = set(base.ixconfig.get("mirror_whitelist", ()))
        if whitelist is None:
            whitelist = own
        else:
            whitelist = whitelist | own if inheritance == "union" else whitelist & own
        if whitelist & {"*", project}:
            whitelisted = True
        elif base.has_project_perstage(project):
            private = True
    return out


def mirror_answer(mirror: Any, project: str) -> MirrorAnswer:
    """What a mirror index knows of ``project`` in this transaction, without asking its upstream:
    its links (fresh or stale), that the upstream has no such project (a 404 or the upstream's
    project list, within the cache expiry), or nothing yet (a fetch timed out or failed)."""
    if mirror.key_projsimplelinks(project).get():
        return "links"
    if mirror.offline or not mirror.cache_retrieve_times.is_expired(project, mirror.cache_expiry):
        return "absent"
    names = getattr(mirror, "cache_projectnames", None)
    if (names is not None and not mirror.no_project_list and names.exists()
            and not names.is_expired(mirror.cache_expiry) and project not in names.get()):
        return "absent"
    return "unknown"


def _on_page(mirror: Any, project: str, paths: list[str]) -> bool:
    """Whether the page (its link paths) carries the mirror's files of ``project``, if it has any."""
    links = (mirror.key_projsimplelinks(project).get() or {}).get("links") or []
    if not links or mirror.offline or mirror.use_external_url:
        return True
    return any(f"/{mirror.name}/+" in path for path in paths)


def missing_mirror(stage: Any, project: str, paths: list[str]) -> str | None:
    """The name of a mirror base whose answer ``stage``'s page of ``project`` lacks (the page's
    link paths; none for a 404); None when the page is complete. A mirror with no answer, or
    whose links are missing from the page, is looked at again at the newest serial first: a
    fetch that finished in the background after this request's transaction began counts."""
    mirrors = [stage] if stage.ixconfig.get("type") == "mirror" else consulted_mirrors(stage, project)
    if all(mirror_answer(m, project) == "links" and _on_page(m, project, paths) for m in mirrors):
        return None
    keyfs = stage.keyfs
    if not keyfs.tx.write:
        keyfs.restart_read_transaction()
    for m in mirrors:
        answer = mirror_answer(m, project)
        if answer == "unknown" or (answer == "links" and not _on_page(m, project, paths)):
            return str(m.name)
    return None


def page_paths(page_url: str, body: bytes, content_type: str) -> list[str]:
    """The URL paths of the files a simple project page links."""
    if content_type == SIMPLE_JSON:
        hrefs = [str(f.get("url", "")) for f in json.loads(body).get("files", [])]
    else:
        hrefs = [dict(ATTR.findall(m.group("attrs"))).get("href", "")
                 for m in ANCHOR.finditer(body.decode(errors="replace"))]
    return [urllib.parse.unquote(urllib.parse.urlsplit(urllib.parse.urljoin(page_url, h)).path) for h in hrefs]


def retry_later(mirror: str, project: str) -> Any:
    """503 for a page that would lack ``mirror``'s answer: installers retry it, and never cache it."""
    from pyramid.response import Response  # type: ignore[import-untyped]

    text = (f"{mirror} has no answer for {project} yet: its upstream is slow or failing. "
            f"Retry in {RETRY_AFTER_S} s.\n")
    return Response(status=503, body=text.encode(), content_type="text/plain", charset="utf-8",
                    headers={"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"})


def patient_upstream(xom: Any) -> None:
    """Let devpi's fetches from upstreams run up to ``UPSTREAM_FETCH_TIMEOUT_S`` (its HTTP client
    otherwise gives up after ``--request-timeout``, the time a client waits); how long a client
    waits is unchanged."""
    http = xom.http
    timeout = getattr(http, "timeout", False)  # an offline devpi's client has none
    if timeout is not False and (timeout is None or timeout < UPSTREAM_FETCH_TIMEOUT_S):
        http.timeout = UPSTREAM_FETCH_TIMEOUT_S


def page_expiry(stage: Any, project: str, now: float) -> float | None:
    """When the upstream part of ``stage``'s page of ``project`` expires: when devpi's own copy of
    the first of its mirrors' pages does (None: no mirror contributes)."""
    mirrors = [stage] if stage.ixconfig.get("type") == "mirror" else consulted_mirrors(stage, project)
    if not mirrors:
        return None
    ends = []
    for m in mirrors:
        fetched = m.cache_retrieve_times.get_timestamp(project)
        ends.append((fetched if fetched > 0 else now) + float(m.cache_expiry))
    return min(ends)


def keeps_page(request: Any, project: str) -> bool:
    """Whether nginx serves this request's page from the page store once it is kept (pages.py)."""
    return (request.method == "GET" and not request.query_string and bool(request.headers.get(PAGE_HEADER))
            and request.headers.get("Accept") in CACHED_ACCEPT and PAGE_PATH_RE.match(request.path_info) is not None
            and request.path_info.rstrip("/").rsplit("/", 1)[-1] == project)


def simple_page_tween_factory(handler: Callable[[Any], Any], registry: Any) -> Callable[[Any], Any]:
    xom = registry["xom"]
    source = FactsSource(xom)
    store = start_page_store(xom)

    def tween(request: Any) -> Any:
        read_at = xom.keyfs.tx.at_serial
        response = handler(request)
        match = PROJECT_PAGE.match(request.path_info)
        if match is None or request.method != "GET" or response.status_code not in (200, 404):
            return response
        content_type = response.content_type or ""
        if response.status_code == 200 and content_type not in (SIMPLE_JSON, "text/html"):
            return response
        page_url = request.url
        project = canonicalize_name(match.group("project"))
        stage = xom.model.getstage(match.group("user"), match.group("index"))
        if stage is not None and stage.ixconfig.get("type") in ("stage", "mirror"):
            paths = page_paths(page_url, response.body, content_type) if response.status_code == 200 else []
            # a mirror's own page too: a replica's root/pypi reads the primary's, and a 404 there
            # would tell the replica "no such project" while the primary's upstream is only slow
            missing = missing_mirror(stage, project, paths)
            if missing is not None:
                from devpi_server.log import threadlog

                threadlog.warn("kiln: 503 for %s: %s has no answer for it yet", request.path_info, missing)
                return retry_later(missing, project)
        if response.status_code != 200:
            return response
        facts = PageFacts(source, page_url, project)
        rewrite = rewrite_json if content_type == SIMPLE_JSON else rewrite_html
        response.body = rewrite(response.body, facts)
        if (store is not None and stage is not None and facts.complete and content_type == SIMPLE_JSON
                and keeps_page(request, project)):
            store.keep(request.path_info, project, response.body, read_at, page_expiry(stage, project, time.time()))
        return response

    return tween


def start_page_store(xom: Any) -> PageStore | None:
    """The page store under devpi's serverdir, emptied, and its watcher started; None where the
    directory cannot be written (nginx then finds no page and asks devpi, as without a store)."""
    from devpi_server.log import threadlog

    store = PageStore(Path(str(xom.config.serverdir)) / PAGES_DIR)
    try:
        store.reset()
    except OSError as exc:
        threadlog.warn("kiln: no page store at %s: %s", store.root, exc)
        return None
    Watcher(xom.keyfs, store, threadlog).start()
    return store


UPLOAD_PATH = re.compile(r"^/(?P<user>[^/+][^/]*)/(?P<index>[^/+][^/]*)/?$")


def upload_refusal(index: str, action: str | None, filename: str | None, content: IO[bytes] | None) -> str | None:
    """Why an upload to kiln index ``index`` (``kiln/<variant>``) is refused, in one line; None
    when it is a wheel kiln built and finished for that index. The same checks as `kiln publish`
    (kiln.mirror.origin.origin_of), made again here so that a token or password used with
    another client (`uv publish`, twine) cannot put a foreign wheel on a kiln index, where it
    would hide that project's upstream releases."""
    from kiln.errors import MirrorError
    from kiln.mirror.origin import origin_of

    if action != "file_upload":
        return f"{index} takes only file uploads of wheels kiln built, not :action {action!r}"
    if not filename or content is None:
        return f"{index} takes only file uploads of wheels kiln built; this upload has no file"
    if not filename.endswith(".whl"):
        return f"{index} takes only wheels kiln built: {filename} is not a wheel"
    try:
        target, _ = origin_of(filename, content)
    except MirrorError as exc:
        return exc.message
    finally:
        content.seek(0)
    if target != index:
        return f"{filename} belongs on {target}, not on {index}"
    return None


def check_upload(event: Any) -> None:
    """On pyramid's ContextFound, before devpi's upload view: refuse (403, one line) an upload to
    a kiln index that is not a wheel kiln built for it. Only for a request devpi would let
    upload: anyone else gets devpi's own answer. It runs once the route's context is known, since
    what a token may do depends on the index (devpi-tokens reads it from the context; asked
    earlier, a token scoped to one index would pass for every index)."""
    request = event.request
    if request.method not in ("POST", "PUSH"):
        return
    match = UPLOAD_PATH.match(request.path_info)
    if match is None or match.group("user") != USER:
        return
    try:
        allowed = request.authenticated_userid and request.has_permission("upload")
    except HTTPException:  # a revoked or expired token: devpi's view refuses it in its own words
        return
    if not allowed:
        return
    index = f"{USER}/{match.group('index')}"
    content = request.POST.get("content")
    why = upload_refusal(index, request.POST.get(":action"), getattr(content, "filename", None),
                         getattr(content, "file", None))
    if why is not None:
        from devpi_server.log import threadlog

        threadlog.warn("kiln: refused an upload to %s by %s: %s", index, request.authenticated_userid, why)
        raise UploadRefused(why)


class UploadRefused(HTTPException):  # type: ignore[misc]
    """403 with the reason as devpi words its own refusals of an upload: the title (the status
    line's reason, which twine shows) and the body (which uv shows)."""

    code = 403

    def __init__(self, message: str) -> None:
        self.title = message.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
        super().__init__(body=message + "\n", content_type="text/plain", charset="utf-8")


@hookimpl
def devpiserver_pyramid_configure(config: Any, pyramid_config: Any) -> None:
    patient_upstream(pyramid_config.registry["xom"])
    pyramid_config.add_tween("kiln.mirror.plugin.simple_page_tween_factory",
                             under="devpi_server.views.tween_keyfs_transaction")
    pyramid_config.add_subscriber(check_upload, "pyramid.events.ContextFound")

"""Fetch a cell's source: the sdist from the index (sha256 checked), a URL, or a git tag."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import Version

from kiln.errors import SourceError
from kiln.recipe import GitSource, Recipe, UrlSource

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def default_index_url() -> str:
    """The index sdists come from: KILN_INDEX_URL, uv's or pip's index variable, else the index uv
    itself would use (its configuration files, else its built-in default), as uv reports it."""
    for env in ("KILN_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if os.environ.get(env):
            return os.environ[env]
    from kiln.uv import uv

    res = subprocess.run([uv(), "pip", "compile", "-", "--emit-index-url", "--no-header", "--offline", "--quiet"],
                         input="", capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("--index-url "):
            return line.removeprefix("--index-url ").strip()
    raise SourceError("no index to fetch sources from: uv reported none "
                      f"({res.stderr.strip() or 'no --index-url line'}); set KILN_INDEX_URL")


@dataclass(frozen=True)
class Source:
    """A fetched source: the archive (or checkout) and where it came from."""

    path: Path
    url: str
    sha256: str


def fetch(recipe: Recipe, version: str, cache_dir: Path, index_url: str | None = None) -> Source:
    """The cell's source in ``cache_dir``, downloaded once and checked every time."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    src = recipe.source
    if isinstance(src, UrlSource):
        url = src.url.replace("{version}", version)
        if "://" not in url:  # a path relative to the recipe, e.g. a vendored sdist
            url = (recipe.path.parent / url).resolve().as_uri()
        name = Path(urllib.parse.urlparse(url).path).name
        return _download(url, cache_dir / name, src.sha256)
    if isinstance(src, GitSource):
        return _git(src, version, cache_dir / f"{recipe.name}-{version}-git")
    url, sha = find_sdist(recipe.project, version, index_url or default_index_url())
    name = Path(urllib.parse.urlparse(url).path).name
    return _download(url, cache_dir / name, sha)


@dataclass(frozen=True)
class IndexFile:
    """One file of a project on a PEP 691 simple index."""

    filename: str
    url: str
    sha256: str | None
    requires_python: str | None = None
    """The file's PEP 691 ``requires-python`` (its Requires-Python metadata), when the index says."""
    upload_time: datetime | None = None
    """When the file was uploaded (PEP 700 ``upload-time``, timezone-aware), when the index says."""
    yanked: bool = False
    """Whether the file is yanked (PEP 592, ``yanked`` true or a reason)."""


def index_files(project: str, index_url: str, timeout: float = 60) -> list[IndexFile]:
    """Every file of ``project`` on a PEP 691 (JSON) simple index, or a PEP 503 (HTML) one where the
    index has no JSON; none when it has no such project."""
    page = index_url.rstrip("/") + "/" + canonicalize_name(project) + "/"
    req = urllib.request.Request(page, headers={"Accept": f"{SIMPLE_JSON}, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise SourceError(f"{page}: HTTP {exc.code} looking for {project}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"{page}: unreachable ({getattr(exc, 'reason', exc)})") from None
    if SIMPLE_JSON not in ctype:
        if "text/html" in ctype:  # PEP 503 only (the PyTorch wheel index): its anchors
            return _html_files(page, body.decode("utf-8", "replace"))
        raise SourceError(f"{page}: the index did not answer with the JSON simple API ({ctype})")
    return [IndexFile(f["filename"], urllib.parse.urljoin(page, f["url"]), f.get("hashes", {}).get("sha256"),
                      f.get("requires-python") or None, _upload_time(f.get("upload-time")), bool(f.get("yanked")))
            for f in json.loads(body)["files"]]


class _Anchors(HTMLParser):
    """The ``<a>`` elements of a PEP 503 project page: (href, text, attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, dict[str, str | None]]] = []
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open, self._text = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.found.append((self._open.get("href") or "", "".join(self._text).strip(), self._open))
            self._open = None


def _html_files(page: str, body: str) -> list[IndexFile]:
    """The files of a PEP 503 (HTML) project page: each anchor's text is the filename, its URL's
    ``#sha256=`` fragment the hash; ``data-requires-python`` and ``data-yanked`` (PEP 592) read.
    An index that has no JSON API (PEP 691) answers this way; it carries no upload-time."""
    parser = _Anchors()
    parser.feed(body)
    files = []
    for href, text, attrs in parser.found:
        url, _, fragment = urllib.parse.urljoin(page, href).partition("#")
        name = text or Path(urllib.parse.urlparse(url).path).name
        algo, _, digest = fragment.partition("=")
        files.append(IndexFile(urllib.parse.unquote(name), url, digest if algo == "sha256" else None,
                               attrs.get("data-requires-python") or None, None, "data-yanked" in attrs))
    return files


def _upload_time(value: object) -> datetime | None:
    """PEP 700's ``upload-time`` (ISO 8601, e.g. ``2025-06-01T12:00:00.000000Z``) as an aware datetime."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def find_sdist(project: str, version: str, index_url: str) -> tuple[str, str]:
    """(url, sha256) of the project's sdist for ``version`` from a PEP 691 simple index."""
    page = index_url.rstrip("/") + "/" + canonicalize_name(project) + "/"
    want = Version(version)
    for f in index_files(project, index_url):
        try:
            name, ver = parse_sdist_filename(f.filename)
        except InvalidSdistFilename:
            continue
        if name == canonicalize_name(project) and ver == want:
            if not f.sha256:
                raise SourceError(f"{page}: {f.filename} has no sha256 on the index")
            return f.url, f.sha256
    raise SourceError(f"{page}: no sdist of {project} {version} on the index")


def _download(url: str, dest: Path, sha256: str) -> Source:
    if dest.exists() and sha256_of(dest) == sha256:
        return Source(dest, url, sha256)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=300) as resp, tmp.open("wb") as out:
            shutil.copyfileobj(resp, out)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise SourceError(f"{url}: download failed ({getattr(exc, 'reason', exc)})") from None
    got = sha256_of(tmp)
    if got != sha256:
        tmp.unlink()
        raise SourceError(f"{url}: sha256 mismatch: expected {sha256}, got {got}")
    tmp.replace(dest)
    return Source(dest, url, sha256)


def _git(src: GitSource, version: str, dest: Path) -> Source:
    """The repository at the version's tag, cloned once into ``dest``; the tag's commit is
    checked against the recipe's pin, else against the commit recorded at the first clone."""
    tag = src.tag.replace("{version}", version)
    where = f"{src.git}@{tag}"
    pinned = src.commits.get(version)
    recorded_file = dest.with_name(dest.name + ".commit")
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        res = subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", tag,
                              "--recurse-submodules", src.git, str(tmp)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SourceError(f"{where}: git clone failed: {res.stderr.strip().splitlines()[-1:]}")
        commit = _head(tmp)
        if pinned and commit != pinned:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SourceError(f"{where} is commit {commit}, the recipe pins {pinned} (source.commits): "
                              "the tag moved upstream; check the new commit, then update the pin")
        recorded_file.write_text(commit + "\n")
        tmp.rename(dest)
    commit = _head(dest)
    recorded = recorded_file.read_text().strip() if recorded_file.exists() else commit
    if pinned and commit != pinned:
        raise SourceError(f"{where}: the cached checkout {dest} is commit {commit}, the recipe pins {pinned} "
                          f"(source.commits): remove {dest} to fetch the pinned commit")
    remote = _remote_tag(src.git, tag)
    if remote is not None and remote != recorded:
        raise SourceError(f"{where} now points at commit {remote}, not {recorded} as when kiln first "
                          f"fetched it: the tag moved upstream; pin the commit you trust in the recipe "
                          f"(source.commits) and remove {dest}")
    return Source(dest, where, f"git:{commit}")


def _head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def _remote_tag(url: str, tag: str) -> str | None:
    """The commit a tag names upstream now (an annotated tag's target), or None when the
    remote cannot be asked (offline: the recorded commit stands)."""
    res = subprocess.run(["git", "ls-remote", "--tags", url, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}"],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        return None
    refs: dict[str, str] = {}
    for line in res.stdout.splitlines():
        commit, _, ref = line.partition("\t")
        refs[ref] = commit
    return refs.get(f"refs/tags/{tag}^{{}}") or refs.get(f"refs/tags/{tag}")


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def unpack(source: Source, dest: Path) -> Path:
    """Unpack the source into ``dest`` and return the project's top directory."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if source.path.is_dir():
        shutil.copytree(source.path, dest / "src", ignore=shutil.ignore_patterns(".git"))
        return dest / "src"
    name = source.path.name
    if name.endswith(".zip"):
        with zipfile.ZipFile(source.path) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(source.path) as tf:
            tf.extractall(dest, filter="data")
    entries = [p for p in dest.iterdir()]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest

"""Publishing wheels to the mirror, and reading back what is published.

Who may upload is the mirror's to enforce (devpi's ACLs: anonymous users read only, only root
creates users and indexes, only user kiln uploads to kiln's indexes, with its password or a
token from `kiln token`). What may be uploaded is checked here, for every wheel of a batch
before any is sent: a wheel kiln built (its ``kiln.json`` provenance names this very wheel),
whose label puts it on the index of the variant it was built for, of a project a recipe names
or the recorded closure of a recipe's cell. A kiln index hides every upstream release of a
project it serves (no ``mirror_whitelist``), so one stray upload of a project no recipe names
would hide that project's upstream releases from every installer of the mirror.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from kiln import archs, closure
from kiln.errors import MirrorError
from kiln.home import Home
from kiln.matrix import Cell, Variant
from kiln.mirror import tokens
from kiln.mirror.api import GATEWAY_HINT, Credentials, Devpi, HTTPRefused
from kiln.mirror.layout import index_name, layout
from kiln.mirror.origin import Origin, origin_of
from kiln.mirror.server import (
    ServerFiles,
    root_credentials,
    running,
    upload_credentials,
)
from kiln.source import sha256_of

TOKEN_ENV = "KILN_MIRROR_TOKEN"


@dataclass(frozen=True)
class Published:
    """One wheel's outcome: uploaded, or already there with the same bytes."""

    wheel: str
    index: str
    sha256: str
    uploaded: bool


def mirror_url(home: Home, mirror: str | None) -> str:
    """``--mirror`` when given, else the home's running server."""
    if mirror:
        return mirror.rstrip("/")
    current = running(home)
    if current is None:
        raise MirrorError(f"no mirror running for home {home.root}: start one with `kiln serve` "
                          "or pass --mirror URL")
    return current.url
def wheels_at(path: Path) -> list[Path]:
    """The wheels to publish: a file, or every wheel in a directory; a path that does not exist
    is an error (not an empty batch)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.whl"))
    raise MirrorError(f"{path}: no such file or directory")


@dataclass(frozen=True)
class Checked:
    """A wheel kiln may publish, and the index it goes to."""

    path: Path
    index: str
    sha256: str


def check(wheels: list[Path], cells: list[Cell], home: Home) -> list[Checked]:
    """Every wheel of the batch with its index, or MirrorError naming each wheel refused and why
    (one line). ``cells``: the recipes' cells; the closures recorded for them in ``home``, and
    the closure cells the batch's own provenance names, are publishable too."""
    projects = {canonicalize_name(c.project) for c in cells if c.closure_of is None}
    known = _with_recorded_closures(cells, home)
    refused: dict[Path, str] = {}
    ok: dict[Path, tuple[str, Origin]] = {}
    for wheel in sorted(wheels):
        try:
            ok[wheel] = _origin(wheel)
        except MirrorError as exc:
            refused[wheel] = exc.message
    # a closure cell is publishable when the cell that needed it is: a recipe's cell, a closure
    # recorded in the home, or a wheel of this batch already found publishable
    pending = {w: o for w, (_, o) in ok.items()
               if canonicalize_name(parse_wheel_filename(w.name)[0]) not in projects and o.cell not in known}
    while True:
        found = {w for w, o in pending.items() if o.closure_of is not None and o.closure_of in known}
        if not found:
            break
        known |= {pending.pop(w).cell for w in found}
    for wheel in pending:
        name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        refused[wheel] = (f"{wheel.name}: no recipe names project {name}, nor is it the recorded closure of a "
                          f"recipe's cell: publishing it would hide every upstream release of {name} on kiln's "
                          "indexes")
    by_id = {c.id: c for c in cells}
    for wheel, (index, origin) in ok.items():
        cell = by_id.get(origin.cell)
        if cell is not None and cell.archs_served and origin.device is not None and (
                gaps := archs.missing(cell.archs_served, origin.device.sass, origin.device.ptx)):
            refused[wheel] = (f"{wheel.name}: no code for {', '.join(gaps)}, which {index} serves: every GPU "
                              "the index serves must run it (`kiln up` rebuilds it; `kiln plan` says unserved)")
    if refused:
        raise MirrorError("; ".join(refused[w] for w in sorted(refused)) + "; nothing was uploaded")
    return [Checked(w, index, sha256_of(w)) for w, (index, _) in sorted(ok.items())]


def _with_recorded_closures(cells: list[Cell], home: Home) -> set[str]:
    """The ids of ``cells`` and of every closure cell recorded for them in the home, transitively."""
    known: set[str] = set()
    todo = list(cells)
    while todo:
        cell = todo.pop()
        if cell.id not in known:
            known.add(cell.id)
            todo += closure.cells_of(home, cell)
    return known


def _origin(wheel: Path) -> tuple[str, Origin]:
    return origin_of(wheel.name, wheel)





@dataclass(frozen=True)
class Uploader:
    """Whose credentials kiln uploads with, and how a message names them."""

    credentials: Credentials
    what: str
    indexes: tuple[str, ...] | None = None
    """A token's only indexes; None: any the mirror lets this user upload to."""


def uploader(home: Home) -> Uploader:
    """$KILN_MIRROR_TOKEN (from `kiln token`), else KILN_MIRROR_USER/KILN_MIRROR_PASSWORD, else
    user kiln's password from the home."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        parsed = tokens.parse(token)
        return Uploader(Credentials(parsed.user, token), f"token {parsed.id} of user {parsed.user} (${TOKEN_ENV})",
                        parsed.indexes)
    creds = upload_credentials(home)
    return Uploader(creds, f"user {creds.user}")


def _may_upload(api: Devpi, url: str, who: Uploader, index: str) -> None:
    """MirrorError (one line) unless ``who`` may upload to ``index``: a token scoped to other
    indexes may not (devpi would refuse the upload: HTTP 403), nor a user the index's
    ``acl_upload`` does not name; nothing is sent before every index of the batch passed."""
    if who.indexes is not None and index not in who.indexes:
        raise MirrorError(f"{who.what} may upload only to {', '.join(who.indexes)}, not to {index}")
    try:
        config = api.index(index)
    except HTTPRefused as exc:
        if exc.status not in (401, 403):
            raise
        raise MirrorError(f"{url} refused {who.what} on {index}: HTTP {exc.status} {_reason(exc.detail)}") from None
    listed = (config or {}).get("acl_upload")
    acl = [str(u) for u in listed] if isinstance(listed, list) else []
    if who.credentials.user not in acl and ":ANONYMOUS:" not in acl:
        raise MirrorError(f"{url}/{index} takes uploads from {', '.join(acl) or 'nobody'}, not from "
                          f"{who.what}")


def _reason(detail: str) -> str:
    """devpi-tokens' reason without the exception's class: ``Token expired at ...``."""
    return re.sub(r"^Exception during token verification: (?:[\w.]+: )?", "", detail)


def _identify(api: Devpi, url: str, who: Uploader) -> None:
    try:
        identity = api.identity()
    except HTTPRefused as exc:
        if exc.status not in (401, 403):
            raise
        raise MirrorError(f"{url} refused {who.what}: HTTP {exc.status} {_reason(exc.detail)}"
                          + ("; issue a new one with `kiln token`" if who.what.startswith("token") else "")) from None
    if not identity.accepted or identity.user != who.credentials.user:
        raise MirrorError(f"{url} refused {who.what}: wrong password (an upload would get HTTP 401)")


def publish(wheels: list[Path], url: str, home: Home, cells: list[Cell]) -> list[Published]:
    """Upload wheels to the index of their variant; refuse to replace any published file.

    ``cells``: the recipes' cells (every variant); only their projects and their closures are
    published. Every wheel is checked before anything is uploaded (check()); then the mirror
    must take the uploader's credentials for every index; then same filename and same sha256
    is skipped, same filename and other bytes is refused (MirrorError) and nothing changes.
    """
    checked = check(wheels, cells, home)
    who = uploader(home)
    api = Devpi(url, who.credentials)
    _identify(api, url, who)
    by_index: dict[str, list[Checked]] = {}
    for item in checked:
        by_index.setdefault(item.index, []).append(item)
    results: list[Published] = []
    todo: dict[str, list[Path]] = {}
    for index in by_index:
        if Devpi(url).index(index) is None:
            _create_variant_index(home, url, index)
        _may_upload(api, url, who, index)
    for index, items in by_index.items():
        have = api.files(index)
        for item in items:
            there = have.get(item.path.name)
            if there is None:
                todo.setdefault(index, []).append(item.path)
            elif there.sha256 == item.sha256:
                results.append(Published(item.path.name, index, item.sha256, uploaded=False))
            else:
                raise MirrorError(f"{item.path.name} is already on {url}/{index} with sha256 {there.sha256[:16]}, "
                                  f"this file has {item.sha256[:16]}: published files are immutable; bump the "
                                  "version or rebuild the same bytes")
    for index, paths in todo.items():
        _upload(paths, f"{url}/{index}/", who.credentials)
        have = api.files(index)
        for wheel in paths:
            sha = sha256_of(wheel)
            there = have.get(wheel.name)
            if there is None or there.sha256 != sha:
                got = there.sha256[:16] if there else "nothing"
                raise MirrorError(f"{wheel.name}: {url}/{index} reports {got} after upload, expected {sha[:16]}")
            results.append(Published(wheel.name, index, sha, uploaded=True))
    return results


def _create_variant_index(home: Home, url: str, index: str) -> None:
    """A variant index missing on the home's own server is created; elsewhere it is an error."""
    current = running(home)
    if current is None or current.url != url or not ServerFiles(home).root_password.exists():
        raise MirrorError(f"{url}/{index} does not exist: create it with `kiln serve --recipes ...` on the mirror")
    variant = Variant.parse(index.split("/", 1)[1])
    api = Devpi(url, root_credentials(home))
    for config in layout([variant], None).indexes:
        api.ensure_index(config)


def _upload(wheels: list[Path], publish_url: str, creds: Credentials) -> None:
    from kiln.uv import uv

    env = dict(os.environ, UV_PUBLISH_USERNAME=creds.user, UV_PUBLISH_PASSWORD=creds.password)
    for name in ("UV_PUBLISH_TOKEN", TOKEN_ENV, "KILN_MIRROR_PASSWORD"):  # uv gets the credentials once
        env.pop(name, None)
    res = subprocess.run([uv(), "publish", "--no-progress", "--publish-url", publish_url,
                          *[str(w) for w in wheels]], check=False, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise MirrorError(f"uv publish to {publish_url} failed: {uv_reason(res.stderr, res.returncode)}")


def uv_reason(stderr: str, returncode: int) -> str:
    """uv publish's reason on one line: its ``cause:`` (the server's answer joined onto it, an
    HTML error page reduced to its status), else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    causes = [i for i, ln in enumerate(lines) if ln.startswith("cause: ")]
    if not causes:
        return lines[-1] if lines else f"exit {returncode}"
    reason = " ".join(lines[causes[-1]:]).removeprefix("cause: ")
    head, says, body = reason.partition(" Server says: ")
    if says and body.lower().startswith(("<html", "<!doctype")):
        reason = head.rstrip(".")
        if re.search(r"status code 50[24]\b", head):
            reason += f" ({GATEWAY_HINT})"
    return reason


def published(url: str, variants: list[str]) -> dict[str, list[str]]:
    """variant -> the wheel filenames uploaded to kiln/<variant> on the mirror at ``url``."""
    api = Devpi(url)
    return {v: sorted(api.files(index_name(v))) for v in variants}


def published_for(home: Home, mirror: str | None, variants: list[str]) -> dict[str, list[str]] | None:
    """What `kiln plan` shows as published: from ``mirror``, or the home's running server; None
    when there is neither."""
    if mirror:
        return published(mirror, variants)
    current = running(home)
    if current is None:
        return None
    return published(current.url, variants)


@dataclass(frozen=True)
class Moved:
    """A wheel taken off an index: where it was, where it is kept, and why."""

    wheel: str
    index: str
    kept: Path
    why: str

    def line(self) -> str:
        return f"moved {self.wheel} off {self.index} into {self.kept}: {self.why}"


def move_off(url: str, home: Home, index: str, filename: str, why: str) -> Moved:
    """Take ``filename`` off ``index`` (one that breaks its index's contract): downloaded into the
    home's attic (its sha256 checked), then deleted from the index (``?force``: kiln's indexes are
    non-volatile), and the wheelhouse's copy moved beside it so it is never published again."""
    who = uploader(home)
    api = Devpi(url, who.credentials)
    there = api.files(index).get(filename)
    dest = home.attic / index / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    if there is not None:
        part = dest.with_name(f".{filename}.part")
        try:
            with urllib.request.urlopen(there.url, timeout=api.timeout) as resp, part.open("wb") as out:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError) as exc:
            raise MirrorError(f"{there.url}: cannot download it to keep it before moving it off {index} "
                              f"({getattr(exc, 'reason', exc)}); nothing was moved") from None
        if sha256_of(part) != there.sha256:
            part.unlink()
            raise MirrorError(f"{there.url}: downloaded bytes differ from its sha256 {there.sha256[:16]}; "
                              "nothing was moved")
        os.replace(part, dest)
        path = urllib.parse.urlparse(there.url).path
        prefix = urllib.parse.urlparse(api.url).path.rstrip("/")
        try:
            api.request("DELETE", f"{path.removeprefix(prefix)}?force")
        except HTTPRefused as exc:
            raise MirrorError(f"{url}/{index} refused to remove {filename} ({who.what}): HTTP {exc.status} "
                              f"{exc.detail}; it is kept in {dest} and still on the index") from None
    local = home.wheelhouse / filename
    if local.exists() and there is None:
        os.replace(local, dest)
    elif local.exists():
        local.unlink()  # the attic holds the index's copy of it, its sha256 checked
    return Moved(filename, index, dest, why)

"""Publishing wheels to the mirror, and reading back what is published."""

from __future__ import annotations

import os
import subprocess
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import MirrorError
from kiln.home import Home
from kiln.matrix import Variant
from kiln.mirror.api import Credentials, Devpi
from kiln.mirror.layout import index_name, layout, variant_of_wheel
from kiln.mirror.server import ServerFiles, root_credentials, running, upload_credentials
from kiln.source import sha256_of


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
def publish(wheels: list[Path], url: str, home: Home) -> list[Published]:
    """Upload wheels to the index of their variant; refuse to replace any published file.

    Every wheel is checked before anything is uploaded: same filename and same sha256 is
    skipped; same filename and other bytes is refused (MirrorError) and nothing changes.
    """
    creds = upload_credentials(home)
    api = Devpi(url, creds)
    by_index: dict[str, list[tuple[Path, str]]] = {}
    for wheel in sorted(wheels):
        by_index.setdefault(index_name(variant_of_wheel(wheel.name).name), []).append((wheel, sha256_of(wheel)))
    results: list[Published] = []
    todo: dict[str, list[Path]] = {}
    for index, items in by_index.items():
        if api.index(index) is None:
            _create_variant_index(home, url, index)
        have = api.files(index)
        for wheel, sha in items:
            there = have.get(wheel.name)
            if there is None:
                todo.setdefault(index, []).append(wheel)
            elif there.sha256 == sha:
                results.append(Published(wheel.name, index, sha, uploaded=False))
            else:
                raise MirrorError(f"{wheel.name} is already on {url}/{index} with sha256 {there.sha256[:16]}, "
                                  f"this file has {sha[:16]}: published files are immutable; bump the "
                                  "version or rebuild the same bytes")
    for index, paths in todo.items():
        _upload(paths, f"{url}/{index}/", creds)
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
    from kiln.backends.local import uv

    env = dict(os.environ, UV_PUBLISH_USERNAME=creds.user, UV_PUBLISH_PASSWORD=creds.password)
    env.pop("UV_PUBLISH_TOKEN", None)
    res = subprocess.run([uv(), "publish", "--no-progress", "--publish-url", publish_url,
                          *[str(w) for w in wheels]], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit {res.returncode}"
        raise MirrorError(f"uv publish to {publish_url} failed: {reason}")


def published(url: str, variants: list[str]) -> dict[str, list[str]]:
    """variant -> the wheel filenames uploaded to kiln/<variant> on the mirror at ``url``."""
    api = Devpi(url)
    return {v: sorted(api.files(index_name(v))) for v in variants}


def published_for(args: Namespace, variants: list[str]) -> dict[str, list[str]] | None:
    """What `kiln plan` shows as published: from --mirror, or the home's running server; None
    when there is neither."""
    mirror = getattr(args, "mirror", None)
    if mirror:
        return published(mirror, variants)
    current = running(Home(Path(args.home)))
    if current is None:
        return None
    return published(current.url, variants)

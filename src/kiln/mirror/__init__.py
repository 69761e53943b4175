"""The devpi mirror: nginx in front of devpi-server, one index per variant.

- api.py: devpi's HTTP API (JSON)
- server.py: a kiln home's mirror processes, files and secrets
- layout.py: the indexes and their names
- publish.py: uploading wheels and reading back what is published
- deploy.py: nginx and devpi configuration for every deployment (embedded, replica, PostgreSQL)
- plugin.py: kiln's devpi-server plugin (PEP 658 core metadata hashes, PEP 700 upload-time)

kiln talks to the mirror only through its HTTP API and uploads with ``uv publish``; it never
writes the server's files.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from kiln.home import Home
from kiln.matrix import Variant
from kiln.mirror.api import Devpi
from kiln.mirror.layout import (
    PYPI_INDEX,
    USER,
    index_name,
    layout,
    pypi_mirror,
    simple_url,
    variant_of_wheel,
)
from kiln.mirror.publish import Moved, Published, mirror_url, move_off, publish, published, published_for
from kiln.mirror.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Running,
    ServeOptions,
    ServerFiles,
    _secret_file,
    export,
    import_,
    root_credentials,
    running,
    start,
    stop,
    url_for,
    wait,
    wait_replicated,
)
from kiln.toolchains import Toolchains

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Moved", "Published", "Running", "ServeOptions", "Served", "ServerFiles",
           "configure", "export", "import_", "index_name", "layout", "mirror_url", "move_off", "publish", "published",
           "published_for", "running", "serve", "simple_url", "start", "stop", "url_for", "variant_of_wheel", "wait",
           "wait_replicated"]


@dataclass
class Served:
    """What `kiln serve` set up."""

    url: str
    pid: int
    started: bool
    indexes: list[str]
    changed: list[str]
    notes: list[str]


def configure(home: Home, url: str, variants: list[Variant], toolchains: Toolchains | None,
              upstream: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """Make the mirror's users and indexes what kiln expects; idempotent.

    Returns (index names, the ones created or changed, notes).
    """
    api = Devpi(url, root_credentials(home))
    changed = []
    if api.ensure_index(pypi_mirror(upstream)):
        changed.append(PYPI_INDEX)
    api.ensure_user(USER, _secret_file(ServerFiles(home).kiln_password))
    plan = layout(variants, toolchains)
    for config in plan.indexes:
        if api.ensure_index(config):
            changed.append(config.name)
    return [c.name for c in plan.indexes], changed, plan.notes


def serve(home: Home, variants: list[Variant], toolchains: Toolchains | None,
          options: ServeOptions) -> tuple[Served, list[subprocess.Popen[bytes]]]:
    """Start (or reuse) the mirror as ``options`` say and configure it, an index per variant
    (a replica takes its primary's indexes). The processes are returned when started here."""
    server, procs = start(home, options)
    if options.replica_of:
        return Served(server.url, server.pid, bool(procs), [], [], []), procs
    try:
        names, changed, notes = configure(home, server.url, variants, toolchains, options.upstream)
    except BaseException:
        if procs:
            stop(home)
        raise
    return Served(server.url, server.pid, bool(procs), names, changed, notes), procs

"""The backends by name, as `kiln build --backend NAME` and `kiln up` take them."""

from __future__ import annotations

from kiln.backends import Backend
from kiln.backends.cibuildwheel import CibuildwheelBackend
from kiln.backends.local import LocalBackend
from kiln.errors import ConfigError

BACKENDS: dict[str, type[LocalBackend] | type[CibuildwheelBackend]] = {
    "local": LocalBackend,
    "cibuildwheel": CibuildwheelBackend,
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ConfigError for a name that is none."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: expected {' or '.join(repr(n) for n in BACKENDS)}")
    return BACKENDS[name]()

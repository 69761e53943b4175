"""Every failure a user can cause has a class here with its own exit code (the docs list them,
generated from this module; a test holds them unique).

The CLI prints ``kiln: <message>`` on one line and exits with ``exit_code``; no traceback. A
subclass elsewhere that sets no code of its own (kiln.mirror.api.HTTPRefused, a MirrorError that
carries the HTTP status) is that error, with its code.
"""

from __future__ import annotations


class KilnError(Exception):
    """A failure the user can act on."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(KilnError):
    """A malformed recipe or toolchain table: names file:line and what was expected."""

    exit_code = 2


class SourceError(KilnError):
    """The sdist could not be found, downloaded, or its sha256 did not match."""

    exit_code = 3


class BuildError(KilnError):
    """A cell failed to build, finish or pass its smoke test."""

    exit_code = 4


class MirrorError(KilnError):
    """The devpi mirror is unreachable, refused an upload, or would lose published bytes."""

    exit_code = 5


class HostError(KilnError):
    """This host lacks something a command needs (uv, unshare, a Python, nvcc)."""

    exit_code = 6


class HomeBusy(KilnError):
    """Another kiln process holds the home's writer lock (and --no-wait was given)."""

    exit_code = 7


class DoctorProblems(KilnError):
    """`kiln doctor` found problems with the kiln wheels of an environment (each printed on its own line)."""

    exit_code = 8


class NotBuildable(KilnError):
    """A cell that cannot exist: the package's Requires-Python excludes the cell's Python, or a
    build requirement whose project publishes wheels has none for it (kiln.feasible). `kiln build`
    records the cell as not buildable, with this message as its reason; it is no failure."""

    exit_code = 9


class InferError(KilnError):
    """`kiln infer` found no working recipe (no rule fixes the last failure, or the rules go
    round in circles): the draft is not written."""

    exit_code = 10


class StaleWorkflowError(KilnError):
    """`kiln ci check`: the committed workflow differs from a fresh render of the recipes."""

    exit_code = 11


class BumpError(KilnError):
    """`kiln bump`: a new version failed to build or pass its smoke test on this host (or none of
    its cells builds here): that version is not written to its recipe; or (`--toolchains`) a new
    torch minor's wheels did not say all its table entry needs: that minor is not written."""

    exit_code = 12

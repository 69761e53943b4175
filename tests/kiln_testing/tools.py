"""Small things every test and benchmark needs: where this interpreter's tools are, uv, a free port.

Standard library only: benchmarks/gpu_check.py imports this in a venv without kiln.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
"""The bin directory of the interpreter running the tests: kiln's, uv's, devpi's commands."""


def uv() -> str:
    """The uv executable: on PATH, else beside this interpreter (the `uv` package puts it there)."""
    return shutil.which("uv") or str(BIN / "uv")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""Cell logs: what a failed step's output says, in one line."""

from __future__ import annotations

import re
from typing import TextIO


def read_from(log: TextIO, start: int) -> str:
    """What was written to the log file ``log`` from offset ``start`` on."""
    log.flush()
    try:
        with open(log.name, encoding="utf-8", errors="replace") as f:
            f.seek(start)
            return f.read()
    except (OSError, AttributeError, TypeError):
        return ""


_COMPILER_ERROR = re.compile(r"^(\S+?(:\d+(:\d+)?:|\(\d+\):) (fatal )?error\b.*|(cc1\w*|ld|collect2): (fatal )?error: .*)",
                             re.IGNORECASE)
_PY_EXCEPTION = re.compile(r"^([\w.]+\.)?\w*(Error|Exception|Exit|Interrupt)(: .*)?$")
_UV_CAUSE = re.compile(r"^(\s*)(?:╰─▶|cause:)\s*(.+)$")
_CMAKE_ERROR = re.compile(r"^CMake Error\b.*")
_ERROR_WORD = re.compile(r"(^|\s)(error|ERROR)\b:?")


def decisive_line(text: str) -> str | None:
    """The line of a failed command's output that says why: the first compiler error, else the
    first CMake error, else uv's reason, else the last Python exception, else the last line that
    says error."""
    raw = text.splitlines()
    lines = [ln.strip() for ln in raw if ln.strip()]
    compiler = [ln for ln in lines if _COMPILER_ERROR.match(ln)]
    # A fatal error first, then the package's own sources before system headers (which fail in
    # the feature probes numpy.distutils and CMake run on purpose).
    for ln in sorted(compiler, key=lambda ln: (" fatal error" not in ln, ln.startswith("/usr/"))):
        return ln
    for i, ln in enumerate(raw):
        if _CMAKE_ERROR.match(ln):  # the message is on the indented lines that follow
            more = next((m.strip() for m in raw[i + 1:i + 4] if m.strip()), "")
            return f"{ln.strip()} {more}".strip()
    for i, ln in enumerate(raw):
        if m := _UV_CAUSE.match(ln):  # uv's reason, wrapped onto indented lines
            parts = [m.group(2).strip()]
            for more in raw[i + 1:]:
                if not more.strip() or len(more) - len(more.lstrip()) <= len(m.group(1)) or _UV_CAUSE.match(more):
                    break
                parts.append(more.strip())
            return " ".join(parts)
    for ln in reversed(lines):
        if _PY_EXCEPTION.match(ln) and not ln.startswith(("subprocess.CalledProcessError", "CalledProcessError")):
            return ln
    for ln in reversed(lines):
        if _ERROR_WORD.search(ln):
            return ln
    return lines[-1] if lines else None

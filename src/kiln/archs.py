"""Which GPUs a CUDA binary runs on: compute capabilities against the SASS and PTX it holds.

The rules are NVIDIA's (CUDA C++ Programming Guide, "Binary Compatibility" and "PTX
Compatibility"):

- SASS (a cubin, ``sm_80``) runs on a GPU of the same major and an equal or higher minor:
  ``sm_80`` runs on 8.0, 8.6, 8.7, 8.9, never on 9.0. An arch-specific cubin (``sm_90a``) runs
  on exactly that GPU; a family one (``sm_100f``) on its major from that minor up.
- PTX (``compute_75``) is compiled just in time by the driver for any GPU at or above it; an
  arch-specific PTX (``compute_90a``) only for that GPU, a family one (``compute_100f``) only
  within its major.

A GPU is covered by ``sass`` when some cubin runs on it, else by ``ptx`` when some PTX does (it
runs, after a JIT compile on first use and often slower), else not at all: the kernel launch
fails with "no kernel image is available for execution on the device". This module is used on
both sides, by ``wheel.finish`` against the archs a variant index serves and by ``kiln doctor``
against the GPUs of a user's machine, so it imports nothing of the build.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

Code = Literal["sass", "ptx"]
"""How a GPU runs a binary: its own machine code, or PTX the driver compiles."""

_CODE = re.compile(r"^(?P<kind>sm|compute)_(?P<num>\d+)(?P<suffix>[af]?)$")
_CC = re.compile(r"^(?P<major>\d+)\.(?P<minor>\d+)$")


def cc_tuple(cc: str) -> tuple[int, int]:
    """``"8.6"`` -> (8, 6)."""
    m = _CC.match(cc.strip())
    if not m:
        raise ValueError(f"expected a compute capability like '8.6', got {cc!r}")
    return int(m["major"]), int(m["minor"])


def sm_name(cc: str) -> str:
    """``"8.6"`` -> ``sm_86``, the name cuobjdump and nvidia's error messages use."""
    major, minor = cc_tuple(cc)
    return f"sm_{major}{minor}"


def _parse(code: str) -> tuple[int, int, str] | None:
    """``sm_90a`` -> (9, 0, "a"); ``compute_100f`` -> (10, 0, "f"); the minor is the last digit."""
    m = _CODE.match(code)
    if not m:
        return None
    num = m["num"]
    return int(num[:-1] or 0), int(num[-1]), m["suffix"]


def _runs(code: str, gpu: tuple[int, int], *, ptx: bool) -> bool:
    parsed = _parse(code)
    if parsed is None:
        return False
    major, minor, suffix = parsed
    if suffix == "a":
        return (major, minor) == gpu
    if suffix == "f" or not ptx:
        return major == gpu[0] and minor <= gpu[1]
    return (major, minor) <= gpu


def code_for(cc: str, sass: Iterable[str], ptx: Iterable[str]) -> Code | None:
    """How a GPU of compute capability ``cc`` runs a binary holding ``sass`` (``sm_80``...) and
    ``ptx`` (``compute_75``...): ``sass``, ``ptx`` (JIT), or None (no kernel image for it)."""
    gpu = cc_tuple(cc)
    if any(_runs(s, gpu, ptx=False) for s in sass):
        return "sass"
    if any(_runs(p, gpu, ptx=True) for p in ptx):
        return "ptx"
    return None


def coverage(served: Iterable[str], sass: Iterable[str], ptx: Iterable[str]) -> dict[str, Code | None]:
    """Each served compute capability -> how the binary runs on it (None: it does not)."""
    sass, ptx = list(sass), list(ptx)
    return {cc: code_for(cc, sass, ptx) for cc in served}


def missing(served: Iterable[str], sass: Iterable[str], ptx: Iterable[str]) -> list[str]:
    """The served compute capabilities the binary holds no code for, as ``sm_80`` names."""
    return [sm_name(cc) for cc, code in coverage(served, sass, ptx).items() if code is None]


def sort_ccs(ccs: Iterable[str]) -> list[str]:
    """Compute capabilities in order, each once: ``["9.0", "8.0", "9.0"]`` -> ``["8.0", "9.0"]``."""
    return sorted(set(ccs), key=cc_tuple)

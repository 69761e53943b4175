"""How long a build of some cells will take, said before `kiln up` starts it.

Each cell's estimate comes from the builds of its project and variant recorded in the home (any
Python, any version: the median of their seconds, preferring builds for the same CUDA
architectures and scaling by the count of architectures otherwise), else from its recipe's
``timeout_minutes``, scaled: a recipe's timeout is about four times its full CUDA build
(causal-conv1d: 45 of 120 minutes for 9 architectures on 2 cores), a CUDA build takes a share of
that in proportion to its architectures (out of ``FULL_ARCH_COUNT``), and a build without CUDA a
small part of it (they took well under a minute each here against the default 60).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Literal

from packaging.utils import canonicalize_name

from kiln.home import CellOutcome, CellResult, Home
from kiln.logs import duration
from kiln.matrix import Cell
from kiln.wheel import wanted_archs

TIMEOUT_SHARE_CUDA = 0.25
"""A CUDA build for a full architecture list, as a share of its recipe's timeout."""
TIMEOUT_SHARE = 0.02
"""A build without CUDA, as a share of its recipe's timeout."""
FULL_ARCH_COUNT = 8
"""The architectures of a full list (``upstream``): what ``TIMEOUT_SHARE_CUDA`` is for."""

Source = Literal["here", "timeout"]


@dataclass(frozen=True)
class Estimate:
    """One cell's expected build time."""

    cell: str
    seconds: float
    source: Source
    """``here``: from builds recorded in the home; ``timeout``: from the recipe's timeout."""


def estimate(cells: list[Cell], home: Home) -> list[Estimate]:
    """An estimate for each of ``cells``, in order."""
    results = _built_results(home)
    return [_one(cell, results) for cell in cells]


def _built_results(home: Home) -> list[CellResult]:
    if not home.cells.is_dir():
        return []
    found = []
    for path in sorted(home.cells.glob("*.json")):
        result = CellResult.load(home, path.stem)
        if result is not None and result.status == CellOutcome.BUILT and result.seconds > 0:
            found.append(result)
    return found


def _arch_count(archs: str | None) -> int | None:
    """How many architectures a list names; None for ``upstream`` (or none)."""
    if not archs or archs == "upstream":
        return None
    return len(wanted_archs(archs)[0]) or None


def _one(cell: Cell, results: list[CellResult]) -> Estimate:
    pattern = re.compile(rf"^{re.escape(canonicalize_name(cell.project))}-[^-]+-cp\d+-{re.escape(cell.variant.name)}$")
    same = [r for r in results if pattern.match(r.cell)]
    cuda = cell.variant.cuda_major is not None
    if same:
        exact = [r for r in same if not cuda or (r.cuda_archs or "upstream") == cell.cuda_archs]
        if exact:
            return Estimate(cell.id, statistics.median(r.seconds for r in exact), "here")
        want = _arch_count(cell.cuda_archs) or FULL_ARCH_COUNT
        scaled = [r.seconds * want / (_arch_count(r.cuda_archs) or FULL_ARCH_COUNT) for r in same]
        return Estimate(cell.id, statistics.median(scaled), "here")
    timeout = cell.recipe.build.timeout_minutes * 60
    if not cuda:
        return Estimate(cell.id, timeout * TIMEOUT_SHARE, "timeout")
    count = min(_arch_count(cell.cuda_archs) or FULL_ARCH_COUNT, FULL_ARCH_COUNT)
    return Estimate(cell.id, timeout * TIMEOUT_SHARE_CUDA * count / FULL_ARCH_COUNT, "timeout")


def summary(estimates: list[Estimate]) -> str:
    """``about 14 min (3 cells from earlier builds here, 2 from their recipes' timeouts)``."""
    total = sum(e.seconds for e in estimates)
    here = sum(1 for e in estimates if e.source == "here")
    parts = [f"{here} from earlier builds here" if here else "",
             f"{len(estimates) - here} from their recipes' timeouts" if len(estimates) > here else ""]
    return f"about {duration(total, about=True)} ({', '.join(p for p in parts if p)})"

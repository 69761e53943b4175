"""The kiln home: where wheels, logs, caches and the mirror's state live (default ./.kiln)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("KILN_HOME", ".kiln")).absolute()


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def wheelhouse(self) -> Path:
        """Finished, smoke-tested wheels."""
        return self.root / "wheelhouse"

    @property
    def failed(self) -> Path:
        """Wheels that built but failed their smoke test: kept aside, never published."""
        return self.root / "failed"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def cells(self) -> Path:
        """One JSON result per cell built here."""
        return self.root / "cells"

    @property
    def sources(self) -> Path:
        return self.root / "cache" / "sources"

    @property
    def ccache(self) -> Path:
        """The compiler cache, kept between runs."""
        return self.root / "cache" / "ccache"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def server(self) -> Path:
        """devpi-server's state."""
        return self.root / "devpi"


@dataclass
class CellResult:
    """What happened to one cell when it was last built here."""

    cell: str
    status: str  # "built" | "failed"
    log: str
    seconds: float
    wheel: str | None = None
    error: str | None = None
    cuda_archs: str | None = None
    closure_of: str | None = None
    """For a closure cell: the cell whose runtime requirement it is."""
    closure_built: list[str] = field(default_factory=list)
    """The wheels of runtime requirements built for this cell (its closure), in this build."""

    def save(self, home: Home) -> None:
        home.cells.mkdir(parents=True, exist_ok=True)
        (home.cells / f"{self.cell}.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, home: Home, cell_id: str) -> CellResult | None:
        path = home.cells / f"{cell_id}.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

"""kiln.json as kiln writes it, for wheels the tests make by hand: every field a real provenance
has (kiln.wheel.Provenance), the ones a test names set as it says."""

from __future__ import annotations

import json
from dataclasses import asdict

from kiln.provenance import Provenance


def provenance(cell: str, variant: str = "main", **fields: object) -> Provenance:
    """A complete provenance for ``cell`` of ``variant``."""
    base = dict(kiln_version="0+tests", cell=cell, variant=variant,
                recipe="tests.yaml", recipe_sha256="0" * 64, source_url="file:///tests", source_sha256="0" * 64,
                python="3.11.0", torch=None, cuda_archs=None, nvcc=None, compiler="gcc (tests)")
    return Provenance.from_json({**base, **fields})


def provenance_json(cell: str, variant: str = "main", **fields: object) -> str:
    """The kiln.json text of provenance()."""
    return json.dumps(asdict(provenance(cell, variant, **fields)), indent=2) + "\n"

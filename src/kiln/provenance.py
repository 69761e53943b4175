"""A finished wheel's provenance: what ``<name>.dist-info/kiln.json`` records of how kiln built
it, written by kiln.wheel.finish and read back, typed, by the plan, the publisher, the mirror's
plugin (inside devpi-server) and `kiln doctor`; and the device code a CUDA wheel holds."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from pydantic import TypeAdapter, ValidationError

PROVENANCE = "kiln.json"
"""The provenance's file name in a wheel's dist-info."""

@dataclass
class Provenance:
    """Recorded in `<dist-info>/kiln.json` of every finished wheel."""

    kiln_version: str
    cell: str
    variant: str
    recipe: str
    recipe_sha256: str
    source_url: str
    source_sha256: str
    python: str
    torch: str | None
    cuda_archs: str | None
    nvcc: str | None
    compiler: str
    build_env: list[str] = field(default_factory=list)
    backend: str = "local"
    build_requires: dict[str, object] | None = None
    """The build requirements tier by tier (kiln.buildreqs.BuildRequirements)."""
    closure_of: str | None = None
    """For a runtime dependency kiln built without a recipe: the cell that needed it."""
    cuda_archs_found: dict[str, list[str]] | None = None
    """What the wheel's shared objects hold, as cuobjdump lists it (CudaArchs.to_json):
    ``{"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"], ...}``; None for a wheel without CUDA,
    or when no cuobjdump was found."""
    archs_served: list[str] | None = None
    """For a CUDA wheel: the compute capabilities its variant index serves (``["7.5", "8.0", ...]``,
    toolchains.yaml's ``cuda.<version>.serves`` cut at the recipe's ``build.gpus.min``), every one of
    which the wheel was checked to run on."""
    archs_code: dict[str, str] | None = None
    """For a CUDA wheel: each served compute capability -> ``sass`` (machine code for it, or for a
    lower minor of its major) or ``ptx`` (compiled by the driver on first use)."""
    gpus_reason: str | None = None
    """Why the recipe serves fewer GPUs than the index's table (its ``build.gpus.reason``)."""
    runtime_replaced: dict[str, str | None] | None = None
    """What the recipe's ``runtime.replace`` changed in upstream's Requires-Dist: upstream's
    requirement -> the one written (None: dropped)."""
    cuda_toolkit: str | None = None
    """For a CUDA wheel: the CUDA toolkit that compiled it (kiln.cuda): ``host /usr/local/cuda-13.0
    (nvcc 13.0)``, or NVIDIA's packages from the index, ``index: nvidia-cuda-nvcc 13.0.88,
    nvidia-nvvm 13.0.88, ...``, or a CI image's."""
    cython_regenerated: dict[str, str] | None = None
    """The sdist's stale Cython output that kiln regenerated before the build (kiln.cythonize, the
    recipe's ``build.regenerate_cython``): in place with the build environment's Cython, or removed
    for the package's own cythonize to write again where that could not: each file -> the Cython that
    generated it, ``{"pkg/_x.c": "0.29.21"}``; None when none was."""
    cython_regenerated_by: str | None = None
    """The build environment's Cython, which regenerated them: ``3.0.11``."""

    @classmethod
    def from_json(cls, data: object) -> Provenance:
        """The provenance a kiln.json holds, its fields checked against their types (keys this kiln
        does not know, from a newer one, are ignored); ProvenanceError says what is wrong."""
        if not isinstance(data, dict):
            raise ProvenanceError("invalid", "not a JSON object")
        try:
            return _PROVENANCE_ADAPTER.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top)"
            raise ProvenanceError("invalid", f"{where}: {first['msg'].lower()}") from None

    @classmethod
    def read(cls, wheel: Path | IO[bytes]) -> Provenance:
        """The provenance of a wheel (a file, or an open upload): its top-level
        ``<name>.dist-info/kiln.json``; ProvenanceError when it has none, is no readable wheel or
        the record is not kiln's."""
        try:
            with zipfile.ZipFile(wheel) as zf:
                found = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(f".dist-info/{PROVENANCE}")]
                if len(found) != 1:
                    raise ProvenanceError("missing", f"{len(found)} {PROVENANCE} files at the top of a dist-info")
                text = zf.read(found[0])
        except (zipfile.BadZipFile, OSError) as exc:
            raise ProvenanceError("unreadable", str(exc)) from None
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProvenanceError("not-json", str(exc)) from None
        return cls.from_json(data)


class ProvenanceError(ValueError):
    """A wheel's provenance could not be read: ``kind`` is ``unreadable`` (no readable wheel),
    ``missing`` (no kiln.json), ``not-json`` or ``invalid`` (a field missing or of the wrong type)."""

    def __init__(self, kind: Literal["unreadable", "missing", "not-json", "invalid"], detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


_PROVENANCE_ADAPTER = TypeAdapter(Provenance)


@dataclass(frozen=True)
class CudaArchs:
    """The device code of a wheel's shared objects: every SASS and PTX architecture found."""

    sass: tuple[str, ...] = ()
    """Architectures with SASS (machine code), e.g. ``sm_80``, ``sm_90a``."""
    ptx: tuple[str, ...] = ()
    """Architectures with PTX, e.g. ``compute_90``."""
    with_device_code: tuple[str, ...] = ()
    """The wheel's shared objects that hold device code."""
    without_device_code: tuple[str, ...] = ()
    """The wheel's shared objects that hold none."""

    @property
    def empty(self) -> bool:
        return not self.sass and not self.ptx

    def __str__(self) -> str:
        """``sm_80 sm_90 compute_90``, or ``no device code``."""
        return " ".join([*self.sass, *self.ptx]) or "no device code"

    def to_json(self) -> dict[str, list[str]]:
        return {"sass": list(self.sass), "ptx": list(self.ptx), "with_device_code": list(self.with_device_code),
                "without_device_code": list(self.without_device_code)}

    @classmethod
    def from_json(cls, data: object) -> CudaArchs | None:
        """The record ``to_json`` wrote (a provenance's, a cell result's); None for anything else."""
        if not isinstance(data, dict):
            return None

        def names(key: str) -> tuple[str, ...]:
            value = data.get(key) or []
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        return cls(names("sass"), names("ptx"), names("with_device_code"), names("without_device_code"))

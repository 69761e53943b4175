"""Where a wheel goes on the mirror and whether kiln built it: its filename's label names a
variant index, and its provenance must say kiln built this very wheel for that variant. The
publisher asks it of every wheel before sending any; the mirror's plugin, inside devpi-server,
asks it of every upload to a kiln index (so that a kiln password or token cannot put anything
else there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from kiln.errors import ConfigError, MirrorError
from kiln.matrix import Variant
from kiln.mirror.layout import index_name, variant_of_wheel
from kiln.provenance import PROVENANCE, CudaArchs, Provenance, ProvenanceError


@dataclass(frozen=True)
class Origin:
    """What a wheel's kiln.json says of where it comes from."""

    cell: str
    variant: str
    closure_of: str | None
    device: CudaArchs | None = None
    """The device code cuobjdump found in it (its ``cuda_archs_found``); None for a wheel without CUDA."""


def origin_of(filename: str, wheel: Path | IO[bytes]) -> tuple[str, Origin]:
    """The index a wheel (a file, or an open upload) goes to and its provenance; MirrorError (one
    line) when kiln did not build it, or built it for another variant or as another wheel. The
    mirror's plugin asks the same of every upload to a kiln index."""
    try:
        variant = variant_of_wheel(filename)
        name, version, _, _ = parse_wheel_filename(filename)
    except (ValueError, ConfigError) as exc:  # packaging's InvalidWheelFilename is a ValueError
        raise MirrorError(f"{filename}: not a wheel's filename ({exc})") from None
    origin = _provenance(filename, wheel)
    if origin.variant != variant.name:
        where = index_name(origin.variant) if _is_variant(origin.variant) else "no kiln index"
        label = f"label +{version.local}" if version.local else "no label"
        raise MirrorError(f"{filename}: its {label} puts it on {index_name(variant.name)}, but its {PROVENANCE} "
                          f"says kiln built it for variant {origin.variant} ({where})")
    if not _names_wheel(origin.cell, origin.variant, name, version):
        raise MirrorError(f"{filename}: its {PROVENANCE} is of cell {origin.cell}, not of this wheel")
    return index_name(variant.name), origin


def _is_variant(name: str) -> bool:
    try:
        Variant.parse(name)
    except ConfigError:
        return False
    return True


def _provenance(filename: str, wheel: Path | IO[bytes]) -> Origin:
    try:
        prov = Provenance.read(wheel)
    except ProvenanceError as exc:
        raise MirrorError({
            "missing": f"{filename}: no kiln provenance (<name>.dist-info/{PROVENANCE}): kiln publishes only wheels "
                       "it built",
            "unreadable": f"{filename}: not a readable wheel ({exc.detail})",
            "not-json": f"{filename}: its {PROVENANCE} is not JSON ({exc.detail})",
            "invalid": f"{filename}: its {PROVENANCE} is not kiln's provenance ({exc.detail})",
        }[exc.kind]) from None
    return Origin(prov.cell, prov.variant, prov.closure_of, CudaArchs.from_json(prov.cuda_archs_found))


def _names_wheel(cell_id: str, variant: str, name: str, version: Version) -> bool:
    """Whether ``cell_id`` (``<project>-<version>-<python tag>-<variant>``) is this wheel's cell."""
    head, sep, _ = cell_id.removesuffix(f"-{variant}").rpartition("-")
    prefix = f"{canonicalize_name(name)}-"
    if not sep or not cell_id.endswith(f"-{variant}") or not head.startswith(prefix):
        return False
    try:
        return Version(head[len(prefix):]).public == version.public
    except InvalidVersion:
        return False

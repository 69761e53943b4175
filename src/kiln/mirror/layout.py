"""The indexes kiln keeps on a mirror, and the names installers use for them.

- ``root/pypi``: devpi's mirror of the upstream index (``--upstream`` sets its mirror_url)
- ``kiln/main``: wheels that need no torch; bases ``root/pypi``
- ``kiln/<variant>``: bases ``kiln/main``, ``root/pypi`` and, where the default index lacks
  that build of torch, a mirror of the PyTorch index (e.g. ``root/pytorch-cu128``)

Every kiln index is non-volatile with an empty ``mirror_whitelist``: once kiln serves a
project, devpi hides the upstream releases of that project (its sdist above all), so an
installer never silently falls back to a source build.

``root/pypi`` does not load its upstream's list of every project (``mirror_no_project_list``):
devpi asks for a project's own page and takes a 404 as "no such project". Otherwise a fresh
mirror must first fetch the whole list (hundreds of thousands of names from the public index)
within devpi's request timeout, and while it cannot, devpi drops ``root/pypi`` from a kiln
index's page: an installer saw "no version of X" (kiln issue 11; plugin.py says the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from kiln.errors import ConfigError, MirrorError
from kiln.matrix import MAIN, Variant
from kiln.toolchains import PYPI, Toolchains

USER = "kiln"
PYPI_INDEX = "root/pypi"
MAIN_INDEX = f"{USER}/{MAIN}"


def index_name(variant: str) -> str:
    """``cu130-torch2.14`` -> ``kiln/cu130-torch2.14``."""
    return f"{USER}/{variant}"


def simple_url(mirror_url: str, variant: str) -> str:
    """The index URL installers use for a variant."""
    return f"{mirror_url.rstrip('/')}/{index_name(variant)}/+simple/"


def variant_of_wheel(filename: str) -> Variant:
    """The variant a finished wheel belongs to, from its local version label."""
    try:
        _, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise MirrorError(f"{filename}: not a wheel filename ({exc})") from None
    try:
        return Variant.from_label(version.local)
    except ConfigError as exc:
        raise MirrorError(f"{filename}: local label +{version.local} is no kiln variant: {exc.message}") from None


@dataclass(frozen=True)
class IndexConfig:
    """The settings kiln keeps on one devpi index."""

    name: str
    type: str = "stage"
    bases: tuple[str, ...] = ()
    mirror_url: str | None = None
    project_list: bool = True  # a mirror loads its upstream's list of projects (devpi's default)

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"type": self.type, "volatile": False}
        if self.type == "stage":
            # anonymous users read only: devpi lets anyone attach a tox result unless told not to
            data.update(bases=list(self.bases), mirror_whitelist=[], acl_upload=[USER], acl_toxresult_upload=[])
        if self.mirror_url:
            data["mirror_url"] = self.mirror_url
        if self.type == "mirror":
            # devpi then serves `<file>.metadata` of files it has not fetched yet from the
            # upstream; kiln's plugin advertises it only where the upstream does (plugin.py)
            data["mirror_provides_core_metadata"] = True
            data["mirror_no_project_list"] = not self.project_list
        return data


def pypi_mirror(upstream: str | None) -> IndexConfig:
    """``root/pypi``: devpi's mirror of ``upstream`` (None: devpi's default, the public index),
    asking for each project's page rather than loading the list of all projects first."""
    return IndexConfig(PYPI_INDEX, type="mirror", mirror_url=upstream, project_list=False)


@dataclass
class Layout:
    """The indexes kiln keeps on the mirror, and what it had to leave out."""

    indexes: list[IndexConfig] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def layout(variants: list[Variant], toolchains: Toolchains | None) -> Layout:
    """kiln/main, one kiln/<variant> per variant, and the PyTorch mirrors they need."""
    out = Layout()
    mirrors: dict[str, IndexConfig] = {}
    variant_indexes = [IndexConfig(MAIN_INDEX, bases=(PYPI_INDEX,))]
    for v in sorted(set(variants), key=str):
        if v.torch is None:
            continue
        bases = [MAIN_INDEX, PYPI_INDEX]
        if toolchains is not None and v.cuda is not None and v.torch in toolchains.torch:
            source = toolchains.torch[v.torch].builds.get(v.cuda, PYPI)
            if source != PYPI:
                url = toolchains.index_url(v.torch, v.cuda)
                build = "cpu" if v.cuda == "cpu" else v.accelerator
                if url:
                    name = f"root/{source}-{build}"
                    mirrors[name] = IndexConfig(name, type="mirror", mirror_url=url.rstrip("/") + "/")
                    bases.append(name)
                else:
                    env = toolchains.indexes[source].url_env
                    out.notes.append(f"{index_name(v.name)}: torch {v.torch} {build} comes from index "
                                     f"{source!r}; set {env} to mirror it")
        variant_indexes.append(IndexConfig(index_name(v.name), bases=tuple(bases)))
    out.indexes = [*mirrors.values(), *variant_indexes]
    return out

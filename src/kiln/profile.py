"""Build profiles: which cells `kiln up` and `kiln plan` take, and for which GPU architectures.

``all`` (CI, a team's build box): every cell, each with the arch policy of its recipe and
toolchains.yaml. ``host`` (the default of `kiln up`): every cell without CUDA, and the CUDA cells
this host can build and use: one variant (the newest torch minor with a CUDA build of nvcc's
major, which the driver runs when a GPU is present; without such an nvcc, the newest whose CUDA
build has compiler packages on the index, kiln.cuda), for the Python kiln runs on (or the
``--python`` ones), built for the GPUs present, or toolchains.yaml's ``host_archs`` without one.

``select`` takes the host's facts as an argument (``HostFacts``; ``probe_facts`` reads them from
this machine), so the choice is tested without a GPU or nvcc.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from typing import Literal, get_args

from packaging.version import InvalidVersion, Version

from kiln import archs as gpu_archs
from kiln import cuda
from kiln.host import probe_host, query_gpus
from kiln.matrix import Cell, Variant
from kiln.toolchains import PYPI, Toolchains
from kiln.wheel import wanted_archs

Profile = Literal["host", "all"]
PROFILES: tuple[Profile, ...] = get_args(Profile)
HOST: Profile = "host"
ALL: Profile = "all"


@dataclass(frozen=True)
class HostFacts:
    """What the host profile is chosen from."""

    python: str
    """The Python minor kiln runs on, e.g. ``3.11``."""
    nvcc: str | None = None
    """nvcc's CUDA version (``13.0``); None without a CUDA toolkit."""
    gpus: tuple[str, ...] = ()
    """The compute capability of each GPU present (``9.0``), as nvidia-smi lists them."""
    driver_cuda: str | None = None
    """The newest CUDA the driver runs (nvidia-smi's "CUDA Version"); None without a GPU."""
    cuda_toolkit: cuda.Mode = "auto"
    """Where nvcc may come from (``KILN_CUDA_TOOLKIT``): ``auto`` (the host's, else NVIDIA's compiler
    packages from the index, kiln.cuda), ``host`` or ``index``."""


@dataclass(frozen=True)
class Selection:
    """The cells a profile picked, and what it said about them."""

    profile: Profile
    cells: tuple[Cell, ...]
    total: int
    """How many cells there were to pick from."""
    variant: str | None = None
    """host: the CUDA variant picked; None when no CUDA cell fits this host."""
    pythons: tuple[str, ...] = ()
    """host: the Pythons the CUDA cells are built for."""
    archs: str | None = None
    """host: the architectures the CUDA cells are built for."""
    archs_from: str = ""
    """host: where ``archs`` came from."""
    why_none: str | None = None
    """host: why no CUDA cell was picked."""
    nvcc: str | None = None
    heavy: tuple[str, ...] = ()
    """host: the projects whose recipes leave their CUDA cells to --profile all (build.host_profile)."""
    ptx: tuple[str, ...] = ()
    """host: the compute capabilities compiled as PTX alone beside ``archs``, so that the wheels run on
    every GPU their index serves (the lowest each serves)."""

    def describe(self) -> str:
        """One line: what the profile builds, and why."""
        cells = list(self.cells)
        if self.profile == ALL:
            return (f"profile all: every cell ({len(cells)}), CUDA architectures as the recipes and "
                    "toolchains.yaml say (--profile host: only what this host uses)")
        plain = sum(1 for c in cells if c.variant.cuda_major is None)
        cuda = len(cells) - plain
        left = self.total - len(cells)
        rest = f"; {left} other CUDA cells are left to --profile all" if left else ""
        if self.heavy:
            rest += f" ({', '.join(self.heavy)}: build.host_profile is false)"
        if self.variant is None or not cuda:
            why = self.why_none or f"none of {self.variant} for Python {', '.join(self.pythons)}"
            return f"profile host: {plain} cells without CUDA; no CUDA cells: {why}{rest}"
        ptx = (f" + PTX {', '.join(self.ptx)} (every other GPU kiln/{self.variant} serves, compiled by the "
               "driver)") if self.ptx else ""
        return (f"profile host: {plain} cells without CUDA, and {cuda} CUDA cells of {self.variant} "
                f"(nvcc {self.nvcc}) for Python {', '.join(self.pythons)}, archs {self.archs} "
                f"({self.archs_from}){ptx}{rest}")


def select(cells: list[Cell], toolchains: Toolchains, profile: Profile, facts: HostFacts,
           pythons: list[str] | None = None, cuda_archs: str | None = None) -> Selection:
    """The cells of ``profile`` among ``cells``. ``pythons``: the Pythons asked for (host: the
    CUDA cells' Pythons; default, ``facts.python``); ``cuda_archs``: the architectures asked for
    on the command line, which the cells already carry (host: they replace the GPUs' archs)."""
    if profile == ALL:
        return Selection(ALL, tuple(cells), len(cells))
    if profile != HOST:
        raise ValueError(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
    plain = [c for c in cells if c.variant.cuda_major is None]
    wanted = tuple(dict.fromkeys(pythons or [facts.python]))
    variant, why_none = pick_variant([c.variant for c in cells if c.variant.cuda_major], toolchains, facts)
    if variant is None:
        return Selection(HOST, tuple(plain), len(cells), pythons=wanted, why_none=why_none, nvcc=facts.nvcc)
    if cuda_archs:
        archs, archs_from = cuda_archs, "--cuda-archs"
    elif facts.gpus:
        archs = ";".join(sorted(set(facts.gpus), key=_arch_key))
        archs_from = f"the GPUs here: {', '.join(facts.gpus)}"
    else:
        archs = toolchains.host_archs
        archs_from = "no GPU found: toolchains.yaml's host_archs"
    heavy = tuple(sorted({c.project for c in cells if c.variant == variant and not c.recipe.build.host_profile}))
    keep = {c.id for c in cells if c.variant == variant and c.python in wanted and c.recipe.build.host_profile}
    picked = [c if c.variant.cuda_major is None else
              dataclasses.replace(c, cuda_archs=archs, ptx_archs=ptx_floor(archs, c.archs_served))
              for c in cells if c.variant.cuda_major is None or c.id in keep]
    ptx = sorted({c.ptx_archs for c in picked if c.ptx_archs}, key=_arch_key)
    return Selection(HOST, tuple(picked), len(cells), variant=variant.name, pythons=wanted, archs=archs,
                     archs_from=archs_from, nvcc=nvcc_for(variant, facts), heavy=heavy, ptx=tuple(ptx))


def ptx_floor(archs: str, served: tuple[str, ...]) -> str:
    """The PTX a host build adds so that its wheel runs on every GPU its index serves: none when
    the SASS of ``archs`` covers them all, else PTX of the lowest served GPU, which the driver
    compiles for every newer one (one extra front-end pass, no machine code)."""
    sass, ptx = wanted_archs(archs)
    if not served or not gpu_archs.missing(served, sass, ptx):
        return ""
    return served[0]


def pick_variant(variants: list[Variant], toolchains: Toolchains,
                 facts: HostFacts) -> tuple[Variant | None, str | None]:
    """The CUDA variant this host builds: of those with nvcc's CUDA major (and, with a GPU, one
    the driver runs), the newest torch minor, preferring a torch this host can install and the
    newest CUDA no newer than nvcc. Without one (no nvcc here, another major, or
    ``KILN_CUDA_TOOLKIT=index``), the newest of those whose CUDA build has compiler packages on the
    index (kiln.cuda), likewise; else None and why."""
    if not variants:
        return None, "the recipes picked declare none"
    whys: list[str] = []
    if facts.cuda_toolkit != "index":
        variant, why = _for_nvcc(variants, toolchains, facts)
        if variant is not None:
            return variant, None
        whys.append(why)
    if facts.cuda_toolkit != "host":
        variant, why = _from_index(variants, toolchains, facts)
        if variant is not None:
            return variant, None
        whys.append(why)
    return None, "; ".join(whys)


def _for_nvcc(variants: list[Variant], toolchains: Toolchains, facts: HostFacts) -> tuple[Variant | None, str]:
    """The variant for the host's nvcc, or why there is none."""
    if facts.nvcc is None:
        return None, "no nvcc here (set CUDA_HOME)"
    major = facts.nvcc.split(".")[0]
    if facts.gpus and facts.driver_cuda and _version(facts.driver_cuda).major < int(major):
        return None, f"the GPU driver runs CUDA {facts.driver_cuda} at most, nvcc is {facts.nvcc}"
    fits = sorted({v for v in variants if v.cuda_major == major}, key=str)
    if not fits:
        have = ", ".join(sorted({v.accelerator for v in variants}))
        return None, f"no variant has nvcc {facts.nvcc}'s CUDA major (the recipes have {have})"
    return _newest(fits, toolchains, _version(facts.nvcc)), ""


def _from_index(variants: list[Variant], toolchains: Toolchains, facts: HostFacts) -> tuple[Variant | None, str]:
    """The variant built with NVIDIA's compiler packages from the index (kiln.cuda), or why none."""
    fits = sorted({v for v in variants if (spec := toolchains.cuda.get(v.cuda or "")) and spec.toolkit}, key=str)
    if not fits:
        have = ", ".join(sorted({v.accelerator for v in variants}))
        return None, f"no CUDA build of the recipes ({have}) has compiler packages on the index"
    if facts.gpus and facts.driver_cuda:
        driver = _version(facts.driver_cuda).major
        if not (fits := [v for v in fits if int(v.cuda_major or 0) <= driver]):
            return None, f"the GPU driver runs CUDA {facts.driver_cuda} at most, older than the index's compilers"
    return _newest(fits, toolchains, None), ""


def _newest(fits: list[Variant], toolchains: Toolchains, nvcc: Version | None) -> Variant:
    """The newest torch minor, preferring a torch this host can install, then a CUDA no newer
    than ``nvcc`` (None: any), then the newest CUDA."""
    installable = [v for v in fits if _installable(v, toolchains)]

    def newest(v: Variant) -> tuple[Version, bool, Version]:
        cuda_v = _version(v.cuda or "0")
        return _version(v.torch or "0"), nvcc is None or cuda_v <= nvcc, cuda_v

    return max(installable or fits, key=newest)


def nvcc_for(variant: Variant, facts: HostFacts) -> str:
    """What compiles ``variant`` here, for the profile's line: ``13.0`` (the host's nvcc) or
    ``13.0 from the index``."""
    host = facts.nvcc if facts.cuda_toolkit != "index" else None
    if host and host.split(".")[0] == variant.cuda_major:
        return host
    return f"{variant.cuda} from the index"


def _installable(variant: Variant, toolchains: Toolchains) -> bool:
    """Whether this variant's torch build can be installed here (the default index, or an index
    whose URL is set)."""
    assert variant.torch is not None and variant.cuda is not None
    spec = toolchains.torch_spec(variant.torch)
    if spec is None or variant.cuda not in spec.builds:
        return False
    return spec.builds[variant.cuda] == PYPI or toolchains.index_url(variant.torch, variant.cuda) is not None


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")


def _arch_key(arch: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", arch))


# ----------------------------------------------------------------------------- this host


def probe_facts() -> HostFacts:
    """This host's facts: kiln's Python, nvcc (kiln.host.probe_host), the GPUs and driver,
    and where nvcc may come from (``KILN_CUDA_TOOLKIT``)."""
    gpus, driver = query_gpus()
    return HostFacts(python=f"{sys.version_info.major}.{sys.version_info.minor}",
                     nvcc=probe_host().nvcc_version, gpus=gpus, driver_cuda=driver, cuda_toolkit=cuda.mode())

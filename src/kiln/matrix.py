"""Variants and cells: expand(recipes, toolchains) -> the cells of the build matrix."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Literal

from packaging.utils import canonicalize_name

from kiln.cuda import choose as choose_toolkit
from kiln.errors import ConfigError
from kiln.host import Host, find_python, probe_host
from kiln.recipe import Recipe
from kiln.toolchains import Toolchains

MAIN = "main"
DEFAULT_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
_VARIANT_RE = re.compile(r"^(?:main|(?P<acc>cpu|cu\d{3,})-torch(?P<torch>\d+\.\d+))$")


@dataclass(frozen=True, order=True)
class Variant:
    """What a wheel's binary depends on beyond its Python tag.

    ``cu130-torch2.14``, ``cpu-torch2.14``, or ``main`` for wheels that need no torch.
    """

    torch: str | None = None
    cuda: str | None = None  # "13.0", "cpu", or None for main

    @property
    def name(self) -> str:
        if self.torch is None:
            return MAIN
        return f"{self.accelerator}-torch{self.torch}"

    @property
    def accelerator(self) -> str:
        if self.cuda is None or self.cuda == "cpu":
            return "cpu"
        return "cu" + self.cuda.replace(".", "")

    @property
    def label(self) -> str | None:
        """The PEP 440 local version label: ``cu130.torch2.14``; None for main."""
        return None if self.torch is None else self.name.replace("-", ".")

    @property
    def cuda_major(self) -> str | None:
        return None if self.cuda in (None, "cpu") else self.cuda.split(".")[0]

    @classmethod
    def parse(cls, name: str) -> Variant:
        m = _VARIANT_RE.match(name)
        if not m:
            raise ConfigError(f"variant {name!r}: expected 'main', 'cpu-torchX.Y' or 'cuNNN-torchX.Y'")
        if name == MAIN:
            return cls()
        acc = m.group("acc")
        cuda = "cpu" if acc == "cpu" else f"{acc[2:-1]}.{acc[-1]}"
        return cls(torch=m.group("torch"), cuda=cuda)

    @classmethod
    def from_label(cls, label: str | None) -> Variant:
        """The variant of a PEP 440 local label: ``cu130.torch2.14`` -> ``cu130-torch2.14``;
        no label -> ``main``."""
        if not label:
            return cls()
        accelerator, _, torch = label.partition(".")
        return cls.parse(f"{accelerator}-{torch}")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Cell:
    """One build: (recipe, project version, Python, variant)."""

    recipe: Recipe = field(compare=False, hash=False, repr=False)
    project: str
    version: str
    python: str
    variant: Variant
    torch_release: str | None = None
    cuda_archs: str = "upstream"
    archs_served: tuple[str, ...] = ()
    """For a CUDA cell: the compute capabilities its variant index serves (toolchains.yaml's
    ``cuda.<version>.serves``, cut at the recipe's ``build.gpus.min``); the wheel must run on each."""
    ptx_archs: str = ""
    """For a CUDA cell: compute capabilities compiled as PTX alone, beside ``cuda_archs`` (the host
    profile's floor, so a wheel built for this host's GPUs still runs on every served one)."""
    closure_of: str | None = None
    """For a runtime dependency built without a recipe: the id of the cell that needed it."""
    build: int | None = None
    """The build number this build takes when it is not the recipe's: a rebuild for more CUDA
    architectures than the cell's wheel holds takes the next number above its wheels' (kiln.plan)."""

    @property
    def id(self) -> str:
        """A stable name, e.g. ``causal-conv1d-1.7.0-cp311-cu130-torch2.14``."""
        return f"{canonicalize_name(self.project)}-{self.version}-{self.python_tag}-{self.variant.name}"

    @property
    def python_tag(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def build_number(self) -> int:
        """The wheel's build number (its build tag; 0: none): ``build``, else the recipe's."""
        return self.build if self.build is not None else self.recipe.build.number

    @property
    def wheel_version(self) -> str:
        label = self.variant.label
        return f"{self.version}+{label}" if label else self.version

    def index_urls(self, toolchains: Toolchains, index_url: str) -> list[str]:
        """The indexes a user of the cell's variant resolves against, as uv takes them: the
        default (``index_url``), then the torch build's own index when it has one."""
        urls = [index_url]
        v = self.variant
        if v.torch is not None and v.cuda is not None and (url := toolchains.index_url(v.torch, v.cuda)):
            urls.append(url)
        return urls


def expand(recipes: list[Recipe], toolchains: Toolchains, variant: str | None = None,
           cuda_archs: str | None = None) -> list[Cell]:
    """Every cell the recipes declare, in recipe order; ``variant`` keeps only that one."""
    cells: list[Cell] = []
    for recipe in recipes:
        cells.extend(_expand_one(recipe, toolchains, cuda_archs))
    if variant:
        Variant.parse(variant)
        cells = [c for c in cells if c.variant.name == variant]
    return cells


def _expand_one(recipe: Recipe, tc: Toolchains, cuda_archs: str | None) -> list[Cell]:
    m = recipe.matrix
    archs = cuda_archs or recipe.build.cuda_archs or tc.cuda_archs
    out: list[Cell] = []
    if not recipe.uses_torch:
        for version, py in itertools.product(recipe.versions, m.python or DEFAULT_PYTHONS):
            if not _excluded(m.exclude, python=py):
                out.append(Cell(recipe, recipe.project, version, py, Variant()))
        return out
    for t, torch in enumerate(m.torch):
        spec = tc.torch_spec(torch)
        if spec is None:
            raise ConfigError(f"{recipe.path}:{recipe.line('matrix', 'torch', t)}: matrix.torch: {torch!r} is not "
                              f"in {tc.path} (known: {', '.join(sorted(tc.torch))})")
        for c, cuda in enumerate(m.cuda):
            if cuda not in spec.builds:
                if not _excluded(m.exclude, torch=torch, cuda=cuda):
                    raise ConfigError(
                        f"{recipe.path}:{recipe.line('matrix', 'cuda', c)}: matrix: torch {torch} has no {cuda} "
                        f"build in {tc.path} (it has {', '.join(spec.builds)}); "
                        f"exclude {{torch: \"{torch}\", cuda: \"{cuda}\"}}")
                continue
            pythons = [p for p in (m.python or spec.python)]
            for version, py in itertools.product(recipe.versions, pythons):
                if py not in spec.python or _excluded(m.exclude, torch=torch, cuda=cuda, python=py):
                    continue
                out.append(Cell(recipe, recipe.project, version, py, Variant(torch, cuda),
                                torch_release=spec.release,
                                cuda_archs=archs if cuda != "cpu" else "upstream",
                                archs_served=tc.archs_served(cuda, recipe.build.gpus) if cuda != "cpu" else ()))
    return out


def _excluded(rules: list[dict[Literal["torch", "cuda", "python"], str]], **values: str) -> bool:
    return any(all(values.get(k) == v for k, v in rule.items()) for rule in rules)


def not_buildable(cell: Cell, toolchains: Toolchains, host: Host | None = None) -> str | None:
    """Why this host cannot build the cell, or None when it can. A CUDA cell needs nvcc of its
    CUDA major: the host's, or NVIDIA's compiler packages from the index (kiln.cuda.choose)."""
    host = host or probe_host()
    if find_python(cell.python) is None:
        return f"Python {cell.python} not found (PATH, uv, pyenv)"
    v = cell.variant
    if v.torch is None:
        return None
    assert v.cuda is not None
    spec = toolchains.torch[v.torch]
    if spec.builds[v.cuda] != "pypi" and toolchains.index_url(v.torch, v.cuda) is None:
        index = toolchains.indexes[spec.builds[v.cuda]]
        return f"torch {spec.release} {v.accelerator} comes from index {spec.builds[v.cuda]!r}: set {index.url_env}"
    if v.cuda_major is not None:
        choice = choose_toolkit(v.cuda, toolchains, host)
        if choice.source is None:
            return choice.why
    return None

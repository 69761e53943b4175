"""The toolchain table (recipes/toolchains.yaml).

For each torch minor: the exact release to build against, the CUDA builds that exist and where
each is installed from, the Pythons it supports and its C++ ABI; per CUDA release the GPUs its
variant indexes serve; the run-exports; the CI images. What this host has is kiln.host's;
kiln.matrix.not_buildable says why a cell cannot be built here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiln.archs import cc_tuple, sort_ccs
from kiln.errors import ConfigError
from kiln.recipe import TOOLCHAINS_FILE, GpusSpec, check_archs, check_run_export
from kiln.yamlsrc import load_yaml, pydantic_error

PYPI = "pypi"


_T = TypeVar("_T")


def cuda_keys(table: dict[str, _T]) -> dict[str, _T]:
    """``table`` when every key is a CUDA version like ``13.0``."""
    for key in table:
        if not re.fullmatch(r"\d+\.\d+", key):
            raise ValueError(f"expected CUDA versions like \"13.0\", got {key!r}")
    return table


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class IndexSpec(_Model):
    """A package index torch builds are installed from, other than the default index."""

    url_env: str
    """The environment variable holding the index's base URL; `/<build>` (e.g. `/cu128`,
    `/cpu`) is appended. Unset: the variants that need it are not buildable here."""
    about: str = ""
    """What this index is, for people reading the table."""

    def url(self, build: str) -> str | None:
        base = os.environ.get(self.url_env, "").strip()
        return f"{base.rstrip('/')}/{build}" if base else None


class TorchSpec(_Model):
    """One torch minor."""

    release: str
    """The exact torch release wheels are built against, e.g. `2.14.1`."""
    python: list[str]
    """The Python minors this torch publishes wheels for (`kiln bump --toolchains`: the `cpXY` tags
    of its Linux wheels on the default index)."""
    cxx11_abi: bool = True
    """Whether this torch is built with the C++11 ABI (`_GLIBCXX_USE_CXX11_ABI=1`): the flag in the
    `TORCH_CXX_FLAGS` of the wheel's `torch/share/cmake/Torch/TorchConfig.cmake` where it sets one,
    else whether `torch/lib/libc10.so`'s symbols name `std::__cxx11`."""
    cxx_std: int = 17
    """The C++ standard torch's headers need; extensions compiled older fail. Checkable in the
    wheel: the standard its `torch/share/cmake/Torch/TorchConfig.cmake` asks for on the `torch`
    target, `CXX_STANDARD 20` or (from 2.15) `cxx_std_20` (what `kiln bump --toolchains` reads)."""
    builds: dict[str, str]
    """CUDA version (`"13.0"`) or `cpu` -> where that build is installed from: `pypi` (the
    default index) or the name of an entry in `indexes`."""

    @field_validator("builds")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key != "cpu" and not re.fullmatch(r"\d+\.\d+", key):
                raise ValueError(f"expected CUDA versions like \"13.0\" or \"cpu\", got {key!r}")
        return v


class CudaSpec(_Model):
    """One CUDA build: the GPUs its variant indexes serve, and where its compiler comes from
    on a host without one."""

    serves: list[str]
    """The compute capabilities (`"8.0"`) every wheel on a variant index of this CUDA build must
    run on: SASS for that GPU (or a lower minor of its major), or PTX of an arch at or below it.
    `wheel.finish` refuses a wheel that falls short, naming the missing archs."""
    toolkit: list[str] = []
    """NVIDIA's compiler packages on the index (`nvidia-cuda-nvcc`, ...) that make a CUDA home
    of this release, installed (all `==<version>.*`) when the host has no nvcc of its major; empty
    when none can be had (the 12.x `nvidia-cuda-nvcc-cu12` packages ship ptxas only)."""

    @field_validator("serves")
    @classmethod
    def _ccs(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"\d+\.\d+", str(item)):
                raise ValueError(f"expected compute capabilities like \"8.0\", got {item!r}")
        if not v:
            raise ValueError("expected at least one compute capability")
        return sort_ccs(v)


class RunExportRule(_Model):
    """A run-export that depends on the version the build used and on what the wheel's
    extensions use (numpy's: built against 1.x, runs on 1.x only; against 2.x, on both)."""

    built: dict[str, str]
    """A specifier on the version the build environment held (`"<2"`) -> the runtime bound it
    puts on the wheel (`minor`, `major`, `exact` or a specifier such as `"<2"`), which narrows
    upstream's own requirement of the project; the first that matches applies, none: no bound."""
    abi_strings: list[str] = []
    """Strings an extension module holds when it uses the project's C API (numpy's
    `import_array()` looks its table up by the name `_ARRAY_API`): the rule applies only to
    wheels whose ELF files hold one of them; empty: to every wheel built with the project."""

    @field_validator("built")
    @classmethod
    def _built(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            try:
                SpecifierSet(key)
            except InvalidSpecifier:
                raise ValueError(f"expected a specifier like \"<2\" as a key, got {key!r}") from None
            check_run_export(value)
        return v


class CiSpec(_Model):
    """How CI builds cells: the manylinux images cibuildwheel compiles in, and the runners."""

    images: dict[str, str] = {}
    """CUDA version (`"13.0"`) -> a manylinux image with that CUDA toolkit installed, e.g.
    `pytorch/manylinux2_28-builder:cuda13.0`. Every CUDA version a recipe builds needs one."""
    default_image: str = "manylinux_2_28"
    """The image for cells without CUDA (`cpu` and `main` variants): one of cibuildwheel's
    names (`manylinux_2_28`) or an image reference."""
    cuda_home: str = "/usr/local/cuda"
    """Where the CUDA toolkit is inside the CUDA images."""
    arch: str = "x86_64"
    """The machine architecture wheels are built for (cibuildwheel's CIBW_ARCHS)."""
    runs_on: list[str] = ["ubuntu-latest"]
    """Runner labels of the build jobs, e.g. `[self-hosted, linux, x64, gpu]`; with a GPU there,
    the smoke test imports the extensions with the GPU visible."""
    python: str = "3.12"
    """The Python that runs kiln itself on the runners."""

    @field_validator("images")
    @classmethod
    def _cuda_keys(cls, v: dict[str, str]) -> dict[str, str]:
        return cuda_keys(v)

    @field_validator("runs_on", mode="before")
    @classmethod
    def _labels(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    def image(self, cuda: str | None) -> str | None:
        """The image for a cell's CUDA version (None or `cpu`: the default image); None when
        the table has no image for that CUDA version."""
        if cuda in (None, "cpu"):
            return self.default_image
        return self.images.get(cuda)


class Toolchains(_Model):
    """recipes/toolchains.yaml."""

    cuda_archs: str = "upstream"
    """The GPU architectures to build for: `upstream` (each package's own list) or a list
    like `8.0;9.0`. Recipes and `--cuda-archs` override it."""
    host_archs: str = "9.0"
    """The GPU architectures `kiln up --profile host` builds CUDA cells for on a host without a
    GPU (with GPUs, theirs: `nvidia-smi`'s compute_cap); `--cuda-archs` overrides it. One
    datacenter arch keeps a host build short; `--profile all` builds the full list."""
    cuda: dict[str, CudaSpec] = {}
    """CUDA version (`"13.0"`) -> the GPUs its variant indexes serve and its compiler packages;
    every CUDA build in `torch` needs an entry."""
    indexes: dict[str, IndexSpec] = {}
    """Named package indexes that carry torch builds the default index lacks."""
    torch: dict[str, TorchSpec]
    """torch minor (`"2.14"`) -> its spec."""
    ci: CiSpec = CiSpec()
    """How the CI workflow (`kiln ci render`) builds cells."""
    run_exports: dict[str, str | RunExportRule] = {"torch": "minor"}
    """Build dependencies whose ABI leaks into every wheel built against them, as conda-forge's
    run_exports: project -> the runtime bound put on the wheel from the version the build used:
    `minor` (`torch==2.14.*`), `major` (`>=1.26,<2`), `exact`, or a specifier (`<2`); or a rule
    (`built`, `abi_strings`) for a project whose bound depends on its version and on whether the
    wheel's extensions use its C API. Applied when the build environment held the project;
    recipes add or override entries (`runtime.run_exports`)."""
    path: Path = Field(default=Path("."), exclude=True)

    @field_validator("cuda_archs")
    @classmethod
    def _archs(cls, v: str) -> str:
        return check_archs(v)

    @field_validator("cuda")
    @classmethod
    def _cuda_versions(cls, v: dict[str, CudaSpec]) -> dict[str, CudaSpec]:
        return cuda_keys(v)

    @field_validator("host_archs")
    @classmethod
    def _host_archs(cls, v: str) -> str:
        if v == "upstream":
            raise ValueError("expected archs like '9.0' (a host build names them; 'upstream' is the full list)")
        return check_archs(v)

    @field_validator("run_exports")
    @classmethod
    def _run_exports(cls, v: dict[str, str | RunExportRule]) -> dict[str, str | RunExportRule]:
        return {canonicalize_name(k): val if isinstance(val, RunExportRule) else check_run_export(val)
                for k, val in v.items()}

    def torch_spec(self, minor: str) -> TorchSpec | None:
        return self.torch.get(minor)

    def archs_served(self, cuda: str, gpus: GpusSpec | None = None) -> tuple[str, ...]:
        """The compute capabilities a variant index of ``cuda`` serves, cut below a recipe's
        ``build.gpus.min``; () for cpu and for a CUDA build the table lacks."""
        spec = self.cuda.get(cuda)
        if spec is None:
            return ()
        floor = cc_tuple(gpus.min) if gpus else (0, 0)
        return tuple(cc for cc in spec.serves if cc_tuple(cc) >= floor)

    def index_url(self, torch_minor: str, cuda: str) -> str | None:
        """The index URL for this build of torch; None means the default index."""
        source = self.torch[torch_minor].builds[cuda]
        if source == PYPI:
            return None
        build = "cpu" if cuda == "cpu" else "cu" + cuda.replace(".", "")
        return self.indexes[source].url(build)


def load_toolchains(recipes_dir: Path) -> Toolchains:
    path = recipes_dir / TOOLCHAINS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; the toolchain table is required beside the recipes")
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping with a 'torch' table")
    data = doc.data
    tables: list[tuple[tuple[str, ...], object]] = [(("torch",), data.get("torch")), (("cuda",), data.get("cuda"))]
    if isinstance(data.get("ci"), dict):
        tables.append((("ci", "images"), data["ci"].get("images")))
    for where, table in tables:
        for key in table if isinstance(table, dict) else ():
            if not isinstance(key, str):  # an unquoted 2.10 reads as the number 2.1
                raise doc.error((*where, key), 'expected a quoted key like "2.14" (unquoted, 2.10 reads as 2.1)')
    try:
        tc = Toolchains.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(doc, exc) from None
    for minor, spec in tc.torch.items():
        for cuda, source in spec.builds.items():
            if cuda != "cpu" and cuda not in tc.cuda:
                raise doc.error(("torch", minor, "builds", cuda), f"CUDA {cuda} has no entry in 'cuda' "
                                f"(the GPUs its indexes serve): add cuda: {{\"{cuda}\": {{serves: [...]}}}}")
            if source != PYPI and source not in tc.indexes:
                raise doc.error(("torch", minor, "builds", cuda), f"unknown index {source!r}; "
                                f"expected 'pypi' or one of {sorted(tc.indexes)}")
    return tc.model_copy(update={"path": path})

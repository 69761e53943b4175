"""Recipe models: what is needed to build one PyPI project, and load_recipes().

A recipe is ``recipes/<project>.yaml``. The models below are the schema's reference: every
field has a docstring, unknown keys are refused, and every error names file:line.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from kiln.errors import ConfigError
from kiln.yamlsrc import ErrorAt, YamlDoc, load_yaml, pydantic_error, short

TOOLCHAINS_FILE = "toolchains.yaml"
PATCHES_DIR = "patches"
_ARCH_RE = re.compile(r"^\d+\.\d+a?(\+PTX)?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


def check_pep508(item: str, at: str | int) -> None:
    """Refuse ``item`` unless it is a PEP 508 requirement; the error names ``at`` (its index or key)."""
    try:
        Requirement(item)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ErrorAt(at, f"not a PEP 508 requirement: {short(item)} ({reason})") from None


def check_archs(value: str) -> str:
    """`upstream`, or a `;`-separated list of compute capabilities like `8.0;9.0+PTX`."""
    if value == "upstream":
        return value
    parts = [p.strip() for p in value.replace(" ", ";").split(";") if p.strip()]
    bad = [p for p in parts if not _ARCH_RE.match(p)]
    if not parts or bad:
        raise ValueError(f"expected 'upstream' or archs like '8.0;9.0', got {value!r}")
    return ";".join(parts)


class UrlSource(_Model):
    """An sdist or archive at a fixed URL."""

    url: str
    """Where to download it (a path is relative to the recipe); `{version}` is replaced by the
    version being built."""
    sha256: str
    """Its sha256, hex; the download is refused when it differs."""

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("expected 64 lowercase hex digits")
        return v


class GitSource(_Model):
    """A git repository checked out at a tag."""

    git: str
    """The repository's clone URL."""
    tag: str = "v{version}"
    """The tag to check out; `{version}` is replaced by the version being built."""
    commits: dict[str, str] = {}
    """The commit each version's tag must resolve to (40 hex digits), as an sdist's sha256 pins
    its bytes: a tag moved upstream then fails the build instead of changing the source. Without
    one, kiln records the commit of the first checkout and refuses a tag that later moves."""

    @field_validator("commits")
    @classmethod
    def _full_commits(cls, value: dict[str, str]) -> dict[str, str]:
        for version, commit in value.items():
            if not re.fullmatch(r"[0-9a-f]{40}", commit):
                raise ValueError(f"commits.{version}: expected a full commit id (40 lowercase hex digits)")
        return value


class GpusSpec(_Model):
    """The GPUs a project supports, where it supports fewer than its variant index serves."""

    min: str
    """The oldest compute capability the project runs on, e.g. `"8.0"` (Ampere): the variant
    index's served list (toolchains.yaml's `cuda.<version>.serves`) is cut below it, so its
    wheels need no code for older GPUs, and the index's page says which GPUs it serves."""
    reason: str = Field(min_length=1)
    """Why, for people reading the recipe and the wheel's provenance (upstream's own words)."""

    @field_validator("min")
    @classmethod
    def _cc(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\.\d+", v):
            raise ValueError(f"expected a compute capability like \"8.0\", got {short(v)}")
        return v


class BuildSpec(_Model):
    """How to build: what upstream forgot to declare, and the environment around it."""

    requires: list[str] = []
    """What upstream forgot: requirements installed into the build environment on top of the
    sdist's own `[build-system].requires` (PEP 508), beside torch."""
    replace: dict[str, str | None] = {}
    """Upstream build requirements that are wrong, replaced or dropped: `{"numpy==1.19.*": numpy}`
    replaces that exact requirement, `{oldest-supported-numpy: numpy}` any requirement of that
    project (by another one, too), and a null value drops it. Applies to `[build-system].requires`
    and to the backend hook's answer."""
    constraints: list[str] = []
    """Constraints on the whole build environment and on anything setup.py installs itself
    (setup_requires / fetch_build_eggs see them through PIP_CONSTRAINT)."""
    env: dict[str, str] = {}
    """Environment variables for the build, e.g. `MAMBA_FORCE_BUILD: "TRUE"`."""
    patches: list[str] = []
    """Unified diffs under `recipes/patches/`, applied in order with `patch -p1`."""
    regenerate_cython: bool = Field(default=True, strict=True)
    """Whether kiln removes the sdist's stale Cython output before the build, so that the
    package's own cythonize writes it again (an old Cython's C does not compile on a new Python):
    each `.c`/`.cpp` beside a `.pyx` of its stem whose first line names another Cython than the
    build environment's (`/* Generated by Cython 0.29.21 */`). Only when the build environment
    holds Cython; `false` for a package that needs its shipped output."""
    memory_per_job_gb: float = Field(default=2.0, gt=0, le=1024)
    """Peak memory of one compile job; MAX_JOBS = min(cores, free memory / this)."""
    cuda_archs: Annotated[str, Field(default="")] = ""
    """GPU architectures for this project (overrides toolchains.yaml), e.g. `8.0;9.0`."""
    gpus: GpusSpec | None = None
    """For a project that supports fewer GPUs than its variant index serves: the oldest it runs
    on, and why (`{min: "8.0", reason: "FlashAttention 2 needs Ampere or newer"}`)."""
    timeout_minutes: int = Field(default=60, gt=0, le=7 * 24 * 60)
    """How long one cell may take in CI before it is cancelled."""
    host_profile: bool = True
    """Whether `kiln up --profile host` (a workstation's default) builds this recipe's CUDA cells;
    `false` for builds that take hours on a workstation (flash-attn), left to `--profile all`
    (CI, a team's build box). Its cells without CUDA are built either way."""
    number: int = Field(default=0, ge=0, lt=2**31)
    """The wheel's build number (its build tag, `name-1.0-1-cp311-...whl`): raise it to publish a
    fixed wheel of a version already published; the old one stays, installers pick the new."""

    @field_validator("replace")
    @classmethod
    def _replace(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        for key, value in v.items():
            for item in (key, value):
                if item is not None:
                    check_pep508(item, at=key)
        return v

    @field_validator("requires", "constraints")
    @classmethod
    def _pep508(cls, v: list[str]) -> list[str]:
        for i, item in enumerate(v):
            check_pep508(item, at=i)
        return v

    @field_validator("cuda_archs")
    @classmethod
    def _archs(cls, v: str) -> str:
        return check_archs(v) if v else v

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: object) -> object:
        if isinstance(v, dict):
            for key, val in v.items():
                if not isinstance(val, str):
                    raise ErrorAt(key, f"expected a string, quote it (got {short(val)})")
        return v


class MatrixSpec(_Model):
    """The cells to build: Python x torch x CUDA, less the excluded ones."""

    torch: list[str] = []
    """torch minors, e.g. `["2.14", "2.12"]`; empty for projects that need no torch."""
    cuda: list[str] = []
    """CUDA versions (`"13.0"`) or `cpu`; needed when torch is given."""
    python: list[str] = []
    """Python minors; default: every Python the toolchain supports (or 3.10-3.13 without torch)."""
    exclude: list[dict[Literal["torch", "cuda", "python"], str]] = []
    """Combinations to skip, e.g. `{torch: "2.8", cuda: "13.0"}`."""

    @field_validator("torch", "cuda", "python", mode="before")
    @classmethod
    def _strings(cls, v: object) -> object:
        if isinstance(v, list):
            for i, item in enumerate(v):
                if not isinstance(item, str):
                    raise ErrorAt(i, f"expected quoted strings like \"2.14\", got {short(item)}")
        return v

    @field_validator("torch", "python")
    @classmethod
    def _minors(cls, v: list[str]) -> list[str]:
        for i, item in enumerate(v):
            if not re.fullmatch(r"\d+\.\d+", item):
                raise ErrorAt(i, f"expected a minor version like \"3.11\", got {short(item)}")
        return v

    @field_validator("cuda")
    @classmethod
    def _cuda(cls, v: list[str]) -> list[str]:
        for i, item in enumerate(v):
            if item != "cpu" and not re.fullmatch(r"\d+\.\d+", item):
                raise ErrorAt(i, f"expected a CUDA version like \"13.0\" or \"cpu\", got {short(item)}")
        return v

    @model_validator(mode="after")
    def _torch_needs_cuda(self) -> MatrixSpec:
        if self.torch and not self.cuda:
            raise ErrorAt("torch", "torch is given but cuda is empty: list CUDA versions or \"cpu\"")
        if self.cuda and not self.torch:
            raise ErrorAt("cuda", "cuda is given but torch is empty")
        return self


RUN_EXPORT_KINDS = ("minor", "major", "exact")


def check_run_export(value: str) -> str:
    """`minor`, `major`, `exact`, or a PEP 440 specifier such as `<2`."""
    if value in RUN_EXPORT_KINDS:
        return value
    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise ValueError(f"expected minor, major, exact or a specifier like \"<2\", got {short(value)}") from None
    return value


class RuntimeSpec(_Model):
    """What a finished wheel requires at run time."""

    pin: list[str] | None = None
    """Build dependencies whose ABI leaks into the wheel, pinned to the minor the wheel was built
    against (`torch==2.14.*`); shorthand for `run_exports: {name: minor}`. torch is pinned by
    the run-export table in toolchains.yaml already."""
    run_exports: dict[str, str] = {}
    """Run-exports added to toolchains.yaml's table, as conda-forge's: a build dependency ->
    the runtime bound it puts on the wheel, from the version the build used: `minor`
    (`==1.26.*`), `major` (`>=1.26,<2`), `exact` (`==1.26.4`) or a specifier (`<2`). Applied when
    the build environment held that project."""
    requires: list[str] = []
    """Runtime requirements upstream forgot to declare, added to the wheel's Requires-Dist
    (e.g. numpy for a package that lists it only in setup_requires)."""
    replace: dict[str, str | None] = {}
    """Upstream runtime requirements that are wrong, rewritten in the finished wheel's
    Requires-Dist as `build.replace` rewrites build requirements: `{"numpy<1.20": numpy}`
    replaces that requirement (upstream's marker kept), `{numpy: "numpy>=1.16"}` any requirement
    of the project, and a null value drops it. A key that matches nothing fails the build; the
    provenance records upstream's requirement and the one written."""

    @field_validator("requires")
    @classmethod
    def _pep508(cls, v: list[str]) -> list[str]:
        return BuildSpec._pep508(v)

    @field_validator("replace")
    @classmethod
    def _replace(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        return BuildSpec._replace(v)

    @field_validator("run_exports")
    @classmethod
    def _run_exports(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            check_pep508(key, at=key)
            try:
                check_run_export(value)
            except ValueError as exc:
                raise ErrorAt(key, str(exc)) from None
        return v


class TestSpec(_Model):
    """The smoke test run on a finished wheel in a fresh environment."""

    imports: list[str] = []
    """Modules that must import, e.g. the compiled extension `causal_conv1d_cuda`."""


def _source_kind(value: object) -> str | None:
    """Which kind of source ``value`` is, so an error is about that kind alone."""
    if value == "pypi":
        return "pypi"
    if isinstance(value, UrlSource) or (isinstance(value, dict) and "url" in value):
        return "url-source"
    if isinstance(value, GitSource) or (isinstance(value, dict) and "git" in value):
        return "git-source"
    return None


Source = Annotated[
    Annotated[Literal["pypi"], Tag("pypi")] | Annotated[UrlSource, Tag("url-source")]
    | Annotated[GitSource, Tag("git-source")],
    Discriminator(_source_kind, custom_error_type="source_kind",
                  custom_error_message="expected 'pypi', {url: ..., sha256: ...} or {git: ..., tag: ...}"),
]


class Recipe(_Model):
    """What is needed to build one PyPI project."""

    project: str
    """The project's name on the package index."""
    versions: list[str]
    """Exact versions to build."""
    source: Source = "pypi"
    """`pypi` (the sdist from the index, checked against the index's sha256), `{url, sha256}`
    or `{git, tag}`."""
    build: BuildSpec = BuildSpec()
    matrix: MatrixSpec = MatrixSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    test: TestSpec = TestSpec()

    # Filled in by load_recipe(), not part of the YAML.
    path: Path = Field(default=Path("."), exclude=True)
    sha256: str = Field(default="", exclude=True)
    """sha256 of the recipe file and its patches: a wheel built from another is stale."""

    @field_validator("versions")
    @classmethod
    def _versions(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one version")
        for i, item in enumerate(v):
            try:
                Version(item)
            except ValueError:  # InvalidVersion, or more digits than int() reads
                raise ErrorAt(i, f"not a PEP 440 version: {short(item)}") from None
        return v

    @field_validator("versions", mode="before")
    @classmethod
    def _versions_quoted(cls, v: object) -> object:
        if isinstance(v, list):
            for i, item in enumerate(v):
                if not isinstance(item, str):
                    raise ErrorAt(i, f"quote versions as strings, e.g. [\"1.0.6\"] (got {short(item)})")
        return v

    @property
    def name(self) -> str:
        """The canonical project name."""
        return canonicalize_name(self.project)

    @property
    def uses_torch(self) -> bool:
        return bool(self.matrix.torch)

    @property
    def run_exports(self) -> dict[str, str]:
        """The recipe's own run-exports: `runtime.pin` (minor) and `runtime.run_exports`."""
        exports: dict[str, str] = {canonicalize_name(p): "minor" for p in self.runtime.pin or []}
        exports.update({canonicalize_name(k): v for k, v in self.runtime.run_exports.items()})
        return exports

    @property
    def patch_paths(self) -> list[Path]:
        return [self.path.parent / PATCHES_DIR / p for p in self.build.patches]

    def line(self, *loc: str | int) -> int:
        """The line of the recipe file that ``loc`` (e.g. `"matrix", "torch", 0`) is on, for errors
        found after loading; 1 when the file cannot be read again."""
        try:
            return load_yaml(self.path).line_of(loc)
        except ConfigError:
            return 1

    @classmethod
    def for_closure(cls, project: str, version: str, beside: Path) -> Recipe:
        """The recipe kiln uses for a runtime dependency it builds without one: the sdist from
        the index, built as upstream declares it."""
        return cls(project=project, versions=[version], path=beside.parent / f"{canonicalize_name(project)}.yaml")


def load_recipe(path: Path) -> Recipe:
    """Load and validate one recipe; errors name file:line and what was expected."""
    return _load_recipe(path)[0]


def _load_recipe(path: Path) -> tuple[Recipe, YamlDoc]:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping with at least 'project' and 'versions'")
    try:
        recipe = Recipe.model_validate(doc.data)
    except ValidationError as exc:
        raise pydantic_error(doc, exc) from None
    digest = hashlib.sha256(doc.raw)
    for patch in _read_patches(doc, recipe):
        digest.update(patch)
    return recipe.model_copy(update={"path": path.absolute(), "sha256": digest.hexdigest()}), doc


def _read_patches(doc: YamlDoc, recipe: Recipe) -> list[bytes]:
    """Each patch's bytes; a patch must be a file under <recipes>/patches/, symlinks resolved."""
    patches = doc.path.parent / PATCHES_DIR
    inside = patches.resolve()
    out = []
    for i, name in enumerate(recipe.build.patches):
        loc = ("build", "patches", i)
        if not name.strip() or not name.isprintable():
            raise doc.error(loc, f"not a patch file name: {short(name)}")
        parts = PurePosixPath(name)
        if parts.is_absolute():
            raise doc.error(loc, f"{name} is an absolute path; name a file under {PATCHES_DIR}/")
        if ".." in parts.parts:
            raise doc.error(loc, f"{name} leaves {PATCHES_DIR}/ ('..'); name a file under it")
        try:
            real = (patches / name).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise doc.error(loc, f"{PATCHES_DIR}/{name}: cannot resolve: {exc}") from None
        if not real.is_relative_to(inside):
            raise doc.error(loc, f"{PATCHES_DIR}/{name} resolves to {real}, outside {PATCHES_DIR}/")
        if not real.is_file():
            raise doc.error(loc, f"no such patch: {PATCHES_DIR}/{name}")
        try:
            out.append(real.read_bytes())
        except OSError as exc:
            raise doc.error(loc, f"{PATCHES_DIR}/{name}: cannot read: {exc.strerror or exc}") from None
    return out


def recipe_files(recipes_dir: Path) -> list[Path]:
    """The recipe files of a directory: every *.yaml but toolchains.yaml."""
    if not recipes_dir.is_dir():
        raise ConfigError(f"{recipes_dir}: not a directory of recipes")
    return sorted(
        p for p in recipes_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.name != TOOLCHAINS_FILE
    )


def load_recipes(recipes_dir: Path, only: list[str] | None = None) -> list[Recipe]:
    """Every recipe in ``recipes_dir`` (or only those named), validated."""
    loaded = [_load_recipe(p) for p in recipe_files(recipes_dir)]
    recipes = [r for r, _ in loaded]
    seen: dict[str, Path] = {}
    for r, doc in loaded:
        if r.name in seen:
            raise doc.error(("project",), f"{r.project!r} is also defined in {seen[r.name]}")
        seen[r.name] = r.path
    if only:
        wanted = {canonicalize_name(o) for o in only}
        unknown = sorted(wanted - set(seen))
        if unknown:
            raise ConfigError(f"{recipes_dir}: no recipe for {', '.join(unknown)}")
        recipes = [r for r in recipes if r.name in wanted]
    return recipes

"""A cell's build requirements, in three tiers, each recorded:

1. ``build_system``: the sdist's ``[build-system].requires`` (PEP 517's default,
   ``setuptools>=40.8.0``, for a project without one), after the recipe's ``build.replace``;
2. ``recipe``: the recipe's ``build.requires``, what upstream forgot, added on top;
3. ``backend``: what the backend's ``get_requires_for_build_wheel`` hook answers, asked with
   tiers 1 and 2 (and torch) installed, after ``build.replace`` too.

`static()` computes tiers 1 and 2 (the local and the cibuildwheel backends install the same
list); `backend_hook()` asks tier 3 through `build.ProjectBuilder` (the hook may use the network;
the compile step may not). `BuildRequirements.write()` keeps each tier in a file beside the
source, as fromager does, and the provenance of the wheel holds them too.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import build
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kiln.errors import BuildError
from kiln.logs import decisive_line, read_from
from kiln.recipe import Recipe
from kiln.sandbox import Sandbox


@dataclass
class BuildRequirements:
    """What one cell's build environment was asked to hold, tier by tier."""

    build_system: list[str]
    """The sdist's [build-system].requires (or PEP 517's default), after build.replace."""
    recipe: list[str]
    """The recipe's build.requires."""
    backend: list[str] = field(default_factory=list)
    """The backend hook's answer (get_requires_for_build_wheel), after build.replace."""
    declared: list[str] = field(default_factory=list)
    """The sdist's [build-system].requires as upstream wrote them."""
    default: bool = False
    """True when the sdist declares no build system and PEP 517's default applies."""
    replaced: dict[str, str | None] = field(default_factory=dict)
    """What build.replace changed: upstream's requirement -> its replacement (None: dropped)."""

    @property
    def installed_first(self) -> list[str]:
        """Tiers 1 and 2: what is installed before the backend hook is asked."""
        return [*self.build_system, *self.recipe]

    def describe(self) -> list[str]:
        """One log line per tier."""
        source = "PEP 517 default (no [build-system] table)" if self.default else "[build-system].requires"
        lines = [f"build requirements 1/3, {source}: {', '.join(self.build_system) or '(none)'}",
                 f"build requirements 2/3, recipe build.requires: {', '.join(self.recipe) or '(none)'}",
                 f"build requirements 3/3, backend get_requires_for_build_wheel: "
                 f"{', '.join(self.backend) or '(none)'}"]
        for old, new in self.replaced.items():
            lines.append(f"build.replace: {old} -> {new if new is not None else '(dropped)'}")
        return lines

    def write(self, directory: Path) -> None:
        """Each tier in a file of its own under ``directory``, and all of them as JSON."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("build_system", "recipe", "backend"):
            (directory / f"{name}-requirements.txt").write_text("".join(f"{r}\n" for r in getattr(self, name)))
        (directory / "build-requirements.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def replace(requirements: Sequence[str], rules: Mapping[str, str | None],
            replaced: dict[str, str | None]) -> list[str]:
    """``requirements`` with the recipe's ``build.replace`` applied (`rule_for`); its value
    replaces a requirement, or drops it when null. What changed is added to ``replaced``."""
    out: list[str] = []
    for text in requirements:
        new: str | None = text
        if (key := rule_for(rules, Requirement(text))) is not None:
            new = rules[key]
            replaced[text] = new
        if new is not None:
            out.append(str(Requirement(new)))
    return out


def rule_for(rules: Mapping[str, object], req: Requirement) -> str | None:
    """The key of ``rules`` (a recipe's ``build.replace`` or ``runtime.replace``) that matches
    ``req``: a bare name (``numpy``) matches any requirement of that project, else the key must
    be the same requirement (``numpy==1.19.*``, compared as parsed requirements; a key without a
    marker matches whatever marker upstream's has); None when none matches."""
    for key in rules:
        rule = Requirement(key)
        if canonicalize_name(rule.name) != canonicalize_name(req.name):
            continue
        if str(rule) == rule.name or _same(rule, req):
            return key
    return None


def _same(a: Requirement, b: Requirement) -> bool:
    return (canonicalize_name(a.name) == canonicalize_name(b.name) and a.specifier == b.specifier
            and a.extras == b.extras and (a.marker is None or str(a.marker) == str(b.marker)) and a.url == b.url)


def static(source_dir: Path, recipe: Recipe) -> BuildRequirements:
    """Tiers 1 and 2 of a source tree: read statically, nothing run."""
    try:
        builder = build.ProjectBuilder(source_dir)
    except build.BuildException as exc:
        raise BuildError(f"{source_dir.name}: {exc}") from None
    declared = sorted(str(Requirement(r)) for r in builder.build_system_requires)
    default = not _declares_build_system(source_dir)
    replaced: dict[str, str | None] = {}
    system = replace(declared, recipe.build.replace, replaced)
    return BuildRequirements(build_system=system, recipe=list(recipe.build.requires), declared=declared,
                             default=default, replaced=replaced)


def _declares_build_system(source_dir: Path) -> bool:
    import tomllib

    path = source_dir / "pyproject.toml"
    if not path.is_file():
        return False
    try:
        return "requires" in tomllib.loads(path.read_text()).get("build-system", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


@dataclass(frozen=True)
class HookStep:
    """Where the backend hook runs: in ``sandbox`` (``stash``: the sandbox's own scratch
    directory, kiln.sandbox.Sandbox.wrap), with ``env`` (the build step's environment), its
    output appended to ``log``."""

    sandbox: Sandbox
    env: Mapping[str, str]
    stash: Path
    log: TextIO


def backend_hook(reqs: BuildRequirements, source_dir: Path, python: Path, recipe: Recipe,
                 step: HookStep) -> list[str]:
    """Ask the build backend (in ``python``'s environment, tiers 1 and 2 installed) what else
    it needs to build a wheel, running as ``step`` says; the answer, after build.replace, is tier 3."""
    sandbox, env, stash, log = step.sandbox, step.env, step.stash, step.log

    def runner(cmd: Sequence[str], cwd: str | None = None,
               extra_environ: Mapping[str, str] | None = None) -> None:
        full = sandbox.wrap(list(cmd), stash)
        res = subprocess.run(full, cwd=cwd, env=sandbox.env({**env, **(extra_environ or {})}),
                             stdout=log, stderr=subprocess.STDOUT)
        if res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, full)

    print("kiln: asking the build backend: get_requires_for_build_wheel", file=log, flush=True)
    start = log.tell()
    try:
        builder = build.ProjectBuilder(source_dir, python_executable=str(python), runner=runner)
        with warnings.catch_warnings(record=True) as caught:  # the backend's warnings, re-raised by build
            warnings.simplefilter("always")
            answer = sorted(str(Requirement(r)) for r in builder.get_requires_for_build("wheel"))
        for w in caught:
            print(f"kiln: the build backend warns: {w.message}", file=log, flush=True)
    except (build.BuildException, build.BuildBackendException) as exc:
        cause = decisive_line(read_from(log, start)) or str(exc)
        raise BuildError(f"{cause} (the build backend's get_requires_for_build_wheel failed)") from None
    log.flush()
    reqs.backend = replace(answer, recipe.build.replace, reqs.replaced)
    return reqs.backend

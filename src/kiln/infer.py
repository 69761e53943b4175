"""`kiln infer`: draft a working recipe from failing builds.

A draft starts from what the sdist says statically (setup.py's unconditional imports that its
build system does not declare, a torch import), then the
cell is built; while it fails, each rule below reads the failure and proposes one change to the
draft, until the wheel builds and passes its smoke test, or no rule applies. Each rule is a small
function from (failure, draft) to a change; each line of the written recipe says which failure
led to it.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, TextIO

from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from kiln import buildreqs, source
from kiln.backends.local import LocalBackend
from kiln.build import BuildContext, build_cell
from kiln.errors import ConfigError, InferError, KilnError
from kiln.gpushim import cuda_only
from kiln.home import CellOutcome, CellResult, Home
from kiln.host import find_python
from kiln.matrix import DEFAULT_PYTHONS, Variant, expand
from kiln.profile import HOST, pick_variant, probe_facts, select
from kiln.recipe import TOOLCHAINS_FILE, Recipe, load_recipe
from kiln.toolchains import Toolchains, load_toolchains
from kiln.uv import uv

# Import names whose distribution has another name. Otherwise the index is asked for the name.
MODULE_DISTS = {
    "Cython": "cython", "sklearn": "scikit-learn", "yaml": "pyyaml", "cv2": "opencv-python-headless",
    "PIL": "pillow", "skimage": "scikit-image", "pkg_resources": "setuptools<81", "distutils": "setuptools",
    "Crypto": "pycryptodome", "dateutil": "python-dateutil", "bs4": "beautifulsoup4", "attr": "attrs",
    "OpenSSL": "pyopenssl", "git": "gitpython", "jwt": "pyjwt", "serial": "pyserial", "usb": "pyusb",
    "zmq": "pyzmq", "google": "protobuf", "Levenshtein": "levenshtein", "mpl_toolkits": "matplotlib",
    "pybind11": "pybind11", "numpy": "numpy", "scipy": "scipy", "pyximport": "cython",
}
NOT_DEPENDENCIES = {"setuptools", "distutils", "__future__", "pkg_resources"}
"""Modules a setup.py may import that its build system provides already."""

Field = Literal["build.requires", "build.constraints", "build.replace", "build.env", "runtime.requires",
                "runtime.run_exports", "runtime.replace", "matrix.torch", "matrix.cuda"]
Stage = Literal["build", "smoke"]


@dataclass
class Draft:
    """The recipe being drafted, with the reason for each line."""

    project: str
    version: str
    python: str
    requires: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    replace: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    runtime_requires: list[str] = field(default_factory=list)
    run_exports: dict[str, str] = field(default_factory=dict)
    runtime_replace: dict[str, str] = field(default_factory=dict)
    torch: str | None = None
    cuda: str | None = None
    """The CUDA build of a draft whose extension cannot be built without CUDA; None: cpu."""
    why: dict[str, str] = field(default_factory=dict)

    def yaml(self) -> str:
        """The recipe, as short as a person would write it, each line commented with the
        failures that led to it."""
        def line(indent: str, key: str, text: str, whys: list[str]) -> str:
            reasons = "; ".join(dict.fromkeys(w for w in whys if w))
            return f"{indent}{key}: {text}" + (f"    # {reasons}" if reasons else "")

        def listed(indent: str, key: str, field: str, items: list[str]) -> str:
            return line(indent, key, "[" + ", ".join(_quoted(i) for i in items) + "]",
                        [self.why.get(f"{field}:{i}", "") for i in items])

        def mapping(indent: str, key: str, field: str, items: dict[str, str]) -> str:
            return line(indent, key, "{" + ", ".join(f"{_quoted(k)}: {_quoted(v)}" for k, v in items.items()) + "}",
                        [self.why.get(f"{field}:{k}", "") for k in items])

        lines = ["# Drafted by `kiln infer`: each line says which failure led to it.",
                 f"project: {self.project}", f'versions: ["{self.version}"]']
        build = [listed("  ", "requires", "build.requires", self.requires) if self.requires else "",
                 listed("  ", "constraints", "build.constraints", self.constraints) if self.constraints else "",
                 mapping("  ", "replace", "build.replace", self.replace) if self.replace else "",
                 mapping("  ", "env", "build.env", self.env) if self.env else ""]
        if any(build):
            lines += ["build:", *(b for b in build if b)]
        lines.append("matrix:")
        if self.torch:
            lines += [line("  ", "torch", f'["{self.torch}"]', [self.why.get("matrix.torch", "")]),
                      line("  ", "cuda", f'["{self.cuda or "cpu"}"]', [self.why.get("matrix.cuda", "")])]
        lines.append(line("  ", "python", f'["{self.python}"]', [self.why.get("matrix.python", "")]))
        runtime = [listed("  ", "requires", "runtime.requires", self.runtime_requires) if self.runtime_requires else "",
                   mapping("  ", "run_exports", "runtime.run_exports", self.run_exports) if self.run_exports else "",
                   mapping("  ", "replace", "runtime.replace", self.runtime_replace) if self.runtime_replace else ""]
        if any(runtime):
            lines += ["runtime:", *(r for r in runtime if r)]
        return "\n".join(lines) + "\n"


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _quoted(text: str) -> str:
    """A YAML scalar: bare when plain, quoted when YAML would read it otherwise."""
    plain = re.fullmatch(r"[A-Za-z_][\w.-]*", text) and text.lower() not in _YAML_WORDS
    return text if plain else json.dumps(text)  # a JSON string is a YAML double-quoted scalar


@dataclass(frozen=True)
class Change:
    """One change to a draft, and why."""

    field: Field
    value: str
    why: str
    key: str = ""

    def describe(self) -> str:
        if self.field in ("build.env", "runtime.run_exports"):
            return f"{self.field}.{self.key} = {self.value}"
        if self.field in ("build.replace", "runtime.replace"):
            return f"{self.field}: {self.key} -> {self.value}"
        if self.field == "matrix.torch" and self.key:
            return f"matrix.torch: {self.key} -> {self.value}"
        if self.field == "matrix.torch":
            return f"matrix.torch = [{self.value}], cuda = [cpu]"
        if self.field == "matrix.cuda":
            return f"matrix.torch = [{self.key}], cuda = [{self.value}]"
        return f"{self.field} += {self.value}"

    def apply(self, draft: Draft) -> bool:
        """Change the draft; False when it holds this already (the rule cannot help)."""
        if self.field == "matrix.torch" and self.key:  # another minor in place of the draft's
            if draft.torch != self.key:
                return False
            draft.torch = self.value
            draft.why["matrix.torch"] = "; ".join(w for w in (draft.why.get("matrix.torch"), self.why) if w)
            return True
        if self.field == "matrix.torch":
            if draft.torch:
                return False
            draft.torch = self.value
            draft.why["matrix.torch"] = self.why
            return True
        if self.field == "matrix.cuda":
            if draft.cuda:
                return False
            draft.torch, draft.cuda = self.key, self.value
            draft.why["matrix.cuda"] = self.why
            draft.env = {k: v for k, v in draft.env.items() if not k.endswith(CPU_KNOBS)}
            return True
        if self.field in ("build.env", "runtime.run_exports", "build.replace", "runtime.replace"):
            target = {"build.env": draft.env, "runtime.run_exports": draft.run_exports,
                      "build.replace": draft.replace, "runtime.replace": draft.runtime_replace}[self.field]
            if target.get(self.key) == self.value:
                return False
            target[self.key] = self.value
            draft.why[f"{self.field}:{self.key}"] = self.why
            return True
        lists = {"build.requires": draft.requires, "build.constraints": draft.constraints,
                 "runtime.requires": draft.runtime_requires}
        items = lists[self.field]
        new = Requirement(self.value)
        name = canonicalize_name(new.name)
        if any(str(Requirement(r)) == str(new) for r in items):
            return False
        if not new.specifier and any(canonicalize_name(Requirement(r).name) == name for r in items):
            return False  # a bare name never loosens a requirement the draft bounds already
        items[:] = [r for r in items if canonicalize_name(Requirement(r).name) != name] + [self.value]
        draft.why[f"{self.field}:{self.value}"] = self.why
        return True


@dataclass(frozen=True)
class Failure:
    """A failed try: where it failed, its one line, and its log."""

    stage: Stage
    line: str
    log: str

    @classmethod
    def of(cls, result: CellResult) -> Failure:
        error = result.error or ""
        stage: Stage = "smoke" if error.startswith("smoke test:") else "build"
        try:
            text = Path(result.log).read_text(errors="replace")
        except OSError:
            text = ""
        return cls(stage, error, text)


@dataclass
class Context:
    """What rules may consult besides the failure: the index and the toolchain table."""

    index_url: str
    toolchains: Toolchains
    python: str
    setup_py: str = ""
    """The sdist's setup.py, for the knobs it reads."""
    declared: list[str] = field(default_factory=list)
    """The sdist's [build-system].requires."""

    def distribution(self, module: str) -> str | None:
        """The distribution that provides ``module``: the table, else a project of that name."""
        top = module.split(".")[0]
        if top in MODULE_DISTS:
            return MODULE_DISTS[top]
        for name in dict.fromkeys([top, top.replace("_", "-")]):
            try:
                if source.index_files(name, self.index_url):
                    return canonicalize_name(name)
            except KilnError:
                return None
        return None

    def declared_closure(self) -> set[str]:
        """The distributions [build-system].requires brings into the build environment: the declared
        ones and what they pull in (oldest-supported-numpy brings numpy), as uv resolves them for
        the draft's Python; the declared names alone when that resolution fails."""
        names: set[str] = {canonicalize_name(Requirement(r).name) for r in self.declared}
        if not self.declared:
            return names
        res = subprocess.run([uv(), "pip", "compile", "-", "--python-version", self.python, "--index-url",
                              self.index_url, "--no-header", "--no-annotate", "--quiet"],
                             input="\n".join(self.declared), capture_output=True, text=True, check=False)
        if res.returncode != 0:
            return names
        for line in res.stdout.splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                try:
                    names.add(canonicalize_name(Requirement(line).name))
                except InvalidRequirement:
                    continue
        return names

    def cuda_variant(self) -> Variant | None:
        """The CUDA variant the host profile builds for the draft's Python (kiln.profile.pick_variant:
        nvcc's CUDA major here, else NVIDIA's compiler packages from the index); None without one."""
        variants = [Variant(minor, build) for minor, spec in self.toolchains.torch.items()
                    for build in spec.builds if build != "cpu" and self.python in spec.python]
        variant, _ = pick_variant(variants, self.toolchains, probe_facts())
        return variant

    def release_series(self, project: str, draft: Draft) -> tuple[Version, bool] | None:
        """The release of ``project`` a draft's package was made against: of its releases with a
        wheel for the draft's Python, the newest uploaded before the draft's sdist (True), else the
        oldest (False); None when it has no such wheel, or the index does not say when files were
        uploaded."""
        try:
            made = [f.upload_time for f in source.index_files(draft.project, self.index_url)
                    if f.upload_time and _sdist_version(f.filename) == Version(draft.version)]
            files = source.index_files(project, self.index_url)
        except KilnError:
            return None
        major, minor = (int(part) for part in self.python.split(".")[:2])
        supported = {*tags.cpython_tags((major, minor)), *tags.compatible_tags((major, minor))}
        uploaded: dict[Version, datetime] = {}
        for f in files:
            try:
                _, version, _, wheel_tags = parse_wheel_filename(f.filename)
            except InvalidWheelFilename:
                continue
            if version.is_prerelease or f.yanked or not f.upload_time or not wheel_tags & supported:
                continue
            uploaded[version] = min(uploaded.get(version, f.upload_time), f.upload_time)
        if not uploaded or not made:
            return None
        before = [v for v, when in uploaded.items() if when <= min(made)]
        return (max(before), True) if before else (min(uploaded), False)

    def torch_minor(self) -> str | None:
        """The newest torch minor with a cpu build for the draft's Python."""
        minors = [m for m, spec in self.toolchains.torch.items() if "cpu" in spec.builds and self.python in spec.python]
        return max(minors, key=Version) if minors else None


Rule = Callable[[Failure, Draft, Context], Change | None]

_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_QUIET_NO_MODULE = "Failed to initialize NumPy"


def missing_module(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """`No module named 'X'`: a build requirement (while building) or a runtime one (smoke test).
    torch's own warning when numpy is absent (`Failed to initialize NumPy: No module named 'numpy'`)
    is no failure of the build's and is not read."""
    log = "\n".join(ln for ln in failure.log[-20000:].splitlines() if _QUIET_NO_MODULE not in ln)
    m = _NO_MODULE.search(failure.line) or _NO_MODULE.search(log)
    if not m:
        return None
    module = m.group(1)
    if module.split(".")[0] == "torch" and failure.stage == "build":
        minor = ctx.torch_minor()
        return Change("matrix.torch", minor, f"No module named '{module}'") if minor else None
    dist = ctx.distribution(module)
    if dist is None:
        return None
    if canonicalize_name(Requirement(dist).name) == canonicalize_name(draft.project):
        return None
    target: Field = "runtime.requires" if failure.stage == "smoke" else "build.requires"
    return Change(target, dist, f"No module named '{module}'" + (" at run time" if failure.stage == "smoke" else ""))


_NUMPY_ALIAS = re.compile(r"module 'numpy' has no attribute '(int|float|bool|object|long|complex|str|unicode)'")


_CYTHON_NUMPY_TYPE = re.compile(r"\b\w+\.(?:int|uint|long|ulong|float|complex|object|bool)_t\b[^\n]*\n"
                                r"(?:[ \t]*\^[ \t]*\n)?-{20,}\n\n\S+\.pyx:\d+:\d+: "
                                r"(?:Invalid type|'\w+' is not a type identifier)")
"""Cython refusing a numpy type numpy 2's ``__init__.pxd`` no longer declares (``np.int_t``)."""


def numpy_removed_api(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A numpy API numpy 2 removed: in C (`NPY_`/`PyArray_` errors, `numpy/arrayobject.h`), in
    Cython (``np.int_t``: `Invalid type`) or the aliases (`np.int`); at run time, a module
    compiled against numpy 1.x."""
    text = failure.log[-40000:]
    pins_numpy = any(c.replace(" ", "").startswith("numpy<") for c in draft.constraints)
    if failure.stage == "build" and not pins_numpy and _CYTHON_NUMPY_TYPE.search(text):
        return Change("build.constraints", "numpy<2", "Cython code uses a numpy type numpy 2's declarations dropped "
                      "(np.int_t)")
    if "No module named 'numpy.distutils'" in failure.line or (failure.stage == "build" and
                                                               "No module named 'numpy.distutils'" in text):
        target0: Field = "runtime.requires" if failure.stage == "smoke" else "build.constraints"
        return Change(target0, "numpy<2", "numpy.distutils is gone from numpy 2")
    if failure.stage == "smoke" and ("compiled using NumPy 1.x cannot be run in" in text
                                     or "numpy.dtype size changed, may indicate binary incompatibility" in text):
        return Change("runtime.run_exports", "major", "compiled against numpy 1.x, fails on numpy 2", key="numpy")
    if "was removed in the NumPy 2.0 release" in text or "removed from the main namespace in NumPy 2" in text:
        target2: Field = "runtime.requires" if failure.stage == "smoke" else "build.constraints"
        return Change(target2, "numpy<2", "an API numpy 2.0 removed")
    if m := _NUMPY_ALIAS.search(text):
        target: Field = "runtime.requires" if failure.stage == "smoke" else "build.constraints"
        return Change(target, "numpy<1.24", f"np.{m.group(1)} was removed in numpy 1.24")
    if failure.stage == "build" and re.search(r"error:.*\b(NPY_\w+|PyArray_\w+|arrayobject\.h)", text):
        return Change("build.constraints", "numpy<2", "C code uses numpy 1.x API that numpy 2 removed")
    return None


_CYTHON3 = re.compile(r"Error compiling Cython file|Cython\.Compiler\.Errors|\.pyx:\d+:\d+: ")
_OLD_GENERATED_C = re.compile(r"error: .*(longintrepr\.h|lvalue required as increment operand|"
                              r"curexc_\w+|exc_type|_PyLong_AsByteArray|tp_print|ob_shash|"
                              r"_PyGen_Send|PyUnicode_AS_UNICODE|Py_UNICODE|'PyFrameObject'|f_lasti|"
                              r"_PyErr_StackItem|ma_version_tag|_Py_IsFinalizing)")


_SYSTEM_HEADER = re.compile(r"fatal error: [\w+.-]+\.(h|hh|hpp|hxx): No such file or directory")
"""A header named without a directory that is not there: a system library's (sndfile.h), which no
Cython can bring; a path the package names relatively (../common/maskApi.c) is Cython 3's doing."""


_KEPT_FOR_WANT_OF_CYTHON = re.compile(r"^kiln: Cython output kept: (\S+) \(generated by Cython ([^;]+); no Cython "
                                      r"in the build environment", re.MULTILINE)
"""kiln.cythonize's log line for stale Cython output it could not regenerate, for want of Cython."""
_NO_GENERATED = re.compile(r"fatal error: (?P<path>[\w./+-]+)\.(?:c|cpp): No such file or directory")
"""The ``.c``/``.cpp`` setuptools compiles in place of a ``.pyx`` when Cython is not installed."""


def cython(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A Cython-generated C file too old for this Python (regenerate it with Cython), or missing
    altogether where setup.py names its ``.pyx`` (setuptools compiles ``x.c`` for ``x.pyx`` without
    Cython), or Cython 3 rejecting code written for Cython 0.29."""
    text = failure.log[-40000:]
    if failure.stage != "build":
        return None
    has_cython = any(canonicalize_name(Requirement(r).name) == "cython" for r in draft.requires)
    kept = _KEPT_FOR_WANT_OF_CYTHON.findall(text)
    if kept and not has_cython and any(failure.line.startswith(f"{path}:") or f"/{path}:" in failure.line
                                       for path, _ in kept):
        path, old = next((p, o) for p, o in kept if p in failure.line)
        return Change("build.requires", "cython", f"{path} (generated by Cython {old}) does not compile; "
                      "kiln regenerates it with Cython")
    if ((m := _NO_GENERATED.search(failure.line)) and not has_cython
            and f"{m['path'].rsplit('/', 1)[-1]}.pyx" in ctx.setup_py):
        return Change("build.requires", "cython", f"{m['path'].rsplit('/', 1)[-1]}.pyx has no C shipped; "
                      "setuptools compiles what Cython would generate")
    pins_numpy = any(r.startswith("numpy") for r in draft.constraints)
    if "the NumPy Cython headers require Cython 3" in text and not pins_numpy:
        return Change("build.constraints", "numpy<2", "numpy 2's Cython headers need Cython 3, which this code rejects")
    pinned = any(r.startswith("cython<3") for r in draft.constraints)
    if _CYTHON3.search(text) and not pinned:
        return Change("build.constraints", "cython<3", "Cython 3 rejects the .pyx (written for Cython 0.29)")
    cythonized = re.search(r"^(Cythonizing|Compiling \S+\.pyx because)", text, re.MULTILINE)
    if (cythonized and not pinned and re.search(r"(fatal )?error:", failure.line)
            and not _OLD_GENERATED_C.search(text) and not _SYSTEM_HEADER.search(failure.line)):
        return Change("build.constraints", "cython<3", "the C that Cython 3 generated does not compile (0.29 did)")
    if _OLD_GENERATED_C.search(text):
        pins = [r for r in ctx.declared if canonicalize_name(Requirement(r).name) == "cython"
                and any(sp.operator in ("==", "<", "<=", "~=") for sp in Requirement(r).specifier)]
        if pins and pins[0] not in draft.replace:
            return Change("build.replace", "cython", "upstream pins a Cython too old for this Python", key=pins[0])
        if not any(canonicalize_name(Requirement(r).name) == "cython" for r in draft.requires):
            return Change("build.requires", "cython", "the shipped Cython-generated C does not compile on this Python")
    return None


def pkg_resources(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """`pkg_resources` is gone from setuptools 81 on."""
    if "pkg_resources" not in failure.line and "No module named 'pkg_resources'" not in failure.log[-20000:]:
        return None
    target: Field = "runtime.requires" if failure.stage == "smoke" else "build.requires"
    return Change(target, "setuptools<81", "pkg_resources (gone from setuptools 81 on)")


_OLD_DISTUTILS = re.compile(r"No module named '(distutils\.\w+)'")


def old_distutils(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A distutils module newer setuptools dropped from the distutils it ships
    (`distutils.msvccompiler`, which numpy.distutils imports): the setuptools numpy.distutils is
    made for (below 60, which takes Python's own distutils, there up to 3.11)."""
    if failure.stage != "build" or not (m := _OLD_DISTUTILS.search(failure.line) or
                                        _OLD_DISTUTILS.search(failure.log[-20000:])):
        return None
    if any(c.replace(" ", "").startswith("setuptools<") for c in draft.constraints):
        return None
    return Change("build.constraints", "setuptools<60", f"{m.group(1)} is gone from the distutils of setuptools 60+")


_REQUIRED = re.compile(r"\b(Cython|cython|NumPy|numpy|pybind11|Pybind11)\b[^.\n]{0,40}?\b(?:is |are )?"
                       r"(?:required|needed|missing|not found|not installed)", re.IGNORECASE)


def required_by_message(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A setup.py that says in words what it needs: "Cython is required during installation"."""
    m = _REQUIRED.search(failure.line) or _REQUIRED.search(failure.log[-20000:])
    if failure.stage != "build" or not m:
        return None
    dist = MODULE_DISTS.get(m.group(1)) or canonicalize_name(m.group(1))
    return Change("build.requires", dist, f"setup.py: {m.group(0)}")


_FETCH = re.compile(r"DistutilsError: Command '?\[.*'pip'.*\]")


def setup_requires_fetch(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """setup.py fetching its own build requirements (`fetch_build_eggs`, `setup_requires`) with
    pip, which a build environment does not have: install them up front instead."""
    m = _FETCH.search(failure.line) or _FETCH.search(failure.log[-40000:])
    if failure.stage != "build" or not m:
        return None
    listed = m.group(0)[m.group(0).index("[") + 1:m.group(0).rindex("]")]
    for arg in reversed(re.findall(r"'([^']+)'", listed)):
        if arg.startswith(("-", "/")) or arg in ("pip", "wheel"):
            continue
        try:
            req = Requirement(arg)
        except ValueError:
            continue
        return Change("build.requires", str(req), "setup.py fetches it itself (setup_requires), with pip")
    return None


def cmake_policy(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """CMake 4 refuses a CMakeLists.txt written for CMake < 3.5 unless told the minimum policy."""
    if failure.stage == "build" and "Compatibility with CMake < 3.5 has been removed" in failure.log[-40000:]:
        return Change("build.env", "3.5", "CMake 4 refuses cmake_minimum_required below 3.5",
                      key="CMAKE_POLICY_VERSION_MINIMUM")
    return None


def cuda_knob(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A torch extension failing to build for a cpu cell, whose setup.py reads a knob such as
    `*_FORCE_BUILD`, `*_SKIP_CUDA_BUILD` or `FORCE_ONLY_CPU`: set the next one not set yet. Tried
    after every other rule (a knob kiln's sandbox makes redundant stays out of the recipe)."""
    if failure.stage != "build" or not draft.torch:
        return None
    for name, value in knobs(ctx.setup_py).items():
        if name not in draft.env and not (draft.cuda and name.endswith(CPU_KNOBS)):  # a CUDA cell keeps CUDA on
            return Change("build.env", value, "a knob setup.py reads (the build failed without it)", key=name)
    return None


_DEPENDS_ON = re.compile(r"(?P<who>[A-Za-z0-9][\w.-]*)==\S+ depends on (?P<req>[^\s,]+(?:,[^\s,]+)*)")


def upstream_bound(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """The wheel's own runtime requirements do not resolve because of an upstream upper bound no
    release satisfies for this Python (`numpy<1.20` on 3.12): rewrite it (runtime.replace) to its
    lower bounds alone; the smoke test then says whether the package runs with what installs."""
    if (failure.stage != "smoke" and "do not resolve" not in failure.line
            and "the runtime requirements do not resolve" not in failure.log):
        return None
    for m in _DEPENDS_ON.finditer(f"{failure.line}\n{failure.log[-20000:]}"):
        if canonicalize_name(m["who"]) != canonicalize_name(draft.project):
            continue
        try:
            req = Requirement(m["req"])
        except InvalidRequirement:
            continue
        if not any(sp.operator in ("<", "<=", "==", "~=") for sp in req.specifier):
            continue
        return Change("runtime.replace", unbounded(req), f"no release satisfies upstream's {req} on Python "
                      f"{draft.python}", key=str(req))
    return None


def unbounded(req: Requirement) -> str:
    """``req`` without its upper bounds, its marker kept: ``numpy>=1.16,<1.20`` -> ``numpy>=1.16``,
    ``x~=1.2`` -> ``x>=1.2``, ``x==1.*; python_version >= "3.8"`` -> ``x>=1; python_version >= "3.8"``."""
    kept = []
    for sp in req.specifier:
        if sp.operator in (">=", ">", "!="):
            kept.append(str(sp))
        elif sp.operator in ("~=", "=="):
            kept.append(f">={sp.version.removesuffix('.*')}")
    return req.name + ",".join(sorted(kept)) + (f"; {req.marker}" if req.marker else "")


_STRICT = re.compile(r"error: .*\[-W(?:error=)?(?P<flag>narrowing|implicit-function-declaration|implicit-int|"
                     r"incompatible-pointer-types|int-conversion|return-mismatch|declaration-missing-parameter-type)\]")


def compiler_strictness(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """Old code that newer compilers reject by default (C++11's narrowing rules, GCC 14's C errors:
    an implicit declaration, incompatible pointer types): the diagnostic turned back into a warning,
    through CXXFLAGS for C++ (setuptools compiles C++ with CXXFLAGS) and CFLAGS for C."""
    if failure.stage != "build" or not (m := _STRICT.search(failure.line) or _STRICT.search(failure.log[-40000:])):
        return None
    cxx = m["flag"] == "narrowing"
    flag, key = ("-Wno-narrowing", "CXXFLAGS") if cxx else (f"-Wno-error={m['flag']}", "CFLAGS")
    have = draft.env.get(key, "")
    if flag in have.split():
        return None
    return Change("build.env", f"{have} {flag}".strip(), f"the compiler rejects old code: [-W{m['flag']}]", key=key)


_NEWER_STD = [
    (re.compile(r"error: .*std::tr1::\w+.* conflicts with a previous declaration|error: .*[‘'`]tr1[’'`] "
                r"(?:in namespace [‘'`]std[’'`] does not name|has not been declared)"), "-std=c++11",
     "old code picks std::tr1 unless __cplusplus is C++11's"),
    (re.compile(r"error: ISO C\+\+1[7-9] does not allow|error: ISO C\+\+2\d does not allow"), "-std=c++14",
     "old code that C++17 no longer allows"),
]
"""Compiler errors of old C++ under GCC's default standard (C++17): the older standard it was
written for, and why."""


def old_cxx_standard(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """Old C++ that GCC's default standard (C++17) rejects: code that takes ``std::tr1`` unless
    ``__cplusplus`` is C++11's (`std::tr1::unordered_map ... conflicts with a previous declaration`),
    or what C++17 removed (dynamic exception specifications, ``register``): compiled with the
    standard it was written for, through CXXFLAGS, then CFLAGS too (setuptools before 72 compiles C++
    with CFLAGS alone; GCC only warns about a C++ standard for C)."""
    if failure.stage != "build":
        return None
    text = f"{failure.line}\n{failure.log[-40000:]}"
    for pattern, flag, why in _NEWER_STD:
        if not pattern.search(text):
            continue
        have = draft.env.get("CXXFLAGS", "")
        if not any(f.startswith("-std=") for f in have.split()):
            return Change("build.env", f"{have} {flag}".strip(), why, key="CXXFLAGS")
        commands = [ln for ln in failure.log.splitlines() if not ln.startswith("kiln:")]
        if any(flag in ln for ln in commands):
            return None  # the compiler got it (and setup.py's own -std, after it, may win): nothing more to try
        have = draft.env.get("CFLAGS", "")
        if not any(f.startswith("-std=") for f in have.split()):
            return Change("build.env", f"{have} {flag}".strip(), f"{why} (CXXFLAGS did not reach the compiler)",
                          key="CFLAGS")
        return None
    return None


_NOT_IN_STD = re.compile(r"error: [‘'`](?P<name>\w+)[’'`] is not a member of [‘'`]std[’'`]")
STD_HEADERS = {"unique_ptr": "memory", "shared_ptr": "memory", "make_unique": "memory", "make_shared": "memory",
               "weak_ptr": "memory", "numeric_limits": "limits", "runtime_error": "stdexcept",
               "logic_error": "stdexcept", "out_of_range": "stdexcept", "invalid_argument": "stdexcept",
               "function": "functional", "uint8_t": "cstdint", "uint16_t": "cstdint", "uint32_t": "cstdint",
               "uint64_t": "cstdint", "int8_t": "cstdint", "int16_t": "cstdint", "int32_t": "cstdint",
               "int64_t": "cstdint", "size_t": "cstddef", "thread": "thread", "mutex": "mutex",
               "this_thread": "thread", "sort": "algorithm", "min": "algorithm", "max": "algorithm"}
"""Names old C++ used without its header, which older libstdc++ headers happened to include (GCC 11
and 13 stopped): the header that declares each."""


def std_header(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """`'unique_ptr' is not a member of 'std'`: old C++ that got a standard header through another
    one; the header is included in every C++ compile (`-include memory`, through CXXFLAGS)."""
    if failure.stage != "build" or not (m := _NOT_IN_STD.search(failure.line) or
                                        _NOT_IN_STD.search(failure.log[-40000:])):
        return None
    header = STD_HEADERS.get(m["name"])
    have = draft.env.get("CXXFLAGS", "")
    if header is None or f"-include {header}" in have:
        return None
    return Change("build.env", f"{have} -include {header}".strip(), f"std::{m['name']} used without <{header}>",
                  key="CXXFLAGS")


_MISSING_HEADER = re.compile(r"fatal error: (?P<header>[\w./+-]+\.h(?:pp)?): No such file or directory")
_BUNDLE_KNOB = re.compile(r"""(?:getenv|environ\.get|environ\[)\(?\s*['"](?P<name>[A-Z0-9_]*(?:BUILD|BUNDLE|EMBED|"""
                          r"""VENDOR|INTERNAL|STATIC)[A-Z0-9_]*)['"]\s*(?:,[^)]*)?\)?\]?\s*(?:==\s*['"](?P<value>[^'"]+)['"])?""")


def bundled_library_knob(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A header of a system library the build box lacks (`fuzzy.h`), from a setup.py that can
    build the library it bundles when a variable says so (`os.environ.get("BUILD_LIB") == "1"`):
    set that variable (to the value setup.py compares it with, else 1)."""
    if failure.stage != "build" or not (_MISSING_HEADER.search(failure.line) or
                                        _MISSING_HEADER.search(failure.log[-40000:])):
        return None
    for m in _BUNDLE_KNOB.finditer(ctx.setup_py):
        name = m["name"]
        if name not in draft.env and not name.endswith(CPU_KNOBS) and "CUDA" not in name:
            return Change("build.env", m["value"] or "1", "a library header is missing; setup.py builds the one it "
                          "bundles when told", key=name)
    return None


_NEEDS_CUDA = re.compile(r"CUDA_HOME environment variable is not set|CPU version is not implemented|"
                         r"torch\.cuda\.is_available\(\)|requires CUDA|"
                         r"CUDA (?:is )?(?:required|not available|not found)|nvcc (?:was )?not found", re.IGNORECASE)


def needs_cuda(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A torch extension that cannot be built without CUDA, failing in a cpu cell (its setup.py
    refuses, or asks for CUDA_HOME): build it in the host profile's CUDA variant instead. After
    `cuda_knob`: a knob that turns CUDA off is the package's own way to a cpu build."""
    if failure.stage != "build" or not draft.torch or draft.cuda:
        return None
    if not _NEEDS_CUDA.search(failure.line):  # the log holds torch's warnings ("No CUDA runtime is found") too
        return None
    variant = ctx.cuda_variant()
    if variant is None or variant.torch is None or variant.cuda is None:
        return None
    return Change("matrix.cuda", variant.cuda, f"the extension needs CUDA: {_short(failure.line, 100)}",
                  key=variant.torch)


_TORCH_CXX = re.compile(r"C\+\+(?P<std>\d\d) or later compatible compiler is required to use PyTorch")
_STD_FLAG = re.compile(r"(?:^|\s)-std=(?:c|gnu)\+\+(?P<std>\d\d)(?=\s|$)")
"""A C++ standard on a compiler's command line (not one a diagnostic quotes: ``‘-std=c++20’``)."""


def torch_cxx_standard(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """torch's headers refuse the C++ standard the package compiles with (`C++20 or later compatible
    compiler is required to use PyTorch`: setup.py passes -std=c++17): the newest older torch minor
    whose headers take the package's standard (the toolchain table's ``cxx_std``), with the draft's
    build (cpu or its CUDA) for its Python."""
    if failure.stage != "build" or not draft.torch or not (m := _TORCH_CXX.search(failure.line) or
                                                           _TORCH_CXX.search(failure.log[-40000:])):
        return None
    commands = [ln for ln in failure.log.splitlines() if not ln.startswith("kiln:")]
    stds = [int(found[-1]) for ln in commands if (found := _STD_FLAG.findall(ln))]  # the last one of a command wins
    std = min(stds) if stds else int(m["std"]) - 3  # else the standard before the one torch asks for
    if draft.torch in ctx.toolchains.torch and ctx.toolchains.torch[draft.torch].cxx_std <= std:
        return None  # the draft's torch takes that standard: the error is something else's
    build = draft.cuda or "cpu"
    older = [minor for minor, spec in ctx.toolchains.torch.items()
             if Version(minor) < Version(draft.torch) and spec.cxx_std <= std and build in spec.builds
             and draft.python in spec.python]
    if not older:
        return None
    return Change("matrix.torch", max(older, key=Version), f"torch {draft.torch}'s headers need C++{m['std']}, the "
                  f"package compiles with C++{std}", key=draft.torch)


_EXCLUDES_PIN = re.compile(r"Because you require (?P<req>[A-Za-z0-9][\w.-]*[<>=!~][^\s,]*(?:,[<>=!~][^\s,]*)*) and "
                           r"(?P<name>[A-Za-z0-9][\w.-]*)==(?P<version>\S+?), we can conclude that your requirements "
                           r"are unsatisfiable")


def toolchain_bound(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """A build requirement whose upper bound excludes the cell's torch (`you require torch>=2.0,<2.8
    and torch==2.14.1`), where the toolchain table has no minor within it: build.replace it with its
    lower bounds; the build then says whether the code compiles against the cell's torch, and the
    smoke test whether upstream's runtime bound must go too (`upstream_bound`)."""
    if failure.stage != "build" or not draft.torch or not (m := _EXCLUDES_PIN.search(failure.line) or
                                                           _EXCLUDES_PIN.search(failure.log[-20000:])):
        return None
    try:
        req = Requirement(m["req"])
    except InvalidRequirement:
        return None
    if canonicalize_name(req.name) != "torch" or canonicalize_name(m["name"]) != "torch":
        return None
    if any(req.specifier.contains(spec.release) for spec in ctx.toolchains.torch.values()):
        return None  # a minor of the table satisfies it: the draft's torch is the one to change
    if not any(sp.operator in ("<", "<=", "==", "~=") for sp in req.specifier):
        return None
    return Change("build.replace", unbounded(req), f"upstream's {req} excludes every torch minor kiln builds",
                  key=str(req))


_GONE_NAME = re.compile(r"cannot import name '(?P<name>\w+)' from '(?P<module>[\w.]+)'|"
                        r"module '(?P<module2>[\w.]+)' has no attribute '(?P<name2>\w+)'")
_IMPORTED = re.compile(r"smoke test: import (?P<module>[\w.]+) failed")


def dependency_moved_on(failure: Failure, draft: Draft, ctx: Context) -> Change | None:
    """The smoke test's import fails on a name a runtime dependency no longer has (`cannot import
    name 'scalar_search_armijo' from 'scipy.optimize.linesearch'`): the package was written against
    an older release of it. Bound the dependency to the minor series that was current when the
    package's release was uploaded, among its releases with a wheel for the draft's Python, else
    (the Python is newer than the package) to the oldest series with such a wheel."""
    if failure.stage != "smoke" or not (m := _GONE_NAME.search(failure.line)):
        return None
    module = m["module"] or m["module2"]
    own = _IMPORTED.search(failure.line)
    if module.split(".")[0] in sys.stdlib_module_names or (own and module.split(".")[0] ==
                                                           own["module"].split(".")[0]):
        return None  # Python's own module, or the package's
    dist = ctx.distribution(module)
    if dist is None or canonicalize_name(Requirement(dist).name) == canonicalize_name(draft.project):
        return None
    name = Requirement(dist).name
    found = ctx.release_series(name, draft)
    if found is None:
        return None
    series, current = found
    which = ("the series current at the release" if current else
             f"the oldest with a wheel for Python {draft.python}, which is newer than the release")
    return Change("runtime.requires", f"{name}<{series.major}.{series.minor + 1}",
                  f"{module}.{m['name'] or m['name2']} is gone from newer {name}: {name} {series.major}."
                  f"{series.minor}, {which}")


RULES: list[Rule] = [pkg_resources, numpy_removed_api, missing_module, old_distutils, cython, setup_requires_fetch,
                     required_by_message, upstream_bound, toolchain_bound, dependency_moved_on, compiler_strictness,
                     torch_cxx_standard, old_cxx_standard, std_header,
                     bundled_library_knob,
                     cmake_policy,
                     cuda_knob, needs_cuda]


# ----------------------------------------------------------------------------- what the sdist says


CPU_KNOBS = ("SKIP_CUDA_BUILD", "FORCE_ONLY_CPU", "FORCE_CPU")
"""The knobs of `knobs` that turn CUDA off: dropped when a draft moves to a CUDA cell."""
_KNOB = re.compile(r"""(?:getenv|environ\.get|environ\[)\(?\s*['"]([A-Z0-9_]*(?:FORCE_BUILD|SKIP_CUDA_BUILD|"""
                   r"""FORCE_ONLY_CPU|FORCE_CPU))['"]""")


def knobs(setup_py: str) -> dict[str, str]:
    """CUDA knobs a setup.py reads from the environment, set for a cpu cell: build from source,
    skip the CUDA build, CPU only."""
    out = {}
    for name in dict.fromkeys(_KNOB.findall(setup_py)):
        out[name] = "TRUE" if name.endswith(("FORCE_BUILD", "SKIP_CUDA_BUILD")) else "1"
    return out


def unconditional_imports(setup_py: str) -> list[str]:
    """The top-level modules a setup.py imports at module level, outside try blocks."""
    try:
        tree = ast.parse(setup_py)
    except SyntaxError:
        return []
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module.split(".")[0])
    return list(dict.fromkeys(found))


def static_draft(draft: Draft, srcdir: Path, ctx: Context, say: Callable[[str], None]) -> None:
    """What the sdist says before anything is built."""
    setup_py = srcdir / "setup.py"
    text = setup_py.read_text(errors="replace") if setup_py.is_file() else ""
    own = {p.name for p in srcdir.iterdir() if p.is_dir()} | {p.stem for p in srcdir.glob("*.py")}
    ctx.declared = buildreqs.static(srcdir, Recipe(project=draft.project, versions=[draft.version])).declared
    declared: set[str] | None = None  # resolved once, when an import needs it
    for module in unconditional_imports(text):
        if module in sys.stdlib_module_names or module in NOT_DEPENDENCIES or module in own:
            continue
        if module == "torch":
            minor = ctx.torch_minor()
            if minor is None:
                continue
            change = Change("matrix.torch", minor, "setup.py imports torch")
            why = cuda_only(text)
            variant = ctx.cuda_variant() if why else None
            if variant is not None and variant.torch is not None and variant.cuda is not None:
                change = Change("matrix.cuda", variant.cuda, f"setup.py builds CUDA code only ({why})",
                                key=variant.torch)
        else:
            dist = ctx.distribution(module)
            if dist is None:
                continue
            declared = ctx.declared_closure() if declared is None else declared
            if canonicalize_name(Requirement(dist).name) in declared:
                continue
            change = Change("build.requires", dist, f"setup.py imports {module} before declaring it")
        if change.apply(draft):
            say(f"try 0 (setup.py): imports {module} -> {change.describe()}")


# ----------------------------------------------------------------------------- the loop


@dataclass
class InferResult:
    recipe: Path
    tries: int
    draft: Draft


def _sdist_version(filename: str) -> Version | None:
    try:
        return parse_sdist_filename(filename)[1]
    except InvalidSdistFilename:
        return None


def newest_sdist_version(project: str, index_url: str) -> str:
    versions = [v for f in source.index_files(project, index_url)
                if (v := _sdist_version(f.filename)) is not None and not v.is_prerelease]
    if not versions:
        raise InferError(f"{project}: no sdist on {index_url}")
    return str(max(versions))


_CLOSURE_FAILURE = re.compile(r"^(\S+) (\S+), a runtime requirement with no wheel for cp\d+, "
                              r"(?:failed to build|does not build as upstream declares it)")
MAX_DEPTH = 2
"""How deep infer follows runtime dependencies that need recipes of their own."""


@dataclass(frozen=True)
class InferOptions:
    """How `kiln infer` tries: the Python of the first try, the index (None: the default one),
    how many builds to try before giving up, and where it says what it did."""

    python: str
    index_url: str | None
    max_tries: int
    out: TextIO


def infer(spec: str, recipes_dir: Path, home: Home, options: InferOptions, depth: int = 0) -> InferResult:
    """Draft ``recipes_dir``/<project>.yaml for ``spec`` (``name`` or ``name==version``), and the
    recipes of runtime dependencies that need one (``depth``: how deep in them this one is)."""
    python, max_tries, out = options.python, options.max_tries, options.out
    name, _, version = spec.partition("==")
    index = options.index_url or source.default_index_url()
    project = canonicalize_name(name)
    target = recipes_dir / f"{project}.yaml"
    if target.exists():
        raise ConfigError(f"{target}: exists already; infer drafts recipes that do not exist yet")
    toolchains = load_toolchains(recipes_dir)
    version = version or newest_sdist_version(project, index)
    draft = Draft(project=project, version=version, python=python)
    ctx = Context(index, toolchains, python)

    def say(line: str) -> None:
        print(("  " * depth + f"[{project}] " if depth else "") + line, file=out, flush=True)

    work = home.root / "infer" / f"{project}-{version}"
    shutil.rmtree(work, ignore_errors=True)
    drafts = work / "recipes"
    drafts.mkdir(parents=True)
    shutil.copy(recipes_dir / TOOLCHAINS_FILE, drafts / TOOLCHAINS_FILE)
    probe = Recipe(project=project, versions=[version], path=drafts / f"{project}.yaml")
    sdist = source.fetch(probe, version, home.sources, index)
    with tempfile.TemporaryDirectory() as tmp:
        srcdir = source.unpack(sdist, Path(tmp) / "src")
        if (srcdir / "setup.py").is_file():
            ctx.setup_py = (srcdir / "setup.py").read_text(errors="replace")
        static_draft(draft, srcdir, ctx, say)

    trial_home = Home(work / "home")
    trial_home.root.mkdir(parents=True, exist_ok=True)
    (trial_home.root / "cache").mkdir(exist_ok=True)
    # the sdist cache and the compiler cache are shared with the home
    for cache in ("sources", "ccache"):
        (home.root / "cache" / cache).mkdir(parents=True, exist_ok=True)
        (trial_home.root / "cache" / cache).symlink_to(home.root / "cache" / cache)
    last = ""
    deps: list[Path] = []
    tried: set[str] = set()
    tried_pythons = [python]
    trial = BuildContext.of(toolchains, trial_home, work / "wheelhouse", LocalBackend(), index)
    builds = 0  # tries that built; one found not buildable (seconds, each Python once) is not counted
    for attempt in itertools.count(1):
        if builds == max_tries:
            break
        state = draft.yaml() + "".join(f"\n{d.name}" for d in deps)  # the draft and the recipes beside it
        if state in tried:
            raise InferError(f"{project} {version}: no working recipe (the rules go round in circles); "
                             f"last failure: {last}")
        tried.add(state)
        (drafts / f"{project}.yaml").write_text(draft.yaml())
        recipe = load_recipe(drafts / f"{project}.yaml")
        cells = expand([recipe], toolchains)
        if draft.cuda:  # built as `kiln up` builds it here: the host's GPU archs (+ PTX of the lowest served)
            picked = select(cells, toolchains, HOST, probe_facts(), pythons=[draft.python])
            cells = [c for c in picked.cells if c.variant.cuda_major]
            if not cells:
                raise InferError(f"{project} {version}: needs CUDA, and this host builds no CUDA cell: "
                                 f"{picked.why_none or picked.describe()}")
        if not cells:
            raise InferError(f"{project} {version}: the draft has no cell for Python {draft.python}")
        result = build_cell(cells[0], trial)
        if result.status == CellOutcome.BUILT:
            recipes_dir.mkdir(parents=True, exist_ok=True)
            for dep in deps:  # the dependencies' recipes, drafted on the way
                if not (recipes_dir / dep.name).exists():
                    shutil.copy(dep, recipes_dir / dep.name)
                    say(f"wrote {recipes_dir / dep.name} (a runtime dependency's recipe)")
            target.write_text(draft.yaml())
            say(f"try {attempt}: built and smoke-tested {cells[0].id} -> wrote {target}")
            return InferResult(target, attempt, draft)
        if result.status != CellOutcome.NOT_BUILDABLE:
            builds += 1
        too_new = python_too_new(Failure.of(result), draft) if result.status == CellOutcome.FAILED else None
        if result.status == CellOutcome.NOT_BUILDABLE or too_new:  # impossible on this Python: try another one
            reason = too_new or result.error or "not buildable"
            last = f"not buildable on Python {draft.python}: {reason}"
            other = next_python(draft, ctx, tried_pythons)
            if other is None and (change := unsatisfiable_bound(reason, draft)) is not None and change.apply(draft):
                # No Python has a wheel within upstream's bound: the bound goes, from the first Python again.
                say(f"try {attempt}: not buildable on any Python: {_short(reason)} -> {change.describe()}")
                draft.python = ctx.python = python
                draft.why.pop("matrix.python", None)
                tried_pythons[:] = [python]
                continue
            if other is None:
                raise InferError(f"{project} {version}: not buildable on any Python kiln builds here "
                                 f"({', '.join(tried_pythons)}); last: {reason}")
            say(f"try {attempt}: not buildable on Python {draft.python}: {_short(reason)} -> matrix.python = [{other}]")
            draft.why["matrix.python"] = "; ".join(w for w in (draft.why.get("matrix.python"), f"not {draft.python}: "
                                                   f"{reason}") if w)
            draft.python = ctx.python = other
            tried_pythons.append(other)
            continue
        failure = Failure.of(result)
        last = f"{failure.line} (log: {result.log})"
        if _CLOSURE_FAILURE.match(failure.line) and (change := upstream_bound(failure, draft, ctx)) is not None \
                and change.apply(draft):  # upstream's old bound is why the dependency has no wheel: it goes first
            say(f"try {attempt}: {_short(failure.line)} -> {change.describe()}")
            continue
        if (m := _CLOSURE_FAILURE.match(failure.line)) and depth < MAX_DEPTH \
                and not (drafts / f"{canonicalize_name(m.group(1))}.yaml").exists():
            dep_spec = f"{m.group(1)}=={m.group(2)}"
            say(f"try {attempt}: {_short(failure.line)} -> kiln infer {dep_spec}")
            try:
                sub = infer(dep_spec, drafts, home, dataclasses.replace(options, index_url=index), depth + 1)
            except InferError as exc:
                raise InferError(f"{project} {version}: its runtime dependency {dep_spec} has no working recipe: "
                                 f"{exc.message}") from None
            deps.append(sub.recipe)
            continue
        for rule in RULES:
            change = rule(failure, draft, ctx)
            if change is not None and change.apply(draft):
                say(f"try {attempt}: {_short(failure.line)} -> {change.describe()}")
                break
        else:
            say(f"try {attempt}: {_short(failure.line)} -> no rule applies")
            raise InferError(f"{project} {version}: no working recipe; last failure: {last}")
    raise InferError(f"{project} {version}: no working recipe after {max_tries} tries; last failure: {last}")


_NO_WHEEL = re.compile(r"^(?P<req>.+?) has no wheel for cp\d+ \(a build requirement: (?P<tier>[^)]*)\)")


def unsatisfiable_bound(reason: str, draft: Draft) -> Change | None:
    """A build requirement of upstream's whose upper bound no Python kiln builds has a wheel
    within (`numpy<1.20`): build.replace it with its lower bounds, as `upstream_bound` does for a
    runtime requirement; the build then says whether the code compiles against what installs."""
    m = _NO_WHEEL.match(reason)
    if not m or "build.requires" in m["tier"]:  # the recipe's own requirement is the draft's to change
        return None
    try:
        req = Requirement(m["req"])
    except InvalidRequirement:
        return None
    if not any(sp.operator in ("<", "<=", "==", "~=") for sp in req.specifier):
        return None
    return Change("build.replace", unbounded(req), f"no Python kiln builds has a wheel within upstream's {req}",
                  key=m["req"])


_GONE_IN_312 = re.compile(r"module 'configparser' has no attribute '(SafeConfigParser)'|"
                          r"'(?:Raw|Safe)?ConfigParser' object has no attribute '(readfp)'|"
                          r"No module named '(imp|asyncore|asynchat|smtpd)'")
"""What Python 3.12 removed from the standard library that old setup.py files (and the versioneer
they vendor) still use."""


_ORPHANED = re.compile(r"^kiln: Cython output without its \.pyx: (\S+) \(generated by Cython ([^;]+);", re.MULTILINE)
"""kiln.cythonize's log line for Cython output the sdist ships without its ``.pyx``."""
_NUMPY_C_API = re.compile(r"\b(NPY_\w+|PyArray_\w+|arrayobject\.h)")


def python_too_new(failure: Failure, draft: Draft) -> str | None:
    """Why a build (or its smoke test) failed for the draft's Python itself, so that only an older
    one can work: a standard-library name Python 3.12 removed (``configparser.SafeConfigParser``,
    ``imp``), in the build or in the package's own import;
    numpy.distutils still missing with numpy 1.x pinned (numpy 1.26, the last with it, ships it
    for Python 3.11 and older only); or a compile error in Cython output the sdist ships without
    its ``.pyx`` (no Cython can write it again: it compiles only on the Pythons of the Cython that
    wrote it), unless the error is numpy's C API (a numpy bound's to fix); None otherwise."""
    text = failure.line + "\n" + failure.log[-40000:]
    if Version(draft.python) >= Version("3.12") and (m := _GONE_IN_312.search(text)):
        name = next(g for g in m.groups() if g)
        return (f"the {'build' if failure.stage == 'build' else 'package'} uses {name}, which Python 3.12 removed "
                "from the standard library")
    if failure.stage == "build" and "error" in failure.line and not _NUMPY_C_API.search(failure.line):
        for path, old in _ORPHANED.findall(failure.log):
            if failure.line.startswith(f"{path}:") or f"/{path}:" in failure.line:
                return (f"{path} (generated by Cython {old}, no .pyx shipped to regenerate it from) does not "
                        f"compile on Python {draft.python}")
    gone = "No module named 'numpy.distutils'"
    if failure.stage != "build" or (gone not in failure.line and gone not in failure.log[-40000:]):
        return None
    if not any(c.replace(" ", "").startswith("numpy<2") for c in draft.constraints):
        return None  # numpy 1.x not tried yet (numpy_removed_api pins it first)
    if Version(draft.python) < Version("3.12"):
        return None
    return (f"the build imports numpy.distutils, which no numpy has for Python {draft.python} "
            "(numpy 1.26, the last with it, has it for 3.11 and older)")


def next_python(draft: Draft, ctx: Context, tried: list[str]) -> str | None:
    """The Python a draft tries after a cell found not buildable: of those kiln builds it for (the
    torch minor's, else every Python a recipe defaults to) and this host has, the newest below the
    Pythons tried (an old package fails on new Pythons), else the oldest above them."""
    pool = ctx.toolchains.torch[draft.torch].python if draft.torch else DEFAULT_PYTHONS
    here = [p for p in pool if p not in tried and find_python(p) is not None]
    lower = [p for p in here if Version(p) < min(Version(t) for t in tried)]
    if lower:
        return max(lower, key=Version)
    return min(here, key=Version) if here else None


def _short(line: str, width: int = 160) -> str:
    line = " ".join(line.split())
    return line if len(line) <= width else line[: width - 1] + "…"

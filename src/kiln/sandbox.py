"""How a build step runs: in namespaces of its own, with no network and, for cells without
CUDA, no CUDA toolkit in sight.

`Sandbox.wrap(cmd)` returns the command line that runs ``cmd`` that way. The network goes with
``unshare --net``. The toolkit goes with a private mount namespace (``unshare --mount``) in which
`python -m kiln.sandbox` first hides it, then execs the command:

- every CUDA toolkit directory (``/usr/local/cuda``, ``/usr/local/cuda-13.0``, ``/opt/cuda``,
  ``$CUDA_HOME``...) disappears: its parent is covered by a tmpfs on which every other entry is
  bound back, so ``os.path.exists("/usr/local/cuda")`` is False, as on a machine without CUDA;
- every ``nvcc`` left on PATH (a wrapper script in ``/usr/local/bin``, Debian's ``/usr/bin/nvcc``)
  is covered by ``/dev/null``, which is not executable, so ``which nvcc`` finds nothing;
- CUDA_HOME, CUDA_PATH, CUDACXX, PYTORCH_NVCC, TORCH_CUDA_ARCH_LIST and FORCE_CUDA are not
  passed on from the caller.

torch's ``cpp_extension`` then finds no CUDA_HOME and a setup.py that builds CUDA code "when a
toolkit is found" builds its CPU extension. Mounts made there vanish with the namespace.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import HostError

CUDA_ENV = ("CUDA_HOME", "CUDA_PATH", "CUDACXX", "CUDA_ROOT", "CUDA_TOOLKIT_ROOT_DIR", "PYTORCH_NVCC",
            "TORCH_CUDA_ARCH_LIST", "FORCE_CUDA")
"""Variables the caller's environment may hold that point a build at CUDA."""
CUDA_GLOBS = ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda", "/opt/cuda-*", "/opt/nvidia/cuda*")


def cuda_toolkit_paths(environ: dict[str, str] | None = None) -> tuple[list[Path], list[Path]]:
    """(toolkit directories, nvcc executables outside them) visible on this host."""
    environ = dict(os.environ) if environ is None else environ
    dirs: set[Path] = set()
    candidates = [Path(p) for pattern in CUDA_GLOBS for p in glob.glob(pattern)]
    candidates += [Path(environ[k]) for k in ("CUDA_HOME", "CUDA_PATH") if environ.get(k)]
    for cand in candidates:
        if cand.is_dir() and (cand.resolve() / "bin" / "nvcc").exists():
            dirs.add(cand)
            dirs.add(cand.resolve())
    files: set[Path] = set()
    for entry in environ.get("PATH", "").split(os.pathsep):
        exe = Path(entry or ".") / "nvcc"
        if exe.is_file() and os.access(exe, os.X_OK) and not any(_under(exe, d) for d in dirs):
            files.add(exe.absolute())
    return sorted(dirs), sorted(files)


def _under(path: Path, top: Path) -> bool:
    try:
        path.resolve().relative_to(top.resolve())
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Sandbox:
    """How one step runs: ``network`` allowed or not, ``hide_cuda`` for cells without CUDA."""

    network: bool = False
    hide_cuda: bool = False

    def describe(self) -> str:
        parts = ["network" if self.network else "no network"]
        if self.hide_cuda:
            parts.append("no CUDA toolkit (private mount namespace)")
        return ", ".join(parts)

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` without what points at CUDA, when CUDA is hidden."""
        if not self.hide_cuda:
            return dict(env)
        return {k: v for k, v in env.items() if k not in CUDA_ENV}

    def wrap(self, cmd: list[str], stash: Path) -> list[str]:
        """The command line running ``cmd`` in this sandbox; ``stash`` is a directory of the
        cell's own that the mount helper may use."""
        flags = [] if self.network else ["--net"]
        hide: list[str] = []
        if self.hide_cuda:
            dirs, files = cuda_toolkit_paths()
            for d in dirs:
                hide += ["--hide-dir", str(d)]
            for f in files:
                hide += ["--mask", str(f)]
            if hide:
                flags.append("--mount")
        if not flags:
            return list(cmd)
        prefix = unshare(flags)
        if hide:
            stash.mkdir(parents=True, exist_ok=True)
            return [*prefix, sys.executable, "-m", "kiln.sandbox", "--stash", str(stash), *hide, "--", *cmd]
        return [*prefix, *cmd]


def unshare(flags: list[str]) -> list[str]:
    """``unshare FLAGS`` (as a mapped root when not root), checked to be permitted here."""
    if shutil.which("unshare") is None:
        raise HostError("unshare (util-linux) not found: builds must run without network")
    prefix = ["unshare", *flags]
    if os.geteuid() != 0:
        prefix.append("--map-root-user")
    res = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if res.returncode != 0:
        raise HostError(f"{' '.join(prefix)} is not permitted here ({res.stderr.strip()}); "
                        "builds must run without network")
    return prefix


# ----------------------------------------------------------------------------- inside the namespace


def _mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"kiln.sandbox: mount {' '.join(args)} failed: {res.stderr.strip()}")


def hide(dirs: list[Path], masks: list[Path], stash: Path) -> None:
    """Make ``dirs`` vanish and ``masks`` unexecutable, in the current mount namespace."""
    by_parent: dict[Path, set[str]] = {}
    for d in dirs:
        by_parent.setdefault(d.parent, set()).add(d.name)
    for i, (parent, names) in enumerate(sorted(by_parent.items())):
        if parent == parent.parent:
            raise SystemExit(f"kiln.sandbox: cannot hide {sorted(names)} at the root of the file system")
        keep = stash / str(i)
        keep.mkdir(parents=True, exist_ok=True)
        _mount("--rbind", str(parent), str(keep))
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(parent))
        for entry in sorted(os.listdir(keep)):
            if entry in names:
                continue
            src, dst = keep / entry, parent / entry
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
                continue
            if src.is_dir():
                dst.mkdir()
            else:
                dst.touch()
            _mount("--rbind", str(src), str(dst))
    for exe in masks:
        if exe.exists():
            _mount("--bind", "/dev/null", str(exe))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kiln.sandbox")
    p.add_argument("--stash", required=True, type=Path)
    p.add_argument("--hide-dir", action="append", default=[], type=Path)
    p.add_argument("--mask", action="append", default=[], type=Path)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SystemExit("kiln.sandbox: no command")
    hide(args.hide_dir, args.mask, args.stash)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()

"""How a build step runs: in namespaces of its own, with no network and, for cells without
CUDA, no CUDA toolkit in sight.

`Sandbox.wrap(cmd)` returns the command line that runs ``cmd`` that way. The network goes with
``unshare --net``. The toolkit goes with a private mount namespace (``unshare --mount``) in which
`python -m kiln.sandbox` first hides it, then execs the command:

- every CUDA toolkit directory (``/usr/local/cuda``, ``/usr/local/cuda-13.0``, ``/opt/cuda``,
  ``$CUDA_HOME``...) disappears: its parent is covered by a tmpfs on which every other entry is
  bound back, so ``os.path.exists("/usr/local/cuda")`` is False, as on a machine without CUDA;
- every ``nvcc`` left on PATH (a wrapper script in ``/usr/local/bin``, Debian's ``/usr/bin/nvcc``),
  and every other program on PATH that links or points into a toolkit (``ptxas`` wrappers...),
  disappears the same way, so ``which nvcc`` finds nothing and running it is FileNotFoundError;
- CUDA_HOME, CUDA_PATH, CUDACXX, PYTORCH_NVCC, TORCH_CUDA_ARCH_LIST and FORCE_CUDA are not
  passed on from the caller.

torch's ``cpp_extension`` then finds no CUDA_HOME and a setup.py that builds CUDA code "when a
toolkit is found" builds its CPU extension. Mounts made there vanish with the namespace.
"""

from __future__ import annotations

import argparse
import ctypes
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
    """(toolkit directories, programs on PATH outside them that are or point into a toolkit)."""
    environ = dict(os.environ) if environ is None else environ
    dirs: set[Path] = set()
    candidates = [Path(p) for pattern in CUDA_GLOBS for p in glob.glob(pattern)]
    candidates += [Path(environ[k]) for k in ("CUDA_HOME", "CUDA_PATH") if environ.get(k)]
    for cand in candidates:
        if cand.is_dir() and (cand.resolve() / "bin" / "nvcc").exists():
            dirs.add(cand.absolute())
            dirs.add(cand.resolve())
    files: set[Path] = set()
    for entry in environ.get("PATH", "").split(os.pathsep):
        folder = Path(entry or ".").absolute()
        if not folder.is_dir() or any(_under(folder, d) for d in dirs):
            continue
        for exe in folder.iterdir():
            if exe.name == "nvcc" or _points_into(exe, dirs):
                if exe.is_file() and os.access(exe, os.X_OK):
                    files.add(exe)
    return sorted(dirs), sorted(files)


def _points_into(exe: Path, dirs: set[Path]) -> bool:
    """Whether ``exe`` is a link into one of ``dirs`` or a small wrapper script naming one."""
    if any(_under(exe, d) for d in dirs):
        return True
    try:
        if exe.is_symlink() or not exe.is_file() or exe.stat().st_size > 4096:
            return False
        head = exe.read_bytes()
    except OSError:
        return False
    return head.startswith(b"#!") and any(str(d).encode() in head for d in dirs)


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
            for path in [*dirs, *files]:
                hide += ["--hide", str(path)]
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


_MS_BIND, _MS_REC = 4096, 16384


def _mount(source: str, target: Path, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(source.encode(), str(target).encode(), fstype.encode() if fstype else None, flags,
                    data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"kiln.sandbox: mounting {source} on {target} failed: {os.strerror(err)}")


def hide(paths: list[Path], stash: Path) -> None:
    """Make ``paths`` (directories or files) vanish, in the current mount namespace: each parent
    is covered by a tmpfs on which every other entry is bound back."""
    by_parent: dict[Path, set[str]] = {}
    for path in paths:
        by_parent.setdefault(path.parent, set()).add(path.name)
    for i, (parent, names) in enumerate(sorted(by_parent.items())):
        if parent == parent.parent:
            raise SystemExit(f"kiln.sandbox: cannot hide {sorted(names)} at the root of the file system")
        keep = stash / str(i)
        keep.mkdir(parents=True, exist_ok=True)
        _mount(str(parent), keep, flags=_MS_BIND | _MS_REC)
        _mount("tmpfs", parent, "tmpfs", 0, "mode=0755")
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
            _mount(str(src), dst, flags=_MS_BIND | _MS_REC)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kiln.sandbox")
    p.add_argument("--stash", required=True, type=Path)
    p.add_argument("--hide", action="append", default=[], type=Path)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SystemExit("kiln.sandbox: no command")
    hide(args.hide, args.stash)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()

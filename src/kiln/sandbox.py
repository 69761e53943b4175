"""How a step that runs a package's own code runs: the compile step (``python -m build``), the
backend hook that asks for build requirements, and the smoke test's imports.

Such code is untrusted: a setup.py runs at build time, a module at import time. It runs

- with an allow-listed environment (`ALLOWED_ENV`; `CUDA_ALLOWED_ENV` too for CUDA cells), built by
  `Sandbox.compose`: kiln's own variables and the recipe's ``build.env``, over the few of the
  caller's variables a build needs. Nothing else is inherited: not KILN_MIRROR_PASSWORD, not a
  ``*_TOKEN``, not AWS/Google/Azure credentials, not SSH_AUTH_SOCK. The names dropped are logged,
  never their values;
- in namespaces of its own (``unshare``): a PID namespace with its own /proc (kiln's processes,
  their environments and their mount namespaces cannot be reached through /proc), a mount
  namespace in which the paths of `Sandbox.hide` are gone (`secret_paths`: the kiln home's
  ``devpi/``, which holds the mirror's passwords and secret, and the user's credential files),
  and, unless the step needs it, a network namespace with no interface up (no network at all,
  loopback included);
- without capabilities (bounding set emptied, no_new_privs), so the step cannot unmount what hides
  the secrets, even as root or as the mapped root of a user namespace.

For cells without CUDA the mount namespace also hides the CUDA toolkit:

- every CUDA toolkit directory (``/usr/local/cuda``, ``/usr/local/cuda-13.0``, ``/opt/cuda``,
  ``$CUDA_HOME``...) disappears: its parent is covered by a tmpfs on which every other entry is
  bound back, so ``os.path.exists("/usr/local/cuda")`` is False, as on a machine without CUDA;
- every ``nvcc`` left on PATH (a wrapper script in ``/usr/local/bin``, Debian's ``/usr/bin/nvcc``),
  and every other program on PATH that links or points into a toolkit (``ptxas`` wrappers...),
  disappears the same way, so ``which nvcc`` finds nothing and running it is FileNotFoundError;
- CUDA_HOME, CUDA_PATH, CUDACXX, PYTORCH_NVCC, TORCH_CUDA_ARCH_LIST and FORCE_CUDA are not
  passed on.

torch's ``cpp_extension`` then finds no CUDA_HOME and a setup.py that builds CUDA code "when a
toolkit is found" builds its CPU extension.

A CUDA cell built with the toolkit kiln assembled from the index's packages (kiln.cuda) has the
host's toolkits hidden the same way (``hide_host_cuda``), so nothing of them can slip into its
build; the caller's CUDA_HOME, CUDA_PATH, CUDA_ROOT, CUDA_TOOLKIT_ROOT_DIR and CUDACXX (which name
the host's) are not passed on, while kiln's own, which name the assembled home, are.

In the build steps (the compile step and the backend hook, which runs the same setup.py; not the
smoke test) torch answers about GPUs for the cell, never for the build box (kiln.gpushim): in a CUDA
cell as one GPU per target architecture, lowest first (the cell's TORCH_CUDA_ARCH_LIST when kiln
sets one, else the GPUs its variant index serves), so a setup.py that refuses to run without CUDA
or reads ``torch.cuda.get_device_capability()`` builds on a machine without a GPU; in a cell
without CUDA as a machine without a GPU, even on a box that has some. The answer is kiln's own
variable KILN_GPU_SHIM; ``_kiln_gpu_shim.pth`` in the build environment's site-packages makes each
Python process there replace ``torch.cuda``'s device functions once it is imported, and say so in
the log. torch's files are not touched; the smoke test's fresh environment has no shim, and the
wheel holds none of it.

In the same build steps setuptools' PEP 517 backend runs setup.py with ``__builtins__`` as
``python setup.py`` has it, the builtins module (kiln.setupshim): ``setuptools.build_meta`` execs
setup.py in a namespace where ``exec`` puts the builtins module's dict instead, and an old setup.py
that says ``__builtins__.__NUMPY_SETUP__ = False`` fails there with ``AttributeError: 'dict' object
has no attribute '__NUMPY_SETUP__'``. ``_kiln_setup_shim.pth`` gives ``setuptools.build_meta``
alone an ``exec`` of its own that binds the module when the code names ``__builtins__`` (and the
namespace binds nothing), and says so in the log (``kiln: setup.py shim: ...``). setuptools' files
are not touched; other code, and the smoke test, see nothing of it.

`Sandbox.wrap(cmd)` returns the command line: ``unshare`` (as root; as a mapped root in a user
namespace when not root, or when root may not unshare) then ``python -P .../kiln/sandbox.py``,
which hides the paths, drops the capabilities and runs ``cmd`` as the namespace's init (reaping
what it leaves). Mounts made there vanish with the namespace. The module runs there as a script,
on the standard library alone: the step's environment need not let Python find kiln, and ``-P``
keeps the step's working directory (the package's source) off its import path.
"""

from __future__ import annotations

import argparse
import ctypes
import fnmatch
import functools
import glob
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

# ----------------------------------------------------------------------------- the environment

ALLOWED_ENV: dict[str, str] = {
    "PATH": "where programs are found; the local backend puts the build environment's bin/ first",
    "HOME": "where tools keep caches and settings (the user's credential files in it are hidden)",
    "USER": "who runs the step: getpass.getuser() and some build scripts ask",
    "LOGNAME": "the same, as POSIX names it",
    "LANG": "the locale: the encoding Python opens files with, compilers' messages",
    "LANGUAGE": "the order of message languages",
    "LC_*": "locale categories (LC_ALL, LC_CTYPE, ...)",
    "TZ": "the time zone (SOURCE_DATE_EPOCH fixes the time stamps that end up in a wheel)",
    "TMPDIR": "where compilers and Python put temporary files",
    "TMP": "the same, for tools that read TMP",
    "TEMP": "the same, for tools that read TEMP",
    "TERM": "the terminal type; some build tools colour their output by it",
    "NO_COLOR": "the user's wish for output without colour",
    "SOURCE_DATE_EPOCH": "reproducible time stamps (kiln sets its own; kept where kiln sets none)",
    "CC": "the C compiler the host provides (kiln's ccache wrapper takes its place when ccache is there)",
    "CXX": "the C++ compiler, likewise",
    "CPP": "the C preprocessor",
    "LD": "the linker",
    "AR": "the archiver",
    "NM": "the symbol lister",
    "RANLIB": "the archive indexer",
    "STRIP": "the symbol stripper",
    "LDSHARED": "how distutils links a shared object",
    "FC": "the Fortran compiler",
    "F77": "the Fortran 77 compiler",
    "F90": "the Fortran 90 compiler",
    "CFLAGS": "C compiler flags",
    "CXXFLAGS": "C++ compiler flags",
    "CPPFLAGS": "preprocessor flags",
    "LDFLAGS": "linker flags",
    "FFLAGS": "Fortran compiler flags",
    "FCFLAGS": "Fortran compiler flags, autoconf's name",
    "CPATH": "where the host's headers are (a conda prefix, a module system)",
    "C_INCLUDE_PATH": "the same, for C only",
    "CPLUS_INCLUDE_PATH": "the same, for C++ only",
    "LIBRARY_PATH": "where the linker finds the host's libraries",
    "LD_LIBRARY_PATH": "where the loader finds them (the compiler itself may need it)",
    "PKG_CONFIG_PATH": "where pkg-config finds the host's .pc files",
    "MAX_JOBS": "parallel compile jobs (kiln sets it from memory; kept where kiln sets none)",
    "NVCC_THREADS": "nvcc's threads per job, likewise",
    "CMAKE_BUILD_PARALLEL_LEVEL": "CMake's parallel jobs",
    "CCACHE_*": "the compiler cache kiln sets up: ccache reads its settings from CCACHE_*",
    "CUDA_VISIBLE_DEVICES": "which GPUs a step may see (a smoke test's imports)",
    "NVIDIA_VISIBLE_DEVICES": "the same, for the NVIDIA container runtime",
    "SSL_CERT_FILE": "the host's CA certificates, for the one step with network (the backend hook)",
    "SSL_CERT_DIR": "the same, as a directory",
    "REQUESTS_CA_BUNDLE": "the same, as requests reads it",
    "CURL_CA_BUNDLE": "the same, as curl reads it",
}
"""The caller's variables a step may inherit (exact names, or ``PREFIX*``), each with why.
A recipe's ``build.env`` and kiln's own variables are always passed; this list is only about
what comes from the environment kiln was started in."""

CUDA_ALLOWED_ENV: dict[str, str] = {
    "CUDA_HOME": "where the CUDA toolkit is (CUDA cells only: a cpu cell sees no toolkit)",
    "CUDA_PATH": "the same, another name",
    "CUDA_ROOT": "the same, another name",
    "CUDA_TOOLKIT_ROOT_DIR": "the same, as CMake's FindCUDA names it",
    "CUDACXX": "the CUDA compiler, as CMake reads it",
    "NVCC_CCBIN": "nvcc's host compiler",
    "NVCC_PREPEND_FLAGS": "flags nvcc puts before its own",
    "NVCC_APPEND_FLAGS": "flags nvcc puts after its own",
}
"""The caller's variables a step of a CUDA cell may inherit too. TORCH_CUDA_ARCH_LIST and
FORCE_CUDA are not among them: they change what is built, so they come from the cell (its CUDA
architectures) or the recipe's ``build.env``, never from whoever runs kiln."""

SECRET_ENV = ("*PASSWORD*", "*PASSWD*", "*_TOKEN", "*_TOKEN_*", "*SECRET*", "*CREDENTIAL*",
              "*_API_KEY", "*ACCESS_KEY*", "*PRIVATE_KEY*", "AWS_*", "GOOGLE_*", "GCP_*", "GCLOUD_*",
              "CLOUDSDK_*", "AZURE_*", "SSH_AUTH_SOCK")
"""Names (case-insensitive patterns) of the caller's variables that are never passed on, even
where the allow-list would take them (a ``CCACHE_...TOKEN``), and that the log marks as secrets."""

KILN_SECRET_ENV = ("KILN_*PASSWORD*", "KILN_*TOKEN*", "KILN_*SECRET*")
"""kiln's own credentials: kept from every program kiln runs, installers included."""

CUDA_ENV = ("CUDA_HOME", "CUDA_PATH", "CUDACXX", "CUDA_ROOT", "CUDA_TOOLKIT_ROOT_DIR", "PYTORCH_NVCC",
            "TORCH_CUDA_ARCH_LIST", "FORCE_CUDA")
"""Variables that point a build at CUDA: a cell without CUDA gets none, not even kiln's own."""

CUDA_HOME_ENV = ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "CUDA_TOOLKIT_ROOT_DIR", "CUDACXX")
"""The caller's variables that name a CUDA toolkit: not passed on when the host's toolkits are hidden."""

CUDA_GLOBS = ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda", "/opt/cuda-*", "/opt/nvidia/cuda*")


def _matches(name: str, patterns: Iterable[str], fold: bool = False) -> bool:
    key = name.upper() if fold else name
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def is_secret_name(name: str) -> bool:
    """Whether a variable's name says it holds a credential."""
    return _matches(name, SECRET_ENV, fold=True) or _matches(name, KILN_SECRET_ENV, fold=True)


def installer_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an installer kiln runs (uv): the caller's, less kiln's own credentials
    (the installer may need the caller's index settings; it never needs kiln's mirror password)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not _matches(k, KILN_SECRET_ENV, fold=True)}


@dataclass(frozen=True)
class StepEnv:
    """A step's environment and the caller's variables left out of it (names only)."""

    env: dict[str, str]
    dropped: tuple[str, ...] = ()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Of the names dropped, those that say they hold a credential."""
        return tuple(n for n in self.dropped if is_secret_name(n))

    def describe(self) -> str:
        """One log line: which of the caller's variables were not passed on, by name."""
        if not self.dropped:
            return "every variable of the caller's environment is on the allow-list"
        line = (f"{len(self.dropped)} variables of the caller's environment not passed on "
                f"(not on kiln.sandbox.ALLOWED_ENV): {', '.join(self.dropped)}")
        if self.secrets:
            line += f"; never passed on (credentials, cloud settings): {', '.join(self.secrets)}"
        return line


# ----------------------------------------------------------------------------- what is hidden

CREDENTIAL_FILES = (".netrc", ".pypirc", ".git-credentials", ".npmrc", ".ssh", ".aws", ".azure", ".kube",
                    ".docker/config.json", ".config/gcloud", ".config/gh", ".config/pip", ".pip",
                    ".local/share/uv/credentials")
"""Files and directories under the user's HOME that commonly hold a token or a password (an
index URL with credentials in pip's config, an npm token, cloud and SSH keys)."""

CREDENTIAL_FILE_ENV = ("NETRC", "GOOGLE_APPLICATION_CREDENTIALS", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
                       "DOCKER_CONFIG", "KUBECONFIG", "PIP_CONFIG_FILE")
"""Variables naming such a file elsewhere: the file is hidden too."""

MIRROR_SECRETS = ("root.password", "kiln.password", "secret", "devpi.yaml", "deployment.json")
"""What a kiln home's ``devpi/`` holds that is secret (kiln.mirror.server.ServerFiles)."""


def secret_paths(kiln_home: Path, environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """What a step must not see: the kiln home's ``devpi/`` (hidden even before it exists, so a
    mirror started during the step does not appear in it); the ``devpi/`` of every enclosing
    kiln home that holds a mirror's secrets (`kiln infer` builds in a home inside the real one);
    the user's credential files that exist."""
    environ = os.environ if environ is None else environ
    home = kiln_home.absolute()
    found: list[Path] = [home / "devpi"]
    for parent in home.parents:
        devpi = parent / "devpi"
        if devpi.is_dir() and any((devpi / name).exists() for name in MIRROR_SECRETS):
            found.append(devpi)
    user_home = environ.get("HOME")
    candidates = [Path(user_home) / rel for rel in CREDENTIAL_FILES] if user_home else []
    candidates += [Path(environ[k]) for k in CREDENTIAL_FILE_ENV if environ.get(k)]
    found += [c.absolute() for c in candidates if c.is_absolute() and c.exists()]
    kept: list[Path] = []
    for path in found:
        path = Path(os.path.realpath(path))
        if path.parent != path.parent.parent and path not in kept:
            kept.append(path)
    return tuple(kept)


def cuda_toolkit_paths(environ: Mapping[str, str] | None = None) -> tuple[list[Path], list[Path]]:
    """(toolkit directories, programs on PATH outside them that are or point into a toolkit)."""
    environ = os.environ if environ is None else environ
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


# ----------------------------------------------------------------------------- the sandbox


@dataclass(frozen=True)
class Sandbox:
    """How one step runs: ``network`` allowed or not, ``hide_cuda`` for cells without CUDA,
    ``hide_host_cuda`` for CUDA cells built with a toolkit kiln assembled, ``hide``: paths it
    must not see (`secret_paths`)."""

    network: bool = False
    hide_cuda: bool = False
    hide: tuple[Path, ...] = field(default=())
    hide_host_cuda: bool = False
    """The host's CUDA toolkits are hidden as for ``hide_cuda`` and the caller's variables naming
    them dropped, but kiln's own CUDA variables (naming the toolkit it assembled) are kept."""

    def describe(self) -> str:
        parts = ["network" if self.network else "no network",
                 "allow-listed environment", "own PID namespace, no capabilities"]
        if self.hide:
            parts.append(f"hidden: {', '.join(str(p) for p in self.hide)}")
        if self.hide_cuda:
            parts.append("no CUDA toolkit (private mount namespace)")
        elif self.hide_host_cuda:
            parts.append("the host's CUDA toolkit hidden (private mount namespace): only kiln's assembled one")
        return ", ".join(parts)

    def compose(self, own: Mapping[str, str], caller: Mapping[str, str] | None = None) -> StepEnv:
        """The step's environment: the caller's variables on the allow-list (never a credential),
        then ``own`` (kiln's and the recipe's) over them; without CUDA's when CUDA is hidden."""
        caller = os.environ if caller is None else caller
        allowed = [*ALLOWED_ENV, *([] if self.hide_cuda else CUDA_ALLOWED_ENV)]
        if self.hide_host_cuda:
            allowed = [name for name in allowed if name not in CUDA_HOME_ENV]
        env: dict[str, str] = {}
        dropped: list[str] = []
        for name, value in caller.items():
            if _matches(name, allowed) and not is_secret_name(name):
                env[name] = value
            elif name not in own:
                dropped.append(name)
        env.update(own)
        return StepEnv(self.env(env), tuple(sorted(dropped)))

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` without what points at CUDA, when CUDA is hidden."""
        if not self.hide_cuda:
            return dict(env)
        return {k: v for k, v in env.items() if k not in CUDA_ENV}

    def wrap(self, cmd: list[str], stash: Path) -> list[str]:
        """The command line running ``cmd`` in this sandbox; ``stash`` is a directory of the
        step's own that the mount helper may use (it is left empty)."""
        hidden = list(self.hide)
        if self.hide_cuda or self.hide_host_cuda:
            dirs, files = cuda_toolkit_paths()
            hidden += [*dirs, *files]
        flags = ["--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
        if not self.network:
            flags.insert(0, "--net")
        stash.mkdir(parents=True, exist_ok=True)
        helper = [sys.executable, "-P", str(Path(__file__).resolve()), "--stash", str(stash)]
        for path in hidden:
            helper += ["--hide", str(path)]
        return [*unshare(flags), *helper, "--", *cmd]


def unshare(flags: list[str]) -> list[str]:
    """``unshare FLAGS``, checked to be permitted here: as root, plain when root may unshare,
    else (and when not root) as the mapped root of a user namespace of its own."""
    return list(_unshare(tuple(flags)))


@functools.cache
def _unshare(flags: tuple[str, ...]) -> tuple[str, ...]:
    # Imported here: inside the namespace this module runs as a script, without kiln.
    from kiln.errors import HostError

    if shutil.which("unshare") is None:
        raise HostError("unshare (util-linux) not found: builds must run in a sandbox")
    tries = [["unshare", *flags, "--map-root-user"]]
    if os.geteuid() == 0:
        tries.insert(0, ["unshare", *flags])
    errors = []
    for prefix in tries:
        res = subprocess.run([*prefix, "true"], capture_output=True, text=True)
        if res.returncode == 0:
            return tuple(prefix)
        errors.append(res.stderr.strip())
    raise HostError(f"{' '.join(tries[-1])} is not permitted here ({errors[-1]}); "
                    "builds must run in a sandbox (enable unprivileged user namespaces)")


# ----------------------------------------------------------------------------- inside the namespace


_MS_BIND, _MS_REC = 4096, 16384
_MNT_DETACH = 2
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
_CAP_V3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> NoReturn:
    raise SystemExit(f"kiln.sandbox: {what} failed: {os.strerror(ctypes.get_errno())}")


def _mount(source: str, target: Path, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    rc = _libc().mount(source.encode(), str(target).encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None)
    if rc != 0:
        _fail(f"mounting {source} on {target}")


def _outermost(paths: list[Path]) -> list[Path]:
    """``paths`` less those inside another of them (hidden with it)."""
    absolute = sorted({Path(os.path.abspath(p)) for p in paths})
    return [p for p in absolute if not any(q != p and p.is_relative_to(q) for q in absolute)]


def hide(paths: list[Path], stash: Path) -> None:
    """Make ``paths`` (directories or files, existing or not) vanish, in the current mount
    namespace: each parent is covered by a tmpfs on which every other entry is bound back.

    The parent's copy the entries are bound back from is reached through the working directory,
    never by path (``stash`` may lie under the parent), and is detached once they are: nothing
    in the namespace leads to what was hidden."""
    by_parent: dict[Path, set[str]] = {}
    for path in _outermost(paths):
        by_parent.setdefault(path.parent, set()).add(path.name)
    for i, (parent, names) in enumerate(sorted(by_parent.items())):
        if parent == parent.parent:
            raise SystemExit(f"kiln.sandbox: cannot hide {sorted(names)} at the root of the file system")
        if not parent.is_dir():
            continue  # nothing there to hide
        mode = parent.stat().st_mode & 0o7777
        keep = stash / str(i)
        keep.mkdir(parents=True, exist_ok=True)
        _mount(str(parent), keep, flags=_MS_BIND | _MS_REC)
        os.chdir(keep)
        _mount("tmpfs", parent, "tmpfs", 0, f"mode={mode:o}")
        for entry in sorted(os.listdir(".")):
            if entry in names:
                continue
            dst = parent / entry
            if os.path.islink(entry):
                os.symlink(os.readlink(entry), dst)
                continue
            if os.path.isdir(entry):
                dst.mkdir()
            else:
                dst.touch()
            _mount(entry, dst, flags=_MS_BIND | _MS_REC)
        if _libc().umount2(b".", _MNT_DETACH) != 0:
            _fail(f"detaching the copy of {parent}")
        os.chdir("/")


def drop_privileges() -> None:
    """No capabilities now or after exec (even for uid 0), and no way to gain any: the step
    cannot undo the mounts that hide what it must not see."""
    libc = _libc()
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)) != 0:
            _fail(f"dropping capability {cap} from the bounding set")
    libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), ctypes.c_ulong(0), ctypes.c_ulong(0),
               ctypes.c_ulong(0))  # kernels without ambient capabilities have none to clear
    header, data = _CapHeader(_CAP_V3, 0), (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        _fail("clearing the capability sets")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        _fail("setting no_new_privs")


def _exec(cmd: list[str]) -> NoReturn:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"kiln.sandbox: {cmd[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


def run(cmd: list[str]) -> NoReturn:
    """Exec ``cmd``; as the namespace's init (PID 1), fork it, reap every orphan and exit as it
    exits (128 + N when killed by signal N)."""
    if os.getpid() != 1:
        _exec(cmd)
    child = os.fork()
    if child == 0:
        _exec(cmd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C reaches the step itself
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kiln.sandbox")
    p.add_argument("--stash", required=True, type=Path)
    p.add_argument("--hide", action="append", default=[], type=Path)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SystemExit("kiln.sandbox: no command")
    cwd = os.getcwd()
    hide(args.hide, args.stash.absolute())
    try:
        os.chdir(cwd)  # through the new mounts
    except OSError as exc:
        raise SystemExit(f"kiln.sandbox: {cwd}: {exc.strerror} (hidden?)") from None
    drop_privileges()
    run(cmd)


if __name__ == "__main__":
    main()

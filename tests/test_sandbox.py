"""The sandbox of a step that runs a package's own code (the compile step, the backend hook, the
smoke test's imports): what it can and cannot see.

Every refusal is checked against the same probe outside the sandbox, where it succeeds: the
password file is read, the credentials are in the environment, the loopback server the test
started answers. The probe is the hostile fixture's own (tests/fixtures/src/kilnhostile-1.0.0).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest
from kiln_testing.fixtures import FIXTURES, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.tools import BIN

import kiln
from kiln.errors import HostError
from kiln.sandbox import Sandbox, cuda_toolkit_paths, secret_paths, unshare

PROBE = FIXTURES / "src" / "kilnhostile-1.0.0" / "kilnhostile" / "_probe.py"
MIRROR_PASSWORD = "kiln-test-mirror-password-5c1e0f"
FILE_PASSWORD = "kiln-test-file-password-9a7b2d"
GITHUB_TOKEN = "kiln-test-github-token-31f0aa"
AWS_SECRET = "kiln-test-aws-secret-77d2c4"
RECIPE_TOKEN = "kiln-test-recipe-token-4e8b19"
"""A recipe's own value for a variable named like a credential: passed on, never logged."""
SECRETS = (MIRROR_PASSWORD, FILE_PASSWORD, GITHUB_TOKEN, AWS_SECRET, RECIPE_TOKEN)
CALLER_SECRETS = {"KILN_MIRROR_PASSWORD": MIRROR_PASSWORD, "GITHUB_TOKEN": GITHUB_TOKEN,
                  "AWS_SECRET_ACCESS_KEY": AWS_SECRET}

REFUSED = {
    "secret-file": "refused (FileNotFoundError)",
    "env KILN_MIRROR_PASSWORD": "absent",
    "env GITHUB_TOKEN": "absent",
    "env AWS_SECRET_ACCESS_KEY": "absent",
    "proc-environ": "absent",
    "proc-root": "refused",
    "umount": "refused (Operation not permitted)",
    "network": "refused (OSError)",
}
"""What the hostile probe sees inside the sandbox: every try refused."""


def can_sandbox() -> None:
    try:
        unshare(["--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"])
    except HostError as exc:
        pytest.skip(str(exc))


class Listener:
    """A TCP server on loopback, started by the test: reachable from the test's own processes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------- the CUDA toolkit


def toolkit(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A fake CUDA toolkit under tmp/opt (beside another directory), and an nvcc wrapper on PATH."""
    home = tmp_path / "opt" / "cuda-13.0"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\necho nvcc\n")
    (home / "bin" / "nvcc").chmod(0o755)
    (tmp_path / "opt" / "cuda").symlink_to(home)
    (tmp_path / "opt" / "other").mkdir()
    (tmp_path / "opt" / "other" / "kept.txt").write_text("kept\n")
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "nvcc").write_text(f"#!/bin/sh\nexec {home}/bin/nvcc \"$@\"\n")
    (wrappers / "nvcc").chmod(0o755)
    (wrappers / "gcc-ok").write_text("#!/bin/sh\necho ok\n")
    (wrappers / "gcc-ok").chmod(0o755)
    return home, tmp_path / "opt" / "cuda", wrappers


def test_toolkits_and_nvcc_wrappers_are_found(tmp_path: Path) -> None:
    home, link, wrappers = toolkit(tmp_path)
    (wrappers / "ptxas").write_text(f"#!/bin/sh\nexec {home}/bin/ptxas \"$@\"\n")
    (wrappers / "ptxas").chmod(0o755)
    dirs, files = cuda_toolkit_paths({"CUDA_HOME": str(link), "PATH": f"{wrappers}:/usr/bin"})
    assert link in dirs and home in dirs
    assert wrappers / "nvcc" in files and wrappers / "ptxas" in files
    assert wrappers / "gcc-ok" not in files


def test_cuda_variables_are_not_passed_on() -> None:
    env = {"CUDA_HOME": "/usr/local/cuda", "TORCH_CUDA_ARCH_LIST": "9.0", "FORCE_CUDA": "1", "PATH": "/usr/bin",
           "PYTORCH_NVCC": "ccache nvcc", "MAX_JOBS": "2"}
    assert Sandbox(hide_cuda=True).env(env) == {"PATH": "/usr/bin", "MAX_JOBS": "2"}
    assert Sandbox(hide_cuda=False).env(env) == env


def test_inside_the_sandbox_the_toolkit_is_gone_and_the_rest_is_there(tmp_path: Path) -> None:
    try:
        prefix = unshare(["--net", "--mount"])
    except HostError as exc:
        pytest.skip(str(exc))
    home, link, wrappers = toolkit(tmp_path)
    opt = tmp_path / "opt"
    script = (f"test -e {link} && echo link-visible; test -e {home} && echo home-visible; "
              f"cat {opt}/other/kept.txt; PATH={wrappers}:/usr/bin:/bin; command -v nvcc || echo no-nvcc; gcc-ok; "
              f"test -e {wrappers}/nvcc || echo nvcc-gone")
    cmd = [*prefix, sys.executable, "-m", "kiln.sandbox", "--stash", str(tmp_path / "stash"),
           "--hide", str(link), "--hide", str(home), "--hide", str(wrappers / "nvcc"), "--", "sh", "-c", script]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["kept", "no-nvcc", "ok", "nvcc-gone"]
    # Outside, nothing changed.
    assert home.is_dir() and link.exists() and os.access(wrappers / "nvcc", os.X_OK)


# ----------------------------------------------------------------------------- the environment


def test_only_allow_listed_variables_of_the_caller_are_passed_on() -> None:
    caller = {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C", "CC": "gcc",
              "CCACHE_DIR": "/c", "CUDA_HOME": "/usr/local/cuda", "TORCH_CUDA_ARCH_LIST": "9.0",
              "KILN_MIRROR_PASSWORD": "pw", "KILN_POSTGRES_PASSWORD": "pg", "GITHUB_TOKEN": "t",
              "AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "a", "GOOGLE_APPLICATION_CREDENTIALS": "/k.json",
              "AZURE_CLIENT_SECRET": "z", "SSH_AUTH_SOCK": "/tmp/agent", "CCACHE_SECRET": "x",
              "PYTHONPATH": "/elsewhere", "VIRTUAL_ENV": "/v", "MAX_JOBS": "64"}
    own = {"PATH": "/env/bin:/usr/bin", "MAX_JOBS": "2", "KILNFIX_TOKEN": "the recipe's own"}
    step = Sandbox(hide_cuda=False).compose(own, caller)
    assert step.env == {"PATH": "/env/bin:/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C",
                        "CC": "gcc", "CCACHE_DIR": "/c", "CUDA_HOME": "/usr/local/cuda", "MAX_JOBS": "2",
                        "KILNFIX_TOKEN": "the recipe's own"}
    assert step.dropped == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AZURE_CLIENT_SECRET", "CCACHE_SECRET",
                            "GITHUB_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "KILN_MIRROR_PASSWORD",
                            "KILN_POSTGRES_PASSWORD", "PYTHONPATH", "SSH_AUTH_SOCK", "TORCH_CUDA_ARCH_LIST",
                            "VIRTUAL_ENV")
    assert step.describe().endswith(
        "; never passed on (credentials, cloud settings): AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AZURE_CLIENT_SECRET, CCACHE_SECRET, GITHUB_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, KILN_MIRROR_PASSWORD, "
        "KILN_POSTGRES_PASSWORD, SSH_AUTH_SOCK")
    cpu = Sandbox(hide_cuda=True).compose(own, caller)
    assert "CUDA_HOME" not in cpu.env and "CUDA_HOME" in cpu.dropped


def test_the_kiln_home_s_secrets_and_the_user_s_credentials_are_hidden(tmp_path: Path) -> None:
    """The home's devpi/ even before a mirror made it; an enclosing home's (kiln infer builds in
    a home inside the real one); the user's credential files that exist."""
    outer = tmp_path / "outer"
    (outer / "devpi").mkdir(parents=True)
    (outer / "devpi" / "kiln.password").write_text("x\n")
    inner = outer / "infer" / "kilnfix-1.0.0" / "home"
    inner.mkdir(parents=True)
    user = tmp_path / "user"
    (user / ".aws").mkdir(parents=True)
    (user / ".netrc").write_text("machine x\n")
    key = tmp_path / "keys" / "sa.json"
    key.parent.mkdir()
    key.write_text("{}\n")
    env = {"HOME": str(user), "GOOGLE_APPLICATION_CREDENTIALS": str(key)}
    assert secret_paths(inner, env) == (inner / "devpi", outer / "devpi", user / ".netrc", user / ".aws", key)
    assert secret_paths(outer, {}) == (outer / "devpi",)


# ----------------------------------------------------------------------------- the hostile probe, alone

DRIVER = """
import json, os, subprocess, sys
from pathlib import Path
from kiln.sandbox import Sandbox
args = json.loads(sys.argv[1])
run_probe = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('p', sys.argv[1]); "
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
             "print(json.dumps(m.probe(sys.argv[2], sys.argv[3], sys.argv[4] == 'umount')))")
cmd = [sys.executable, "-c", run_probe, args["probe"], args["secret"], args["address"], args["umount"]]
env = dict(os.environ)
if args["sandboxed"]:
    box = Sandbox(network=False, hide=tuple(Path(p) for p in args["hide"]))
    cmd, env = box.wrap(cmd, Path(args["stash"])), box.compose({}).env
res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args["cwd"])
sys.stdout.write(res.stdout)
sys.stderr.write(res.stderr)
sys.exit(res.returncode)
"""


@dataclass
class Scene:
    """A kiln home with a password file, the work directory of a step in it, and a server."""

    home: Path
    secret: Path
    work: Path
    server: Listener
    user: list[str] = field(default_factory=list)
    """How to run as another user (setpriv ...), or nothing."""
    python: str = sys.executable
    """The Python that runs kiln (as that user)."""

    def probe(self, sandboxed: bool) -> dict[str, str]:
        args = {"probe": str(PROBE), "secret": str(self.secret), "address": self.server.address,
                "umount": "umount" if sandboxed else "no", "sandboxed": sandboxed,
                "hide": [str(p) for p in secret_paths(self.home, {})], "stash": str(self.work / "sandbox"),
                "cwd": str(self.work)}
        env = {**os.environ, **CALLER_SECRETS}
        if self.python != sys.executable:  # kiln from its source tree
            env["PYTHONPATH"] = str(Path(kiln.__file__).parent.parent)
        res = subprocess.run([*self.user, self.python, "-c", DRIVER, json.dumps(args)], capture_output=True,
                             text=True, env=env)
        assert res.returncode == 0, res.stderr
        seen: dict[str, str] = json.loads(res.stdout.splitlines()[-1])
        return seen


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    home = tmp_path / "home"
    (home / "work" / "cell").mkdir(parents=True)
    (home / "cache").mkdir()
    (home / "devpi").mkdir(mode=0o700)
    secret = home / "devpi" / "kiln.password"
    secret.write_text(FILE_PASSWORD + "\n")
    secret.chmod(0o600)
    with Listener() as server:
        yield Scene(home, secret, home / "work" / "cell", server)


def assert_outside_everything_works(seen: dict[str, str]) -> None:
    """The probe can succeed: outside the sandbox, each try does."""
    assert seen["secret-file"] == "READ"
    assert [seen[f"env {n}"] for n in CALLER_SECRETS] == ["PRESENT"] * 3
    assert seen["proc-environ"].startswith("PRESENT (")
    assert seen["proc-root"].startswith("READ (")
    assert seen["network"] == "REACHED"


def test_a_step_sees_no_secret_and_no_network(scene: Scene) -> None:
    can_sandbox()
    assert_outside_everything_works(scene.probe(sandboxed=False))
    assert scene.server.accepted == 1
    assert scene.probe(sandboxed=True) == REFUSED
    assert scene.server.accepted == 1
    # What the sandbox hid is still there outside, and its stash is left empty.
    assert scene.secret.read_text() == FILE_PASSWORD + "\n"
    assert [p.name for p in (scene.work / "sandbox").iterdir()] == ["0"]
    assert not any((scene.work / "sandbox" / "0").iterdir())


@pytest.fixture
def unprivileged_scene(tmp_path: Path) -> Iterator[Scene]:
    """The scene owned by, and run as, an unprivileged user (nobody): the sandbox is a user
    namespace's then."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become an unprivileged user")
    user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    usable = [py for py in ("/usr/bin/python3", "/usr/local/bin/python3")
              if subprocess.run([*user, py, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                                capture_output=True, cwd="/").returncode == 0]
    if not usable:
        pytest.skip("no Python >= 3.11 that nobody may run")
    top = Path(tempfile.mkdtemp(prefix="kiln-unpriv-"))
    top.chmod(0o755)
    try:
        home = top / "home"
        (home / "work" / "cell").mkdir(parents=True)
        (home / "devpi").mkdir(mode=0o700)
        secret = home / "devpi" / "kiln.password"
        secret.write_text(FILE_PASSWORD + "\n")
        secret.chmod(0o600)
        for path in [home, *home.rglob("*")]:
            shutil.chown(path, "nobody", "nogroup")
        with Listener() as server:
            yield Scene(home, secret, home / "work" / "cell", server, user, usable[0])
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_as_an_unprivileged_user_a_step_sees_no_secret_and_no_network(unprivileged_scene: Scene) -> None:
    scene = unprivileged_scene
    res = subprocess.run([*scene.user, "unshare", "--map-root-user", "--mount", "true"], capture_output=True)
    if res.returncode != 0:
        pytest.skip("unprivileged user namespaces are not permitted here")
    assert_outside_everything_works(scene.probe(sandboxed=False))
    assert scene.probe(sandboxed=True) == REFUSED


def test_with_network_a_step_reaches_the_server_and_still_no_secret(scene: Scene, tmp_path: Path) -> None:
    """The backend hook's sandbox: network, nothing else."""
    can_sandbox()
    box = Sandbox(network=True, hide=secret_paths(scene.home, {}))
    code = ("import socket, sys; h, p = sys.argv[1].rsplit(':', 1); socket.create_connection((h, int(p))).close(); "
            "print(open(sys.argv[2]).read())")
    cmd = box.wrap([sys.executable, "-c", code, scene.server.address, str(scene.secret)], tmp_path / "stash")
    res = subprocess.run(cmd, capture_output=True, text=True, env=box.compose({}).env)
    assert scene.server.accepted == 1
    assert res.returncode == 1 and res.stderr.splitlines()[-1] == (
        f"FileNotFoundError: [Errno 2] No such file or directory: '{scene.secret}'")


# ----------------------------------------------------------------------------- a hostile package built by kiln


@dataclass
class Hostile:
    """`kiln build` of the hostile fixture, run as a user runs it, with the caller's secrets
    in its environment; and what `ps` showed meanwhile."""

    rc: int
    home: Path
    log: str
    output: str
    server: Listener
    cmdlines: dict[int, str]
    """Every process seen while the cell built: pid -> argv, as `ps` shows it."""
    sandboxed: dict[int, tuple[bool, bool]]
    """For the processes in kiln's sandbox, pid -> whether their environment held (a secret of
    the caller's or the password file's, the recipe's own token)."""


def scan(seen: dict[int, str], sandboxed: dict[int, tuple[bool, bool]]) -> None:
    """One look at every process's argv, and at the environment of those in the sandbox."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if "kiln/sandbox.py" in argv or "_in_process.py" in argv:
                environ = (proc / "environ").read_bytes()
                theirs = any(s.encode() in environ for s in (*CALLER_SECRETS.values(), FILE_PASSWORD))
                sandboxed[int(proc.name)] = (theirs, RECIPE_TOKEN.encode() in environ)
        except OSError:
            continue
        if argv:
            seen.setdefault(int(proc.name), argv)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    home = tmp / "home"
    (home / "devpi").mkdir(parents=True, mode=0o700)
    secret = home / "devpi" / "kiln.password"
    secret.write_text(FILE_PASSWORD + "\n")
    secret.chmod(0o600)
    with Listener() as server:
        recipe = ("project: kilnhostile\nversions: [\"1.0.0\"]\nbuild:\n  env:\n"
                  f"    KILNHOSTILE_SECRET_FILE: \"{secret}\"\n    KILNHOSTILE_ADDRESS: \"{server.address}\"\n"
                  f"    KILNHOSTILE_LINGER: \"2\"\n    KILNHOSTILE_TOKEN: \"{RECIPE_TOKEN}\"\n"
                  "matrix:\n  python: [\"3.11\"]\n")
        recipes = recipes_dir(tmp / "recipes", ("kilnhostile.yaml", recipe))
        env = {**os.environ, **CALLER_SECRETS}
        cmdlines: dict[int, str] = {}
        sandboxed: dict[int, tuple[bool, bool]] = {}
        with open(tmp / "output", "w") as out:
            proc = subprocess.Popen([str(BIN / "kiln"), "build", "--recipes", str(recipes), "--home", str(home),
                                     "--index-url", upstream.simple], env=env, stdout=out, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                scan(cmdlines, sandboxed)
                time.sleep(0.02)
        log = (home / "logs" / "kilnhostile-1.0.0-cp311-main.log").read_text()
        yield Hostile(proc.returncode, home, log, (tmp / "output").read_text(), server, cmdlines, sandboxed)


def tries(log: str, start: str, end: str) -> dict[str, dict[str, str]]:
    """The hostile package's lines between two of kiln's log lines: phase -> {try: outcome}."""
    part = log[log.index(start):log.index(end)]
    found: dict[str, dict[str, str]] = {}
    for line in part.splitlines():
        if line.startswith("kilnhostile["):
            phase, _, rest = line[len("kilnhostile["):].partition("] ")
            key, _, value = rest.partition(": ")
            found.setdefault(phase, {})[key] = value
    return found


HOOK = "kiln: asking the build backend: get_requires_for_build_wheel"
COMPILE = "kiln: the build step runs in a sandbox:"
SMOKE = "kiln: smoke test of "


def test_the_hostile_package_builds(hostile: Hostile) -> None:
    assert hostile.rc == 0, hostile.output + hostile.log
    (wheel,) = (hostile.home / "wheelhouse").glob("kilnhostile-1.0.0-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")


def test_its_setup_py_is_refused_everything_in_the_compile_step(hostile: Hostile) -> None:
    """setup.py runs twice in the compile step (egg_info for build's check, then bdist_wheel):
    both times the password file is gone, the credentials are not in any environment it can
    read, and the server the test reaches is unreachable."""
    seen = tries(hostile.log, COMPILE, SMOKE)
    assert seen == {"egg_info": REFUSED, "bdist_wheel": REFUSED}
    (wheel,) = (hostile.home / "wheelhouse").glob("kilnhostile-1.0.0-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        built = zf.read("kilnhostile/_built.py").decode()
    assert built == f"SEEN = {REFUSED!r}\n"


def test_its_setup_py_sees_no_secret_in_the_backend_hook(hostile: Hostile) -> None:
    """The backend hook may use the network (build requirements a backend fetches); it sees
    no secret either."""
    (seen,) = tries(hostile.log, HOOK, COMPILE).values()
    assert {k: v for k, v in seen.items() if k != "network"} == {k: v for k, v in REFUSED.items() if k != "network"}


def test_its_module_is_refused_everything_in_the_smoke_test(hostile: Hostile) -> None:
    assert tries(hostile.log, SMOKE, "kiln: built ") == {"import": REFUSED}
    assert "kiln: import kilnhostile: ok" in hostile.log


def test_the_same_tries_succeed_outside_the_sandbox(hostile: Hostile) -> None:
    """The package's probe, run by the test with the same targets and environment, gets
    everything: the refusals above are the sandbox's doing."""
    code = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('p', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(json.dumps(m.probe(sys.argv[2], sys.argv[3], False)))")
    before = hostile.server.accepted
    res = subprocess.run([sys.executable, "-c", code, str(PROBE), str(hostile.home / "devpi" / "kiln.password"),
                          hostile.server.address], capture_output=True, text=True, env={**os.environ, **CALLER_SECRETS})
    assert res.returncode == 0, res.stderr
    assert_outside_everything_works(json.loads(res.stdout))
    assert hostile.server.accepted == before + 1


def test_the_log_names_the_variables_left_out_and_holds_no_secret(hostile: Hostile) -> None:
    lines = [ln for ln in hostile.log.splitlines() if ln.startswith("kiln: the build step's environment: ")]
    assert len(lines) == 1
    never = lines[0].partition("; never passed on (credentials, cloud settings): ")[2].split(", ")
    assert set(CALLER_SECRETS) <= set(never)
    assert "kiln: env KILNHOSTILE_TOKEN=(not shown)" in hostile.log.splitlines()
    assert not [s for s in SECRETS if s in hostile.log or s in hostile.output]


def test_ps_shows_no_password_while_a_cell_builds(hostile: Hostile) -> None:
    """Every process's argv, looked at every few milliseconds during the build, holds none of
    the secrets; the processes in the sandbox (seen: the scan covered the build) have none of the
    caller's in their environment, only the recipe's own."""
    assert any("kiln/sandbox.py" in argv for argv in hostile.cmdlines.values())
    assert not [argv for argv in hostile.cmdlines.values() if any(s in argv for s in SECRETS)]
    assert hostile.sandboxed
    assert not any(theirs for theirs, _ in hostile.sandboxed.values())
    assert any(recipe for _, recipe in hostile.sandboxed.values())


def test_the_secrets_the_sandbox_hides_are_the_ones_the_mirror_keeps(tmp_path: Path) -> None:
    """sandbox.py imports nothing of kiln (it runs as a script inside the namespace), so it names
    the home's devpi/ files itself: they must stay the ones kiln.mirror.server writes."""
    from kiln.home import Home
    from kiln.mirror.server import ServerFiles
    from kiln.sandbox import MIRROR_SECRETS, secret_paths

    files = ServerFiles(Home(tmp_path))
    kept = {files.root_password, files.kiln_password, files.secretfile, files.devpi_config, files.deployment}
    assert {p.name for p in kept} == set(MIRROR_SECRETS)
    assert all(p.parent == Home(tmp_path).server for p in kept)
    assert secret_paths(tmp_path, {})[0] == Home(tmp_path).server

"""Crash safety end to end: devpi-server SIGKILLed while K publishers upload, and `kiln up`
SIGKILLed while it builds. devpi promises ACID storage and crash recovery; kiln must keep that
promise through nginx, its plugin and its own state: every upload kiln reported done is served
with its sha256 after a restart, nothing partial is served, devpi-fsck finds nothing wrong, and
the next `kiln up` builds or publishes only what is missing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kiln_testing.fixtures import kilnfix_recipe, recipes_dir
from kiln_testing.index import SIMPLE_JSON, StaticIndex
from kiln_testing.tools import BIN, free_port
from kiln_testing.wheels import make_wheel

from kiln import mirror
from kiln.home import Home
from kiln.matrix import expand
from kiln.provenance import Provenance
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains
from kiln.wheel import RawWheel, finish

pytestmark = pytest.mark.e2e
KILN = str(BIN / "kiln")
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
WHEELS = 24
PUBLISHERS = 4


def kiln_env(upstream: StaticIndex, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "KILN_"))
           and k != "VIRTUAL_ENV"}
    env["UV_DEFAULT_INDEX"] = upstream.simple
    return {**env, **extra}


def kiln(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KILN, *args], capture_output=True, text=True, env=env, timeout=timeout)


def crash_wheels(recipes: Path, out: Path, work: Path) -> list[Path]:
    """Finished kiln wheels of the kilncrash recipe, one per version, each ~1 MB that does not
    compress: as `kiln build` leaves them (provenance, recipe hash), without compiling."""
    toolchains = load_toolchains(recipes)
    cells = expand(load_recipes(recipes, None), toolchains)
    wheels = []
    for cell in cells:
        raw = make_wheel("kilncrash", cell.version, {
            "kilncrash/__init__.py": f"__version__ = {cell.version!r}\n",
            "kilncrash/blob.txt": secrets.token_urlsafe(800_000)}, work / cell.version)
        prov = Provenance(kiln_version="test", cell=cell.id, variant=cell.variant.name,
                          recipe=cell.recipe.path.name, recipe_sha256=cell.recipe.sha256,
                          source_url="file:///nowhere", source_sha256="0" * 64, python=PYTHON, torch=None,
                          cuda_archs=None, nvcc=None, compiler="none")
        wheels.append(finish(RawWheel(raw), cell, prov, [], out, work / cell.version / "finish"))
    return wheels


def crash_recipes(dest: Path) -> Path:
    versions = ", ".join(f'"1.0.{i}"' for i in range(WHEELS))
    return recipes_dir(dest, ("kilncrash.yaml", f"""\
project: kilncrash
versions: [{versions}]
source:
  url: kilncrash-{{version}}.tar.gz
  sha256: "{"0" * 64}"
matrix:
  python: ["{PYTHON}"]
"""))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served(url: str, project: str) -> dict[str, tuple[str, bytes]]:
    """filename -> (the sha256 the index states, the bytes it serves) for every file listed."""
    req = urllib.request.Request(f"{url.rstrip('/')}/{project}/",
                                 headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(req, timeout=60) as resp:
        page, base = json.loads(resp.read()), resp.url
    out = {}
    for f in page["files"]:
        with urllib.request.urlopen(urllib.parse.urljoin(base, f["url"]), timeout=60) as resp:
            out[f["filename"]] = (f["hashes"]["sha256"], resp.read())
    return out


@dataclass
class Publishers:
    """K publishers, each uploading its share of the wheels one `kiln publish` at a time, as K CI
    jobs would: their own (empty) homes, the mirror's URL, the kiln user's password."""

    wheels: list[Path]
    url: str
    recipes: Path
    env: dict[str, str]
    homes: Path
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, k: int) -> None:
        for wheel in self.wheels[k::PUBLISHERS]:
            res = kiln("publish", str(wheel), "--recipes", str(self.recipes), "--home", str(self.homes / str(k)),
                       "--mirror", self.url, env=self.env, timeout=120)
            with self.lock:
                if res.returncode == 0:
                    self.done.append(wheel.name)
                else:
                    lines = res.stderr.strip().splitlines()
                    assert len(lines) == 1 and lines[0].startswith("kiln: "), res.stderr
                    assert "html>" not in lines[0], lines[0]  # nginx's error page is reduced to its status
                    self.failed.append(f"{wheel.name}: {lines[0]}")
                    return  # the mirror is gone: this job fails, as a CI job would


def test_devpi_killed_mid_publish_loses_nothing_reported_done(tmp_path: Path, upstream: StaticIndex) -> None:
    recipes = crash_recipes(tmp_path / "recipes")
    home = tmp_path / "home"
    wheels = crash_wheels(recipes, home / "wheelhouse", tmp_path / "work")
    port = free_port()
    env = kiln_env(upstream)
    serve = ["serve", "--recipes", str(recipes), "--home", str(home), "--port", str(port),
             "--upstream", upstream.simple, "--background"]
    res = kiln(*serve, env=env)
    assert res.returncode == 0, res.stderr
    url = mirror.url_for("127.0.0.1", port)
    files = mirror.ServerFiles(Home(home))
    try:
        passwords = [files.root_password.read_text().strip(), files.kiln_password.read_text().strip()]
        assert not [pid for pid, argv in cmdlines() if any(p in argv for p in passwords)], \
            "a password is on a process's command line"
        pubs = Publishers(wheels, url, recipes,
                          {**env, "KILN_MIRROR_USER": "kiln", "KILN_MIRROR_PASSWORD": passwords[1]}, tmp_path / "pubs")
        threads = [threading.Thread(target=pubs.run, args=(k,)) for k in range(PUBLISHERS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 300
        while len(pubs.done) < WHEELS // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        devpi_pid = json.loads(files.state.read_text())["pid"]
        os.kill(devpi_pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=300)
        done = list(pubs.done)
        assert WHEELS // 3 <= len(done) < WHEELS, (done, pubs.failed)
        assert pubs.failed, "no publisher saw the mirror go"

        # devpi-fsck on the stopped server's files, then restart as a user would
        res = kiln("stop", "--home", str(home), env=env)
        assert res.returncode == 0, res.stderr
        fsck = subprocess.run([str(BIN / "devpi-fsck"), "--configfile", str(files.devpi_config)],
                              capture_output=True, text=True, timeout=600)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        res = kiln(*serve, env=env)
        assert res.returncode == 0, res.stderr

        index = mirror.simple_url(url, "main")
        after = served(index, "kilncrash")
        by_name = {w.name: w for w in wheels}
        for name in done:  # every upload kiln reported done is served, with the right bytes
            stated, data = after[name]
            assert stated == sha256(data) == sha256(by_name[name].read_bytes()), name
        for name, (stated, data) in after.items():  # nothing listed is partial
            assert stated == sha256(data) == sha256(by_name[name].read_bytes()), name

        print(f"kiln-crash: {len(done)} uploads reported done before SIGKILL, {len(after)} served after restart, "
              f"{len(pubs.failed)} publishers failed: {pubs.failed}")
        # the next `kiln up` builds nothing and publishes what is missing
        res = kiln("up", "--recipes", str(recipes), "--home", str(home), "--port", str(port),
                   "--upstream", upstream.simple, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        missing = WHEELS - len(after)
        assert f"built 0, uploaded {missing}, already published {len(after)}, failed 0" in res.stdout, res.stdout
        final = served(index, "kilncrash")
        assert sorted(final) == sorted(by_name)
        assert all(stated == sha256(data) == sha256(by_name[n].read_bytes()) for n, (stated, data) in final.items())
    finally:
        kiln("stop", "--home", str(home), env=env)


def cmdlines() -> list[tuple[int, str]]:
    """Every process's command line, as `ps` shows it."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(proc.name), argv))
            except OSError:
                continue
    return out


def test_kiln_up_killed_mid_build_builds_only_what_is_missing(tmp_path: Path, upstream: StaticIndex) -> None:
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe()))  # cp311 and cp312
    home = tmp_path / "home"
    port = free_port()
    env = kiln_env(upstream)
    cells = [c.id for c in expand(load_recipes(recipes, None), load_toolchains(recipes))]
    assert len(cells) == 2
    first, second = cells
    up = [KILN, "up", "--recipes", str(recipes), "--home", str(home), "--port", str(port),
          "--upstream", upstream.simple]
    proc = subprocess.Popen(up, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        second_log = home / "logs" / f"{second}.log"
        deadline = time.monotonic() + 600
        while not (second_log.exists() and "kiln: env " in second_log.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the second cell never started"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # kiln up and the build it runs, as a cancelled CI job
        proc.wait()
        house = home / "wheelhouse"
        kept = sorted(house.glob("*.whl"))
        assert [w.name.split("-")[2] for w in kept] == [first.split("-")[2]], kept  # the first cell's wheel
        for wheel in kept:
            with zipfile.ZipFile(wheel) as zf:
                assert zf.testzip() is None
        assert not [p for p in house.iterdir() if not p.name.endswith(".whl")], list(house.iterdir())

        res = subprocess.run(up, capture_output=True, text=True, env=env, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "built 1, uploaded 2, already published 0, failed 0" in res.stdout, res.stdout
        mirror_at = f"http://127.0.0.1:{port}"  # the killed run's mirror, still up or started again
        assert re.search(rf"^kiln up: mirror {mirror_at}: (started in \d+ s|already running)$", res.stderr, re.M)
        assert f"\nkiln up: publishing 2 wheels to {mirror_at}\n" in res.stderr, res.stderr
        assert json.loads((home / "cells" / f"{first}.json").read_text())["status"] == "built"
        assert json.loads((home / "cells" / f"{second}.json").read_text())["status"] == "built"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([KILN, "stop", "--home", str(home)], capture_output=True, env=env)

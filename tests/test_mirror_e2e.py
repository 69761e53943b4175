"""End-to-end: a real devpi-server, real uv and pip, `kiln up` of the kilnfix seed case and of
kilnapp, whose runtime dependency kilnlib has only an sdist upstream.

The mirror comes from the ``deployment`` fixture (conftest.py); its root/pypi mirrors a local
static upstream, so nothing here reads the public index.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kiln_testing.deploy import Deployment
from kiln_testing.fixtures import MORE_RECIPES, kilnfix_recipe, recipes_dir
from kiln_testing.index import SIMPLE_JSON, StaticIndex
from kiln_testing.provenance import provenance_json
from kiln_testing.tools import BIN, free_port

from kiln import mirror
from kiln.source import sha256_of

pytestmark = pytest.mark.e2e
KILN = str(BIN / "kiln")


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def fetch_json(url: str) -> dict[str, object]:
    req = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def simple_files(url: str) -> dict[str, str]:
    """filename -> sha256 on a PEP 691 project page."""
    return {f["filename"]: f["hashes"]["sha256"] for f in fetch_json(url)["files"]}  # type: ignore[index]


def venv(path: Path, env: dict[str, str], pip: bool = False) -> Path:
    if pip:  # pip from ensurepip: nothing fetched
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, env=env)
    else:
        subprocess.run([str(BIN / "uv"), "venv", "--quiet", "--python", sys.executable, str(path)],
                       check=True, env=env)
    return path / "bin" / "python"


@dataclass
class Upped:
    """The mirror after `kiln up` on the fixture recipes."""

    dep: Deployment
    up: subprocess.CompletedProcess[str]
    env: dict[str, str]
    recipes: Path
    started: datetime

    @property
    def home(self) -> Path:
        return self.dep.home

    def index(self, variant: str = "main") -> str:
        return mirror.simple_url(self.dep.url, variant)

    def up_again(self) -> subprocess.CompletedProcess[str]:
        return kiln_up(self.dep, self.env, self.recipes)

    @property
    def wheels(self) -> list[str]:
        """What `kiln up` built, closure included."""
        return sorted(p.name for p in (self.home / "wheelhouse").glob("*.whl"))


def kiln_up(dep: Deployment, env: dict[str, str], recipes: Path) -> subprocess.CompletedProcess[str]:
    res = run([KILN, "up", "--recipes", str(recipes), *dep.kiln_args(), "--port", str(dep.port)], env=env)
    dep.settle()
    return res


@pytest.fixture(scope="module")
def upped(deployment: Deployment, upstream: StaticIndex, tmp_path_factory: pytest.TempPathFactory) -> Upped:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_")) and k != "VIRTUAL_ENV"}
    env["UV_DEFAULT_INDEX"] = upstream.simple  # where build and smoke-test environments come from
    recipes = recipes_dir(tmp_path_factory.mktemp("e2e") / "recipes", ("kilnfix.yaml", kilnfix_recipe()),
                          ("kilnapp.yaml", (MORE_RECIPES / "kilnapp.yaml").read_text()))
    started = datetime.now(UTC)
    res = kiln_up(deployment, env, recipes)
    assert res.returncode == 0, res.stdout + res.stderr
    return Upped(deployment, res, env, recipes, started)


def test_sdist_alone_fails_with_no_module_named(deployment: Deployment, client_env: dict[str, str],
                                                tmp_path: Path) -> None:
    """The seed case: the upstream sdist imports an undeclared build dependency."""
    py = venv(tmp_path / "venv", client_env)
    res = run([str(BIN / "uv"), "pip", "install", "--python", str(py), "--index-url",
               f"{deployment.url}/root/pypi/+simple/", "kilnfix"], env=client_env)
    assert res.returncode != 0
    assert "No module named 'kilnfix_helper'" in res.stdout + res.stderr


def test_up_builds_publishes_and_prints_the_install_line(upped: Upped) -> None:
    out = upped.up.stdout
    built = len(upped.wheels)
    assert f"built {built}, uploaded {built}, already published 0, failed 0" in out, out
    home_mirror = mirror.url_for("127.0.0.1", upped.dep.port)  # a replica's primary
    assert f"uv pip install --index-url {mirror.simple_url(home_mirror, 'main')} kilnapp kilnfix" in out
    files = simple_files(f"{upped.index()}kilnfix/")
    assert sorted(files) == [w for w in upped.wheels if w.startswith("kilnfix-")]
    assert any(f.startswith("kilnfix-1.0.0-cp311-cp311-") for f in files), files
    assert [w for w in upped.wheels if w.startswith("kilnlib-1.0.0-cp311-")], upped.wheels
    progress = [ln for ln in upped.up.stderr.splitlines() if ln.startswith("kiln up: ")]
    assert progress[0] == f"kiln up: the mirror of {upped.home}: starting it, or reusing the one running"
    assert progress[1] == f"kiln up: mirror {home_mirror}: already running", progress  # the deployment started it
    assert progress[2].startswith(f"kiln up: building {built - 1} cells, "), progress  # kilnlib: in a cell's closure
    assert progress[-1] == f"kiln up: publishing {built} wheels to {home_mirror}", progress


def test_sdist_only_runtime_dependency_installs_from_the_mirror(upped: Upped, client_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    """kilnlib has no wheel upstream: kiln built it as kilnapp's closure and published it to
    kiln/main, so `--no-build` from the mirror works."""
    assert [f for f in simple_files(f"{upped.index()}kilnlib/") if f.endswith(".whl")]
    py = venv(tmp_path / "venv", client_env)
    res = run([str(BIN / "uv"), "pip", "install", "--python", str(py), "--no-build", "--index-url",
               upped.index(), "kilnapp"], env=client_env)
    assert res.returncode == 0, res.stderr
    res = run([str(py), "-c", "import kilnapp; print(kilnapp.nine())"], env=client_env)
    assert res.stdout.strip() == "9", res.stderr


def test_uv_installs_the_wheel_without_building(upped: Upped, client_env: dict[str, str], tmp_path: Path) -> None:
    py = venv(tmp_path / "venv", client_env)
    res = run([str(BIN / "uv"), "pip", "install", "--python", str(py), "--no-build", "--index-url",
               upped.index(), "kilnfix"], env=client_env)
    assert res.returncode == 0, res.stderr
    res = run([str(py), "-c", "import kilnfix; print(kilnfix.add(2,3))"], env=client_env)
    assert res.stdout.strip() == "5", res.stderr
    freeze = run([str(BIN / "uv"), "pip", "freeze", "--python", str(py)], env=client_env).stdout
    assert "kilnfix-helper==1.4.0" in freeze


def test_pip_installs_the_wheel(upped: Upped, client_env: dict[str, str], tmp_path: Path) -> None:
    py = venv(tmp_path / "venv", client_env, pip=True)
    res = run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary",
               ":all:", "--index-url", upped.index(), "kilnfix"], env=client_env)
    assert res.returncode == 0, res.stderr
    res = run([str(py), "-c", "import kilnfix; print(kilnfix.add(2,3))"], env=client_env)
    assert res.stdout.strip() == "5", res.stderr


def test_the_pin_fails_at_resolution(upped: Upped, client_env: dict[str, str], tmp_path: Path) -> None:
    """kilnfix was built against kilnfix-helper 1.4 (ABI 1): asking for 2.0.0 is a resolver error."""
    py = venv(tmp_path / "venv", client_env)
    res = run([str(BIN / "uv"), "pip", "install", "--python", str(py), "--no-build", "--index-url",
               upped.index(), "kilnfix", "kilnfix-helper==2.0.0"], env=client_env)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "No solution found" in err and "kilnfix-helper" in err, err


def test_upstream_sdist_is_hidden_from_kiln_indexes(upped: Upped) -> None:
    """devpi serves no mirrored release of a project kiln publishes (no mirror_whitelist)."""
    upstream_files = simple_files(f"{upped.dep.url}/root/pypi/+simple/kilnfix/")
    assert "kilnfix-1.0.0.tar.gz" in upstream_files  # the upstream does have it...
    files = simple_files(f"{upped.index()}kilnfix/")
    assert files and all(f.endswith(".whl") for f in files), files  # ...kiln/main does not serve it


def _variant_wheel(dest: Path, version: str) -> Path:
    """A pure wheel of kilnfix ``version`` (with a local label) to publish to a variant index,
    with the provenance kiln gives a wheel it built for that variant."""
    name = f"kilnfix-{version}-py3-none-any.whl"
    info = f"kilnfix-{version}.dist-info"
    public, _, label = version.partition("+")
    variant = label.replace(".", "-", 1) if label else "main"
    with zipfile.ZipFile(dest / name, "w") as zf:
        zf.writestr("kilnfix/__init__.py", "def add(a, b):\n    return a + b\n")
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: kilnfix\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/kiln.json", provenance_json(f"kilnfix-{public}-cp311-{variant}", variant))
        zf.writestr(f"{info}/RECORD", "")
    return dest / name


def test_publish_routes_by_label_and_variant_indexes_hide_the_sdist(upped: Upped, tmp_path: Path) -> None:
    wheel = _variant_wheel(tmp_path, "1.0.0+cpu.torch2.14")
    res = run([KILN, "publish", str(wheel), *upped.dep.kiln_args(), "--recipes", str(upped.recipes)])
    assert res.returncode == 0, res.stderr
    assert "uploaded: kiln/cpu-torch2.14" in res.stdout
    upped.dep.settle()
    files = simple_files(f"{upped.index('cpu-torch2.14')}kilnfix/")
    assert wheel.name in files
    assert not any(f.endswith(".tar.gz") for f in files), files
    again = run([KILN, "publish", str(wheel), *upped.dep.kiln_args(), "--recipes", str(upped.recipes)])
    assert again.returncode == 0 and "already there" in again.stdout


def test_published_files_are_immutable(upped: Upped, tmp_path: Path) -> None:
    wheel = next((upped.home / "wheelhouse").glob("kilnfix-1.0.0-*.whl"))
    url = f"{upped.index()}kilnfix/"
    before = simple_files(url)[wheel.name]
    assert before == sha256_of(wheel)
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    forged = forged_dir / wheel.name
    forged.write_bytes(wheel.read_bytes())
    with zipfile.ZipFile(forged, "a") as zf:
        zf.writestr("kilnfix/extra.txt", "different bytes\n")
    res = run([KILN, "publish", str(forged_dir), *upped.dep.kiln_args(), "--recipes", str(upped.recipes)])
    assert res.returncode == 5
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: ") and "immutable" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert simple_files(url)[wheel.name] == before


def test_plan_shows_published(upped: Upped) -> None:
    res = run([KILN, "plan", "--recipes", str(upped.recipes), *upped.dep.kiln_args(), "--json"])
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert len(rows) == len(upped.wheels) and {r["status"] for r in rows} == {"published"}
    assert [r["closure_of"] for r in rows if r["project"] == "kilnlib"] == ["kilnapp-1.0.0-cp311-main"]
    res = run([KILN, "plan", "--recipes", str(upped.recipes), "--home", str(upped.home / "elsewhere"),
               "--mirror", upped.dep.url, "--json"])
    assert {r["status"] for r in json.loads(res.stdout)} == {"published"}


def test_restart_keeps_everything_and_up_builds_nothing(upped: Upped, client_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    url = f"{upped.index()}kilnfix/"
    before = simple_files(url)
    upped.dep.stop()
    with pytest.raises(OSError):
        fetch_json(url)
    upped.dep.start()
    assert simple_files(url) == before
    res = upped.up_again()
    assert res.returncode == 0, res.stderr
    assert f"built 0, uploaded 0, already published {len(upped.wheels)}, failed 0" in res.stdout, res.stdout
    py = venv(tmp_path / "venv", client_env)
    res = run([str(BIN / "uv"), "pip", "install", "--python", str(py), "--no-build", "--index-url",
               upped.index(), "kilnfix"], env=client_env)
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------------------- what resolvers read


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def _wheel_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return zf.read(name)


def test_kiln_wheels_carry_core_metadata_and_upload_time(upped: Upped) -> None:
    """PEP 658/714 and PEP 700 on kiln's own wheels: the JSON and HTML pages advertise the
    METADATA's sha256, `<wheel>.metadata` serves exactly the wheel's METADATA, and upload-time is
    the upload's time."""
    wheel = next((upped.home / "wheelhouse").glob("kilnfix-1.0.0-*.whl"))
    metadata = _wheel_metadata(wheel)
    page = fetch_json(f"{upped.index()}kilnfix/")
    entry = next(f for f in page["files"] if f["filename"] == wheel.name)  # type: ignore[union-attr,index]
    assert entry["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}
    assert entry["size"] == wheel.stat().st_size
    assert page["meta"]["api-version"] == "1.1" and page["versions"] == ["1.0.0"]  # type: ignore[index]
    uploaded = datetime.strptime(entry["upload-time"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert upped.started - timedelta(seconds=1) <= uploaded <= datetime.now(UTC)
    url = urllib.parse.urljoin(f"{upped.index()}kilnfix/", entry["url"])
    status, _, body = _get(url + ".metadata")
    assert status == 200 and body == metadata
    _, _, page_html = _get(f"{upped.index()}kilnfix/")
    assert f'data-core-metadata="sha256={hashlib.sha256(metadata).hexdigest()}"' in page_html.decode()


def test_upstream_core_metadata_and_upload_time_pass_through(upped: Upped, upstream: StaticIndex) -> None:
    """A wheel that comes through root/pypi keeps what the upstream says of it: its METADATA's
    sha256, upload-time and size; `.metadata` serves the upstream's bytes before devpi has the file."""
    theirs = {f["filename"]: f for f in fetch_json(f"{upstream.simple}setuptools/")["files"]}  # type: ignore[union-attr]
    page = fetch_json(f"{upped.index()}setuptools/")
    ours = {f["filename"]: f for f in page["files"]}  # type: ignore[union-attr]
    assert ours.keys() == theirs.keys()
    for name, f in ours.items():
        assert f["core-metadata"] == theirs[name]["core-metadata"], name
        assert f["upload-time"] == theirs[name]["upload-time"] and f["size"] == theirs[name]["size"]
    name, f = next(iter(ours.items()))
    _, _, body = _get(urllib.parse.urljoin(f"{upped.index()}setuptools/", f["url"]) + ".metadata")
    assert hashlib.sha256(body).hexdigest() == f["core-metadata"]["sha256"]


def test_release_files_answer_range_requests(upped: Upped) -> None:
    """nginx serves release files from devpi's store (or, kept in PostgreSQL, from devpi through
    nginx): a Range request gets 206 and those bytes, with a validator and a year's cache."""
    wheel = next((upped.home / "wheelhouse").glob("kilnfix-1.0.0-*.whl"))
    entry = next(f for f in fetch_json(f"{upped.index()}kilnfix/")["files"]  # type: ignore[union-attr]
                 if f["filename"] == wheel.name)
    url = urllib.parse.urljoin(f"{upped.index()}kilnfix/", entry["url"])
    status, headers, body = _get(url, {"Range": "bytes=0-99"})
    assert status == 206 and body == wheel.read_bytes()[:100]
    assert headers["content-range"] == f"bytes 0-99/{wheel.stat().st_size}"
    assert headers.get("etag") or headers.get("last-modified")  # a validator for resuming
    assert "immutable" in headers.get("cache-control", "")
    status, _, tail = _get(url, {"Range": "bytes=-22"})  # the zip's end record, as lazy readers ask
    assert status == 206 and tail == wheel.read_bytes()[-22:]


def test_uv_exclude_newer_sees_the_upload_time(upped: Upped, client_env: dict[str, str]) -> None:
    """A cooldown works against the mirror: kilnfix was published after `before`, so
    `--exclude-newer before` cannot resolve it and a later date can."""
    reqs = [str(BIN / "uv"), "pip", "compile", "--no-build", "--index-url", upped.index(), "-"]
    before = (upped.started - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = subprocess.run([*reqs, "--exclude-newer", before], input="kilnfix\n", capture_output=True, text=True,
                         env=client_env, timeout=120)
    assert old.returncode != 0 and "kilnfix" in old.stderr, old.stderr
    new = subprocess.run([*reqs, "--exclude-newer", later], input="kilnfix\n", capture_output=True, text=True,
                         env=client_env, timeout=120)
    assert new.returncode == 0 and "kilnfix==1.0.0" in new.stdout, new.stderr


def test_export_import_round_trip(upped: Upped, client_env: dict[str, str], tmp_path: Path) -> None:
    """`kiln export` of the running mirror (for PostgreSQL: a move to SQLite; for a replica: of its
    primary) and `kiln import` into a new home give the same indexes, the same files with the
    same sha256, and kiln's credentials still publish."""
    dump, home = tmp_path / "dump", tmp_path / "imported"
    res = run([KILN, "export", str(dump), *upped.dep.kiln_args()])
    assert res.returncode == 0, res.stderr
    again = run([KILN, "export", str(dump), *upped.dep.kiln_args()])
    assert again.returncode != 0 and again.stderr.strip() == f"kiln: {dump}: not empty; export into a new directory"
    res = run([KILN, "import", str(dump), "--home", str(home)])
    assert res.returncode == 0, res.stderr
    port = free_port()
    res = run([KILN, "serve", "--home", str(home), "--port", str(port), "--background", "--recipes",
               str(upped.recipes)])
    try:
        assert res.returncode == 0, res.stderr
        url = mirror.url_for("127.0.0.1", port)
        for variant in ("main", "cpu-torch2.14"):
            assert mirror.published(url, [variant]) == mirror.published(upped.dep.url, [variant])
        for project in ("kilnfix", "kilnlib"):
            assert (simple_files(f"{mirror.simple_url(url, 'main')}{project}/")
                    == simple_files(f"{upped.index()}{project}/"))
        py = venv(tmp_path / "venv", client_env)
        res = run([str(BIN / "uv"), "pip", "install", "--python", str(py), "--no-build", "--index-url",
                   mirror.simple_url(url, "main"), "kilnapp"], env=client_env)
        assert res.returncode == 0, res.stderr
        res = run([KILN, "publish", "--home", str(home), "--recipes", str(upped.recipes),
                   str(upped.home / "wheelhouse")])
        assert res.returncode == 0 and "uploaded" not in res.stdout, res.stdout + res.stderr
        res = run([KILN, "import", str(dump), "--home", str(home)])
        assert res.returncode != 0
        assert res.stderr.strip() == f"kiln: {home} already holds a mirror; import into a new --home"
    finally:
        run([KILN, "stop", "--home", str(home)])

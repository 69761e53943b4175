"""`kiln outdated` and `kiln bump` against a local upstream: new releases of a fixture project
(their upload-time set on the JSON page), the cooldown, yanked and pre-releases, a stand-in torch
with a new patch release and a new minor; bump's round-trip edit, and its build before writing."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kiln_testing.fixtures import FIXTURE_RECIPES, FIXTURE_SDIST, FIXTURES
from kiln_testing.index import StaticIndex
from kiln_testing.wheels import make_helper_wheel, make_torch_release, make_torch_stand_in

from kiln.cli import main
from kiln.errors import BumpError, ConfigError
from kiln.yamlsrc import append_to_list

sys.path.insert(0, str(FIXTURES))
from make_sdist import make_sdist  # tests/fixtures/make_sdist.py

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
RECIPE = f"""\
# kilnfix from the test's upstream: this comment, the one on `versions` and the layout below
# must come through a bump byte for byte.
project: kilnfix
versions: ["1.0.0"]   # the first release
build:
  requires: ["kilnfix-helper==1.4.0"]   # what upstream forgot
matrix:
  python: ["{PY}"]
runtime:
  pin: [kilnfix-helper]
test:
  imports: [kilnfix, kilnfix._speedup]
"""


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def kilnfix_sdist(version: str, dest: Path, broken: bool = False) -> Path:
    """The kilnfix fixture as release ``version``; ``broken``: its setup.py refuses to build."""
    src = dest / f"kilnfix-{version}"
    shutil.copytree(FIXTURES / "src" / "kilnfix-1.0.0", src)
    for name in ("setup.py", "PKG-INFO"):
        (src / name).write_text((src / name).read_text().replace("1.0.0", version))
    if broken:
        (src / "setup.py").write_text(f'raise RuntimeError("kilnfix {version}: this platform is not supported")\n')
    return make_sdist(src, dest / f"kilnfix-{version}.tar.gz")


@pytest.fixture
def index(tmp_path: Path, upstream_wheels: list[Path]) -> Iterator[StaticIndex]:
    """An upstream of its own per test (files are added with their upload times): kilnfix 1.0.0,
    its helper, the packaging tools and a stand-in torch 2.14.1, all uploaded long ago."""
    made = tmp_path / "made"
    made.mkdir()
    idx = StaticIndex(tmp_path / "upstream")
    idx.add([FIXTURE_SDIST, make_helper_wheel("1.4.0", made), make_torch_stand_in("2.14.1", made),
             *upstream_wheels])
    idx.start()
    yield idx
    idx.stop()


def upload(index: StaticIndex, files: list[Path], when: datetime, yanked: bool = False) -> None:
    index.upload_times.update({f.name: stamp(when) for f in files})
    if yanked:
        index.yanked.update(f.name for f in files)
    index.add(files)


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    d = tmp_path / "recipes"
    d.mkdir()
    shutil.copy(FIXTURE_RECIPES / "toolchains.yaml", d / "toolchains.yaml")
    (d / "kilnfix.yaml").write_text(RECIPE)
    return d


def kiln(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_outdated_names_a_newer_final_release_and_exits_1(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    when = ago(days=10)
    upload(index, [kilnfix_sdist("1.1.0", tmp_path)], when)
    upload(index, [kilnfix_sdist("1.1.1", tmp_path)], when, yanked=True)  # yanked: not counted
    upload(index, [kilnfix_sdist("1.2.0rc1", tmp_path)], when)            # a pre-release: not counted
    code, out, _ = kiln(capsys, "outdated", "kilnfix", "--recipes", str(recipes), "--index-url", index.simple)
    assert (code, out) == (1, [f"kilnfix: 1.0.0 -> 1.1.0 (uploaded {when:%Y-%m-%d})"])

    code, out, _ = kiln(capsys, "outdated", "--json", "kilnfix", "--recipes", str(recipes),
                        "--index-url", index.simple)
    assert code == 1
    import json
    found = json.loads("\n".join(out))
    assert [(f["kind"], f["project"], f["current"], f["new"]) for f in found["outdated"]] == \
        [("recipe", "kilnfix", "1.0.0", "1.1.0")]


def test_a_release_inside_the_cooldown_is_held_back(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    when = ago(hours=1)
    upload(index, [kilnfix_sdist("1.1.0", tmp_path)], when)
    code, out, err = kiln(capsys, "outdated", "kilnfix", "--recipes", str(recipes), "--index-url", index.simple)
    assert (code, out) == (0, [])
    assert f"kilnfix: 1.0.0 -> 1.1.0 (uploaded {when:%Y-%m-%d}, inside the 3-day cooldown: held back)" in err
    code, out, _ = kiln(capsys, "outdated", "kilnfix", "--recipes", str(recipes), "--index-url", index.simple,
                        "--cooldown-days", "0")
    assert (code, out) == (1, [f"kilnfix: 1.0.0 -> 1.1.0 (uploaded {when:%Y-%m-%d})"])


def test_current_recipes_exit_0_and_bad_input_exits_2(
        index: StaticIndex, recipes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kiln(capsys, "outdated", "--recipes", str(recipes), "--index-url", index.simple)[:2] == (0, [])
    code, _, err = kiln(capsys, "outdated", "nosuch", "--recipes", str(recipes), "--index-url", index.simple)
    assert code == ConfigError.exit_code == 2
    assert "no recipe for nosuch" in err
    code, _, err = kiln(capsys, "outdated", "--recipes", str(recipes), "--cooldown-days", "-1",
                        "--index-url", index.simple)
    assert code == 2


def test_torch_patch_release_and_new_minor_are_named_for_the_toolchain_table(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    when = ago(days=5)
    made = tmp_path / "torch"
    made.mkdir()
    upload(index, [make_torch_stand_in("2.14.2", made), make_torch_stand_in("2.15.0", made)], when)
    upload(index, [make_torch_stand_in("2.14.3", made)], when, yanked=True)
    upload(index, [make_torch_stand_in("2.16.0rc1", made)], when)
    upload(index, [make_torch_stand_in("2.15.1", made)], ago(hours=2))  # inside the cooldown
    code, out, err = kiln(capsys, "outdated", "torch", "--recipes", str(recipes), "--index-url", index.simple)
    assert (code, out) == (1, [f"torch 2.14: 2.14.1 -> 2.14.2 (uploaded {when:%Y-%m-%d})",
                               f"torch: new minor 2.15 (newest in the table: 2.14): 2.15.0 (uploaded {when:%Y-%m-%d})"])
    # the whole run: every recipe (kilnfix is current) and the table
    code, out_all, _ = kiln(capsys, "outdated", "--recipes", str(recipes), "--index-url", index.simple)
    assert (code, out_all) == (1, out)


def test_bump_no_build_adds_the_version_keeping_the_file_byte_for_byte(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upload(index, [kilnfix_sdist("1.1.0", tmp_path)], ago(days=10))
    code, out, _ = kiln(capsys, "bump", "--no-build", "--recipes", str(recipes), "--index-url", index.simple,
                        "--home", str(tmp_path / "home"))
    assert code == 0
    assert out[-1] == f"added 1.1.0 to {recipes / 'kilnfix.yaml'}"
    assert (recipes / "kilnfix.yaml").read_text() == RECIPE.replace(
        'versions: ["1.0.0"]   # the first release', 'versions: ["1.0.0", "1.1.0"]   # the first release')
    assert not (tmp_path / "home").exists()  # --no-build builds nothing, touches no home
    assert kiln(capsys, "outdated", "kilnfix", "--recipes", str(recipes), "--index-url", index.simple)[:2] == (0, [])


def test_bump_of_a_version_that_fails_to_build_leaves_the_recipe_unchanged(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upload(index, [kilnfix_sdist("1.1.0", tmp_path, broken=True)], ago(days=10))
    before = (recipes / "kilnfix.yaml").read_bytes()
    code, out, err = kiln(capsys, "bump", "--recipes", str(recipes), "--index-url", index.simple,
                          "--home", str(tmp_path / "home"))
    assert code == BumpError.exit_code
    assert (recipes / "kilnfix.yaml").read_bytes() == before
    assert sorted(p.name for p in recipes.iterdir()) == ["kilnfix.yaml", "toolchains.yaml"]
    failed = [line for line in out if line.startswith("FAILED ")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED kilnfix-1.1.0-cp{PY.replace('.', '')}-main")
    assert "kilnfix 1.1.0: this platform is not supported" in failed[0], out
    assert "new version(s) not added" in err


def test_bump_builds_the_new_version_before_writing_it(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upload(index, [kilnfix_sdist("1.1.0", tmp_path)], ago(days=10))
    code, out, _ = kiln(capsys, "bump", "--recipes", str(recipes), "--index-url", index.simple,
                        "--home", str(tmp_path / "home"))
    assert code == 0, out
    assert any(line.startswith(f"built kilnfix-1.1.0-cp{PY.replace('.', '')}-main") for line in out), out
    assert out[-1] == f"added 1.1.0 to {recipes / 'kilnfix.yaml'}"
    assert list((tmp_path / "home" / "wheelhouse").glob("kilnfix-1.1.0*.whl"))


@pytest.mark.e2e
def test_kiln_up_publishes_the_version_bump_added(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the bump is for: the next `kiln up` builds the new version and the mirror serves it
    beside the old one (a real devpi-server behind nginx, on 127.0.0.1, stopped after)."""
    import urllib.request

    from kiln_testing.tools import free_port

    upload(index, [kilnfix_sdist("1.1.0", tmp_path)], ago(days=10))
    assert kiln(capsys, "bump", "--no-build", "--recipes", str(recipes), "--index-url", index.simple)[0] == 0
    home, port = tmp_path / "home", free_port()
    try:
        code, out, err = kiln(capsys, "up", "--recipes", str(recipes), "--home", str(home), "--port", str(port),
                              "--index-url", index.simple, "--upstream", index.simple)
        assert code == 0, out + [err]
        assert "built 2, uploaded 2, already published 0, failed 0" in out, out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/kiln/main/+simple/kilnfix/", timeout=30) as page:
            html = page.read().decode()
        tag = f"cp{PY.replace('.', '')}"
        assert f"kilnfix-1.0.0-{tag}-{tag}-" in html and f"kilnfix-1.1.0-{tag}-{tag}-" in html, html
    finally:
        kiln(capsys, "stop", "--home", str(home))


def test_append_to_list_keeps_a_block_list_and_its_comments(tmp_path: Path) -> None:
    text = "# head\nproject: x\nversions:\n    - '1.0'   # first\n    - '1.1'\nbuild: {}  # tail\n"
    assert append_to_list(text, "versions", ["1.2"], tmp_path / "x.yaml") == \
        "# head\nproject: x\nversions:\n    - '1.0'   # first\n    - '1.1'\n    - '1.2'\nbuild: {}  # tail\n"
    flow = 'project: x\nversions: ["1.0"]\n'
    assert append_to_list(flow, "versions", ["1.1", "2.0"], tmp_path / "x.yaml") == \
        'project: x\nversions: ["1.0", "1.1", "2.0"]\n'


NEW_MINOR = """\
  "2.15":
    release: "2.15.0"
    python: ["3.12", "3.13"]
    cxx11_abi: true
    cxx_std: 20
    builds:
      "13.0": pypi
      "12.8": pytorch
      cpu: pypi
"""


@pytest.fixture
def torch_upstream(index: StaticIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StaticIndex]:
    """torch 2.14.2 and 2.15.0 on the default index (2.15.0's wheels: the CUDA 13.0 build, C++20,
    for CPython 3.12, 3.13 and 3.14, a Python kiln does not know), and a PyTorch index (PEP 503
    HTML only, as that index is) whose cu128 build has 2.15.0 and whose cu126 build has not."""
    when = ago(days=5)
    made = tmp_path / "torch"
    made.mkdir()
    upload(index, [make_torch_stand_in("2.14.2", made),
                   *(make_torch_release("2.15.0", "13.0", py, made, cxx_std=20) for py in ("3.12", "3.13", "3.14"))],
           when)
    pytorch = StaticIndex(tmp_path / "pytorch")
    for build, version in (("cu128", "2.15.0+cu128"), ("cu126", "2.14.2+cu126")):
        page = pytorch.root / build / "torch"
        page.mkdir(parents=True)
        wheel = make_torch_release(version, f"{build[2:4]}.{build[4:]}", "3.12", page)
        page.joinpath("index.html").write_text(
            f'<!DOCTYPE html><html><body>\n<a href="{wheel.name.replace("+", "%2B")}">{wheel.name}</a>\n'
            "</body></html>\n")
    pytorch.start()
    monkeypatch.setenv("KILN_PYTORCH_INDEX_URL", pytorch.url)
    yield pytorch
    pytorch.stop()


def test_bump_toolchains_writes_the_new_release_and_the_new_minor_from_its_wheels(
        index: StaticIndex, torch_upstream: StaticIndex, recipes: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    table = recipes / "toolchains.yaml"
    before = table.read_text()
    code, out, err = kiln(capsys, "bump", "--toolchains", "--no-build", "torch", "--recipes", str(recipes),
                          "--index-url", index.simple)
    assert code == 0, (out, err)
    assert out[-2:] == [
        f"torch 2.14: release 2.14.2 in {table}",
        f"added torch 2.15 (2.15.0; Pythons 3.12, 3.13; builds 13.0 from pypi, 12.8 from pytorch, cpu from pypi; "
        f"C++20, cxx11_abi true) to {table}"]
    old_head = 'torch:\n  "2.14":\n    release: "2.14.1"\n'
    assert old_head in before
    assert table.read_text() == before.replace(
        old_head, 'torch:\n' + NEW_MINOR + '  "2.14":\n    release: "2.14.2"\n')
    # the comment inside 2.14's builds came through byte for byte
    assert '      "13.0": pypi        # the default index\'s torch 2.14 is the CUDA 13.0 build\n' in table.read_text()
    # the table is current now, but for torch 2.15's wheels for a Python kiln does not know yet
    code, out, _ = kiln(capsys, "outdated", "torch", "--recipes", str(recipes), "--index-url", index.simple)
    assert (code, out) == (1, [f"torch 2.15: 2.15.0 has wheels for Python 3.14, which the table's python list "
                               f"lacks (uploaded {ago(days=5):%Y-%m-%d})"])


TORCH_RECIPE = RECIPE.replace(f'  python: ["{PY}"]\n', f'  python: ["{PY}"]\n  torch: ["2.14"]\n  cuda: [cpu]\n')


@pytest.mark.parametrize("broken", [False, True])
def test_bump_toolchains_builds_the_cells_of_a_new_release_before_writing_the_table(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: bool) -> None:
    """torch 2.14.2 appears: the recipe's torch 2.14 cell is built against it (the edited table)
    before the table is written; a 2.14.2 that does not install leaves the table byte for byte."""
    from kiln_testing.wheels import make_wheel

    (recipes / "kilnfix.yaml").write_text(TORCH_RECIPE)
    made = tmp_path / "torch"
    made.mkdir()
    files = {"torch/__init__.py": "__version__ = '2.14.2'\n", "torch/version.py": "cuda = None\n"}
    upload(index, [make_wheel("torch", "2.14.2", files, made, ("kiln-no-such-project",) if broken else ())],
           ago(days=5))
    table = recipes / "toolchains.yaml"
    before = table.read_bytes()
    code, out, err = kiln(capsys, "bump", "--toolchains", "torch", "--recipes", str(recipes),
                          "--index-url", index.simple, "--home", str(tmp_path / "home"))
    cell = f"kilnfix-1.0.0-cp{PY.replace('.', '')}-cpu-torch2.14"
    if not broken:
        assert code == 0, (out, err)
        assert any(line.startswith(f"built {cell}: kilnfix-1.0.0+cpu.torch2.14-") for line in out), out
        assert out[-1] == f"torch 2.14: release 2.14.2 in {table}"
        assert table.read_bytes() == before.replace(b'release: "2.14.1"', b'release: "2.14.2"', 1)
        return
    assert code == BumpError.exit_code, (out, err)
    assert table.read_bytes() == before
    failed = [line for line in out if line.startswith("FAILED ")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {table} not written: {cell}: "), out
    assert "kiln-no-such-project" in failed[0]


def test_outdated_names_the_pythons_a_minor_has_wheels_for_and_the_table_lacks(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = tmp_path / "torch"
    made.mkdir()
    # 2.14.1, the table's release of 2.14 (Pythons 3.10 to 3.13): wheels for 3.9 (older than the
    # table's oldest: left out on purpose), 3.12 and 3.14; a yanked 3.15 wheel does not count
    upload(index, [make_torch_release("2.14.1", "13.0", py, made) for py in ("3.9", "3.12", "3.14")], ago(days=400))
    upload(index, [make_torch_release("2.14.1", "13.0", "3.15", made)], ago(days=400), yanked=True)
    code, out, _ = kiln(capsys, "outdated", "torch", "--recipes", str(recipes), "--index-url", index.simple)
    assert (code, out) == (1, ["torch 2.14: 2.14.1 has wheels for Python 3.14, which the table's python list lacks "
                               f"(uploaded {StaticIndex.UPLOAD_TIME[:10]})"])
    code, out, _ = kiln(capsys, "outdated", "--json", "torch", "--recipes", str(recipes), "--index-url", index.simple)
    import json
    assert [(f["kind"], f["current"], f["new"]) for f in json.loads("\n".join(out))["outdated"]] == \
        [("torch-python", "2.14.1", "3.14")]


def test_bump_toolchains_names_what_it_cannot_read_and_does_not_write_the_minor(
        index: StaticIndex, torch_upstream: StaticIndex, recipes: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_PYTORCH_INDEX_URL")
    table = recipes / "toolchains.yaml"
    before = table.read_text()
    code, out, err = kiln(capsys, "bump", "--toolchains", "--no-build", "torch", "--recipes", str(recipes),
                          "--index-url", index.simple)
    assert code == BumpError.exit_code
    assert f"torch 2.14: release 2.14.2 in {table}" in out  # the patch release is still written
    assert table.read_text() == before.replace('release: "2.14.1"', 'release: "2.14.2"')
    assert err.strip().endswith(
        f"torch 2.15 (2.15.0) not added to {table}, its wheels do not say: the pytorch index's CUDA builds: "
        "KILN_PYTORCH_INDEX_URL is not set"), err


def test_the_wheel_is_read_by_range_requests_where_the_server_serves_ranges(tmp_path: Path) -> None:
    """Two files of a torch wheel read through HTTP ranges (a zip's directory is at its end), no
    download: every request the server sees asks for a range."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from kiln.torchtable import wheel_facts

    wheel = make_torch_release("2.15.0", "12.8", "3.12", tmp_path, cxx_std=17)
    seen: list[str | None] = []

    class Ranged(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Range"))
            data = wheel.read_bytes()
            start, _, end = self.headers["Range"].removeprefix("bytes=").partition("-")
            part = data[int(start):int(end) + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{int(start) + len(part) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            self.wfile.write(part)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Ranged, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        facts, missing = wheel_facts(f"http://127.0.0.1:{server.server_address[1]}/{wheel.name}")
    finally:
        server.shutdown()
        server.server_close()
    assert (facts.cuda, facts.cxx_std, facts.cxx11_abi, missing) == ("12.8", 17, True, [])
    assert seen and all(r is not None for r in seen)


# ----------------------------------------------------------------------------- plan and the page: newest upstream


def test_plan_and_the_status_page_show_the_newest_upstream_release(
        index: StaticIndex, recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.delenv("KILN_OFFLINE")
    upload(index, [kilnfix_sdist("1.1.0", tmp_path)], ago(days=10))
    upload(index, [kilnfix_sdist("1.2.0rc1", tmp_path)], ago(days=10))  # a pre-release is not the newest
    args = ["--recipes", str(recipes), "--home", str(tmp_path / "home"), "--index-url", index.simple]
    code, out, _ = kiln(capsys, "plan", "--json", *args)
    rows = json.loads("\n".join(out))
    assert code == 0 and {(r["project"], r["upstream"], r["upstream_on_mirror"]) for r in rows} == \
        {("kilnfix", "1.1.0", False)}
    code, out, _ = kiln(capsys, "plan", *args)
    assert code == 0
    cells = [[c.strip() for c in line.split("│")[1:4]] for line in out if "1.1.0" in line]
    assert cells == [["kilnfix", "1.1.0", "no"]]

    code, out, _ = kiln(capsys, "status", "--json", *args)
    project = json.loads("\n".join(out))["projects"][0]
    assert (project["project"], project["upstream"], project["upstream_why"], project["mirror_has_upstream"]) == \
        ("kilnfix", "1.1.0", None, False)
    page = tmp_path / "page.html"
    assert kiln(capsys, "status", "--html", str(page), *args)[0] == 0
    assert "newest upstream: 1.1.0 &middot; on the mirror: no" in page.read_text()


def test_an_unreachable_index_or_offline_is_unknown_not_a_failure(
        recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import socket

    monkeypatch.delenv("KILN_OFFLINE")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/simple/"
    args = ["--recipes", str(recipes), "--home", str(tmp_path / "home")]
    code, out, _ = kiln(capsys, "plan", "--json", *args, "--index-url", dead)
    rows = json.loads("\n".join(out))
    assert code == 0 and {(r["upstream"], r["upstream_on_mirror"]) for r in rows} == {(None, None)}
    code, out, _ = kiln(capsys, "plan", *args, "--index-url", dead)
    assert code == 0 and any("kilnfix" in line and "unknown (" in line and "unreachable" in line for line in out), out
    code, out, _ = kiln(capsys, "status", "--json", *args, "--offline")
    project = json.loads("\n".join(out))["projects"][0]
    assert (project["upstream"], project["upstream_why"], project["mirror_has_upstream"]) == (None, "offline", None)
    page = tmp_path / "page.html"
    assert kiln(capsys, "status", "--html", str(page), *args, "--offline")[0] == 0
    assert "newest upstream: unknown (offline) &middot; on the mirror: unknown" in page.read_text()


def test_the_mirror_has_the_newest_release_when_a_cell_of_it_is_published() -> None:
    from kiln.plan import CellStatus, Status, mirror_has

    def row(version: str, status: Status) -> CellStatus:
        return CellStatus(cell=f"kilnfix-{version}-cp311-main", project="kilnfix", version=version, python="3.11",
                          variant="main", torch=None, cuda=None, cuda_archs=None, status=status)

    rows = [row("1.0.0", Status.PUBLISHED), row("1.1.0", Status.BUILT)]
    assert mirror_has(rows, "kilnfix", "1.1.0") is False
    assert mirror_has(rows, "KilnFix", "1.0.0") is True
    assert mirror_has(rows, "kilnfix", None) is None


def test_the_cxx_standard_and_abi_as_torch_releases_write_them() -> None:
    """TorchConfig.cmake as torch 2.14 writes it (CXX_STANDARD, the ABI flag) and as 2.15 does
    (a cxx_std_20 compile feature, no ABI flag: libc10.so's symbols say it)."""
    from kiln.torchtable import cmake_facts, libc10_abi

    assert cmake_facts('set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=0")\n'
                       "set_target_properties(torch PROPERTIES\n    CXX_STANDARD 17\n)\n") == (17, False)
    assert cmake_facts('  if("cxx_std_20" IN_LIST CMAKE_CXX_COMPILE_FEATURES)\n'
                       "    target_compile_features(torch INTERFACE cxx_std_20)\n") == (20, None)
    assert cmake_facts("find_package(Caffe2 REQUIRED)\n") == (None, None)
    assert libc10_abi(b"\0_ZNK3c1011StringUtil2clENSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE\0")
    assert not libc10_abi(b"\0_ZN3c106detail19torchCheckFailEPKcS2_jRKSs\0")

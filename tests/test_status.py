"""The status page and its JSON, for a fixture home: recipes from tests/helpers, cell results
and small wheels written here (no build). The page is loaded in headless Chromium, its DOM
checked for every cell and status, and a screenshot kept under the test's tmp dir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from kiln_testing.fixtures import kilnfix_recipe, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.provenance import provenance_json
from kiln_testing.tools import free_port

from kiln import status
from kiln.cli import main
from kiln.home import CellResult, Home
from kiln.matrix import Cell, expand
from kiln.plan import Status, cell_status
from kiln.recipe import load_recipes
from kiln.toolchains import Toolchains, load_toolchains

MIRROR = "http://kiln-mirror.internal:3141"
KERN = """\
project: kilnkern
versions: ["1.0.0"]
build:
  cuda_archs: "8.0;9.0"
  gpus: {min: "8.0", reason: "its kernels need Ampere"}
matrix:
  torch: ["2.14"]
  cuda: ["13.0", "12.8", "cpu"]
  python: ["3.11", "3.12"]
"""
FOUND = {"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"], "with_device_code": ["kilnkern/_kern.so"],
         "without_device_code": []}
FAILED_ERROR = ("kilnkern-1.0.0+cu130.torch2.14-cp312-cp312-linux_x86_64.whl: CUDA architectures asked for "
                "(8.0;9.0) missing from the wheel: sm_90 (found sm_80) <script>alert(1)</script>")
# cell -> the status the fixture gives it
EXPECTED = {
    "kilnfix-1.0.0-cp311-main": Status.PUBLISHED,
    "kilnfix-1.0.0-cp312-main": Status.MISSING,
    "kilnkern-1.0.0-cp311-cu130-torch2.14": Status.BUILT,
    "kilnkern-1.0.0-cp312-cu130-torch2.14": Status.FAILED,
    "kilnkern-1.0.0-cp311-cu128-torch2.14": Status.NOT_BUILDABLE,
    "kilnkern-1.0.0-cp312-cu128-torch2.14": Status.NOT_BUILDABLE,
    "kilnkern-1.0.0-cp311-cpu-torch2.14": Status.STALE,
    "kilnkern-1.0.0-cp312-cpu-torch2.14": Status.PUBLISHED,
}


@dataclass
class Fixture:
    recipes: Path
    home: Home
    toolchains: Toolchains
    cells: list[Cell]
    published: dict[str, list[str]]

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.cells if c.id == cell_id)


def fake_wheel(dest: Path, name: str, kiln_json: str, payload: int) -> Path:
    """A wheel named ``name`` with kiln's provenance (``kiln_json``) and ``payload`` bytes of data."""
    dist, version = name.split("-")[:2]
    info = f"{dist}-{version}.dist-info"
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest / name, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(f"{dist}/_data.bin", os.urandom(payload))
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/kiln.json", kiln_json)
    return dest / name


@pytest.fixture
def fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fixture:
    """Two recipes, eight cells: published, built, failed, stale, not buildable (the cu128 torch
    needs KILN_PYTORCH_INDEX_URL, unset here) and missing."""
    monkeypatch.delenv("KILN_PYTORCH_INDEX_URL", raising=False)
    # Every Python counts as found, so that no cell's status depends on this host's interpreters.
    monkeypatch.setattr("kiln.matrix.find_python", lambda minor: Path(sys.executable))
    recipes = recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe()), ("kilnkern.yaml", KERN))
    toolchains = load_toolchains(recipes)
    cells = expand(load_recipes(recipes, None), toolchains)
    home = Home(tmp_path / "home")
    fx = Fixture(recipes, home, toolchains, cells, {})
    assert {c.id for c in cells} == set(EXPECTED)

    def wheel(cell_id: str, name: str, payload: int, **prov: object) -> None:
        cell = fx.cell(cell_id)
        fake_wheel(home.wheelhouse, name,
                   provenance_json(cell_id, cell.variant.name, recipe_sha256=cell.recipe.sha256, **prov), payload)

    def result(cell_id: str, st: str, seconds: float, **more: object) -> None:
        log = home.logs / f"{cell_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"kiln 0.1.0: building {cell_id}\n" + ("kiln: FAILED: see above\n" if st == "failed" else ""))
        CellResult(cell=cell_id, status=st, log=str(log), seconds=seconds, **more).save(home)  # type: ignore[arg-type]

    fix311 = "kilnfix-1.0.0-cp311-cp311-linux_x86_64.whl"
    wheel("kilnfix-1.0.0-cp311-main", fix311, 20_000)
    result("kilnfix-1.0.0-cp311-main", "built", 41.0, wheel=fix311)
    kern_cu = "kilnkern-1.0.0+cu130.torch2.14-cp311-cp311-linux_x86_64.whl"
    wheel("kilnkern-1.0.0-cp311-cu130-torch2.14", kern_cu, 300_000, cuda_archs_found=FOUND)
    result("kilnkern-1.0.0-cp311-cu130-torch2.14", "built", 754.0, wheel=kern_cu, cuda_archs="8.0;9.0",
           cuda_archs_found=FOUND)
    result("kilnkern-1.0.0-cp312-cu130-torch2.14", "failed", 600.0, error=FAILED_ERROR)
    stale = "kilnkern-1.0.0+cpu.torch2.14-cp311-cp311-linux_x86_64.whl"
    fake_wheel(home.wheelhouse, stale, provenance_json("kilnkern-1.0.0-cp311-cpu-torch2.14", "cpu-torch2.14",
                                                        recipe_sha256="0" * 64), 1000)
    cpu312 = "kilnkern-1.0.0+cpu.torch2.14-cp312-cp312-linux_x86_64.whl"
    wheel("kilnkern-1.0.0-cp312-cpu-torch2.14", cpu312, 5000)
    fx.published = {"main": [fix311], "cpu-torch2.14": [cpu312], "cu130-torch2.14": [], "cu128-torch2.14": []}
    return fx


def collect(fx: Fixture, served: bool = False) -> status.Page:
    rows = cell_status(status.unique(fx.cells), fx.toolchains, fx.home, fx.home.wheelhouse, fx.published)
    return status.collect(rows, fx.cells, fx.home, MIRROR, served=served)


def cells_of(page: status.Page) -> dict[str, status.CellView]:
    return {c.cell: c for p in page.projects for c in p.cells}


# ----------------------------------------------------------------------------- the JSON


def test_json_holds_every_cell_with_its_status_size_time_and_archs(fixture: Fixture) -> None:
    data = json.loads(status.render_json(collect(fixture)))
    cells = {c["cell"]: c for p in data["projects"] for c in p["cells"]}
    assert {k: v["status"] for k, v in cells.items()} == {k: str(v) for k, v in EXPECTED.items()}
    assert data["kiln_version"] and data["mirror"] == MIRROR
    assert data["counts"] == {"published": 2, "built": 1, "stale": 1, "failed": 1, "not-buildable": 2, "missing": 1,
                              "narrow": 0, "unserved": 0}

    built = cells["kilnkern-1.0.0-cp311-cu130-torch2.14"]
    assert built["size"] == (fixture.home.wheelhouse / built["wheel"]).stat().st_size > 300_000
    assert built["seconds"] == 754.0
    assert built["cuda_archs"] == "8.0;9.0"
    assert built["cuda_archs_found"]["sass"] == ["sm_80", "sm_90"]
    assert built["cuda_archs_found"]["ptx"] == ["compute_90"]

    failed = cells["kilnkern-1.0.0-cp312-cu130-torch2.14"]
    assert failed["detail"] == FAILED_ERROR and failed["seconds"] == 600.0
    assert failed["log_href"] == (fixture.home.logs / f"{failed['cell']}.log").as_uri()
    assert "KILN_PYTORCH_INDEX_URL" in cells["kilnkern-1.0.0-cp311-cu128-torch2.14"]["detail"]
    assert "was built from another kilnkern.yaml" in cells["kilnkern-1.0.0-cp311-cpu-torch2.14"]["detail"]
    missing = cells["kilnfix-1.0.0-cp312-main"]
    assert (missing["size"], missing["seconds"], missing["log_href"]) == (None, None, None)
    published = cells["kilnfix-1.0.0-cp311-main"]
    assert published["seconds"] == 41.0 and published["size"] > 20_000


def test_json_matrix_and_install_lines_per_variant(fixture: Fixture) -> None:
    data = json.loads(status.render_json(collect(fixture)))
    kern = next(p for p in data["projects"] if p["project"] == "kilnkern")
    assert kern["pythons"] == ["3.11", "3.12"]
    assert kern["variants"] == ["cpu-torch2.14", "cu128-torch2.14", "cu130-torch2.14"]
    variants = {v["name"]: v for v in data["variants"]}
    assert sorted(variants) == ["cpu-torch2.14", "cu128-torch2.14", "cu130-torch2.14", "main"]
    cu130 = variants["cu130-torch2.14"]
    index = f"{MIRROR}/kiln/cu130-torch2.14/+simple/"
    assert cu130["index_url"] == index and cu130["projects"] == ["kilnkern"]
    assert cu130["install"]["uv"] == f"uv pip install --index-url {index} kilnkern"
    # a plain-http mirror on another host: pip needs it trusted
    assert cu130["install"]["pip"] == f"pip install --index-url {index} --trusted-host kiln-mirror.internal kilnkern"
    assert cu130["install"]["pixi"] == "pixi add --pypi kilnkern"
    assert f'index-url = "{index}"' in cu130["config"]["pixi"] and index in cu130["config"]["uv"]
    assert variants["main"]["projects"] == ["kilnfix"]


def test_kiln_status_json_and_html_from_the_command_line(fixture: Fixture, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "out" / "status.html"
    assert main(["status", "--recipes", str(fixture.recipes), "--home", str(fixture.home.root),
                 "--json", "--html", str(page)]) == 0
    data = json.loads(capsys.readouterr().out)
    cells = {c["cell"]: c["status"] for p in data["projects"] for c in p["cells"]}
    # no mirror given and none running for the home: nothing counts as published
    assert cells["kilnfix-1.0.0-cp311-main"] == "built"
    assert data["mirror"] is None
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "kilnkern-1.0.0-cp311-cu130-torch2.14" in text


def test_plan_shows_the_archs_found(fixture: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--recipes", str(fixture.recipes), "--home", str(fixture.home.root)]
    assert main([*args, "--json"]) == 0
    rows = {r["cell"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["kilnkern-1.0.0-cp311-cu130-torch2.14"]["cuda_archs_found"]["sass"] == ["sm_80", "sm_90"]
    assert rows["kilnfix-1.0.0-cp311-main"]["cuda_archs_found"] is None
    assert main(args) == 0
    assert "sm_80 sm_90 compute_90" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the page


def test_page_escapes_what_it_shows_and_fetches_nothing(fixture: Fixture) -> None:
    text = status.render_html(collect(fixture))
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for external in ("http-equiv", "<link", "<img", "<script", "@import", "url("):
        assert external not in text
    assert " src=" not in text


def test_served_site_carries_the_failed_logs_only(fixture: Fixture, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    page = collect(fixture, served=True)
    failed = "kilnkern-1.0.0-cp312-cu130-torch2.14"
    linked = {c.cell: c.log_href for c in cells_of(page).values() if c.log_href}
    assert linked == {failed: f"logs/{failed}.log"}
    site = tmp_path / "site"
    (site / "logs").mkdir(parents=True)
    (site / "logs" / "gone.log").write_text("a log no cell links any more\n")
    monkeypatch.setattr(status, "LOG_TAIL_BYTES", 30)  # the last line and a part of the one before
    index = status.write_site(page, site, [fixture.home.logs / f"{failed}.log"])
    assert index == site / "index.html" and 'href="logs/' in index.read_text()
    assert json.loads((site / "status.json").read_text())["counts"]["failed"] == 1
    assert sorted(p.name for p in (site / "logs").iterdir()) == [f"{failed}.log"]
    served = (site / "logs" / f"{failed}.log").read_text()
    assert served == f"[kiln: the first {len(f'kiln 0.1.0: building {failed}') + 1} bytes of {failed}.log left out]\n" \
        "kiln: FAILED: see above\n"


def test_site_dir_is_in_the_mirrors_nginx_prefix(tmp_path: Path) -> None:
    from kiln.mirror.server import ServerFiles

    home = Home(tmp_path)
    assert status.site_dir(home) == ServerFiles(home).nginx / "status"
    assert status.refresh(home, [], load_toolchains(recipes_dir(tmp_path / "r"))) is None  # no mirror runs


# ----------------------------------------------------------------------------- in a browser


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get where it is missing and this runs as root."""
    found = _find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed, and installing it needs root and apt-get "
                    "(`apt-get install chromium` on Debian)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    res = subprocess.run(install, capture_output=True, text=True, env=env, timeout=1200)
    if res.returncode != 0:  # the package lists may be missing or old
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=600)
        res = subprocess.run(install, capture_output=True, text=True, env=env, timeout=1200)
    found = _find_chromium()
    if found is None:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {last}")
    return found


def _headless(chromium: str, profile: Path) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
            "--hide-scrollbars"]


class _Dom(HTMLParser):
    """The cells (td with data-cell) and their text, the install lines and a few ids."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.install: list[tuple[str, str]] = []
        self.by_id: dict[str, str] = {}
        self._cell: str | None = None
        self._depth = 0
        self._pre: str | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-cell" in a:
            self._cell, self._depth = a["data-cell"], 0
            self.cells[self._cell] = a
            self.text[self._cell] = ""
        elif self._cell is not None:
            self._depth += tag not in ("br",)
        if tag == "a" and self._cell is not None:
            self.links[self._cell] = a.get("href", "")
        if tag == "pre" and "data-client" in a:
            self._pre = a["data-client"]
            self.install.append((self._pre, ""))
        if tag == "span" and "id" in a:
            self._id = a["id"]
            self.by_id[self._id] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._cell is not None:
            if tag == "td" and self._depth == 0:
                self._cell = None
            elif tag != "br":
                self._depth -= 1
        if tag == "pre":
            self._pre = None
        if tag == "span":
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.text[self._cell] += data + " "
        if self._pre is not None:
            client, text = self.install[-1]
            self.install[-1] = (client, text + data)
        if self._id is not None:
            self.by_id[self._id] += data


def test_page_in_headless_chromium(fixture: Fixture, chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "status.html"
    page.write_text(status.render_html(collect(fixture)), encoding="utf-8")
    profile = tmp_path / "chromium-profile"
    res = subprocess.run([*_headless(chromium, profile), "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _Dom()
    dom.feed(res.stdout)

    assert {cell: attrs["data-status"] for cell, attrs in dom.cells.items()} == {k: str(v) for k, v in EXPECTED.items()}
    for cell, st in EXPECTED.items():
        assert dom.cells[cell]["class"].split() == ["cell", f"status-{st}"]
        assert str(st) in dom.text[cell]
    built = dom.text["kilnkern-1.0.0-cp311-cu130-torch2.14"]
    assert "12m 34s" in built and "KB" in built and "sm_80 sm_90 compute_90" in built
    failed = "kilnkern-1.0.0-cp312-cu130-torch2.14"
    assert "<script>alert(1)</script>" in dom.text[failed]  # shown as text, not run
    assert dom.links[failed] == (fixture.home.logs / f"{failed}.log").as_uri()
    assert "KILN_PYTORCH_INDEX_URL" in dom.text["kilnkern-1.0.0-cp311-cu128-torch2.14"]
    assert dom.by_id["mirror"] == MIRROR and dom.by_id["kiln-version"]
    installs = {f"{client}:{text.split('+simple/')[0]}": text for client, text in dom.install}
    assert installs[f"uv:uv pip install --index-url {MIRROR}/kiln/cu130-torch2.14/"].endswith("kilnkern")
    assert any(client == "pixi" and text == "pixi add --pypi kilnfix" for client, text in dom.install)

    shot = tmp_path / "status.png"
    res = subprocess.run([*_headless(chromium, profile), f"--screenshot={shot}", "--window-size=1500,1400",
                          page.as_uri()], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


# ----------------------------------------------------------------------------- on the running mirror


@pytest.mark.e2e
def test_refresh_writes_the_page_the_mirror_serves(fixture: Fixture, upstream: StaticIndex) -> None:
    """What `kiln up` and `kiln publish` do at their end: the page and the failed cells' logs in
    the home's nginx prefix, served at /+kiln/."""
    from kiln import mirror

    port = free_port()
    variants = sorted({c.variant for c in fixture.cells}, key=str)
    mirror.serve(fixture.home, variants, fixture.toolchains,
                 mirror.ServeOptions(host="127.0.0.1", port=port, upstream=upstream.simple, background=True))
    try:
        url = status.refresh(fixture.home, fixture.cells, fixture.toolchains)
        assert url == f"http://127.0.0.1:{port}/+kiln/"
        site = status.site_dir(fixture.home)
        failed = "kilnkern-1.0.0-cp312-cu130-torch2.14"
        data = json.loads((site / "status.json").read_text())
        assert data["mirror"] == f"http://127.0.0.1:{port}"
        cells = {c["cell"]: c["status"] for p in data["projects"] for c in p["cells"]}
        assert cells["kilnfix-1.0.0-cp311-main"] == "built"  # in the wheelhouse, not on this fresh mirror
        assert [p.name for p in (site / "logs").iterdir()] == [f"{failed}.log"]
        if "/+kiln/" not in (mirror.ServerFiles(fixture.home).nginx / "nginx.conf").read_text():
            pytest.skip("the mirror's nginx.conf has no location /+kiln/ yet (kiln.mirror.deploy)")
        with urllib.request.urlopen(url, timeout=30) as res:
            assert res.headers.get_content_type() == "text/html"
            assert f'data-cell="{failed}"' in res.read().decode()
        with urllib.request.urlopen(f"{url}logs/{failed}.log", timeout=30) as res:
            assert res.headers.get_content_type() == "text/plain"
            assert "kiln: FAILED" in res.read().decode()
    finally:
        mirror.stop(fixture.home)

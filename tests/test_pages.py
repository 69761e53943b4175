"""Project pages kept as files (kiln/mirror/pages.py): nginx serves a warm page as devpi's plugin
answered it, and a change to the project removes it at once, on every deployment.

A page nginx serves from the store carries none of devpi's ``X-Devpi-*`` headers: that is how
these tests tell a kept page from devpi's answer.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kiln_testing.deploy import Deployment, upload
from kiln_testing.index import StaticIndex
from kiln_testing.wheels import make_kiln_wheel, make_wheel

from kiln import mirror
from kiln.home import Home
from kiln.matrix import Variant
from kiln.mirror.api import Devpi
from kiln.mirror.layout import PYPI_INDEX
from kiln.mirror.pages import CACHED_ACCEPT, PAGE_FILE, SIMPLE_JSON, PageStore, touched
from kiln.mirror.server import root_credentials

VARIANT = "cpu-torch2.14"
FRESH_S = 1.0  # the promise: a published wheel is on every page within a second
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


# ----------------------------------------------------------------------------- the store alone


def test_a_change_names_the_projects_whose_pages_it_touches() -> None:
    assert touched({"kiln/main/Foo_Bar/1.0/.config": ("PROJVERSION", 3, {})}) == {"foo-bar"}
    assert touched({"root/pypi/numpy/.simple": ("PROJSIMPLELINKS", 3, {})}) == {"numpy"}
    # a file: its meta names the project; a removed one, its file name
    assert touched({"kiln/main/+f/abc/def/x-1.0-py3-none-any.whl": ("STAGEFILE", 3, {"project": "X"})}) == {"x"}
    assert touched({"kiln/main/+f/abc/def/Some.Thing-1.0.tar.gz": ("STAGEFILE", 3, None)}) == {"some-thing"}
    # an index's or a user's configuration: any page
    assert touched({"kiln/.config": ("USER", 3, {})}) is None
    assert touched({"kiln/main/+f/abc/def/README": ("STAGEFILE", 3, None)}) is None
    # what no page shows
    assert touched({"root/pypi/+e/x/y": ("PYPIFILE_NOMD5", 3, {})}) == set()


def test_the_store_keeps_what_no_later_change_touched(tmp_path: Path) -> None:
    store = PageStore(tmp_path / "+pages")
    store.reset()
    page = "/kiln/main/+simple/foo/"
    assert store.keep(page, "foo", b"{}", read_at=5, expires=None)
    assert store.path_of(page).read_bytes() == b"{}"
    store.changed(7, {"foo"})
    assert not store.path_of(page).exists()
    # a page read before the change it did not see is not written
    assert not store.keep(page, "foo", b"old", read_at=6, expires=None)
    assert not store.path_of(page).exists()
    assert store.keep(page, "foo", b"new", read_at=7, expires=None)
    # another project is untouched; a change of anything removes every page
    assert store.keep("/kiln/cpu-torch2.14/+simple/bar/", "bar", b"bar", read_at=1, expires=None)
    store.changed(8, {"foo"})
    assert store.path_of("/kiln/cpu-torch2.14/+simple/bar/").exists()
    store.changed(9, None)
    assert not list((tmp_path / "+pages").rglob(PAGE_FILE))
    assert not store.keep("/kiln/main/+simple/bar/", "bar", b"bar", read_at=8, expires=None)


def test_the_store_keeps_only_canonical_project_pages(tmp_path: Path) -> None:
    store = PageStore(tmp_path / "+pages")
    store.reset()
    for path in ("/kiln/main/+simple/Foo_Bar/", "/kiln/main/+simple/", "/kiln/main/+simple/foo",
                 "/kiln/../+simple/foo/", "/kiln/main/foo/", "/+kiln/main/+simple/foo/"):
        assert not store.keep(path, "foo", b"{}", read_at=1, expires=None), path
    assert not list((tmp_path / "+pages").rglob("*.json"))


def test_expired_pages_go_and_the_rest_stay(tmp_path: Path) -> None:
    store = PageStore(tmp_path / "+pages")
    store.reset()
    store.keep("/root/pypi/+simple/up/", "up", b"{}", read_at=1, expires=100.0)
    store.keep("/kiln/main/+simple/own/", "own", b"{}", read_at=1, expires=None)
    store.sweep(99.0)
    assert store.path_of("/root/pypi/+simple/up/").exists()
    store.sweep(100.0)
    assert not store.path_of("/root/pypi/+simple/up/").exists()
    assert store.path_of("/kiln/main/+simple/own/").exists()


def test_a_paused_store_keeps_nothing(tmp_path: Path) -> None:
    store = PageStore(tmp_path / "+pages")
    store.reset()
    store.paused = True
    assert not store.keep("/kiln/main/+simple/foo/", "foo", b"{}", read_at=1, expires=None)


# ----------------------------------------------------------------------------- through nginx, every deployment


def get(url: str, accept: str | None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def is_kept(headers: dict[str, str]) -> bool:
    """Served by nginx from the page store, not rendered by devpi."""
    return not any(h.lower().startswith("x-devpi-") for h in headers)


def filenames(body: bytes) -> set[str]:
    return {f["filename"] for f in json.loads(body)["files"]}


def warm(page: str) -> bytes:
    """Read ``page`` as uv does until nginx serves it from the store; its body. (A replica keeps
    a page only once it holds the files it lists: that may take a moment.)"""
    for _ in range(50):
        status, headers, body = get(page, CACHED_ACCEPT[1])
        assert status == 200, (page, status, body[:200])
        if is_kept(headers):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{page} was not kept")


def shows_within(page: str, filename: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if filename in filenames(get(page, CACHED_ACCEPT[1])[2]):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@pytest.fixture(scope="module")
def published(deployment: Deployment, upstream: StaticIndex, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kilnpage 1.0 on kiln/cpu-torch2.14; a directory for more wheels."""
    wheels = tmp_path_factory.mktemp("kilnpage")
    primary = mirror.url_for("127.0.0.1", deployment.port)
    mirror.configure(Home(deployment.home), primary, [Variant.parse(VARIANT)], None, upstream.simple)
    upload(deployment, VARIANT, make_kiln_wheel("kilnpage", "1.0", VARIANT, wheels))
    return wheels


@pytest.mark.e2e
def test_a_kept_page_is_what_devpi_answered_to_uv_and_pip(deployment: Deployment, published: Path) -> None:
    """Every Accept header of CACHED_ACCEPT gets the same PEP 691 page, byte for byte, from the
    store as from devpi (a query string takes a request past the store): PEP 658 core-metadata and
    PEP 700 upload-time and size included."""
    page = f"{mirror.simple_url(deployment.url, VARIANT)}kilnpage/"
    kept = warm(page)
    for accept in CACHED_ACCEPT:
        status, headers, body = get(page, accept)
        assert status == 200 and is_kept(headers) and body == kept, (accept, headers)
        devpi = get(f"{page}?past-the-store", accept)
        assert devpi[0] == 200 and not is_kept(devpi[1]), (accept, devpi[1])
        assert headers["Content-Type"] == devpi[1]["Content-Type"] == SIMPLE_JSON
        assert devpi[2] == body
    (entry,) = json.loads(kept)["files"]
    assert entry["core-metadata"]["sha256"] and entry["upload-time"] and entry["size"] > 0, entry


@pytest.mark.e2e
@pytest.mark.parametrize(("accept", "content_type"), [
    ("text/html", "text/html"),
    (None, "text/html"),
    (BROWSER_ACCEPT, "text/html"),
    ("application/vnd.pypi.simple.v1+json;q=0.5, text/html", "text/html"),
])
def test_other_accept_headers_are_negotiated_by_devpi_as_before(deployment: Deployment, published: Path,
                                                                accept: str | None, content_type: str) -> None:
    page = f"{mirror.simple_url(deployment.url, VARIANT)}kilnpage/"
    warm(page)
    for _ in range(2):
        status, headers, body = get(page, accept)
        assert status == 200 and not is_kept(headers), (accept, headers)
        assert headers["Content-Type"].split(";")[0] == content_type, headers
        assert b"kilnpage-1.0+cpu.torch2.14-py3-none-any.whl" in body
        assert b'data-core-metadata="sha256=' in body  # the plugin's HTML, as before


@pytest.mark.e2e
def test_a_published_wheel_is_on_the_kept_page_within_a_second(deployment: Deployment, published: Path) -> None:
    page = f"{mirror.simple_url(deployment.url, VARIANT)}kilnpage/"
    assert "kilnpage-1.1+cpu.torch2.14-py3-none-any.whl" not in filenames(warm(page))
    upload(deployment, VARIANT, make_kiln_wheel("kilnpage", "1.1", VARIANT, published))
    assert shows_within(page, "kilnpage-1.1+cpu.torch2.14-py3-none-any.whl", FRESH_S)
    assert filenames(warm(page)) == {"kilnpage-1.0+cpu.torch2.14-py3-none-any.whl",
                                     "kilnpage-1.1+cpu.torch2.14-py3-none-any.whl"}


@pytest.mark.e2e
def test_each_variant_index_keeps_its_own_page(deployment: Deployment, published: Path) -> None:
    """kiln/main and kiln/cpu-torch2.14 both show the upstream's kilnfix-helper until kiln
    publishes its own build to the variant index: then that index's page shows kiln's wheel alone
    (kiln's indexes let no upstream file in beside kiln's), and kiln/main's page stays the
    upstream's."""
    main = f"{mirror.simple_url(deployment.url, 'main')}kilnfix-helper/"
    variant = f"{mirror.simple_url(deployment.url, VARIANT)}kilnfix-helper/"
    upstream_files = {"kilnfix_helper-1.4.0-py3-none-any.whl", "kilnfix_helper-2.0.0-py3-none-any.whl"}
    assert filenames(warm(main)) == upstream_files
    assert filenames(warm(variant)) == upstream_files
    upload(deployment, VARIANT, make_kiln_wheel("kilnfix-helper", "3.0", VARIANT, published))
    assert shows_within(variant, "kilnfix_helper-3.0+cpu.torch2.14-py3-none-any.whl", FRESH_S)
    assert filenames(warm(variant)) == {"kilnfix_helper-3.0+cpu.torch2.14-py3-none-any.whl"}
    status, headers, body = get(main, CACHED_ACCEPT[1])
    assert status == 200 and filenames(body) == upstream_files, filenames(body)


@pytest.mark.e2e
def test_an_upstream_release_and_yank_reach_the_kept_page(deployment: Deployment, published: Path,
                                                          upstream: StaticIndex, tmp_path: Path) -> None:
    """A kept page with the upstream's files goes when devpi's own copy of the upstream's page
    expires (root/pypi's mirror_cache_expiry, 2 s here): the next read asks devpi, which asks the
    upstream, and a new release and a yank show as they would without the store."""
    primary = mirror.url_for("127.0.0.1", deployment.port)
    api = Devpi(primary, root_credentials(Home(deployment.home)))
    config = api.index(PYPI_INDEX) or {}
    api.request("PATCH", PYPI_INDEX, {**config, "mirror_cache_expiry": 2})
    deployment.settle()
    project = f"kilnrefresh-{deployment.name}"  # the upstream is the whole session's
    module = {f"{project.replace('-', '_')}/__init__.py": ""}
    old = make_wheel(project, "1.0", module, tmp_path)
    upstream.add([old])
    page = f"{mirror.simple_url(deployment.url, 'main')}{project}/"
    assert filenames(warm(page)) == {old.name}
    new = make_wheel(project, "1.1", module, tmp_path)
    upstream.yanked.add(old.name)
    upstream.add([new])
    deadline = time.monotonic() + 30  # 2 s of expiry, the store's sweep, devpi's fetch
    while True:
        files = {f["filename"]: f for f in json.loads(get(page, CACHED_ACCEPT[1])[2])["files"]}
        if new.name in files and files[old.name].get("yanked") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(files) == {old.name, new.name}, files
    assert files[old.name].get("yanked") and not files[new.name].get("yanked"), files
    assert filenames(warm(page)) == {old.name, new.name}

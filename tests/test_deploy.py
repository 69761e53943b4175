"""The mirror's deployments, without starting one: storage URLs, what a home may become, the
rendered files of mirror/, and how kiln's devpi plugin rewrites simple pages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import ConfigError, MirrorError
from kiln.home import Home
from kiln.mirror import deploy, server
from kiln.mirror.plugin import Facts, iso_time, rewrite_html, rewrite_json

REPO = Path(__file__).resolve().parents[1]
KILN = str(Path(sys.executable).parent / "kiln")


@pytest.mark.parametrize(("url", "option"), [
    ("postgresql://devpi:s3cret@127.0.0.1:5433/devpi",
     "pg8000:database=devpi,host=127.0.0.1,port=5433,user=devpi,password=s3cret"),
    ("postgres://devpi@db/kiln", "pg8000:database=kiln,host=db,port=5432,user=devpi"),
    ("postgresql://devpi@/devpi?host=/run/postgresql",
     "pg8000:database=devpi,unix_sock=/run/postgresql/.s.PGSQL.5432,user=devpi"),
])
def test_storage_url_to_devpi_option(url: str, option: str) -> None:
    assert deploy.Storage(url).devpi_option() == option


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "postgresql://u:p@h", "sqlite:///x"])
def test_bad_storage_url_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        deploy.Storage(url)
    assert exc.value.message.startswith("--storage ") and "expected postgresql://USER" in exc.value.message
    assert ":p@" not in exc.value.message


def test_serve_with_a_bad_storage_url_exits_2_in_one_line(tmp_path: Path) -> None:
    res = subprocess.run([KILN, "serve", "--home", str(tmp_path), "--storage", "mysql://u:secret@h/db"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == ("kiln: --storage mysql://u:***@h/db: expected "
                                  "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")


def _initialized(home: Home, storage: str | None = None, primary: str | None = None) -> None:
    files = server.ServerFiles(home)
    (files.serverdir).mkdir(parents=True)
    (files.serverdir / ".nodeinfo").write_text("{}")
    server._record(home, server.Deployment(deploy.Storage(storage), primary))


def test_a_home_keeps_its_deployment(tmp_path: Path) -> None:
    home = Home(tmp_path)
    _initialized(home, "postgresql://devpi:pw@127.0.0.1/devpi")
    assert server.deployment_of(home).storage.url == "postgresql://devpi:pw@127.0.0.1/devpi"
    with pytest.raises(MirrorError) as exc:
        server.deployment_of(home, primary_url="http://primary:3141")
    assert exc.value.message == (f"{tmp_path} holds a postgresql mirror "
                                 "(storage postgresql://devpi:***@127.0.0.1/devpi); "
                                 "it cannot become a replica of http://primary:3141: use another --home")
    assert (server.ServerFiles(home).deployment.stat().st_mode & 0o777) == 0o600


def test_an_unreadable_deployment_file_is_one_line(tmp_path: Path) -> None:
    home = Home(tmp_path)
    files = server.ServerFiles(home)
    files.root.mkdir(parents=True)
    files.deployment.write_text("{not json")
    with pytest.raises(MirrorError) as exc:
        server.deployment_of(home)
    message = exc.value.message
    assert message.startswith(f"{files.deployment}: unreadable (") and message.endswith("move it aside")


def test_a_replica_without_the_primary_secret_is_refused(tmp_path: Path) -> None:
    res = subprocess.run([KILN, "serve", "--home", str(tmp_path), "--replica-of", "http://127.0.0.1:9",
                          "--port", "0"], capture_output=True, text=True)
    assert res.returncode == 5
    assert res.stderr.strip() == ("kiln: a replica signs in to its primary with the primary's secret: copy the "
                                  f"primary home's devpi/secret to {tmp_path}/devpi/secret (mode 0600)")


def test_a_corrupt_state_file_is_set_aside(tmp_path: Path) -> None:
    home = Home(tmp_path)
    files = server.ServerFiles(home)
    files.root.mkdir(parents=True)
    files.state.write_text('{"pid": ')
    assert server.running(home) is None
    assert not files.state.exists() and files.state.with_name("server.json.bad").exists()


def test_export_and_import_refuse_what_they_cannot_use(tmp_path: Path) -> None:
    res = subprocess.run([KILN, "export", str(tmp_path / "dump"), "--home", str(tmp_path / "empty")],
                         capture_output=True, text=True)
    assert res.returncode == 5 and res.stderr.strip() == f"kiln: {tmp_path / 'empty'} holds no mirror to export"
    res = subprocess.run([KILN, "import", str(tmp_path), "--home", str(tmp_path / "new")],
                         capture_output=True, text=True)
    assert res.returncode == 5
    assert res.stderr.strip() == f"kiln: {tmp_path}: not a `kiln export` directory (no devpi/dataindex.json)"


# ----------------------------------------------------------------------------- mirror/


def test_mirror_dir_is_current_and_valid() -> None:
    """mirror/ is what `kiln mirror render` writes; its nginx.conf passes `nginx -t`."""
    assert deploy.stale(REPO / "mirror") == []
    assert "test is successful" in deploy.nginx_test(REPO / "mirror" / "nginx" / "nginx.conf")


def test_mirror_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    deploy.render(tmp_path)
    (tmp_path / "devpi" / "primary.yaml").write_text("devpi-server:\n  port: 1\n")
    res = subprocess.run([KILN, "mirror", "check", "--dir", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"kiln: {tmp_path}: devpi/primary.yaml differ from what kiln renders; "
                                  "run `kiln mirror render`")


def test_nginx_t_catches_a_broken_config(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text((REPO / "mirror" / "nginx" / "nginx.conf").read_text().replace("proxy_force_ranges on;",
                                                                                   "proxy_force_ranges maybe;"))
    with pytest.raises(ConfigError) as exc:
        deploy.nginx_test(conf)
    assert "nginx -t failed" in exc.value.message and "proxy_force_ranges" in exc.value.message


def test_team_and_embedded_nginx_come_from_one_template(tmp_path: Path) -> None:
    """The embedded mirror's nginx.conf and mirror/'s differ only in paths and ports."""
    team = (REPO / "mirror" / "nginx" / "nginx.conf").read_text()
    site = deploy.Site(listen="127.0.0.1:3141", devpi_port=deploy.DEVPI_PORT, serverdir=deploy.TEAM_SERVERDIR,
                       secretfile=tmp_path / "s")
    embedded = deploy.nginx_conf(site, paths=deploy.NGINX_TEAM_PATHS)
    assert embedded == team.replace("listen 3141;", "listen 127.0.0.1:3141;")


# ----------------------------------------------------------------------------- the plugin's pages

SHA = "a" * 64


def _facts(by_href: dict[str, Facts]):  # type: ignore[no-untyped-def]
    return lambda hrefs: [by_href.get(h, Facts()) for h in hrefs]


def test_json_page_gets_metadata_hash_upload_time_and_size() -> None:
    page = {"meta": {"api-version": "1.0"}, "name": "kilnfix", "files": [
        {"filename": "kilnfix-1.0.0-py3-none-any.whl", "url": "w", "hashes": {}, "core-metadata": True},
        {"filename": "kilnfix-1.0.0.tar.gz", "url": "s", "hashes": {}},
        {"filename": "kilnfix-0.9-py3-none-any.whl", "url": "u", "hashes": {}, "core-metadata": True}]}
    out = json.loads(rewrite_json(json.dumps(page).encode(), _facts({
        "w": Facts(SHA, "2026-11-24T10:00:00.000000Z", 10), "s": Facts(None, "2026-11-24T10:00:00.000000Z", 5),
        "u": Facts(None, None, 7)})))
    wheel, sdist, unknown = out["files"]
    assert wheel["core-metadata"] == {"sha256": SHA} and wheel["upload-time"] == "2026-11-24T10:00:00.000000Z"
    assert "core-metadata" not in sdist and sdist["size"] == 5
    # devpi said `true` for this one, but nobody knows its METADATA: no promise of a .metadata
    assert "core-metadata" not in unknown and "upload-time" not in unknown
    assert out["meta"]["api-version"] == "1.1" and out["versions"] == ["0.9", "1.0.0"]


def test_json_page_stays_1_0_when_a_size_is_unknown() -> None:
    page = {"meta": {"api-version": "1.0"}, "name": "x", "files": [
        {"filename": "x-1-py3-none-any.whl", "url": "w", "hashes": {}}]}
    out = json.loads(rewrite_json(json.dumps(page).encode(), _facts({})))
    assert out["meta"]["api-version"] == "1.0" and "versions" not in out


def test_html_page_gets_metadata_hashes_only_where_known() -> None:
    html = ('<!DOCTYPE html><html><body>\nkiln/main <a href="../../+f/a/b/x-1-py3-none-any.whl#sha256=1" '
            'data-dist-info-metadata="true" data-core-metadata="true" data-requires-python="&gt;=3.9">'
            'x-1-py3-none-any.whl</a><br>\nroot/pypi <a href="../../+f/c/d/x-0-py3-none-any.whl#sha256=2" '
            'data-dist-info-metadata="true" data-core-metadata="true">x-0-py3-none-any.whl</a><br>\n</body></html>')
    out = rewrite_html(html.encode(), _facts({"../../+f/a/b/x-1-py3-none-any.whl#sha256=1": Facts(SHA)})).decode()
    first, second = out.split("<br>")[:2]
    assert f'data-dist-info-metadata="sha256={SHA}" data-core-metadata="sha256={SHA}"' in first
    assert 'data-requires-python="&gt;=3.9"' in first and first.startswith("<!DOCTYPE html>")
    assert "data-core-metadata" not in second and "data-dist-info-metadata" not in second


def test_iso_time_from_devpi_last_modified() -> None:
    assert iso_time("Tue, 24 Nov 2026 11:19:47 GMT") == "2026-11-24T11:19:47.000000Z"
    assert iso_time(None) is None and iso_time("yesterday") is None

"""Where sources come from: a git source is pinned like an sdist (a tag that moves upstream fails the
fetch in one line), and the index sdists come from is the one the user's uv is configured with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln.errors import ConfigError, SourceError
from kiln.recipe import load_recipe
from kiln.source import default_index_url, fetch


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "setup.py").write_text("# 1.0\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "1.0")
    git(repo, "tag", "-a", "v1.0", "-m", "1.0")
    return repo


def recipe(tmp_path: Path, repo: Path, pin: str | None = None) -> Path:
    path = tmp_path / "recipes" / "gitty.yaml"
    path.parent.mkdir(exist_ok=True)
    commits = f"\n  commits: {{'1.0': '{pin}'}}" if pin else ""
    path.write_text(f"project: gitty\nversions: ['1.0']\nsource:\n  git: {repo.as_uri()}{commits}\n")
    return path


def move_tag(repo: Path) -> str:
    (repo / "setup.py").write_text("# something else\n")
    git(repo, "commit", "-q", "-am", "moved")
    git(repo, "tag", "-f", "-a", "v1.0", "-m", "moved")
    return git(repo, "rev-parse", "HEAD")


def test_a_tag_that_moves_after_the_first_fetch_is_refused(tmp_path: Path, upstream: Path) -> None:
    first = git(upstream, "rev-parse", "HEAD")
    r = load_recipe(recipe(tmp_path, upstream))
    cache = tmp_path / "cache"
    src = fetch(r, "1.0", cache)
    assert src.sha256 == f"git:{first}"
    assert fetch(r, "1.0", cache).sha256 == f"git:{first}"  # unchanged: fine
    moved = move_tag(upstream)
    with pytest.raises(SourceError) as exc:
        fetch(r, "1.0", cache)
    assert exc.value.message == (
        f"{upstream.as_uri()}@v1.0 now points at commit {moved}, not {first} as when kiln first fetched it: "
        f"the tag moved upstream; pin the commit you trust in the recipe (source.commits) and remove "
        f"{cache / 'gitty-1.0-git'}")


def test_a_pinned_commit_is_checked_on_the_first_fetch(tmp_path: Path, upstream: Path) -> None:
    first = git(upstream, "rev-parse", "HEAD")
    moved = move_tag(upstream)
    r = load_recipe(recipe(tmp_path, upstream, pin=first))
    with pytest.raises(SourceError) as exc:
        fetch(r, "1.0", tmp_path / "cache")
    assert exc.value.message == (
        f"{upstream.as_uri()}@v1.0 is commit {moved}, the recipe pins {first} (source.commits): the tag moved "
        "upstream; check the new commit, then update the pin")
    assert not (tmp_path / "cache" / "gitty-1.0-git").exists()
    ok = load_recipe(recipe(tmp_path, upstream, pin=moved))
    assert fetch(ok, "1.0", tmp_path / "cache").sha256 == f"git:{moved}"


def test_a_pin_must_be_a_full_commit_id(tmp_path: Path, upstream: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_recipe(recipe(tmp_path, upstream, pin="abc123"))
    path = tmp_path / "recipes" / "gitty.yaml"
    assert exc.value.message == (f"{path}:5: source.commits: commits.1.0: expected a full commit id "
                                 "(40 lowercase hex digits)")


INDEX_VARS = ("KILN_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL", "UV_CONFIG_FILE")


@pytest.mark.parametrize("table", ["", "[pip]\n"])
def test_sources_come_from_the_index_uv_toml_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    table: str) -> None:
    for var in INDEX_VARS:
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "uv.toml"
    config.write_text(f'{table}index-url = "http://127.0.0.1:1/team/simple"\n')
    monkeypatch.setenv("UV_CONFIG_FILE", str(config))
    assert default_index_url() == "http://127.0.0.1:1/team/simple"
    monkeypatch.setenv("UV_INDEX_URL", "http://127.0.0.1:2/ci/simple")
    assert default_index_url() == "http://127.0.0.1:2/ci/simple"
    monkeypatch.setenv("KILN_INDEX_URL", "http://127.0.0.1:3/kiln/simple")
    assert default_index_url() == "http://127.0.0.1:3/kiln/simple"


def test_with_nothing_configured_sources_come_from_uvs_default_index(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for var in INDEX_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("UV_NO_CONFIG", "1")
    url = default_index_url()
    assert url.startswith("https://") and url.rstrip("/").endswith("/simple"), url

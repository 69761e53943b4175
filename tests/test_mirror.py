"""Unit tests of the mirror's pure parts: variants from labels, index layout, client config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kiln_testing.fixtures import FIXTURE_RECIPES

from kiln import clientconfig, mirror
from kiln.errors import ConfigError, MirrorError
from kiln.home import Home
from kiln.matrix import Variant, expand
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains
from kiln.up import install_lines

ROOT = Path(__file__).parent.parent
KILN = str(Path(sys.executable).parent / "kiln")


@pytest.mark.parametrize(("label", "name"), [
    (None, "main"), ("", "main"), ("cu130.torch2.14", "cu130-torch2.14"),
    ("cpu.torch2.8", "cpu-torch2.8"), ("cu128.torch2.8", "cu128-torch2.8"),
])
def test_variant_from_label(label: str | None, name: str) -> None:
    v = Variant.from_label(label)
    assert v.name == name
    assert v.label == (label or None)


def test_variant_from_bad_label() -> None:
    with pytest.raises(ConfigError):
        Variant.from_label("ubuntu1")


def test_variant_of_wheel() -> None:
    assert mirror.variant_of_wheel("causal_conv1d-1.7.0+cu130.torch2.14-cp311-cp311-linux_x86_64.whl").name \
        == "cu130-torch2.14"
    assert mirror.variant_of_wheel("kilnfix-1.0.0-cp311-cp311-linux_x86_64.whl").name == "main"
    with pytest.raises(MirrorError, match="no kiln variant"):
        mirror.variant_of_wheel("kilnfix-1.0.0+local1-cp311-cp311-linux_x86_64.whl")
    with pytest.raises(MirrorError, match="not a wheel"):
        mirror.variant_of_wheel("kilnfix-1.0.0.tar.gz")


def test_layout_bases_and_pytorch_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    tc = load_toolchains(FIXTURE_RECIPES)
    variants = [Variant(), Variant("2.14", "13.0"), Variant("2.14", "12.8"), Variant("2.14", "cpu")]
    monkeypatch.delenv("KILN_PYTORCH_INDEX_URL", raising=False)
    plan = mirror.layout(variants, tc)
    by = {c.name: c for c in plan.indexes}
    assert by["kiln/main"].bases == ("root/pypi",)
    assert by["kiln/cu130-torch2.14"].bases == ("kiln/main", "root/pypi")
    assert by["kiln/cu128-torch2.14"].bases == ("kiln/main", "root/pypi")
    assert any("KILN_PYTORCH_INDEX_URL" in n for n in plan.notes)
    monkeypatch.setenv("KILN_PYTORCH_INDEX_URL", "http://torch.example/whl")
    plan = mirror.layout(variants, tc)
    by = {c.name: c for c in plan.indexes}
    assert by["kiln/cu128-torch2.14"].bases == ("kiln/main", "root/pypi", "root/pytorch-cu128")
    assert by["root/pytorch-cu128"].type == "mirror"
    assert by["root/pytorch-cu128"].mirror_url == "http://torch.example/whl/cu128/"
    assert plan.indexes[0].name == "root/pytorch-cu128"  # mirrors exist before their users
    for config in plan.indexes:
        data = config.to_json()
        assert data["volatile"] is False
        if config.type == "stage":
            assert data["mirror_whitelist"] == []


def test_install_lines() -> None:
    tc = load_toolchains(FIXTURE_RECIPES)
    cells = expand(load_recipes(FIXTURE_RECIPES, None), tc)
    assert install_lines("http://127.0.0.1:3141", cells) == [
        "uv pip install --index-url http://127.0.0.1:3141/kiln/main/+simple/ kilnfix"]


def test_secret_files_are_private(tmp_path: Path) -> None:
    files = mirror.ServerFiles(Home(tmp_path))
    pw = mirror._secret_file(files.root_password)
    assert files.root_password.stat().st_mode & 0o777 == 0o600
    assert mirror._secret_file(files.root_password) == pw
    with pytest.raises(MirrorError, match="kiln serve"):
        mirror._secret_file(files.kiln_password, make=False)


def test_published_for_without_a_mirror(tmp_path: Path) -> None:
    assert mirror.published_for(Home(tmp_path), None, ["main"]) is None


def test_publish_without_a_mirror_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "kilnfix-1.0.0-py3-none-any.whl").write_bytes(b"x")
    res = subprocess.run([KILN, "publish", str(tmp_path / "w"), "--home", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 5
    assert res.stderr.count("\n") == 1 and "no mirror running" in res.stderr


@pytest.mark.parametrize(("version", "cuda", "name"), [
    ("2.14.1+cu130", "13.0", "cu130-torch2.14"), ("2.8.0", "12.8", "cu128-torch2.8"),
    ("2.14.1+cpu", None, "cpu-torch2.14"),
])
def test_variant_for_torch(version: str, cuda: str | None, name: str) -> None:
    assert clientconfig.variant_for_torch(version, cuda).name == name


def test_config_formats() -> None:
    v = Variant("2.14", "13.0")
    url = "http://mirror.internal:3141"
    index = "http://mirror.internal:3141/kiln/cu130-torch2.14/+simple/"
    uv = clientconfig.render(v, url, "uv")
    assert f'url = "{index}"' in uv and "default = true" in uv
    pip = clientconfig.render(v, url, "pip")
    assert f"index-url = {index}" in pip and "trusted-host = mirror.internal" in pip
    docker = clientconfig.render(v, url, "docker")
    assert f"ARG KILN_INDEX_URL={index}" in docker and "UV_DEFAULT_INDEX=${KILN_INDEX_URL}" in docker
    assert "PIP_TRUSTED_HOST=mirror.internal" in docker
    pixi = clientconfig.render(v, url, "pixi")
    assert "[pypi-options]" in pixi and f'index-url = "{index}"' in pixi
    local = clientconfig.render(Variant(), "http://127.0.0.1:3141", "pip")
    assert "trusted-host" not in local


def test_config_auto_detects_torch(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '2.14.1+cu130'\nclass version:\n    cuda = '13.0'\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")}
    res = subprocess.run([KILN, "config", "--variant", "auto", "--python", sys.executable, "--format", "uv"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "torch 2.14.1+cu130 (CUDA 13.0)" in res.stderr and "cu130-torch2.14" in res.stderr
    assert "/kiln/cu130-torch2.14/+simple/" in res.stdout


def test_config_auto_without_torch_is_main(tmp_path: Path) -> None:
    """Without torch and without a GPU (no nvidia-smi on PATH: with one, the driver picks a variant)."""
    res = subprocess.run([KILN, "config", "--variant", "auto", "--python", sys.executable, "--format", "pip"],
                         capture_output=True, text=True, env={"PATH": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert "no torch" in res.stderr and "/kiln/main/+simple/" in res.stdout


def test_config_auto_refuses_a_rocm_torch_in_one_line(tmp_path: Path) -> None:
    """ROCm's torch has no torch.version.cuda: it must not be taken for a cpu torch."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '2.14.1+rocm6.4'\nclass version:\n    cuda = None\n"
                                      "    hip = '6.4.43482'\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")}
    res = subprocess.run([KILN, "config", "--variant", "auto", "--python", sys.executable],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 6 and res.stdout == ""
    assert res.stderr == (f"kiln: torch 2.14.1+rocm6.4 in {sys.executable} is a ROCm build (HIP 6.4.43482); "
                          "kiln builds CUDA and cpu variants only, and neither fits it\n")


UV_502 = """Publishing 1 file to http://127.0.0.1:8/kiln/main/
Uploading x-1.0-py3-none-any.whl (68.0KiB)
error: Failed to publish `x-1.0-py3-none-any.whl` to `http://127.0.0.1:8/kiln/main/`
  cause: Server returned status code 502 Bad Gateway. Server says: <html>
         <head><title>502 Bad Gateway</title></head>
         <body>
         <center><h1>502 Bad Gateway</h1></center>
         </body>
         </html>
"""


def test_a_gateway_error_is_one_line_that_says_what_it_means() -> None:
    """What uv publish and kiln's API client say when devpi-server behind nginx is gone."""
    from kiln.mirror.api import GATEWAY_HINT, _error_message
    from kiln.mirror.publish import uv_reason

    assert uv_reason(UV_502, 2) == f"Server returned status code 502 Bad Gateway ({GATEWAY_HINT})"
    assert uv_reason("error: x\n  cause: Server returned status code 403 Forbidden. Server says: "
                     "no permission to upload\n", 2) == \
        "Server returned status code 403 Forbidden. Server says: no permission to upload"
    assert uv_reason("", 3) == "exit 3"
    page = UV_502.split("Server says: ", 1)[1].encode()
    assert _error_message(page) == "Bad Gateway"
    denied = json.dumps({"message": "Access was denied to this resource.\nno permission"}).encode()
    assert _error_message(denied) == "no permission"

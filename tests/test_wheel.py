"""wheel.finish(): the variant label in filename AND metadata, RECORD rewritten, pins."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers import FIXTURE_RECIPES, make_helper_wheel, make_wheel
from packaging.utils import parse_wheel_filename

from kiln.matrix import Cell, Variant
from kiln.recipe import load_recipe
from kiln.smoke import extension_modules, top_level_modules
from kiln.toolchains import load_toolchains
from kiln.wheel import Provenance, finish, pins_for, read_provenance, rewrite_metadata


def torch_cell() -> Cell:
    recipe = load_recipe(FIXTURE_RECIPES / "kilnfix.yaml")
    recipe = recipe.model_copy(update={"project": "kilnfix-helper"})
    return Cell(recipe, "kilnfix-helper", "1.4.0", "3.11", Variant("2.14", "13.0"), torch_release="2.14.1")


def provenance(cell: Cell) -> Provenance:
    return Provenance(kiln_version="t", cell=cell.id, variant=cell.variant.name, recipe="r.yaml",
                      recipe_sha256="0" * 64, source_url="file:///x", source_sha256="1" * 64,
                      python="3.11.7", torch="2.14.1", cuda_archs="9.0", nvcc="13.0", compiler="gcc")


def test_label_goes_into_filename_metadata_and_record(tmp_path: Path) -> None:
    raw = make_helper_wheel("1.4.0", tmp_path / "raw")
    cell = torch_cell()
    pins = pins_for(cell, load_toolchains(FIXTURE_RECIPES), {"kilnfix-helper": "1.4.0", "torch": "2.14.1"})
    assert pins == ["torch==2.14.*", "kilnfix-helper==1.4.*"]
    out = finish(raw, cell, provenance(cell), pins, tmp_path / "out", [], tmp_path / "w")
    assert out.name == "kilnfix_helper-1.4.0+cu130.torch2.14-py3-none-any.whl"
    _, version, _, _ = parse_wheel_filename(out.name)
    with zipfile.ZipFile(out) as zf:
        meta = zf.read("kilnfix_helper-1.4.0+cu130.torch2.14.dist-info/METADATA").decode()
        record = zf.read("kilnfix_helper-1.4.0+cu130.torch2.14.dist-info/RECORD").decode()
    assert f"Version: {version}" in meta
    assert "Requires-Dist: torch==2.14.*" in meta
    assert "kilnfix_helper-1.4.0+cu130.torch2.14.dist-info/kiln.json,sha256=" in record
    assert read_provenance(out)["cuda_archs"] == "9.0"
    # `wheel unpack` verifies every RECORD hash; it fails on a stale RECORD.
    subprocess.run([sys.executable, "-m", "wheel", "unpack", "--dest", str(tmp_path / "u"), str(out)], check=True)


def test_rewrite_metadata_replaces_pins_and_keeps_markers(tmp_path: Path) -> None:
    meta = tmp_path / "METADATA"
    meta.write_text("Metadata-Version: 2.1\nName: x\nVersion: 1\nRequires-Dist: torch>=2; python_version >= '3.9'\n"
                    "Requires-Dist: einops\n\nlong description\n")
    rewrite_metadata(meta, ["torch==2.14.*", "numpy"])
    text = meta.read_text()
    assert 'Requires-Dist: torch==2.14.*; python_version >= "3.9"' in text
    assert "Requires-Dist: einops" in text and "Requires-Dist: numpy" in text
    assert "torch>=2" not in text
    assert text.rstrip().endswith("long description")


def test_top_level_modules_come_from_the_record_not_top_level_txt(tmp_path: Path) -> None:
    """setuptools lists an extension inside a package (pesq.cypesq) as `cypesq` in top_level.txt:
    importing that would fail. The RECORD says what is importable."""
    wheel = make_wheel("demo", "1.0", {
        "demo/__init__.py": "", "demo/cydemo.cpython-311-x86_64-linux-gnu.so": "", "helper.py": "",
        "demo-1.0.data/scripts/tool": "", "demo-1.0.dist-info/top_level.txt": "cydemo\ndemo\n",
        "not-a-module/x.txt": ""}, tmp_path)
    assert top_level_modules(wheel) == ["demo", "helper"]


def test_a_top_level_shared_library_is_a_module_only_when_it_exports_pyinit(tmp_path: Path) -> None:
    """libkenlm.so beside kenlm.cpython-*.so is a bundled library: importing it fails."""
    src = tmp_path / "m.c"
    src.write_text("void *PyInit__speedups(void) { return 0; }\nint helper(void) { return 1; }\n")
    ext = tmp_path / "_speedups.so"
    lib = tmp_path / "libhelper.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(ext), str(src)], check=True)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), "-x", "c", "-"], input="int helper(void){return 1;}\n",
                   text=True, check=True)
    root = tmp_path / "demo2-1.0"
    (root / "demo2-1.0.dist-info").mkdir(parents=True)
    shutil.copy(ext, root / "_speedups.cpython-311-x86_64-linux-gnu.so")
    shutil.copy(lib, root / "libhelper.so")
    (root / "demo2-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: demo2\nVersion: 1.0\n")
    (root / "demo2-1.0.dist-info" / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: false\n"
                                                        "Tag: cp311-cp311-linux_x86_64\n")
    (tmp_path / "out").mkdir()
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(tmp_path / "out"), str(root)], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "out").glob("*.whl")
    assert top_level_modules(wheel) == ["_speedups"]
    assert extension_modules(wheel) == ["_speedups"]


def test_rewrite_metadata_keeps_the_description_and_unicode_as_written(tmp_path: Path) -> None:
    """A README whose line starts with "From " stays as written (an mbox generator writes ">From "),
    and non-ASCII headers and body survive."""
    body = "From the start, this project\n\nFrom here on: ünïcode — body\n  indented\n"
    path = tmp_path / "METADATA"
    path.write_text("Metadata-Version: 2.1\nName: x\nVersion: 1\nSummary: Ünïcode — summary\nAuthor: José Ñ\n"
                    "Requires-Dist: torch>=2\nDescription-Content-Type: text/markdown\n\n" + body, encoding="utf-8")
    rewrite_metadata(path, ["torch==2.14.*"])
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition("\n\n")
    assert rest == body
    assert "Summary: Ünïcode — summary\n" in head + "\n" and "Author: José Ñ" in head
    assert "Requires-Dist: torch==2.14.*" in head and "torch>=2" not in head

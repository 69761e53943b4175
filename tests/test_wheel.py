"""wheel.finish(): the variant label in filename AND metadata, RECORD rewritten, pins."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from kiln_testing.fixtures import FIXTURE_RECIPES, REPO_RECIPES
from kiln_testing.wheels import make_helper_wheel, make_wheel
from packaging.utils import parse_wheel_filename

from kiln.matrix import Cell, Variant
from kiln.provenance import Provenance
from kiln.recipe import load_recipe
from kiln.smoke import extension_modules, top_level_modules
from kiln.toolchains import load_toolchains
from kiln.wheel import Pin, RawWheel, finish, pins_for, rewrite_metadata


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
    assert [str(p) for p in pins] == ["torch==2.14.*", "kilnfix-helper==1.4.*"]
    out = finish(RawWheel(raw), cell, provenance(cell), pins, tmp_path / "out", tmp_path / "w")
    assert out.name == "kilnfix_helper-1.4.0+cu130.torch2.14-py3-none-any.whl"
    _, version, _, _ = parse_wheel_filename(out.name)
    with zipfile.ZipFile(out) as zf:
        meta = zf.read("kilnfix_helper-1.4.0+cu130.torch2.14.dist-info/METADATA").decode()
        record = zf.read("kilnfix_helper-1.4.0+cu130.torch2.14.dist-info/RECORD").decode()
    assert f"Version: {version}" in meta
    assert "Requires-Dist: torch==2.14.*" in meta
    assert "kilnfix_helper-1.4.0+cu130.torch2.14.dist-info/kiln.json,sha256=" in record
    assert Provenance.read(out).cuda_archs == "9.0"
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


# ----------------------------------------------------------------------------- numpy's ABI rule

USES_C_API = 'const char *kiln_lookup(void) { return "_ARRAY_API"; }\n'
"""What numpy's import_array() compiles into an extension: its table looked up by name."""
CIMPORTS_NUMPY = ('const char *kiln_types[] = {"dtype", "flatiter", "broadcast", "ndarray"};\n'
                  'const char *kiln_type(int i) { return kiln_types[i]; }\n')
"""What Cython compiles into a module that cimports numpy, without import_array(): numpy's types
imported by name at load, their C sizes checked (numpy.dtype's changed in 2.0)."""
NO_C_API = "int kiln_add(int a, int b) { return a + b; }\n"


def wheel_with_extension(tmp_path: Path, c_source: str, requires: str = "numpy>=1.16") -> Path:
    """A wheel of kilnfix-helper 1.4.0 holding one shared object compiled from ``c_source``."""
    root = tmp_path / "tree"
    (root / "kilnfix_helper").mkdir(parents=True)
    (root / "kilnfix_helper" / "__init__.py").write_text("")
    (tmp_path / "ext.c").write_text(c_source)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(root / "kilnfix_helper" / "_ext.so"), str(tmp_path / "ext.c")],
                   check=True)
    info = root / "kilnfix_helper-1.4.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kilnfix-helper\nVersion: 1.4.0\n"
                                   f"Requires-Dist: {requires}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(tmp_path), str(root)], check=True,
                   capture_output=True)
    return tmp_path / "kilnfix_helper-1.4.0-py3-none-any.whl"


def numpy_cell() -> Cell:
    """A torch cell whose recipe has no run-exports of its own."""
    cell = torch_cell()
    runtime = cell.recipe.runtime.model_copy(update={"pin": None})
    return Cell(cell.recipe.model_copy(update={"runtime": runtime}), cell.project, cell.version, cell.python,
                cell.variant, torch_release=cell.torch_release)


def finished_requires(tmp_path: Path, raw: Path, numpy: str) -> list[str]:
    """The Requires-Dist of ``raw`` finished under the repository's toolchains.yaml, built with ``numpy``."""
    cell = numpy_cell()
    pins = pins_for(cell, load_toolchains(REPO_RECIPES), {"numpy": numpy, "torch": "2.14.1"}, raw)
    out = finish(RawWheel(raw), cell, provenance(cell), pins, tmp_path / "out", tmp_path / "w")
    with zipfile.ZipFile(out) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith("/METADATA"))).decode()
    return [ln.split(": ", 1)[1] for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]


def test_built_against_numpy_1_an_extension_using_its_c_api_requires_numpy_below_2(tmp_path: Path) -> None:
    raw = wheel_with_extension(tmp_path, USES_C_API)
    pins = pins_for(numpy_cell(), load_toolchains(REPO_RECIPES), {"numpy": "1.26.4"}, raw)
    assert [(p.requirement, p.why) for p in pins] == [
        ("numpy<2", "built against numpy 1.26.4; kilnfix_helper/_ext.so uses its C API")]
    # upstream's own bound is kept and narrowed, not replaced
    assert finished_requires(tmp_path, raw, "1.26.4") == ["numpy<2,>=1.16", "torch==2.14.*"]


def test_a_cython_module_that_cimports_numpy_is_bound_too(tmp_path: Path) -> None:
    raw = wheel_with_extension(tmp_path, CIMPORTS_NUMPY)
    assert [str(p) for p in pins_for(numpy_cell(), load_toolchains(REPO_RECIPES), {"numpy": "1.26.4"}, raw)] == [
        "numpy<2"]


def test_built_against_numpy_2_the_wheel_gets_no_bound_from_kiln(tmp_path: Path) -> None:
    raw = wheel_with_extension(tmp_path, USES_C_API)
    assert pins_for(numpy_cell(), load_toolchains(REPO_RECIPES), {"numpy": "2.1.3"}, raw) == []
    assert finished_requires(tmp_path, raw, "2.1.3") == ["numpy>=1.16", "torch==2.14.*"]


def test_an_extension_that_does_not_use_numpy_s_c_api_gets_no_bound(tmp_path: Path) -> None:
    raw = wheel_with_extension(tmp_path, NO_C_API)
    assert pins_for(numpy_cell(), load_toolchains(REPO_RECIPES), {"numpy": "1.26.4"}, raw) == []


def test_numpy_s_bound_is_added_when_upstream_forgot_numpy(tmp_path: Path) -> None:
    raw = wheel_with_extension(tmp_path, USES_C_API, requires="einops")
    assert finished_requires(tmp_path, raw, "1.26.4") == ["einops", "torch==2.14.*", "numpy<2"]


def test_a_recipe_s_own_numpy_run_export_overrides_the_table_s_rule(tmp_path: Path) -> None:
    raw = wheel_with_extension(tmp_path, NO_C_API)
    cell = numpy_cell()
    runtime = cell.recipe.runtime.model_copy(update={"run_exports": {"numpy": "major"}})
    cell = Cell(cell.recipe.model_copy(update={"runtime": runtime}), cell.project, cell.version, cell.python,
                cell.variant, torch_release=cell.torch_release)
    assert [str(p) for p in pins_for(cell, load_toolchains(REPO_RECIPES), {"numpy": "1.26.4"}, raw)] == [
        "numpy>=1.26,<2"]


def test_a_pin_is_not_merged_into_a_requirement_only_an_extra_asks_for(tmp_path: Path) -> None:
    """lap 0.4.0 declares numpy only as `numpy>=1.10.1; extra == "alldeps"`: the pin must hold for
    every install, not only for those that ask for the extra."""
    meta = tmp_path / "METADATA"
    meta.write_text('Metadata-Version: 2.1\nName: x\nVersion: 1\nRequires-Dist: numpy>=1.10.1; extra == "alldeps"\n'
                    "Provides-Extra: alldeps\n\n")
    rewrite_metadata(meta, [Pin("numpy<2", narrows=True), "torch==2.14.*", "numpy"])  # runtime.requires: numpy
    requires = [ln for ln in meta.read_text().splitlines() if ln.startswith("Requires-Dist:")]
    assert requires == ['Requires-Dist: numpy>=1.10.1; extra == "alldeps"', "Requires-Dist: numpy<2",
                        "Requires-Dist: torch==2.14.*"]

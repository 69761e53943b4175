"""Matrix expansion, variant names and labels, and what this host can build."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.host import Host
from kiln.matrix import Variant, expand, not_buildable
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains

REPO_RECIPES = Path(__file__).parent.parent / "recipes"


@pytest.fixture
def recipes_dir(tmp_path: Path) -> Path:
    shutil.copy(REPO_RECIPES / "toolchains.yaml", tmp_path)
    (tmp_path / "ext.yaml").write_text(
        'project: Ext_Pkg\nversions: ["1.0", "1.1"]\n'
        'matrix:\n  torch: ["2.14", "2.8"]\n  cuda: ["13.0", "12.8", "cpu"]\n  python: ["3.11", "3.12"]\n'
        '  exclude:\n    - {torch: "2.14", cuda: "12.8"}\n    - {torch: "2.8", cuda: "13.0"}\n'
        '    - {python: "3.12", cuda: "cpu"}\n')
    (tmp_path / "plain.yaml").write_text('project: plain\nversions: ["2.0"]\n')
    return tmp_path


def test_expand_crosses_versions_pythons_and_variants_less_excludes(recipes_dir: Path) -> None:
    tc = load_toolchains(recipes_dir)
    cells = expand(load_recipes(recipes_dir), tc)
    ext = sorted((c.version, c.python, c.variant.name) for c in cells if c.project == "Ext_Pkg")
    variants = {"cu130-torch2.14", "cpu-torch2.14", "cu128-torch2.8", "cpu-torch2.8"}
    expected = sorted((v, p, var) for v in ("1.0", "1.1") for p in ("3.11", "3.12") for var in variants
                      if not (p == "3.12" and var.startswith("cpu")))
    assert ext == expected
    plain = [c for c in cells if c.project == "plain"]
    assert {c.python for c in plain} == {"3.10", "3.11", "3.12", "3.13"}
    assert {c.variant.name for c in plain} == {"main"}


def test_cell_ids_and_torch_release(recipes_dir: Path) -> None:
    tc = load_toolchains(recipes_dir)
    cells = expand(load_recipes(recipes_dir, only=["ext-pkg"]), tc, variant="cu130-torch2.14")
    assert {c.id for c in cells} == {f"ext-pkg-{v}-{p}-cu130-torch2.14" for v in ("1.0", "1.1")
                                     for p in ("cp311", "cp312")}
    assert {c.torch_release for c in cells} == {"2.14.1"}
    assert {c.wheel_version for c in cells} == {"1.0+cu130.torch2.14", "1.1+cu130.torch2.14"}


def test_combination_missing_from_toolchains_must_be_excluded(recipes_dir: Path) -> None:
    text = (recipes_dir / "ext.yaml").read_text().replace('    - {torch: "2.14", cuda: "12.8"}\n', "")
    (recipes_dir / "ext.yaml").write_text(text.replace('"12.8", "cpu"', '"12.4", "cpu"'))
    with pytest.raises(ConfigError) as err:
        expand(load_recipes(recipes_dir), load_toolchains(recipes_dir))
    tc = load_toolchains(recipes_dir)
    assert str(err.value) == (f"{(recipes_dir / 'ext.yaml').absolute()}:5: matrix: torch 2.14 has no 12.4 build in "
                              f"{tc.path} (it has {', '.join(tc.torch['2.14'].builds)}); "
                              'exclude {torch: "2.14", cuda: "12.4"}')


def test_a_torch_the_table_lacks_is_named_on_its_own_line(recipes_dir: Path) -> None:
    (recipes_dir / "ext.yaml").write_text(
        'project: Ext_Pkg\nversions: ["1.0"]\n\nmatrix:\n  torch:\n    - "2.14"\n    - "2.99"\n  cuda: [cpu]\n')
    tc = load_toolchains(recipes_dir)
    with pytest.raises(ConfigError) as err:
        expand(load_recipes(recipes_dir), tc)
    assert str(err.value) == (f"{(recipes_dir / 'ext.yaml').absolute()}:7: matrix.torch: '2.99' is not in {tc.path} "
                              f"(known: {', '.join(sorted(tc.torch))})")


@pytest.mark.parametrize(("name", "label"), [("cu130-torch2.14", "cu130.torch2.14"),
                                             ("cpu-torch2.8", "cpu.torch2.8"), ("main", None)])
def test_variant_round_trip_and_label(name: str, label: str | None) -> None:
    v = Variant.parse(name)
    assert v.name == name
    assert v.label == label


def test_bad_variant_name() -> None:
    with pytest.raises(ConfigError, match="expected 'main'"):
        Variant.parse("cuda13-torch2.14")


def test_not_buildable_reasons(recipes_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_PYTORCH_INDEX_URL", raising=False)
    tc = load_toolchains(recipes_dir)
    cells = {(c.python, c.variant.name): c for c in expand(load_recipes(recipes_dir, only=["ext-pkg"]), tc)
             if c.version == "1.0"}
    nvcc13 = Host(cuda_home=Path("/usr/local/cuda"), nvcc_version="13.0")
    no_nvcc = Host(cuda_home=None, nvcc_version=None)
    assert not_buildable(cells["3.11", "cu130-torch2.14"], tc, nvcc13) is None
    # Without nvcc 13 here, CUDA 13.0 builds with NVIDIA's compiler packages from the index (kiln.cuda);
    # CUDA 12.8 has none there, so a cu128 cell needs a host toolkit.
    assert not_buildable(cells["3.11", "cu130-torch2.14"], tc, no_nvcc) is None
    assert not_buildable(cells["3.11", "cu128-torch2.8"], tc, nvcc13) == (
        "nvcc here is CUDA 13.0 (majors differ) and CUDA 12.8 has no compiler packages on the index (the 12.x "
        "nvidia-cuda-nvcc-cu12 packages ship ptxas only): install a CUDA 12 toolkit and set CUDA_HOME")
    assert (not_buildable(cells["3.11", "cu128-torch2.8"], tc, no_nvcc) or "").startswith(
        "no nvcc here and CUDA 12.8 has no compiler packages on the index")
    assert not_buildable(cells["3.11", "cpu-torch2.14"], tc, no_nvcc) is None
    # A cell needing the PyTorch index plans, but says which setting it lacks.
    (recipes_dir / "idx.yaml").write_text(
        'project: idx\nversions: ["1"]\nmatrix:\n  torch: ["2.14"]\n  cuda: ["12.8"]\n  python: ["3.11"]\n')
    (cell,) = expand(load_recipes(recipes_dir, only=["idx"]), tc)
    assert "set KILN_PYTORCH_INDEX_URL" in (not_buildable(cell, tc, nvcc13) or "")
    monkeypatch.setenv("KILN_PYTORCH_INDEX_URL", "http://127.0.0.1:9/whl")
    assert tc.index_url("2.14", "12.8") == "http://127.0.0.1:9/whl/cu128"
    assert "majors differ" in (not_buildable(cell, tc, nvcc13) or "")


def test_parallelism_is_bounded_by_memory_and_cores() -> None:
    from kiln.buildenv import parallelism

    assert parallelism(6, cores=2, free_gb=22).max_jobs == 2
    assert parallelism(8, cores=16, free_gb=20).max_jobs == 2
    assert parallelism(8, cores=16, free_gb=4).max_jobs == 1
    assert parallelism(2, cores=8, free_gb=8).nvcc_threads == 2


@pytest.mark.parametrize(("tail", "prog"), [
    ("c++: fatal error: Killed signal terminated program cc1plus\ncompilation terminated.\n", "cc1plus"),
    ("nvcc error   : 'cicc' died due to signal 9 (Kill signal)\n", "'cicc'"),
    ("error: command '/usr/bin/g++' failed\n", None),
])
def test_oom_killed_compilers_are_recognised(tmp_path: Path, tail: str, prog: str | None) -> None:
    from kiln.build import oom_killed

    log = tmp_path / "cell.log"
    log.write_text("lots of output\n" * 1000 + tail)
    assert oom_killed(log) == prog


@pytest.mark.parametrize("filename, python, matches", [
    ("ext_pkg-1.0+cpu.torch2.14-cp311-cp311-linux_x86_64.whl", "3.11", True),
    ("ext_pkg-1.0+cpu.torch2.14-cp312-cp312-linux_x86_64.whl", "3.11", False),
    ("ext_pkg-1.0+cpu.torch2.14-cp39-abi3-linux_x86_64.whl", "3.11", True),   # the stable ABI: any newer CPython
    ("ext_pkg-1.0+cpu.torch2.14-cp311-abi3-manylinux_2_28_x86_64.whl", "3.11", True),
    ("ext_pkg-1.0+cpu.torch2.14-cp312-abi3-linux_x86_64.whl", "3.11", False),  # needs 3.12
    ("ext_pkg-1.0+cpu.torch2.14-py3-none-any.whl", "3.11", True),
    ("ext_pkg-1.0+cu130.torch2.14-cp39-abi3-linux_x86_64.whl", "3.11", False),  # another variant
])
def test_a_cells_wheel_is_recognised_abi3_included(recipes_dir: Path, filename: str, python: str,
                                                    matches: bool) -> None:
    from kiln.plan import wheel_matches

    cells = expand(load_recipes(recipes_dir), load_toolchains(recipes_dir))
    (cell,) = [c for c in cells if c.project == "Ext_Pkg" and c.version == "1.0" and c.python == python
               and c.variant.name == "cpu-torch2.14"]
    assert wheel_matches(filename, cell) is matches

"""Build profiles (`--profile host|all`): which cells a host builds, chosen from faked host facts
(nvcc version, GPU list, Python), so no GPU or CUDA toolkit is needed; the plan's JSON for both
profiles; a wheel built for the host's archs only, seen by `--profile all`; the estimate `kiln up`
prints before it builds."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
from kiln_testing.fixtures import kilnfix_recipe, recipes_dir
from kiln_testing.provenance import provenance_json
from rich.console import Console

from kiln import estimate, host, profile
from kiln.cli import main
from kiln.errors import ConfigError
from kiln.home import CellResult, Home
from kiln.host import Host
from kiln.logs import duration
from kiln.matrix import Cell, expand
from kiln.plan import Status, archs_cover, cell_status, to_build, widen
from kiln.profile import HostFacts, select
from kiln.recipe import load_recipes
from kiln.toolchains import Toolchains, load_toolchains
from kiln.up import say_plan

ROOT = Path(__file__).parent.parent
KERN = """\
project: kilnkern
versions: ["1.0.0"]
build:
  timeout_minutes: 240
matrix:
  torch: ["2.14", "2.12", "2.8"]
  cuda: ["13.0", "12.8", "cpu"]
  python: ["3.11", "3.12"]
  exclude:
    - {torch: "2.8", cuda: "13.0"}
    - {torch: "2.12", cuda: "12.8"}
"""
NO_GPU_13 = HostFacts(python="3.11", nvcc="13.0")


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kilnfix (main) and kilnkern: cu130 for torch 2.14 and 2.12, cu128 for 2.14 (from the PyTorch
    index, unset here) and 2.8 (the default index), cpu for all three."""
    monkeypatch.delenv("KILN_PYTORCH_INDEX_URL", raising=False)
    # Every Python counts as found and nvcc 13.0 as installed, whatever this host has.
    monkeypatch.setattr("kiln.matrix.find_python", lambda minor: Path(sys.executable))
    monkeypatch.setattr("kiln.matrix.probe_host", lambda: Host(Path("/opt/cuda"), "13.0"))
    return recipes_dir(tmp_path / "recipes", ("kilnfix.yaml", kilnfix_recipe()), ("kilnkern.yaml", KERN))


def cells_of(recipes: Path) -> tuple[Toolchains, list[Cell]]:
    tc = load_toolchains(recipes)
    return tc, expand(load_recipes(recipes, None), tc)


def ids(cells: tuple[Cell, ...] | list[Cell]) -> set[str]:
    return {c.id for c in cells}


def plain_ids(cells: list[Cell]) -> set[str]:
    return {c.id for c in cells if c.variant.cuda_major is None}


# ----------------------------------------------------------------------------- selection


def test_host_without_gpu_takes_the_newest_torch_for_nvcc_and_host_archs(recipes: Path) -> None:
    tc, cells = cells_of(recipes)
    picked = select(cells, tc, "host", NO_GPU_13)
    assert picked.variant == "cu130-torch2.14"
    cuda = [c for c in picked.cells if c.variant.cuda_major]
    assert ids(cuda) == {"kilnkern-1.0.0-cp311-cu130-torch2.14"}
    assert [c.cuda_archs for c in cuda] == [tc.host_archs] == ["9.0"]
    assert ids([c for c in picked.cells if not c.variant.cuda_major]) == plain_ids(cells)  # every one
    line = picked.describe()
    assert "\n" not in line
    assert "cu130-torch2.14 (nvcc 13.0) for Python 3.11, archs 9.0 (no GPU found: toolchains.yaml's host_archs)" in line
    assert f"{len(cells) - len(picked.cells)} other CUDA cells are left to --profile all" in line


def test_a_recipe_may_leave_its_cuda_cells_to_profile_all(recipes: Path) -> None:
    """build.host_profile: false (a build of hours, such as flash-attn): host builds its cells
    without CUDA only, and says why the CUDA ones are left."""
    text = (recipes / "kilnkern.yaml").read_text().replace("  timeout_minutes: 240\n",
                                                           "  timeout_minutes: 240\n  host_profile: false\n")
    (recipes / "kilnkern.yaml").write_text(text)
    tc, cells = cells_of(recipes)
    picked = select(cells, tc, "host", NO_GPU_13)
    assert [c for c in picked.cells if c.variant.cuda_major] == []
    assert ids([c for c in picked.cells if c.project == "kilnkern"]) == {
        c.id for c in cells if c.project == "kilnkern" and not c.variant.cuda_major}
    assert picked.describe().endswith("are left to --profile all (kilnkern: build.host_profile is false)")
    assert len(select(cells, tc, "all", NO_GPU_13).cells) == len(cells)


def test_host_with_gpus_builds_for_their_archs(recipes: Path) -> None:
    tc, cells = cells_of(recipes)
    facts = HostFacts(python="3.12", nvcc="13.0", gpus=("9.0", "8.6", "9.0"), driver_cuda="13.1")
    picked = select(cells, tc, "host", facts)
    cuda = [c for c in picked.cells if c.variant.cuda_major]
    assert ids(cuda) == {"kilnkern-1.0.0-cp312-cu130-torch2.14"}
    assert cuda[0].cuda_archs == "8.6;9.0"
    assert "archs 8.6;9.0 (the GPUs here: 9.0, 8.6, 9.0)" in picked.describe()


def test_host_pythons_and_cuda_archs_asked_for_win(recipes: Path) -> None:
    tc, cells = cells_of(recipes)
    picked = select(cells, tc, "host", NO_GPU_13, ["3.11", "3.12"], "8.0;9.0")
    cuda = [c for c in picked.cells if c.variant.cuda_major]
    assert ids(cuda) == {"kilnkern-1.0.0-cp311-cu130-torch2.14", "kilnkern-1.0.0-cp312-cu130-torch2.14"}
    assert {c.cuda_archs for c in cuda} == {"8.0;9.0"}
    assert "(--cuda-archs)" in picked.describe()


def test_host_nvcc_12_takes_a_torch_it_can_install(recipes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tc, cells = cells_of(recipes)
    facts = HostFacts(python="3.11", nvcc="12.8")
    # torch 2.14's cu128 build comes from the PyTorch index, unset: torch 2.8's is on the default index
    assert select(cells, tc, "host", facts).variant == "cu128-torch2.8"
    monkeypatch.setenv("KILN_PYTORCH_INDEX_URL", "http://torch.example/whl")
    assert select(cells, tc, "host", facts).variant == "cu128-torch2.14"


@pytest.mark.parametrize(("facts", "why"), [
    (HostFacts(python="3.11", cuda_toolkit="host"), "no nvcc here"),
    (HostFacts(python="3.11", nvcc="11.8", cuda_toolkit="host"),
     "no variant has nvcc 11.8's CUDA major (the recipes have cu128, cu130)"),
    (HostFacts(python="3.11", nvcc="13.0", gpus=("9.0",), driver_cuda="12.4"),
     "the GPU driver runs CUDA 12.4 at most, nvcc is 13.0; the GPU driver runs CUDA 12.4 at most, older than "
     "the index's compilers"),
])
def test_host_without_a_usable_cuda_builds_no_cuda_cell(recipes: Path, facts: HostFacts, why: str) -> None:
    tc, cells = cells_of(recipes)
    picked = select(cells, tc, "host", facts)
    assert ids(picked.cells) == plain_ids(cells)
    assert f"no CUDA cells: {why}" in picked.describe()


@pytest.mark.parametrize("facts", [HostFacts(python="3.11"), HostFacts(python="3.11", nvcc="11.8"),
                                   HostFacts(python="3.11", nvcc="13.0", cuda_toolkit="index"),
                                   HostFacts(python="3.11", gpus=("8.6",), driver_cuda="13.0")])
def test_without_nvcc_of_a_major_the_index_s_compiler_packages_build_cu130(recipes: Path, facts: HostFacts) -> None:
    """CUDA 13.0 has compiler packages on the index (toolchains.yaml's cuda."13.0".toolkit); 12.8 has none."""
    tc, cells = cells_of(recipes)
    picked = select(cells, tc, "host", facts)
    assert picked.variant == "cu130-torch2.14"
    assert "CUDA cells of cu130-torch2.14 (nvcc 13.0 from the index)" in picked.describe()


def test_no_variant_without_nvcc_where_no_cuda_build_has_compiler_packages(recipes: Path) -> None:
    tc, cells = cells_of(recipes)
    cu128 = [c for c in cells if c.variant.cuda in (None, "cpu", "12.8")]
    picked = select(cu128, tc, "host", HostFacts(python="3.11"))
    assert picked.variant is None
    assert picked.describe().endswith("no CUDA cells: no nvcc here (set CUDA_HOME); no CUDA build of the recipes "
                                      "(cu128) has compiler packages on the index; 4 other CUDA cells are "
                                      "left to --profile all")


def test_a_driver_as_new_as_nvcc_is_enough(recipes: Path) -> None:
    tc, cells = cells_of(recipes)
    facts = HostFacts(python="3.11", nvcc="13.0", gpus=("10.0",), driver_cuda="13.0")
    assert select(cells, tc, "host", facts).variant == "cu130-torch2.14"


def test_profile_all_is_every_cell_with_the_arch_policy(recipes: Path) -> None:
    tc, cells = cells_of(recipes)
    picked = select(cells, tc, "all", NO_GPU_13)
    assert list(picked.cells) == cells
    assert {c.cuda_archs for c in cells if c.variant.cuda_major} == {"upstream"}
    assert picked.describe().startswith(f"profile all: every cell ({len(cells)})")


def test_the_real_recipes_host_profile_here() -> None:
    """The seed: with nvcc 13.0 and no GPU, the host profile builds mamba-ssm for cu130-torch2.14."""
    tc = load_toolchains(ROOT / "recipes")
    cells = expand(load_recipes(ROOT / "recipes", None), tc)
    picked = select(cells, tc, "host", NO_GPU_13)
    mamba = [c for c in picked.cells if c.project == "mamba-ssm"]
    assert [(c.python, c.variant.name, c.cuda_archs) for c in mamba] == [("3.11", "cu130-torch2.14", "9.0")]
    assert plain_ids(cells) <= ids(picked.cells)


# ----------------------------------------------------------------------------- this host's facts


def fake_nvidia_smi(tmp_path: Path, caps: str) -> str:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n"
                   'if [ "$1" = "--query-gpu=compute_cap" ]; then printf "' + caps + '"; exit 0; fi\n'
                   "echo '| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |'\n")
    exe.chmod(0o755)
    return str(exe)


def test_gpus_and_driver_from_nvidia_smi(tmp_path: Path) -> None:
    assert host.query_gpus(fake_nvidia_smi(tmp_path, "9.0\\n8.6\\n")) == (("9.0", "8.6"), "13.0")
    assert host.query_gpus(fake_nvidia_smi(tmp_path, "No devices were found\\n")) == ((), None)
    assert host.query_gpus(str(tmp_path / "absent")) == ((), None)


def test_host_archs_is_checked(tmp_path: Path) -> None:
    recipes = recipes_dir(tmp_path / "recipes")
    table = recipes / "toolchains.yaml"
    table.write_text(table.read_text().replace("cuda_archs: upstream\n", 'cuda_archs: upstream\nhost_archs: "sm90"\n'))
    with pytest.raises(ConfigError, match=r"toolchains.yaml:\d+: .*host_archs"):
        load_toolchains(recipes)
    assert load_toolchains(ROOT / "recipes").host_archs == "9.0"


# ----------------------------------------------------------------------------- kiln plan --profile


def plan_json(recipes: Path, home: Path, capsys: pytest.CaptureFixture[str], *more: str) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["plan", "--recipes", str(recipes), "--home", str(home), "--json", *more]) == 0
    out = capsys.readouterr()
    rows: list[dict[str, object]] = json.loads(out.out)
    return rows


def test_plan_json_of_both_profiles(recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile, "probe_facts", lambda: NO_GPU_13)
    _, cells = cells_of(recipes)
    every = plan_json(recipes, tmp_path / "home", capsys, "--profile", "all")
    assert [r["cell"] for r in every] == [c.id for c in cells]
    assert plan_json(recipes, tmp_path / "home", capsys) == every  # all is plan's default
    host = plan_json(recipes, tmp_path / "home", capsys, "--profile", "host")
    cuda = [r for r in host if r["cuda"] not in (None, "cpu")]
    assert [(r["cell"], r["python"], r["variant"], r["cuda_archs"], r["status"]) for r in cuda] == [
        ("kilnkern-1.0.0-cp311-cu130-torch2.14", "3.11", "cu130-torch2.14", "9.0", "missing")]
    assert {r["cell"] for r in host if r["cuda"] in (None, "cpu")} == plain_ids(cells)
    assert {r["cuda_archs"] for r in every if r["cuda"] not in (None, "cpu")} == {"upstream"}
    # the selection is said on stderr, in one line; stdout stays JSON
    capsys.readouterr()
    home = str(tmp_path / "home")
    assert main(["plan", "--recipes", str(recipes), "--home", home, "--json", "--profile", "host"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("profile host: ") and err.count("\n") == 1


# ----------------------------------------------------------------------------- a host build, seen by all

CELL = "kilnkern-1.0.0-cp311-cu130-torch2.14"


def fake_wheel(wheelhouse: Path, name: str, cell: Cell, **provenance: object) -> str:
    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist, version = name.split("-")[:2]
    with zipfile.ZipFile(wheelhouse / name, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(f"{dist}-{version}.dist-info/kiln.json",
                    provenance_json(cell.id, cell.variant.name, recipe_sha256=cell.recipe.sha256, **provenance))
    return name


def test_a_host_wheel_is_narrow_for_profile_all_and_rebuilt_under_the_next_build_number(
        recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile, "probe_facts", lambda: NO_GPU_13)
    tc, cells = cells_of(recipes)
    home = Home(tmp_path / "home")
    cell = next(c for c in cells if c.id == CELL)
    narrow = fake_wheel(home.wheelhouse, "kilnkern-1.0.0+cu130.torch2.14-cp311-cp311-linux_x86_64.whl", cell,
                        cuda_archs="9.0", cuda_archs_found={"sass": ["sm_90"], "ptx": ["compute_75"]})

    (row,) = [r for r in plan_json(recipes, home.root, capsys, "--profile", "host") if r["cell"] == CELL]
    assert (row["status"], row["wheel"], row["wheel_archs"], row["cuda_archs"]) == ("built", narrow, "9.0", "9.0")

    (row,) = [r for r in plan_json(recipes, home.root, capsys, "--profile", "all") if r["cell"] == CELL]
    assert (row["status"], row["wheel"], row["wheel_archs"], row["cuda_archs"]) == ("narrow", narrow, "9.0", "upstream")
    assert (row["build_number"], row["rebuild_number"], row["rebuild_archs"]) == (0, 1, "upstream")
    assert row["detail"] == f"{narrow} was built for 9.0, fewer archs than upstream: rebuilds for upstream as build 1"

    # the rebuild takes build 1; once its wheel is there it is the cell's (installers pick it), the
    # narrower one stays, and nothing is left to build
    rows = cell_status(cells, tc, home, home.wheelhouse, {"cu130-torch2.14": [narrow]})
    assert next(r for r in rows if r.cell == CELL).status == Status.NARROW
    todo, _ = to_build(cells, rows, home)
    (rebuild,) = [c for c in todo if c.id == CELL]
    assert (rebuild.build_number, rebuild.cuda_archs) == (1, "upstream")
    wide = fake_wheel(home.wheelhouse, "kilnkern-1.0.0+cu130.torch2.14-1-cp311-cp311-linux_x86_64.whl", cell,
                      cuda_archs="upstream",
                      cuda_archs_found={"sass": ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], "ptx": []})
    (row,) = [r for r in plan_json(recipes, home.root, capsys, "--profile", "all") if r["cell"] == CELL]
    assert (row["status"], row["wheel"], row["build_number"]) == ("built", wide, 1)
    # and the host profile is served by the wider wheel: nothing to build for it either
    (row,) = [r for r in plan_json(recipes, home.root, capsys, "--profile", "host") if r["cell"] == CELL]
    assert (row["status"], row["wheel"]) == ("built", wide)


def test_a_wheel_without_code_for_every_served_gpu_is_unserved_and_rebuilt(
        recipes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A host wheel from before the arch contract (SASS for 9.0 alone), published: `unserved` under
    either profile, rebuilt as the next build (the host one with PTX of the lowest served GPU)."""
    monkeypatch.setattr(profile, "probe_facts", lambda: NO_GPU_13)
    tc, cells = cells_of(recipes)
    home = Home(tmp_path / "home")
    cell = next(c for c in cells if c.id == CELL)
    old = fake_wheel(home.wheelhouse, "kilnkern-1.0.0+cu130.torch2.14-cp311-cp311-linux_x86_64.whl", cell,
                     cuda_archs="9.0", cuda_archs_found={"sass": ["sm_90"], "ptx": []})
    for which in ("host", "all"):
        (row,) = [r for r in plan_json(recipes, home.root, capsys, "--profile", which) if r["cell"] == CELL]
        assert (row["status"], row["rebuild_number"]) == ("unserved", 1)
        assert row["unserved"] == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_100", "sm_103", "sm_120"]
        assert row["detail"] == (f"{old} has no code for sm_75, sm_80, sm_86, sm_89, sm_100, sm_103, sm_120, which "
                                 "kiln/cu130-torch2.14 serves: rebuilds as build 1")
    host = select(cells, tc, "host", NO_GPU_13)
    rows = cell_status(list(host.cells), tc, home, home.wheelhouse, {"cu130-torch2.14": [old]})
    (row,) = [r for r in rows if r.cell == CELL]
    assert row.detail.endswith("; kiln up moves it off the index")
    todo, _ = to_build(list(host.cells), rows, home)
    (rebuild,) = [c for c in todo if c.id == CELL]
    assert (rebuild.build_number, rebuild.cuda_archs, rebuild.ptx_archs) == (1, "9.0", "7.5")


def test_a_published_host_wheel_known_from_the_cell_result(recipes: Path, tmp_path: Path) -> None:
    """Only on the mirror: what it was built for comes from the cell's last result here."""
    tc, cells = cells_of(recipes)
    home = Home(tmp_path / "home")
    name = "kilnkern-1.0.0+cu130.torch2.14-cp311-cp311-linux_x86_64.whl"
    CellResult(cell=CELL, status="built", log="x.log", seconds=420.0, wheel=name, cuda_archs="9.0").save(home)
    (row,) = [r for r in cell_status(cells, tc, home, home.wheelhouse, {"cu130-torch2.14": [name]}) if r.cell == CELL]
    assert (row.status, row.wheel_archs, row.rebuild_number) == (Status.NARROW, "9.0", 1)
    other = next(c for c in cells if c.id == "kilnkern-1.0.0-cp312-cu130-torch2.14")
    (row,) = [r for r in cell_status([other], tc, home, home.wheelhouse,
                                     {"cu130-torch2.14": [name.replace("cp311", "cp312")]})]
    assert row.status == "published"  # nothing says what it was built for: wide enough


@pytest.mark.parametrize(("built", "found", "wanted", "covers"), [
    ("9.0", None, "upstream", False),
    ("upstream", None, "upstream", True),
    (None, None, "upstream", True),
    ("upstream", None, "9.0", True),
    ("8.0;9.0", None, "9.0", True),
    ("9.0", None, "8.0;9.0", False),
    ("9.0", None, "9.0+PTX", False),
    ("upstream", {"sass": ["sm_80"], "ptx": []}, "9.0", False),
    ("upstream", {"sass": ["sm_80", "sm_90"], "ptx": []}, "9.0", True),
])
def test_archs_cover(built: str | None, found: dict[str, list[str]] | None, wanted: str, covers: bool) -> None:
    assert archs_cover(built, found, wanted) is covers


def test_widen_keeps_what_the_wheel_had() -> None:
    assert widen("9.0", "8.0;8.6") == "8.0;8.6;9.0"
    assert widen("9.0+PTX", "8.0;9.0") == "8.0;9.0+PTX"
    assert widen("9.0", "upstream") == "upstream"
    assert widen("upstream", "10.0") is None


def test_a_gpu_outside_the_wheels_list_widens_it(recipes: Path, tmp_path: Path) -> None:
    """A host with another GPU than the one a wheel was built for rebuilds it for both, never for its own alone."""
    tc, cells = cells_of(recipes)
    home = Home(tmp_path / "home")
    cell = next(c for c in cells if c.id == CELL)
    fake_wheel(home.wheelhouse, "kilnkern-1.0.0+cu130.torch2.14-cp311-cp311-linux_x86_64.whl", cell, cuda_archs="9.0")
    picked = select(cells, tc, "host", HostFacts(python="3.11", nvcc="13.0", gpus=("8.6",), driver_cuda="13.0"))
    rows = cell_status(list(picked.cells), tc, home, home.wheelhouse)
    (row,) = [r for r in rows if r.cell == CELL]
    assert (row.status, row.rebuild_archs, row.rebuild_number) == (Status.NARROW, "8.6;9.0", 1)


# ----------------------------------------------------------------------------- the estimate


def test_estimate_from_earlier_builds_of_the_project_and_variant(recipes: Path, tmp_path: Path) -> None:
    tc, cells = cells_of(recipes)
    home = Home(tmp_path / "home")
    for cell_id, seconds, archs in [("kilnkern-1.0.0-cp312-cu130-torch2.14", 400.0, "9.0"),
                                    ("kilnkern-1.0.0-cp311-cu130-torch2.12", 999.0, "9.0"),  # another variant
                                    ("kilnfix-1.0.0-cp312-main", 30.0, None)]:
        CellResult(cell=cell_id, status="built", log="x.log", seconds=seconds, cuda_archs=archs).save(home)
    CellResult(cell="kilnfix-1.0.0-cp311-main", status="failed", log="x.log", seconds=2.0).save(home)
    picked = {c.id: c for c in select(cells, tc, "host", NO_GPU_13).cells}
    kern, fix = picked[CELL], picked["kilnfix-1.0.0-cp311-main"]
    est = {e.cell: e for e in estimate.estimate([kern, fix], home)}
    assert (est[CELL].seconds, est[CELL].source) == (400.0, "here")  # the same archs, another Python
    assert (est[fix.id].seconds, est[fix.id].source) == (30.0, "here")  # a failed build does not count
    # for two archs, a one-arch build's time doubles
    (two,) = estimate.estimate([dataclasses.replace(kern, cuda_archs="8.0;9.0")], home)
    assert two.seconds == 800.0


def test_estimate_from_the_recipe_timeout_without_builds(recipes: Path, tmp_path: Path) -> None:
    tc, cells = cells_of(recipes)
    home = Home(tmp_path / "home")
    picked = {c.id: c for c in select(cells, tc, "host", NO_GPU_13).cells}
    kern_host = picked[CELL]
    kern_all = next(c for c in cells if c.id == CELL)
    fix = picked["kilnfix-1.0.0-cp311-main"]
    host, full, plain = estimate.estimate([kern_host, kern_all, fix], home)
    assert {host.source, full.source, plain.source} == {"timeout"}
    assert full.seconds == 240 * 60 * estimate.TIMEOUT_SHARE_CUDA
    assert host.seconds == full.seconds / estimate.FULL_ARCH_COUNT  # one arch of a full list
    assert plain.seconds == 60 * 60 * estimate.TIMEOUT_SHARE  # kilnfix: the default timeout
    assert estimate.summary([host, plain]) == "about 9 min (2 from their recipes' timeouts)"


@pytest.mark.parametrize(("seconds", "text"), [(4, "4 s"), (89, "89 s"), (125, "2 min"), (3600, "1 h 00 min"),
                                               (2 * 3600 + 5 * 60, "2 h 05 min")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds, about=True) == text


def test_up_says_what_it_builds_and_how_long_before_it_starts(recipes: Path, tmp_path: Path) -> None:
    tc, cells = cells_of(recipes)
    home = Home(tmp_path / "home")
    CellResult(cell="kilnfix-1.0.0-cp312-main", status="built", log="x.log", seconds=30.0).save(home)
    todo = [c for c in select(cells, tc, "host", NO_GPU_13).cells if c.id in (CELL, "kilnfix-1.0.0-cp311-main")]
    out = io.StringIO()
    say_plan(todo, estimate.estimate(todo, home), Console(file=out, width=300))
    lines = out.getvalue().splitlines()
    assert lines[0] == ("kiln up: building 2 cells, about 8 min "
                        "(1 from earlier builds here, 1 from their recipes' timeouts)")
    assert lines[1:] == ["  kilnfix-1.0.0-cp311-main: ~30 s",
                         f"  {CELL} archs 9.0: ~{duration(240 * 60 * 0.25 / 8, about=True)} (from its recipe timeout)"]


def test_a_rebuild_names_its_build_number(recipes: Path) -> None:
    _, cells = cells_of(recipes)
    cell = next(c for c in cells if c.id == CELL)
    out = io.StringIO()
    rebuild = dataclasses.replace(cell, build=2)
    say_plan([rebuild], [estimate.Estimate(CELL, 60.0, "here")], Console(file=out, width=300))
    assert f"  {CELL} archs upstream build 2: ~60 s" in out.getvalue()

"""The arch contract of a variant index: a CUDA wheel enters kiln/<variant> only when its binaries
hold code (SASS, or PTX at or below) for every GPU the index serves (toolchains.yaml's
``cuda.<version>.serves``, cut at a recipe's ``build.gpus.min``).

The rules of what runs where; the table and recipe checks; and real builds of the kilnkernel
fixture (a kernel compiled with nvcc here): for 9.0 alone it is refused with one line naming the
missing archs; the host profile adds PTX of the lowest served arch, and that wheel is published
to a real devpi-server and installs with uv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kiln_testing.deploy import Embedded
from kiln_testing.fixtures import MORE_RECIPES, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.tools import BIN
from kiln_testing.wheels import make_torch_stand_in

from kiln import archs, mirror
from kiln.cli import main
from kiln.errors import ConfigError
from kiln.home import CellResult, Home
from kiln.host import probe_host
from kiln.matrix import expand
from kiln.mirror.api import Devpi
from kiln.profile import HostFacts, ptx_floor, select
from kiln.provenance import CudaArchs, Provenance
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains
from kiln.wheel import check_served

CELL = "kilnkernel-1.0.0-cp311-cu130-torch2.14"
SERVED_13 = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0")


# ----------------------------------------------------------------------------- what runs where


@pytest.mark.parametrize(("cc", "sass", "ptx", "code"), [
    ("8.0", ["sm_80"], [], "sass"),
    ("8.6", ["sm_80"], [], "sass"),                  # a lower minor of the same major
    ("8.9", ["sm_86"], [], "sass"),
    ("8.0", ["sm_86"], [], None),                    # never a higher minor
    ("9.0", ["sm_80"], [], None),                    # never another major
    ("9.0", ["sm_90a"], [], "sass"),
    ("10.0", ["sm_90a"], [], None),                  # arch-specific: that GPU only
    ("10.3", ["sm_100f"], [], "sass"),               # family: its major, from its minor up
    ("12.0", [], ["compute_75"], "ptx"),             # PTX runs on every newer GPU (JIT)
    ("7.5", [], ["compute_80"], None),               # never on an older one
    ("10.0", [], ["compute_90a"], None),
    ("10.3", [], ["compute_100f"], "ptx"),
    ("12.0", [], ["compute_100f"], None),
    ("9.0", ["sm_90"], ["compute_75"], "sass"),      # SASS first
])
def test_code_for(cc: str, sass: list[str], ptx: list[str], code: str | None) -> None:
    assert archs.code_for(cc, sass, ptx) == code


def test_missing_names_each_gpu_without_code() -> None:
    assert archs.missing(SERVED_13, ["sm_90"], []) == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_100", "sm_103", "sm_120"]
    assert archs.missing(SERVED_13, ["sm_90"], ["compute_75"]) == []
    # causal-conv1d's own list for CUDA 13 covers every served GPU with SASS
    own = ["sm_75", "sm_80", "sm_87", "sm_90", "sm_100", "sm_103", "sm_110", "sm_120", "sm_121"]
    assert set(archs.coverage(SERVED_13, own, []).values()) == {"sass"}


def test_check_served_line() -> None:
    why = check_served(CudaArchs(sass=("sm_90",)), SERVED_13, "kiln/cu130-torch2.14")
    assert why == ("no code for sm_75, sm_80, sm_86, sm_89, sm_100, sm_103, sm_120, which kiln/cu130-torch2.14 "
                   "serves (found sm_90); build them (cuda_archs, or PTX of the lowest) or cut the recipe's "
                   "build.gpus.min, with a reason")
    assert check_served(CudaArchs(sass=("sm_90",), ptx=("compute_75",)), SERVED_13, "kiln/x") is None


# ----------------------------------------------------------------------------- the table and recipes


def _recipes(tmp: Path, recipe: str, table: str | None = None) -> Path:
    path = recipes_dir(tmp, ("kilnkernel.yaml", recipe))
    if table is not None:
        (path / "toolchains.yaml").write_text(table)
    return path


KERNEL_RECIPE = (MORE_RECIPES / "kilnkernel.yaml").read_text()


def test_the_repo_table_serves_what_its_nvcc_targets() -> None:
    tc = load_toolchains(Path(__file__).parent.parent / "recipes")
    assert tc.archs_served("13.0") == SERVED_13
    assert tc.archs_served("cpu") == ()


def test_each_cuda_cell_carries_its_index_s_served_list(tmp_path: Path) -> None:
    recipes = _recipes(tmp_path, KERNEL_RECIPE)
    (cell,) = expand(load_recipes(recipes), load_toolchains(recipes))
    assert cell.archs_served == SERVED_13


def test_a_recipe_narrows_the_served_list_with_a_reason(tmp_path: Path) -> None:
    gpus = 'build:\n  gpus: {min: "8.0", reason: "needs bf16 tensor cores"}\n'
    recipe = KERNEL_RECIPE.replace("matrix:", gpus + "matrix:")
    recipes = _recipes(tmp_path, recipe)
    (cell,) = expand(load_recipes(recipes), load_toolchains(recipes))
    assert cell.archs_served == SERVED_13[1:]


def test_a_narrowing_without_a_reason_is_refused(tmp_path: Path) -> None:
    recipe = KERNEL_RECIPE.replace("matrix:", 'build:\n  gpus: {min: "8.0"}\nmatrix:')
    recipes = _recipes(tmp_path, recipe)
    with pytest.raises(ConfigError) as exc:
        load_recipes(recipes)
    lineno = recipe.splitlines().index('  gpus: {min: "8.0"}') + 1
    assert exc.value.message.startswith(f"{recipes / 'kilnkernel.yaml'}:{lineno}: build.gpus.reason: ")


def test_a_cuda_build_the_cuda_table_lacks_is_refused(tmp_path: Path) -> None:
    text = (MORE_RECIPES.parent / "recipes" / "toolchains.yaml").read_text()
    text = text.replace('  "12.6":\n    serves: ["5.0", "6.0", "6.1", "7.0", "7.5", "8.0", "8.6", "8.9", "9.0"]\n', "")
    recipes = _recipes(tmp_path, KERNEL_RECIPE, text)
    with pytest.raises(ConfigError) as exc:
        load_toolchains(recipes)
    lineno = text.splitlines().index('      "12.6": pytorch') + 1
    assert exc.value.message == (f"{recipes / 'toolchains.yaml'}:{lineno}: torch.2.14.builds.12.6: CUDA 12.6 has no "
                                 "entry in 'cuda' (the GPUs its indexes serve): add cuda: "
                                 '{"12.6": {serves: [...]}}')


# ----------------------------------------------------------------------------- the host profile


def test_host_profile_adds_ptx_of_the_lowest_served_gpu(tmp_path: Path) -> None:
    recipes = _recipes(tmp_path, KERNEL_RECIPE)
    tc = load_toolchains(recipes)
    sel = select(expand(load_recipes(recipes), tc), tc, "host", HostFacts(python="3.11", nvcc="13.0"))
    (cell,) = sel.cells
    assert (cell.cuda_archs, cell.ptx_archs) == ("9.0", "7.5")
    assert "archs 9.0 (no GPU found: toolchains.yaml's host_archs) + PTX 7.5 (every other GPU " \
           "kiln/cu130-torch2.14 serves, compiled by the driver)" in sel.describe()


def test_no_ptx_where_the_host_archs_cover_the_served_list() -> None:
    assert ptx_floor("9.0", ("9.0",)) == ""
    assert ptx_floor("8.0;9.0", ("8.0", "8.6", "8.9", "9.0")) == ""
    assert ptx_floor("9.0", ("8.0", "9.0")) == "8.0"
    assert ptx_floor("9.0", ()) == ""


# ----------------------------------------------------------------------------- real builds


@pytest.fixture(scope="module")
def cuda_upstream(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> Iterator[StaticIndex]:
    """The tests' upstream with its stand-in torch 2.14.1 a CUDA 13.0 build (torch.version.cuda)."""
    tmp = tmp_path_factory.mktemp("cuda-upstream")
    (tmp / "torch").mkdir()
    files = [f for f in (upstream.root / "files").iterdir()
             if not f.name.startswith("torch-") and not f.name.endswith(".metadata")]
    index = StaticIndex(tmp / "index")
    index.add([*files, make_torch_stand_in("2.14.1", tmp / "torch", cuda="13.0")])
    index.start()
    yield index
    index.stop()


def _nvcc_here() -> None:
    if probe_host().cuda_home is None:
        pytest.skip("no CUDA toolkit on this host (CUDA_HOME, /usr/local/cuda, nvcc on PATH)")


def test_a_wheel_for_9_0_alone_is_refused_with_one_line(tmp_path: Path, cuda_upstream: StaticIndex,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _nvcc_here()
    recipes = _recipes(tmp_path / "recipes", KERNEL_RECIPE)
    home = tmp_path / "home"
    rc = main(["build", "--recipes", str(recipes), "--home", str(home), "--index-url", cuda_upstream.simple,
               "--cuda-archs", "9.0"])
    assert rc != 0
    result = CellResult.load(Home(home), CELL)
    assert result is not None and result.status == "failed"
    assert result.error == ("kilnkernel-1.0.0-cp311-cp311-linux_x86_64.whl: no code for sm_75, sm_80, sm_86, sm_89, "
                            "sm_100, sm_103, sm_120, which kiln/cu130-torch2.14 serves (found sm_90); build them "
                            "(cuda_archs, or PTX of the lowest) or cut the recipe's build.gpus.min, with a reason")
    assert not list(home.glob("wheelhouse/*.whl"))  # nothing to publish
    assert result.error in capsys.readouterr().out


@pytest.fixture(scope="module")
def mirror_up(tmp_path_factory: pytest.TempPathFactory,
              cuda_upstream: StaticIndex) -> Iterator[tuple[Embedded, str, str]]:
    """A real devpi-server behind nginx on which a wheel built before the contract (for 9.0 alone,
    when the table served 9.0 only) was published; then ``kiln up`` (the host profile) of the
    kilnkernel recipe with today's table. Yields the deployment, kiln up's output and the old wheel."""
    _nvcc_here()
    tmp = tmp_path_factory.mktemp("contract")
    dep = Embedded(home=tmp / "home", upstream=cuda_upstream.simple)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_")) and k != "VIRTUAL_ENV"}
    env["UV_DEFAULT_INDEX"] = cuda_upstream.simple
    kiln = [str(BIN / "kiln")]
    old_table = (MORE_RECIPES.parent / "recipes" / "toolchains.yaml").read_text().replace(
        'serves: ["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0"]', 'serves: ["9.0"]')
    before = _recipes(tmp / "before", KERNEL_RECIPE, old_table)
    recipes = _recipes(tmp / "recipes", KERNEL_RECIPE)
    dep.start()
    try:
        for cmd in (["build", "--recipes", str(before), "--cuda-archs", "9.0"],
                    ["publish", "--recipes", str(before)]):
            res = subprocess.run([*kiln, *cmd, "--home", str(dep.home)], capture_output=True, text=True, env=env)
            assert res.returncode == 0, res.stdout + res.stderr
        (old,) = [p.name for p in (dep.home / "wheelhouse").glob("kilnkernel-*.whl")]
        res = subprocess.run([*kiln, "up", "--recipes", str(recipes), "--home", str(dep.home), "--port", str(dep.port),
                              "--python", "3.11"], capture_output=True, text=True, env=env, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr
        yield dep, res.stdout + res.stderr, old
    finally:
        dep.close()


@pytest.mark.e2e
def test_up_moves_a_wheel_that_breaks_the_contract_off_the_index(mirror_up: tuple[Embedded, str, str]) -> None:
    dep, out, old = mirror_up
    kept = dep.home / "attic" / "kiln" / "cu130-torch2.14" / old
    assert (f"kiln up: moved {old} off kiln/cu130-torch2.14 into {kept}: no code for sm_75, sm_80, sm_86, sm_89, "
            "sm_100, sm_103, sm_120, which the index serves") in out.splitlines()
    assert kept.is_file()  # kept, never deleted
    files = Devpi(dep.url).files("kiln/cu130-torch2.14")
    assert old not in files
    assert sorted(files) == [old.replace("-1.0.0+cu130.torch2.14-", "-1.0.0+cu130.torch2.14-1-")]


@pytest.mark.e2e
def test_host_profile_wheel_holds_ptx_for_every_other_gpu_and_is_published(
        mirror_up: tuple[Embedded, str, str], tmp_path: Path) -> None:
    dep, out, _ = mirror_up
    assert "+ PTX 7.5 (every other GPU kiln/cu130-torch2.14 serves, compiled by the driver)" in out
    (wheel,) = (dep.home / "wheelhouse").glob("kilnkernel-*.whl")
    assert "-1-cp311-" in wheel.name  # the rebuild takes the next build number
    prov = Provenance.read(wheel)
    assert prov.archs_served == list(SERVED_13)
    assert prov.archs_code == {"7.5": "ptx", "8.0": "ptx", "8.6": "ptx", "8.9": "ptx", "9.0": "sass",
                                  "10.0": "ptx", "10.3": "ptx", "12.0": "ptx"}
    assert prov.cuda_archs_found is not None
    found = CudaArchs.from_json(prov.cuda_archs_found)
    assert found is not None and (found.sass, found.ptx) == (("sm_90",), ("compute_75",))
    # published to the variant index, and a user installs it without building anything
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_")) and k != "VIRTUAL_ENV"}
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(tmp_path / "v")], check=True, env=env)
    res = subprocess.run([*uv, "pip", "install", "--python", str(tmp_path / "v" / "bin" / "python"), "--no-build",
                          "--index-url", mirror.simple_url(dep.url, "cu130-torch2.14"), "kilnkernel"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert f"+ {wheel.name.split('-')[0]}=={wheel.name.split('-')[1]}" in res.stderr


@pytest.mark.e2e
def test_publish_refuses_a_wheel_without_code_for_every_served_gpu(mirror_up: tuple[Embedded, str, str],
                                                                  tmp_path: Path) -> None:
    """The wheel moved off the index cannot be published back: one line, nothing uploaded."""
    dep, _, old = mirror_up
    kept = dep.home / "attic" / "kiln" / "cu130-torch2.14" / old
    recipes = _recipes(tmp_path / "recipes", KERNEL_RECIPE)
    res = subprocess.run([str(BIN / "kiln"), "publish", str(kept), "--recipes", str(recipes), "--home", str(dep.home)],
                         capture_output=True, text=True)
    assert res.returncode == 5, res.stdout + res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"kiln: {old}: no code for sm_75, sm_80, sm_86, sm_89, sm_100, sm_103, sm_120, which kiln/cu130-torch2.14 "
        "serves: every GPU the index serves must run it (`kiln up` rebuilds it; `kiln plan` says unserved); "
        "nothing was uploaded")
    assert old not in Devpi(dep.url).files("kiln/cu130-torch2.14")

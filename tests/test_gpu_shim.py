"""The GPU shim (kiln.gpushim): in a cell's build steps torch answers about GPUs for the cell, as
one GPU per target architecture in a CUDA cell and as no GPU in a cell without CUDA, whatever the
build box has; nothing outside the build steps sees it.

What each cell is told (the target architectures: TORCH_CUDA_ARCH_LIST, the host profile's, the
served list); the shim itself in a real environment with a stand-in torch that claims a GPU
(answers, the log line, ``-I``/``-E``/``-P``, a sitecustomize of its own, cibuildwheel's install
command); and real builds of the kilngpu fixture, a CUDA-only setup.py that refuses to run without
a GPU, with that stand-in torch: its CUDA cell builds for the served GPUs, its cpu cell sees none,
its smoke test sees the stand-in's GPU, and the wheel holds nothing of the shim.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cibuildwheel.environment import parse_environment
from kiln_testing.fixtures import REPO_RECIPES, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.wheels import make_torch_stand_in

from kiln import gpushim, pthshim
from kiln.backends.cibuildwheel import environment
from kiln.buildenv import build_env
from kiln.buildreqs import BuildRequirements
from kiln.cli import main
from kiln.home import CellResult, Home
from kiln.host import probe_host
from kiln.matrix import Cell, expand
from kiln.profile import HostFacts, select
from kiln.provenance import Provenance
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains

SERVED_13 = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0")
SHIM_ON = ("kiln: GPU shim: torch.cuda.is_available() -> True: torch answers as 8 GPUs of compute capability "
           "7.5, 8.0, 8.6, 8.9, 9.0, 10.0, 10.3, 12.0 (kiln's stand-ins for the cell's target architectures; "
           "no GPU is used); see kiln.sandbox")
SHIM_NO_GPU = ("kiln: GPU shim: torch.cuda.is_available() -> False: torch answers as a machine without a GPU "
               "(a cell without CUDA); see kiln.sandbox")


def _recipe(cuda: str = '"13.0"', extra: str = "") -> str:
    return ("project: kilngpu\nversions: [\"1.0.0\"]\n" + extra
            + f"matrix:\n  torch: [\"2.14\"]\n  cuda: [{cuda}]\n  python: [\"3.11\"]\n")


def _cells(tmp: Path, recipe: str, cuda_archs: str | None = None) -> list[Cell]:
    recipes = recipes_dir(tmp / "recipes", ("kilngpu.yaml", recipe))
    return expand(load_recipes(recipes), load_toolchains(recipes), cuda_archs=cuda_archs)


def _answer(tmp: Path, cell: Cell) -> str:
    env = build_env(cell, load_toolchains(tmp / "recipes"), Home(tmp / "home"))
    return env[gpushim.ENV]


# ----------------------------------------------------------------------------- what each cell is told


def test_parse_reads_torch_s_arch_lists() -> None:
    assert gpushim.parse("9.0;8.0+PTX 9.0a") == ((8, 0), (9, 0))
    assert gpushim.parse("10.0;7.5") == ((7, 5), (10, 0))
    assert gpushim.parse("") == ()
    with pytest.raises(ValueError, match="'Ampere' is not a compute capability"):
        gpushim.parse("Ampere")


def test_a_cuda_cell_with_upstream_archs_answers_as_the_gpus_its_index_serves(tmp_path: Path) -> None:
    (cell,) = _cells(tmp_path, _recipe())
    assert cell.cuda_archs == "upstream"
    assert _answer(tmp_path, cell) == ";".join(SERVED_13)
    assert "TORCH_CUDA_ARCH_LIST" not in build_env(cell, load_toolchains(tmp_path / "recipes"), Home(tmp_path))


def test_a_cuda_cell_with_archs_answers_as_its_torch_cuda_arch_list(tmp_path: Path) -> None:
    (cell,) = _cells(tmp_path, _recipe(), cuda_archs="9.0;8.0+PTX")
    env = build_env(cell, load_toolchains(tmp_path / "recipes"), Home(tmp_path / "home"))
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0;8.0+PTX"
    assert env[gpushim.ENV] == "8.0;9.0"


def test_a_recipe_s_own_arch_list_is_the_one_the_shim_follows(tmp_path: Path) -> None:
    (cell,) = _cells(tmp_path, _recipe(extra='build:\n  env:\n    TORCH_CUDA_ARCH_LIST: "8.6"\n'))
    assert _answer(tmp_path, cell) == "8.6"


def test_a_recipe_may_set_the_answer_itself(tmp_path: Path) -> None:
    (cell,) = _cells(tmp_path, _recipe(extra='build:\n  env:\n    KILN_GPU_SHIM: ""\n'))
    assert _answer(tmp_path, cell) == ""  # no GPU, as on a box without one


def test_a_host_build_answers_as_the_host_profile_s_archs(tmp_path: Path) -> None:
    cells = _cells(tmp_path, _recipe())
    tc = load_toolchains(tmp_path / "recipes")
    (cell,) = select(cells, tc, "host", HostFacts(python="3.11", nvcc="13.0")).cells
    assert (cell.cuda_archs, cell.ptx_archs) == ("9.0", "7.5")
    assert _answer(tmp_path, cell) == "9.0"  # the PTX floor is no GPU the build is for
    (cell,) = select(cells, tc, "host", HostFacts(python="3.11", nvcc="13.0", gpus=("8.6", "12.0"))).cells
    assert _answer(tmp_path, cell) == "8.6;12.0"


def test_a_recipe_that_cuts_the_served_list_answers_from_its_lowest(tmp_path: Path) -> None:
    (cell,) = _cells(tmp_path, _recipe(extra='build:\n  gpus: {min: "8.0", reason: "needs Ampere"}\n'))
    assert _answer(tmp_path, cell) == "8.0;8.6;8.9;9.0;10.0;10.3;12.0"


def test_a_closure_cell_answers_as_the_gpus_its_cuda_build_serves(tmp_path: Path) -> None:
    (cell,) = _cells(tmp_path, _recipe())
    closure = Cell(cell.recipe, "kilngpu", "1.0.0", "3.11", cell.variant, torch_release="2.14.1",
                   closure_of="parent-1.0-cp311-cu130-torch2.14")
    assert closure.archs_served == ()
    assert _answer(tmp_path, closure) == ";".join(SERVED_13)


def test_cells_without_cuda_answer_as_no_gpu(tmp_path: Path) -> None:
    (cpu,) = _cells(tmp_path, _recipe(cuda='"cpu"'))
    assert _answer(tmp_path, cpu) == ""
    recipes = recipes_dir(tmp_path / "plain", ("kilngpu.yaml", 'project: kilngpu\nversions: ["1.0.0"]\n'))
    main_cell = expand(load_recipes(recipes), load_toolchains(recipes))[0]
    assert main_cell.variant.name == "main"
    assert build_env(main_cell, load_toolchains(recipes), Home(tmp_path / "home"))[gpushim.ENV] == ""


def test_the_log_says_what_torch_answers() -> None:
    assert gpushim.describe("7.5;9.0") == (
        "GPU shim: torch.cuda in the build steps answers as 2 GPUs of compute capability 7.5, 9.0, kiln's "
        "stand-ins for the cell's target architectures (no GPU is used; KILN_GPU_SHIM, see kiln.sandbox)")
    assert gpushim.describe("9.0") == (
        "GPU shim: torch.cuda in the build steps answers as 1 GPU of compute capability 9.0, kiln's "
        "stand-in for the cell's target architectures (no GPU is used; KILN_GPU_SHIM, see kiln.sandbox)")
    assert gpushim.describe("Ampere") == ("GPU shim off: KILN_GPU_SHIM='Ampere' (the recipe's build.env): "
                                          "'Ampere' is not a compute capability (like 8.0, 9.0a or 7.5+PTX)")
    assert gpushim.describe("") == ("GPU shim: torch.cuda in the build steps answers as a machine without a "
                                    "GPU (a cell without CUDA; KILN_GPU_SHIM, see kiln.sandbox)")


# ----------------------------------------------------------------------------- the shim in an environment


PROBE = """
import json, torch
out = {"available": torch.cuda.is_available(), "count": torch.cuda.device_count()}
try:
    out["capability"] = torch.cuda.get_device_capability()
    out["second"] = torch.cuda.get_device_capability("cuda:1") if torch.cuda.device_count() > 1 else None
    out["name"] = torch.cuda.get_device_name()
    out["props"] = [torch.cuda.get_device_properties(0).major, torch.cuda.get_device_properties(0).minor]
    torch.cuda.get_device_capability(99)
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _uv() -> str:
    return shutil.which("uv") or str(Path(sys.executable).parent / "uv")


def _venv(dest: Path, torch_wheel: Path) -> Path:
    """A venv of this Python holding ``torch_wheel``; returns its site-packages."""
    subprocess.run([_uv(), "venv", "--quiet", "--python", sys.executable, str(dest)], check=True)
    subprocess.run([_uv(), "pip", "install", "--quiet", "--offline", "--python", str(dest / "bin" / "python"),
                    str(torch_wheel)], check=True)
    (site,) = dest.glob("lib/python*/site-packages")
    return site


@pytest.fixture(scope="module")
def shim_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv whose torch (a stand-in) says the machine has one GPU, 8.6, with the shim installed."""
    tmp = tmp_path_factory.mktemp("shim-env")
    site = _venv(tmp / "venv", make_torch_stand_in("2.14.1", tmp, cuda="13.0", gpus=("8.6",)))
    assert pthshim.install_into(gpushim, site) == site / "_kiln_gpu_shim.pth"
    return tmp / "venv" / "bin" / "python"


def _probe(python: Path, value: str | None, *flags: str,
           pythonpath: Path | None = None) -> tuple[dict[str, object], list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in (gpushim.ENV, "PYTHONPATH")}
    if value is not None:
        env[gpushim.ENV] = value
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    res = subprocess.run([str(python), *flags, "-c", PROBE], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), res.stderr.splitlines()


@pytest.mark.parametrize("flags", [(), ("-I",), ("-E",), ("-P",)])
def test_in_a_cuda_cell_torch_answers_as_its_target_gpus(shim_env: Path, flags: tuple[str, ...]) -> None:
    out, stderr = _probe(shim_env, "7.5;9.0", *flags)
    assert out == {"available": True, "count": 2, "capability": [7, 5], "second": [9, 0],
                   "name": "kiln stand-in GPU 7.5 (no device: kiln's GPU shim, see kiln.sandbox)",
                   "props": [7, 5], "error": "AssertionError: Invalid device id"}
    assert stderr == ["kiln: GPU shim: torch.cuda.is_available() -> True: torch answers as 2 GPUs of compute "
                      "capability 7.5, 9.0 (kiln's stand-ins for the cell's target architectures; no GPU is "
                      "used); see kiln.sandbox"]


def test_in_a_cell_without_cuda_torch_answers_as_no_gpu(shim_env: Path) -> None:
    out, stderr = _probe(shim_env, "")
    assert out == {"available": False, "count": 0,
                   "error": "RuntimeError: No CUDA GPUs are available (kiln's GPU shim: a cell without CUDA is "
                            "built as on a machine without a GPU)"}
    assert stderr == [SHIM_NO_GPU]


def test_outside_the_build_steps_torch_answers_as_it_would(shim_env: Path) -> None:
    out, stderr = _probe(shim_env, None)
    assert out == {"available": True, "count": 1, "capability": [8, 6], "second": None,
                   "name": "stand-in torch GPU 8.6", "props": [8, 6],
                   "error": "IndexError: list index out of range"}  # the stand-in's own
    assert stderr == []


def test_a_sitecustomize_of_its_own_still_runs(shim_env: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import sys\nprint('sitecustomize ran', file=sys.stderr)\n")
    out, stderr = _probe(shim_env, "9.0", pythonpath=tmp_path)
    assert (out["available"], out["capability"]) == (True, [9, 0])
    assert stderr[0] == "sitecustomize ran"
    assert stderr[1].startswith("kiln: GPU shim: torch.cuda.is_available() -> True: torch answers as 1 GPU ")


def test_a_value_that_names_no_gpu_turns_the_shim_off_saying_so(shim_env: Path) -> None:
    out, stderr = _probe(shim_env, "Ampere")
    assert (out["available"], out["capability"]) == (True, [8, 6])
    assert stderr == ["kiln: GPU shim: KILN_GPU_SHIM='Ampere': 'Ampere' is not a compute capability (like 8.0, "
                      "9.0a or 7.5+PTX); the shim is off"]


def test_torch_cuda_keeps_its_own_loader(shim_env: Path) -> None:
    code = ("import torch.cuda as c; print(type(c.__loader__).__name__, c.__spec__.loader is c.__loader__, "
            "c.is_available.__doc__.startswith(\"kiln's GPU shim\"))")
    res = subprocess.run([str(shim_env), "-c", code], capture_output=True, text=True,
                         env={**os.environ, gpushim.ENV: "9.0"})
    assert res.stdout.split() == ["SourceFileLoader", "True", "True"]


def test_cibuildwheel_puts_the_shim_into_the_container_s_python(tmp_path: Path) -> None:
    recipes = recipes_dir(tmp_path / "recipes", ("kilngpu.yaml", _recipe()))
    shutil.copy(REPO_RECIPES / "toolchains.yaml", recipes / "toolchains.yaml")  # with ci.images
    tc = load_toolchains(recipes)
    (cell,) = expand(load_recipes(recipes), tc)
    env = environment(cell, tc, BuildRequirements(["setuptools>=61"], []), tmp_path / "ccache",
                      Home(tmp_path / "home"))
    inner = parse_environment(env["CIBW_ENVIRONMENT"]).as_dictionary({"PATH": "/usr/bin"})
    assert inner[gpushim.ENV] == ";".join(SERVED_13)
    steps = env["CIBW_BEFORE_BUILD"].split(" && ")
    install = next(i for i, step in enumerate(steps) if "_kiln_gpu_shim.pth" in step)
    hook = next(i for i, step in enumerate(steps) if "get_requires_for_build" in step)
    assert install < hook  # the hook runs setup.py: the shim is there first
    assert f"/host{Path(gpushim.__file__).resolve()}" in steps[install]
    # what that step runs, run here against a fresh environment's Python
    site = _venv(tmp_path / "venv", make_torch_stand_in("2.14.1", tmp_path, cuda="13.0", gpus=()))
    cmd = pthshim.install_command(gpushim, str(Path(gpushim.__file__).resolve()))
    subprocess.run([str(tmp_path / "venv" / "bin" / "python"), *cmd[1:]], check=True)
    assert (site / "_kiln_gpu_shim.pth").read_text() == gpushim.PTH_LINE
    out, _ = _probe(tmp_path / "venv" / "bin" / "python", "8.0")
    assert (out["available"], out["capability"]) == (True, [8, 0])


# ----------------------------------------------------------------------------- real builds


@pytest.fixture(scope="module")
def gpu_upstream(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex) -> Iterator[StaticIndex]:
    """The tests' upstream with a stand-in torch 2.14.1, a CUDA 13.0 build, that says this machine
    has a GPU of compute capability 8.6 (as on a build box with a GPU)."""
    tmp = tmp_path_factory.mktemp("gpu-upstream")
    (tmp / "torch").mkdir()
    files = [f for f in (upstream.root / "files").iterdir()
             if not f.name.startswith("torch-") and not f.name.endswith(".metadata")]
    index = StaticIndex(tmp / "index")
    index.add([*files, make_torch_stand_in("2.14.1", tmp / "torch", cuda="13.0", gpus=("8.6",))])
    index.start()
    yield index
    index.stop()


def _build(tmp: Path, index: StaticIndex, recipe: str) -> tuple[int, Home]:
    recipes = recipes_dir(tmp / "recipes", ("kilngpu.yaml", recipe))
    home = tmp / "home"
    rc = main(["build", "--recipes", str(recipes), "--home", str(home), "--index-url", index.simple])
    return rc, Home(home)


def _built(wheel: Path) -> dict[str, object]:
    """What torch answered at build time, as setup.py kept it in the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert not [n for n in names if "kiln_gpu_shim" in n or n.endswith(".pth")], names
        text = zf.read("kilngpu/_built.py").decode()
    found: dict[str, object] = {}
    exec(text, found)
    return {k: v for k, v in found.items() if not k.startswith("__")}


def test_a_cuda_only_extension_builds_for_the_gpus_its_index_serves(tmp_path: Path,
                                                                     gpu_upstream: StaticIndex) -> None:
    if probe_host().cuda_home is None:
        pytest.skip("no CUDA toolkit on this host (CUDA_HOME, /usr/local/cuda, nvcc on PATH)")
    rc, home = _build(tmp_path, gpu_upstream, _recipe())
    cell = "kilngpu-1.0.0-cp311-cu130-torch2.14"
    result = CellResult.load(home, cell)
    assert result is not None and result.status == "built", result and result.error
    assert rc == 0
    (wheel,) = home.wheelhouse.glob("kilngpu-*.whl")
    assert _built(wheel) == {"is_available": True, "device_count": 8, "capability": (7, 5),
                             "name": "kiln stand-in GPU 7.5 (no device: kiln's GPU shim, see kiln.sandbox)"}
    log = (home.logs / f"{cell}.log").read_text().splitlines()
    assert f"kiln: env KILN_GPU_SHIM={';'.join(SERVED_13)}" in log
    assert SHIM_ON in log
    # without TORCH_CUDA_ARCH_LIST, code for every GPU torch reported: the index's contract holds
    prov = Provenance.read(wheel)
    assert prov.cuda_archs_found["sass"] == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_103",
                                                "sm_120"]
    assert set(prov.archs_code.values()) == {"sass"}
    # the smoke test's environment has no shim: the package sees the stand-in torch's own GPU
    smoke = log[next(i for i, line in enumerate(log) if line.startswith("kiln: smoke test of ")):]
    assert "kilngpu: at import torch.cuda says is_available=True device_count=1 capability=(8, 6)" in smoke
    assert not [line for line in smoke if "GPU shim" in line]


def test_a_cpu_cell_sees_no_gpu_on_a_box_that_has_one(tmp_path: Path, gpu_upstream: StaticIndex) -> None:
    rc, home = _build(tmp_path, gpu_upstream, _recipe(cuda='"cpu"', extra='build:\n  env:\n    KILNGPU_CPU: "1"\n'))
    cell = "kilngpu-1.0.0-cp311-cpu-torch2.14"
    result = CellResult.load(home, cell)
    assert result is not None and result.status == "built", result and result.error
    assert rc == 0
    (wheel,) = home.wheelhouse.glob("kilngpu-*.whl")
    assert _built(wheel) == {"is_available": False, "device_count": 0, "capability": None, "name": None}
    log = (home.logs / f"{cell}.log").read_text().splitlines()
    assert SHIM_NO_GPU in log
    assert "kilngpu: at import torch.cuda says is_available=True device_count=1 capability=(8, 6)" in log


def test_a_cpu_cell_of_a_cuda_only_extension_fails_as_on_a_machine_without_a_gpu(
        tmp_path: Path, gpu_upstream: StaticIndex) -> None:
    rc, home = _build(tmp_path, gpu_upstream, _recipe(cuda='"cpu"'))
    result = CellResult.load(home, "kilngpu-1.0.0-cp311-cpu-torch2.14")
    assert rc != 0
    assert result is not None and result.status == "failed"
    assert result.error == ("Exception: CPU version is not implemented (the build backend's "
                            "get_requires_for_build_wheel failed)")
    assert not list(home.wheelhouse.glob("*.whl"))


# ----------------------------------------------------------------------------- for kiln infer


@pytest.mark.parametrize(("setup_py", "why"), [
    ("import torch\nif not torch.cuda.is_available():\n    raise Exception('CPU version is not implemented')\n",
     "line 2: it refuses to run unless torch.cuda.is_available()"),
    ("import sys, torch\nif torch.cuda.is_available() is False or 'CUDA_HOME' not in {}:\n"
     "    print('needs a GPU')\n    sys.exit(1)\n",
     "line 2: it refuses to run unless torch.cuda.is_available()"),
    ("from torch import cuda\nassert cuda.is_available(), 'CUDA only'\n",
     "line 2: it asserts torch.cuda.is_available()"),
    ("from torch.utils.cpp_extension import CUDAExtension\nfrom setuptools import setup\n"
     "def exts():\n    return [CUDAExtension('k._C', ['k.cu'])]\n"
     "if __name__ == '__main__':\n    setup(ext_modules=exts())\n",
     "line 4: it builds a CUDAExtension unconditionally"),
])
def test_a_cuda_only_setup_py_is_named_with_its_line(setup_py: str, why: str) -> None:
    assert gpushim.cuda_only(setup_py) == why


@pytest.mark.parametrize("setup_py", [
    # "CUDA if found": a cpu cell builds its CPU extension
    "import torch\nfrom torch.utils.cpp_extension import CUDAExtension, CppExtension, CUDA_HOME\n"
    "ext = CUDAExtension('k._C', ['k.cu']) if CUDA_HOME else CppExtension('k._C', ['k.cpp'])\n",
    "import torch\nfrom torch.utils import cpp_extension as ce\nexts = [ce.CppExtension('k._C', ['k.cpp'])]\n"
    "if torch.cuda.is_available() or FORCE_CUDA:\n    exts = [ce.CUDAExtension('k._C', ['k.cpp', 'k.cu'])]\n",
    "import torch\nif not torch.cuda.is_available():\n    print('building without CUDA')\n",
    "this is not Python (\n",
])
def test_a_setup_py_that_builds_without_cuda_is_not_named(setup_py: str) -> None:
    assert gpushim.cuda_only(setup_py) is None


def test_the_real_refusal_of_a_cuda_only_extension_is_named() -> None:
    setup_py = (Path(__file__).parent / "fixtures" / "src" / "kilngpu-1.0.0" / "setup.py").read_text()
    assert gpushim.cuda_only(setup_py) == "line 14: it refuses to run unless torch.cuda.is_available()"

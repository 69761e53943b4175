"""nvcc from the package index (kiln.cuda): where a cell's CUDA major has no nvcc on the host, kiln
installs NVIDIA's compiler packages of the exact CUDA release toolchains.yaml names into the
home's cache, assembles a CUDA home from them and builds with it, the host's toolkit hidden.

The choice (host, index, none and why) and the pieces are unit tests; the real ones install the
five CUDA 13.0 packages (downloaded once, kept in pytest's cache directory, served from a local
index), compile a kernel with the assembled nvcc while /usr/local/cuda* and every nvcc on PATH
are hidden, and build the kilnkernel fixture as a cu130 cell with ``KILN_CUDA_TOOLKIT=index``:
its provenance names the packages. None of them needs a CUDA toolkit on the host.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kiln_testing.fixtures import FIXTURE_RECIPES, MORE_RECIPES, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.wheels import make_torch_stand_in

from kiln import cuda
from kiln.buildenv import build_env
from kiln.cli import main
from kiln.errors import ConfigError
from kiln.home import Home
from kiln.host import Host
from kiln.matrix import expand
from kiln.provenance import Provenance
from kiln.recipe import load_recipes
from kiln.sandbox import Sandbox
from kiln.toolchains import load_toolchains
from kiln.wheel import find_cuobjdump, list_device_code

TC = load_toolchains(FIXTURE_RECIPES)
NVCC13 = Host(Path("/usr/local/cuda"), "13.0")
NO_NVCC = Host(None, None)
CELL = "kilnkernel-1.0.0-cp311-cu130-torch2.14"
PACKAGES = ["nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl", "nvidia-cuda-runtime"]
KERNEL = """\
#include <cuda_runtime.h>
#include <cublas_v2.h>
__global__ void add(float *a, float b) { a[threadIdx.x] += b; }
extern "C" int launch(float *d) { add<<<1, 32>>>(d, 1.0f); return (int)cudaGetLastError(); }
"""


# ----------------------------------------------------------------------------- the choice


def test_the_policy_comes_from_kiln_cuda_toolkit() -> None:
    assert cuda.mode({}) == "auto"
    assert cuda.mode({"KILN_CUDA_TOOLKIT": "Index"}) == "index"
    with pytest.raises(ConfigError, match="KILN_CUDA_TOOLKIT='conda': expected one of auto, host, index"):
        cuda.mode({"KILN_CUDA_TOOLKIT": "conda"})


@pytest.mark.parametrize(("cuda_version", "host", "policy", "source"), [
    ("13.0", NVCC13, "auto", "host"),
    ("13.0", NO_NVCC, "auto", "index"),
    ("13.0", Host(Path("/usr/local/cuda-12.8"), "12.8"), "auto", "index"),
    ("13.0", NVCC13, "index", "index"),
    ("13.0", NO_NVCC, "host", None),
    ("12.8", Host(Path("/usr/local/cuda-12.8"), "12.8"), "auto", "host"),
    ("12.8", NVCC13, "auto", None),
    ("12.8", Host(Path("/usr/local/cuda-12.8"), "12.8"), "index", None),
])
def test_where_nvcc_comes_from(cuda_version: str, host: Host, policy: cuda.Mode, source: str | None) -> None:
    assert cuda.choose(cuda_version, TC, host, policy).source == source


def test_why_none_can_be_had() -> None:
    assert cuda.choose("12.8", TC, NO_NVCC, "auto").why == (
        "no nvcc here and CUDA 12.8 has no compiler packages on the index (the 12.x nvidia-cuda-nvcc-cu12 "
        "packages ship ptxas only): install a CUDA 12 toolkit and set CUDA_HOME")
    assert cuda.choose("13.0", TC, NO_NVCC, "host").why == (
        "no nvcc here and KILN_CUDA_TOOLKIT=host: install a CUDA 13 toolkit and set CUDA_HOME")
    assert cuda.choose("12.8", TC, NVCC13, "index").why.endswith("toolkit is empty and KILN_CUDA_TOOLKIT=index")


def test_the_index_choice_names_one_release_of_every_package() -> None:
    choice = cuda.choose("13.0", TC, NO_NVCC, "auto")
    assert choice.packages == tuple(f"{p}==13.0.*" for p in PACKAGES)
    assert choice.describe() == "index CUDA 13.0.* (nvidia-cuda-nvcc and 4 more packages)"
    assert cuda.choose("13.0", TC, NVCC13, "auto").describe() == "host nvcc 13.0 (/usr/local/cuda)"


# ----------------------------------------------------------------------------- the pieces


def _cell(tmp_path: Path) -> object:
    recipes = recipes_dir(tmp_path / "recipes", ("kilnkernel.yaml", (MORE_RECIPES / "kilnkernel.yaml").read_text()))
    (cell,) = expand(load_recipes(recipes), load_toolchains(recipes))
    return cell


def test_the_build_env_names_the_cell_s_own_cuda_home(tmp_path: Path) -> None:
    cell = _cell(tmp_path)
    toolkit = cuda.Toolkit("index", tmp_path / "cache" / "nvidia" / "cu13", "13.0",
                           (("nvidia-cuda-nvcc", "13.0.88"),)).for_cell(tmp_path / "work")
    env = build_env(cell, TC, Home(tmp_path / "home"), toolkit)  # type: ignore[arg-type]
    home = tmp_path / "work" / "cuda"
    assert env["CUDA_HOME"] == env["CUDA_PATH"] == str(home)
    assert env["CUDACXX"] == str(home / "bin" / "nvcc")
    if "PYTORCH_NVCC" in env:  # ccache found
        assert env["PYTORCH_NVCC"].endswith(f" {home / 'bin' / 'nvcc'}")
    assert toolkit.describe() == "index: nvidia-cuda-nvcc 13.0.88"
    # the host's toolkit too is seen through the cell's own home (with the env's cuSPARSE... headers)
    host = cuda.Toolkit("host", Path("/usr/local/cuda-13.0"), "13.0").for_cell(tmp_path / "work")
    assert host.home == tmp_path / "work" / "cuda" and host.root == Path("/usr/local/cuda-13.0")
    host_env = build_env(cell, TC, Home(tmp_path / "home"), host)  # type: ignore[arg-type]
    assert host_env["CUDA_HOME"] == str(tmp_path / "work" / "cuda") and "CUDACXX" not in host_env
    assert host.describe() == "host /usr/local/cuda-13.0 (nvcc 13.0)"


def test_hiding_the_host_s_toolkit_keeps_kiln_s_cuda_variables() -> None:
    box = Sandbox(hide_host_cuda=True)
    caller = {"PATH": "/usr/bin", "CUDA_HOME": "/usr/local/cuda", "CUDACXX": "/usr/local/cuda/bin/nvcc",
              "NVCC_APPEND_FLAGS": "-lineinfo"}
    env = box.compose({"CUDA_HOME": "/home/k/work/cuda", "PYTORCH_NVCC": "ccache /home/k/work/cuda/bin/nvcc"},
                      caller).env
    assert env["CUDA_HOME"] == "/home/k/work/cuda" and env["PYTORCH_NVCC"].endswith("/home/k/work/cuda/bin/nvcc")
    assert "CUDACXX" not in env  # the caller's names the host's toolkit
    assert env["NVCC_APPEND_FLAGS"] == "-lineinfo"
    assert "the host's CUDA toolkit hidden" in box.describe()


def test_a_cell_s_cuda_home_merges_the_build_environment_s_cuda_packages(tmp_path: Path) -> None:
    root = tmp_path / "toolkit"
    for rel in ("bin/nvcc", "nvvm/bin/cicc", "include/cuda_runtime.h", "lib/libcudart.so.13", "lib/libnvvm.so.4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"toolkit {rel}")
    site = tmp_path / "site"
    for rel in ("include/cuda_runtime.h", "include/cublas_v2.h", "lib/libcublas.so.13", "lib/libnvvm.so.4"):
        (site / "nvidia/cu13" / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / "nvidia/cu13" / rel).write_text(f"env {rel}")
    toolkit = cuda.Toolkit("index", root, "13.0").for_cell(tmp_path / "work")
    home = cuda.cell_home(toolkit, site, toolkit.home)
    assert (home / "bin" / "nvcc").read_text() == "toolkit bin/nvcc"
    assert (home / "include" / "cuda_runtime.h").read_text() == "toolkit include/cuda_runtime.h"  # the toolkit's win
    assert (home / "include" / "cublas_v2.h").read_text() == "env include/cublas_v2.h"
    assert (home / "lib64" / "libnvvm.so.4").read_text() == "toolkit lib/libnvvm.so.4"  # not the env's newer one
    assert (home / "lib64" / "libcublas.so").read_text() == "env lib/libcublas.so.13"  # what -lcublas links
    assert (home / "lib" / "libcudart.so").read_text() == "toolkit lib/libcudart.so.13"
    cuda.cell_home(toolkit, site, toolkit.home)  # again, over the last one


# ----------------------------------------------------------------------------- the real packages


@pytest.fixture(scope="session")
def toolkit_wheels(request: pytest.FixtureRequest) -> list[Path]:
    """The five CUDA 13.0 compiler packages (~100 MB), downloaded once into pytest's cache directory."""
    cache = Path(request.config.cache.mkdir("kiln-cuda-13.0-toolkit"))  # type: ignore[union-attr]
    if not all(list(cache.glob(f"{name.replace('-', '_')}-13.0.*.whl")) for name in PACKAGES):
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
                              ":all:", "--dest", str(cache), *(f"{p}==13.0.*" for p in PACKAGES)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot download the CUDA 13.0 packages: {res.stderr.strip().splitlines()[-1:]}")
    return sorted(cache.glob("*.whl"))


@pytest.fixture(scope="module")
def cuda_index(tmp_path_factory: pytest.TempPathFactory, upstream: StaticIndex,
               toolkit_wheels: list[Path]) -> Iterator[StaticIndex]:
    """The tests' upstream, its stand-in torch 2.14.1 a CUDA 13.0 build, with the CUDA 13.0 packages."""
    tmp = tmp_path_factory.mktemp("cuda-index")
    (tmp / "torch").mkdir()
    files = [f for f in (upstream.root / "files").iterdir()
             if not f.name.startswith("torch-") and not f.name.endswith(".metadata")]
    index = StaticIndex(tmp / "index")
    index.add([*files, make_torch_stand_in("2.14.1", tmp / "torch", cuda="13.0"), *toolkit_wheels])
    index.start()
    yield index
    index.stop()


def test_the_index_s_nvcc_compiles_a_kernel_with_the_host_s_toolkit_hidden(
        tmp_path: Path, cuda_index: StaticIndex) -> None:
    cache = tmp_path / "cache"
    with open(tmp_path / "log", "w+") as log:
        toolkit = cuda.install(cache, "13.0", TC.cuda["13.0"], cuda_index.simple, log)
    assert "installing nvidia-cuda-nvcc==13.0.* nvidia-nvvm==13.0.*" in (tmp_path / "log").read_text()
    assert [name for name, _ in toolkit.packages] == PACKAGES
    assert all(version.startswith("13.0.") for _, version in toolkit.packages)
    assert toolkit.describe().startswith("index: nvidia-cuda-nvcc 13.0.") and toolkit.nvcc_version == "13.0"
    assert (toolkit.root / "lib64" / "libcudart_static.a").is_file()
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [toolkit.root.parts[-4]]
    assert toolkit.root == cuda.entry_dir(cache, "13.0", TC.cuda["13.0"]) / "site" / "nvidia" / "cu13"
    again = io.StringIO()
    assert cuda.install(cache, "13.0", TC.cuda["13.0"], "http://127.0.0.1:9/unreachable/", again) == toolkit
    assert "installing" not in again.getvalue()  # from the cache, without asking the index

    site = tmp_path / "site"  # what torch's CUDA wheel brings into a build environment
    (site / "nvidia/cu13/include").mkdir(parents=True)
    (site / "nvidia/cu13/include/cublas_v2.h").write_text("#define KILN_CUBLAS_FROM_THE_BUILD_ENV 1\n")
    cell = toolkit.for_cell(tmp_path / "work")
    home = cuda.cell_home(cell, site, cell.home)
    src = tmp_path / "k.cu"
    src.write_text(KERNEL)
    script = ("ls -d /usr/local/cuda* 2>/dev/null && exit 3; command -v nvcc && exit 4; "
              '"$CUDA_HOME/bin/nvcc" --version && "$CUDA_HOME/bin/nvcc" -shared -Xcompiler -fPIC '
              '-I"$CUDA_HOME/include" -gencode arch=compute_90,code=sm_90 -gencode arch=compute_75,code=compute_75 '
              f"-o {tmp_path / 'k.so'} {src}")
    box = Sandbox(hide_host_cuda=True)
    env = box.compose({"CUDA_HOME": str(home)}).env
    res = subprocess.run(box.wrap(["sh", "-c", script], tmp_path / "stash"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "release 13.0" in res.stdout
    cuobjdump = find_cuobjdump(None)
    if cuobjdump is None:
        pytest.skip("no cuobjdump (kiln's nvidia-cuda-cuobjdump dependency) to read the kernel back")
    assert list_device_code(tmp_path / "k.so", cuobjdump) == (["sm_90"], ["compute_75"])


@pytest.fixture(scope="module")
def index_built(tmp_path_factory: pytest.TempPathFactory, cuda_index: StaticIndex) -> Iterator[tuple[int, Path, float]]:
    """kilnkernel built as a cu130 cell with KILN_CUDA_TOOLKIT=index: (exit code, home, seconds)."""
    tmp = tmp_path_factory.mktemp("index-built")
    recipes = recipes_dir(tmp / "recipes", ("kilnkernel.yaml", (MORE_RECIPES / "kilnkernel.yaml").read_text()))
    home = tmp / "home"
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KILN_CUDA_TOOLKIT", "index")
        rc = main(["build", "--recipes", str(recipes), "--home", str(home), "--index-url", cuda_index.simple])
    yield rc, home, time.monotonic() - started


def test_a_cu130_cell_builds_with_the_index_s_nvcc(index_built: tuple[int, Path, float]) -> None:
    rc, home, _ = index_built
    log = (home / "logs" / f"{CELL}.log").read_text()
    assert rc == 0, log
    assert "kiln: CUDA toolkit: the index's CUDA 13.0 packages (KILN_CUDA_TOOLKIT=index)" in log
    assert "the host's CUDA toolkit hidden (private mount namespace)" in log
    work_home = home / "work" / CELL / "cuda"
    assert f"kiln: env CUDA_HOME={work_home}" in log
    assert f"kilnkernel: {work_home / 'bin' / 'nvcc'} -shared" in log  # the fixture's setup.py ran that nvcc
    (wheel,) = (home / "wheelhouse").glob("kilnkernel-*.whl")
    prov = Provenance.read(wheel)
    toolkit = str(prov.cuda_toolkit)
    assert toolkit.startswith("index: nvidia-cuda-nvcc 13.0.")
    assert [part.split()[0] for part in toolkit.removeprefix("index: ").split(", ")] == PACKAGES
    assert prov.nvcc == "13.0"
    found = prov.cuda_archs_found
    assert isinstance(found, dict) and found["sass"] == ["sm_75", "sm_90"] and found["ptx"] == ["compute_75"]
    assert toolkit in log


def test_plan_names_the_cached_toolkit(index_built: tuple[int, Path, float], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rc, home, _ = index_built
    assert rc == 0
    recipes = home.parent / "recipes"
    monkeypatch.setenv("KILN_CUDA_TOOLKIT", "index")
    capsys.readouterr()
    assert main(["plan", "--recipes", str(recipes), "--home", str(home), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "built"
    assert row["cuda_toolkit"].startswith("index CUDA 13.0.") and row["cuda_toolkit"].endswith("(in the home's cache)")
    monkeypatch.setenv("KILN_CUDA_TOOLKIT", "host")
    monkeypatch.setattr("kiln.matrix.probe_host", lambda: NO_NVCC)
    monkeypatch.setattr("kiln.cuda.probe_host", lambda: NO_NVCC)
    assert main(["plan", "--recipes", str(recipes), "--home", str(home / "other"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "not-buildable" and row["cuda_toolkit"] is None
    assert row["detail"] == "no nvcc here and KILN_CUDA_TOOLKIT=host: install a CUDA 13 toolkit and set CUDA_HOME"


def test_a_host_toolkit_without_the_cuda_libraries_gets_them_from_the_build_environment(tmp_path: Path) -> None:
    """A host toolkit of nvcc and the runtime alone (many images): torch's headers include cusparse.h,
    which only the build environment's nvidia packages carry; the cell's home has both, the host's first."""
    root = tmp_path / "usr-local-cuda"
    for rel in ("bin/nvcc", "include/cuda_runtime.h", "lib64/libcudart.so.13"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("host")
    site = tmp_path / "site-packages"
    for rel in ("nvidia/cu13/include/cusparse.h", "nvidia/cu13/include/cuda_runtime.h",
                "nvidia/cu13/lib/libcusparse.so.12"):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text("env")
    toolkit = cuda.Toolkit("host", root, "13.0").for_cell(tmp_path / "work")
    home = cuda.cell_home(toolkit, site, toolkit.home)
    assert (home / "include" / "cusparse.h").read_text() == "env"
    assert (home / "include" / "cuda_runtime.h").read_text() == "host"
    assert (home / "lib64" / "libcusparse.so.12").read_text() == "env"
    assert (home / "bin" / "nvcc").read_text() == "host"

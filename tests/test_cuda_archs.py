"""CUDA architectures from the binaries: cuobjdump's SASS and PTX lists of a wheel's shared
objects, and the check that fails a CUDA cell whose wheel holds no device code or misses an
architecture the cell asked for. The objects are compiled here with nvcc."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kiln.host import probe_host
from kiln.provenance import CudaArchs
from kiln.wheel import check_cuda_archs, cuda_archs_found, find_cuobjdump, wanted_archs

KERNEL = """
__global__ void add(float *a, float b) { a[threadIdx.x] += b; }
extern "C" void launch(float *a) { add<<<1, 32>>>(a, 1.0f); }
"""


def _nvcc() -> Path:
    host = probe_host()
    if host.cuda_home is not None and (host.cuda_home / "bin" / "nvcc").is_file():
        return host.cuda_home / "bin" / "nvcc"
    found = shutil.which("nvcc")
    if found is None:
        pytest.skip("no nvcc here (CUDA_HOME, /usr/local/cuda, PATH): cannot compile a CUDA object")
    return Path(found)


@pytest.fixture(scope="module")
def cuobjdump() -> Path:
    exe = find_cuobjdump(probe_host().cuda_home)
    if exe is None:
        pytest.skip("no cuobjdump (CUDA toolkit, PATH, or the nvidia-cuda-cuobjdump wheel kiln depends on)")
    return exe


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cuda.so: SASS for sm_80 and sm_90, PTX for compute_90; host.so: C++ only, no device code;
    ptx.so: PTX for compute_80 alone."""
    nvcc = _nvcc()
    tmp = tmp_path_factory.mktemp("cuda-objects")
    (tmp / "k.cu").write_text(KERNEL)
    (tmp / "h.cpp").write_text('extern "C" int plus_one(int x) { return x + 1; }\n')
    flags = ["-shared", "-Xcompiler", "-fPIC"]
    builds = {
        "cuda.so": ["k.cu", "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                    "-gencode", "arch=compute_90,code=compute_90"],
        "host.so": ["h.cpp"],  # host code only: nvcc hands it to the C++ compiler
        "ptx.so": ["k.cu", "-gencode", "arch=compute_80,code=compute_80"],
    }
    for name, args in builds.items():
        res = subprocess.run([str(nvcc), *flags, "-o", name, *args], cwd=tmp, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    return {name: tmp / name for name in builds}


def _wheel(dest: Path, members: dict[str, Path]) -> Path:
    """A wheel holding ``members`` (archive name -> file) beside a Python module."""
    wheel = dest / "kilncuda-1.0.0+cu130.torch2.14-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("kilncuda/__init__.py", "")
        for name, path in members.items():
            zf.write(path, name)
        zf.writestr("kilncuda-1.0.0+cu130.torch2.14.dist-info/METADATA", "Metadata-Version: 2.1\n")
    return wheel


def test_sass_and_ptx_of_every_shared_object(objects: dict[str, Path], cuobjdump: Path, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, {"kilncuda/_cuda.cpython-311-x86_64-linux-gnu.so": objects["cuda.so"],
                              "kilncuda/_host.cpython-311-x86_64-linux-gnu.so": objects["host.so"]})
    found = cuda_archs_found(wheel, cuobjdump)
    assert found.sass == ("sm_80", "sm_90")
    assert found.ptx == ("compute_90",)
    assert found.with_device_code == ("kilncuda/_cuda.cpython-311-x86_64-linux-gnu.so",)
    assert found.without_device_code == ("kilncuda/_host.cpython-311-x86_64-linux-gnu.so",)
    assert str(found) == "sm_80 sm_90 compute_90"
    assert CudaArchs.from_json(found.to_json()) == found
    assert check_cuda_archs(found, "8.0;9.0") is None
    assert check_cuda_archs(found, "8.0;9.0+PTX") is None
    assert check_cuda_archs(found, "upstream") is None


def test_missing_architecture_fails_the_cell(objects: dict[str, Path], cuobjdump: Path, tmp_path: Path) -> None:
    found = cuda_archs_found(_wheel(tmp_path, {"kilncuda/_cuda.so": objects["cuda.so"]}), cuobjdump)
    why = check_cuda_archs(found, "8.0;9.0;12.0")
    assert why is not None and "sm_120" in why and "sm_80 sm_90 compute_90" in why
    why = check_cuda_archs(found, "8.0+PTX;9.0")
    assert why is not None and "compute_80" in why and "sm_90" not in why.split("found")[0].split(":")[-1]


def test_no_device_code_fails_the_cell(objects: dict[str, Path], cuobjdump: Path, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, {"kilncuda/_host.so": objects["host.so"]})
    found = cuda_archs_found(wheel, cuobjdump)
    assert found.empty and found.without_device_code == ("kilncuda/_host.so",)
    why = check_cuda_archs(found, "upstream")
    assert why is not None and "no CUDA device code" in why and "kilncuda/_host.so" in why


def test_a_wheel_without_shared_objects_holds_no_device_code(cuobjdump: Path, tmp_path: Path) -> None:
    found = cuda_archs_found(_wheel(tmp_path, {}), cuobjdump)
    assert found.empty
    assert check_cuda_archs(found, "8.0") is not None


def test_ptx_alone_is_not_sass(objects: dict[str, Path], cuobjdump: Path, tmp_path: Path) -> None:
    found = cuda_archs_found(_wheel(tmp_path, {"kilncuda/_ptx.so": objects["ptx.so"]}), cuobjdump)
    assert found.sass == () and found.ptx == ("compute_80",)
    assert check_cuda_archs(found, "upstream") is None  # device code there: it JIT-compiles
    why = check_cuda_archs(found, "8.0")
    assert why is not None and "sm_80" in why


def test_wanted_archs_reads_the_cells_notation() -> None:
    assert wanted_archs("upstream") == ([], [])
    assert wanted_archs("8.0;9.0") == (["sm_80", "sm_90"], [])
    assert wanted_archs("8.0 9.0a+PTX") == (["sm_80", "sm_90a"], ["compute_90a"])
    assert wanted_archs("10.0;12.0+PTX") == (["sm_100", "sm_120"], ["compute_120"])


def test_records_without_cuobjdump() -> None:
    assert CudaArchs.from_json(None) is None
    assert CudaArchs.from_json({"sass": ["sm_90"]}) == CudaArchs(sass=("sm_90",))
    assert str(CudaArchs()) == "no device code"


# ----------------------------------------------------------------------------- a CUDA cell's finish step

KERN_RECIPE = """\
project: kilnkern
versions: ["1.0.0"]
source:
  url: kilnkern-{version}.tar.gz
  sha256: "%s"
build:
  cuda_archs: "8.0;9.0"
  gpus: {min: "8.0", reason: "the kernels use bf16"}
matrix:
  torch: ["2.14"]
  cuda: ["13.0"]
  python: ["3.11"]
""" % ("0" * 64)


def _raw_wheel(dest: Path, so: Path) -> Path:
    """A raw wheel of kilnkern 1.0.0 (cp311, linux) holding ``so`` as its extension."""
    tree = dest / "kilnkern-1.0.0"
    (tree / "kilnkern").mkdir(parents=True)
    (tree / "kilnkern" / "__init__.py").write_text("")
    shutil.copy(so, tree / "kilnkern" / "_kern.cpython-311-x86_64-linux-gnu.so")
    info = tree / "kilnkern-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kilnkern\nVersion: 1.0.0\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: false\n"
                                "Tag: cp311-cp311-linux_x86_64\n")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(dest), str(tree)], check=True,
                   capture_output=True)
    (wheel,) = dest.glob("*.whl")
    return wheel


def _finish(tmp_path: Path, so: Path) -> tuple[Path, str]:
    from kiln_testing.fixtures import FIXTURE_SDIST, recipes_dir

    from kiln.backends import CompileResult
    from kiln.build import finish_cell
    from kiln.matrix import expand
    from kiln.recipe import load_recipes
    from kiln.source import Source
    from kiln.toolchains import load_toolchains

    recipes = recipes_dir(tmp_path / "recipes", ("kilnkern.yaml", KERN_RECIPE))
    tc = load_toolchains(recipes)
    (cell,) = expand(load_recipes(recipes, None), tc)
    assert cell.cuda_archs == "8.0;9.0"
    res = CompileResult(wheel=_raw_wheel(tmp_path / "raw", so), installed={"torch": "2.14.1"}, freeze=[],
                        python="3.11", compiler="gcc", backend="local")
    with open(tmp_path / "log", "w") as log:
        finished, _ = finish_cell(cell, tc, res, Source(FIXTURE_SDIST, "file:///x", "0" * 64), tmp_path / "work", log)
    return finished, (tmp_path / "log").read_text()


def test_finish_records_the_archs_found_in_the_provenance(objects: dict[str, Path], cuobjdump: Path,
                                                          tmp_path: Path) -> None:
    from kiln.provenance import Provenance

    finished, log = _finish(tmp_path, objects["cuda.so"])
    found = Provenance.read(finished).cuda_archs_found
    assert found["sass"] == ["sm_80", "sm_90"] and found["ptx"] == ["compute_90"]  # type: ignore[index]
    assert "kiln: CUDA architectures found by" in log and "sm_80 sm_90 compute_90" in log
    prov = Provenance.read(finished)
    assert prov.archs_served == ["8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0"]  # cut at build.gpus.min
    assert prov.archs_code == {"8.0": "sass", "8.6": "sass", "8.9": "sass", "9.0": "sass", "10.0": "ptx",
                                  "10.3": "ptx", "12.0": "ptx"}
    assert prov.gpus_reason == "the kernels use bf16"
    assert "kiln: GPUs kiln/cu130-torch2.14 serves: 8.0 sass, 8.6 sass, 8.9 sass, 9.0 sass, 10.0 ptx" in log


def test_finish_fails_a_cuda_cell_without_device_code(objects: dict[str, Path], cuobjdump: Path,
                                                     tmp_path: Path) -> None:
    from kiln.errors import BuildError

    with pytest.raises(BuildError) as exc:
        _finish(tmp_path, objects["host.so"])
    assert "holds no CUDA device code" in exc.value.message
    assert "kilnkern/_kern.cpython-311-x86_64-linux-gnu.so" in exc.value.message

"""CUDA architectures from the binaries: cuobjdump's SASS and PTX lists of a wheel's shared
objects, and the check that fails a CUDA cell whose wheel holds no device code or misses an
architecture the cell asked for. The objects are compiled here with nvcc."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from kiln.toolchains import probe_host
from kiln.wheel import CudaArchs, check_cuda_archs, cuda_archs_found, find_cuobjdump, wanted_archs

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

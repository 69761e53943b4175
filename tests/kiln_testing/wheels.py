"""Wheel makers: small pure-Python wheels (the kilnfix-helper build dependency, stand-ins for
torch, wheels as `kiln build` finishes them) and large stand-ins for CUDA builds (the benchmarks')."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64encode
from hashlib import sha256
from pathlib import Path

from kiln.mirror.layout import variant_of_wheel
from kiln.provenance import PROVENANCE


def make_wheel(name: str, version: str, files: dict[str, str], dest: Path, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of ``name`` ``version`` holding ``files`` (path -> text), requiring
    ``requires``."""
    module = name.replace("-", "_")
    root = dest / f"{module}-{version}-tree"
    info = root / f"{module}-{version}.dist-info"
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(dest), str(root)],
                   check=True, capture_output=True)
    return dest / f"{module}-{version}-py3-none-any.whl"


def make_helper_wheel(version: str, dest: Path) -> Path:
    """A pure-Python wheel of kilnfix-helper ``version``: a header whose ABI is the major."""
    abi = int(version.split(".")[0])
    return make_wheel("kilnfix-helper", version, {
        "kilnfix_helper/__init__.py": (
            "import os\n"
            f"ABI = {abi}\n"
            f"__version__ = {version!r}\n"
            "def get_include():\n"
            "    return os.path.join(os.path.dirname(__file__), 'include')\n"),
        "kilnfix_helper/include/kilnfix_helper.h": f"#define KILNFIX_HELPER_ABI {abi}\n",
    }, dest)


def make_torch_stand_in(version: str, dest: Path, cuda: str | None = None,
                        gpus: tuple[str, ...] | None = None) -> Path:
    """A ``torch`` wheel with no code: what a cell of a torch-free fixture installs; ``cuda``:
    the CUDA build it claims to be (``torch.version.cuda``), None for a CPU build; ``gpus``: the
    compute capabilities of the GPUs its ``torch.cuda`` says the machine has (``()``: none; None:
    no ``torch.cuda`` at all)."""
    files = {
        "torch/__init__.py": f"from torch import version\n__version__ = {version!r}\n",
        "torch/version.py": f"cuda = {cuda!r}\n",
    }
    if gpus is not None:
        files["torch/__init__.py"] += "from torch import cuda\n"
        files["torch/cuda/__init__.py"] = (
            f"_GPUS = {[tuple(int(n) for n in cc.split('.')) for cc in gpus]!r}\n"
            "def is_available():\n    return bool(_GPUS)\n"
            "def device_count():\n    return len(_GPUS)\n"
            "def current_device():\n    return get_device_properties().index\n"
            "def get_device_capability(device=None):\n"
            "    props = get_device_properties(device)\n    return props.major, props.minor\n"
            "def get_device_name(device=None):\n    return get_device_properties(device).name\n"
            "class _Props:\n"
            "    def __init__(self, index):\n"
            "        self.index, (self.major, self.minor) = index, _GPUS[index]\n"
            "        self.name = f'stand-in torch GPU {self.major}.{self.minor}'\n"
            "def get_device_properties(device=None):\n"
            "    if not _GPUS:\n        raise RuntimeError('Found no NVIDIA driver on your system.')\n"
            "    return _Props(device or 0)\n")
    return make_wheel("torch", version, files, dest)


def _kiln_json(name: str, version: str, variant: str, **fields: object) -> str:
    """A ``kiln.json`` as `kiln build` writes it, for a cell of ``name`` ``version`` (unlabelled)
    and ``variant`` built with Python 3.11, its made-up fields as ``fields`` set them."""
    from kiln_testing.provenance import provenance_json

    cell = str(fields.pop("cell", f"{name}-{version}-cp311-{variant}"))
    return provenance_json(cell, variant, **{
        "recipe": f"{name}.yaml", "source_url": f"{name}-{version}.tar.gz", "python": "3.11", **fields})


def make_kiln_wheel(name: str, version: str, variant: str, dest: Path, requires: tuple[str, ...] = (),
                    **provenance: object) -> Path:
    """A wheel as `kiln build` finishes it, without code: its version labelled with ``variant``
    (``cu130-torch2.14``: ``1.7.0+cu130.torch2.14``), ``requires`` as its Requires-Dist and a
    ``kiln.json`` provenance, whose fields ``provenance`` sets (``torch``, ``cuda_archs_found``,
    ``archs_served``...)."""
    from kiln.matrix import Variant

    label = Variant.parse(variant).label
    full = f"{version}+{label}" if label else version
    module = name.replace("-", "_")
    root = dest / f"{module}-{full}-tree"
    info = root / f"{module}-{full}.dist-info"
    (root / module).mkdir(parents=True, exist_ok=True)
    (root / module / "__init__.py").write_text("")
    info.mkdir(parents=True, exist_ok=True)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {full}\n"
    metadata += "".join(f"Requires-Dist: {req}\n" for req in requires)
    (info / "METADATA").write_text(metadata)
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / PROVENANCE).write_text(_kiln_json(name, version, variant, **provenance))
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(dest), str(root)],
                   check=True, capture_output=True)
    return dest / f"{module}-{full}-py3-none-any.whl"


def make_torch_build(version: str, cuda: str | None, dest: Path) -> Path:
    """A ``torch`` wheel with no code whose ``torch/version.py`` says its build as torch's own does
    (``cuda: Optional[str] = '13.0'``; None for a CPU build)."""
    return make_wheel("torch", version, {
        "torch/__init__.py": f"__version__ = {version!r}\n",
        "torch/version.py": ("from typing import Optional\n\n"
                             "__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip', 'xpu']\n"
                             f"__version__ = {version!r}\n"
                             "debug = False\n"
                             f"cuda: Optional[str] = {cuda!r}\n"
                             "git_version = '0000000000000000000000000000000000000000'\n"
                             "hip: Optional[str] = None\n"
                             "xpu: Optional[str] = None\n"),
    }, dest)


def make_torch_release(version: str, cuda: str | None, python: str, dest: Path, cxx_std: int = 17) -> Path:
    """A ``torch`` wheel with no code, named and laid out as a release on an index is:
    ``torch-<version>-cp312-cp312-manylinux_2_28_x86_64.whl`` for ``python`` 3.12, its
    ``torch/version.py`` saying the CUDA build (:func:`make_torch_build`'s) and the CMake config torch
    ships for C++ consumers (``share/cmake/Torch/TorchConfig.cmake``) its C++ standard and ABI."""
    cp = "cp" + python.replace(".", "")
    tag = f"{cp}-{cp}-manylinux_2_28_x86_64"
    work = dest / f"torch-{version}-{cp}"
    built = make_torch_build(version, cuda, work)
    root = work / "tree"
    with zipfile.ZipFile(built) as zf:
        zf.extractall(root)
    (root / "torch/share/cmake/Torch").mkdir(parents=True)
    (root / "torch/share/cmake/Torch/TorchConfig.cmake").write_text(
        "# When we build libtorch with the old libstdc++ ABI, dependent libraries must too.\n"
        'if(CMAKE_SYSTEM_NAME STREQUAL "Linux")\n  set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=1")\nendif()\n'
        "set_target_properties(torch PROPERTIES\n    IMPORTED_LOCATION \"${TORCH_LIBRARY}\"\n"
        f"    CXX_STANDARD {cxx_std}\n)\n")
    info = root / f"torch-{version}.dist-info"
    (info / "RECORD").unlink()
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: false\nTag: {tag}\n")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(dest), str(root)],
                   check=True, capture_output=True)
    return dest / f"torch-{version}-{tag}.whl"


def _record_hash(data: bytes) -> str:
    return "sha256=" + urlsafe_b64encode(sha256(data).digest()).rstrip(b"=").decode()


def make_payload_wheel(dest: Path, project: str, version: str, mb: int, requires: list[str], tag: str) -> Path:
    """A wheel as a CUDA build looks to a resolver: one big incompressible shared library, and
    its .dist-info last in the archive, as build backends write it."""
    dist = project.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files: list[tuple[str, bytes]] = [
        (f"{dist}/__init__.py", f"__version__ = {version!r}\n".encode()),
        (f"{dist}/lib/lib{dist}.so", os.urandom(mb * 1024 * 1024)),
        (f"{info}/METADATA", "".join([
            "Metadata-Version: 2.1\n", f"Name: {project}\n", f"Version: {version}\n",
            "Summary: kiln metadata_bytes benchmark stand-in for a CUDA wheel\n", "Requires-Python: >=3.9\n",
            *[f"Requires-Dist: {r}\n" for r in requires]]).encode()),
        (f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: kiln-benchmark\nRoot-Is-Purelib: false\nTag: {tag}\n"
                          .encode()),
    ]
    path = dest / f"{dist}-{version}-{tag}.whl"
    # kiln's provenance, which kiln's mirror asks of every upload to a kiln index
    variant = variant_of_wheel(path.name).name
    base = version.split("+")[0]
    files.append((f"{info}/{PROVENANCE}", _kiln_json(
        project, base, variant, cell=f"{project}-{base}-{tag.split('-')[0]}-{variant}").encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files:
            compress = zipfile.ZIP_STORED if name.endswith(".so") else zipfile.ZIP_DEFLATED
            zf.writestr(name, data, compress_type=compress)
        zf.writestr(f"{info}/RECORD", record, compress_type=zipfile.ZIP_DEFLATED)
    return path

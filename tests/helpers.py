"""Shared test helpers: fixture paths, and wheels of the kilnfix-helper build dependency."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_RECIPES = FIXTURES / "recipes"
MORE_RECIPES = FIXTURES / "more"
REPO_RECIPES = Path(__file__).parent.parent / "recipes"
FIXTURE_SDIST = FIXTURES / "kilnfix-1.0.0.tar.gz"
FIXTURE_SDISTS = sorted(FIXTURES.glob("*.tar.gz"))


def make_wheel(name: str, version: str, files: dict[str, str], dest: Path) -> Path:
    """A pure-Python wheel of ``name`` ``version`` holding ``files`` (path -> text)."""
    module = name.replace("-", "_")
    root = dest / f"{module}-{version}-tree"
    info = root / f"{module}-{version}.dist-info"
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
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


def kilnfix_recipe(**replace: str) -> str:
    """The fixture's kilnfix recipe, its source made absolute, with text replaced."""
    text = (FIXTURE_RECIPES / "kilnfix.yaml").read_text()
    text = text.replace("../kilnfix-{version}.tar.gz", str(FIXTURES / "kilnfix-{version}.tar.gz"))
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def recipes_dir(dest: Path, *recipes: tuple[str, str]) -> Path:
    """A recipes directory: the fixture toolchain table and the given (file name, text) pairs."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE_RECIPES / "toolchains.yaml", dest / "toolchains.yaml")
    for name, text in recipes:
        (dest / name).write_text(text)
    return dest


def make_kiln_wheel(name: str, version: str, variant: str, dest: Path, requires: tuple[str, ...] = (),
                    **provenance: object) -> Path:
    """A wheel as `kiln build` finishes it, without code: its version labelled with ``variant``
    (``cu130-torch2.14``: ``1.7.0+cu130.torch2.14``), ``requires`` as its Requires-Dist and a
    ``kiln.json`` provenance, whose fields ``provenance`` sets (``torch``, ``cuda_archs_found``,
    ``archs_served``...)."""
    import json
    from dataclasses import asdict

    from kiln.matrix import Variant
    from kiln.wheel import PROVENANCE, Provenance

    label = Variant.parse(variant).label
    full = f"{version}+{label}" if label else version
    module = name.replace("-", "_")
    record = Provenance(kiln_version="0.1.0", cell=f"{name}-{version}-cp311-{variant}", variant=variant,
                        recipe=f"{name}.yaml", recipe_sha256="0" * 64, source_url=f"{name}-{version}.tar.gz",
                        source_sha256="0" * 64, python="3.11", torch=None, cuda_archs=None, nvcc=None,
                        compiler="gcc 13")
    for key, value in provenance.items():
        setattr(record, key, value)
    root = dest / f"{module}-{full}-tree"
    info = root / f"{module}-{full}.dist-info"
    (root / module).mkdir(parents=True, exist_ok=True)
    (root / module / "__init__.py").write_text("")
    info.mkdir(parents=True, exist_ok=True)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {full}\n"
    metadata += "".join(f"Requires-Dist: {req}\n" for req in requires)
    (info / "METADATA").write_text(metadata)
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / PROVENANCE).write_text(json.dumps(asdict(record), indent=2) + "\n")
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


@dataclass
class Container:
    """A cibuildwheel container played on the host: its Python (a seeded venv, pip in it as the
    images have it), the shell environment of its steps, and the directory raw wheels go to."""

    python: Path
    env: dict[str, str]
    raw: Path

    def before_build(self, cibw_env: dict[str, str], src: Path) -> subprocess.CompletedProcess[str]:
        """Run CIBW_BEFORE_BUILD in ``src`` as the container would; cibuildwheel mounts the host's /
        at /host, which the host's own paths play here."""
        from kiln.backends.cibuildwheel import HOST_MOUNT

        line = cibw_env["CIBW_BEFORE_BUILD"].replace("/output", str(self.raw)).replace(HOST_MOUNT + "/", "/")
        return subprocess.run(["sh", "-c", line], cwd=src, capture_output=True, text=True, env=self.env)

    def build(self, src: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """The frontend's build of the raw wheel (``args``: the frontend's own)."""
        return subprocess.run([str(self.python), "-m", "build", "--wheel", *args, "--outdir", str(self.raw), "."],
                              cwd=src, capture_output=True, text=True, env=self.env)


def container(dest: Path, index_url: str, python: str = "3.11") -> Container:
    """A `Container` under ``dest`` whose pip installs from ``index_url`` alone."""
    py = dest / "env" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "uv", "venv", "--quiet", "--seed", "--python", python,
                    str(py.parent.parent)], check=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))},
           "PATH": f"{py.parent}{os.pathsep}{os.environ['PATH']}", "PIP_INDEX_URL": index_url,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull}
    return Container(py, env, dest / "build" / "raw")

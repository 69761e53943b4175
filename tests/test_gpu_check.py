"""benchmarks/gpu_check.py where there is no GPU: it imports, --help works, and it ends in one
clear line (exit 4) rather than a traceback or an hour of downloads. On a GPU machine it is run
by hand (see its docstring); these tests skip there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import gpu_check  # benchmarks/gpu_check.py

SCRIPT = Path(gpu_check.__file__)
UV = [sys.executable, "-m", "uv"]


def run(python: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          check=False)


def test_help_names_what_it_does_and_its_exit_statuses() -> None:
    res = run(sys.executable, "--help")
    assert res.returncode == 0, res.stderr
    assert "causal-conv1d and mamba-ssm" in res.stdout
    assert "4 no GPU visible" in " ".join(res.stdout.split())


def test_without_a_gpu_it_stops_before_installing_with_one_line(tmp_path: Path) -> None:
    why = gpu_check.gpu_missing()
    if why is None:
        pytest.skip("a GPU is visible here: the check would install and run")
    venv = tmp_path / "venv"
    res = run(sys.executable, "http://127.0.0.1:9", "cu130-torch2.14", "--venv", str(venv))
    assert (res.returncode, res.stdout) == (gpu_check.NO_GPU, "")
    assert res.stderr == f"gpu_check: no GPU visible: {why}\n"
    assert not venv.exists()


def pip_sources() -> list[str]:
    """uv arguments for the local sources pip is configured with (find-links directories and
    file:// indexes; nothing on the network)."""
    res = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    links: list[str] = []
    indexes: list[str] = []
    for line in res.stdout.splitlines():
        key, _, value = line.partition("=")
        for item in value.strip().strip("'\"").split():
            if key.endswith(".find-links") and Path(item).is_dir():
                links.append(item)
            elif key.endswith("index-url") and item.startswith("file://"):
                indexes.append(item)
    args = [a for link in dict.fromkeys(links) for a in ("--find-links", link)]
    indexes = list(dict.fromkeys(indexes))
    if not indexes:
        return [*args, "--no-index"]
    return [*args, "--index-url", indexes[0], *(a for i in indexes[1:] for a in ("--extra-index-url", i))]


@pytest.fixture(scope="module")
def cpu_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with a CPU build of torch from the local sources pip is configured with."""
    venv = tmp_path_factory.mktemp("cpu-torch") / "venv"
    subprocess.run([*UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    py = venv / "bin" / "python"
    res = subprocess.run([*UV, "pip", "install", "--quiet", "--no-config", "--python", str(py), *pip_sources(),
                          "torch", "numpy"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"no torch in pip's configured local sources: {res.stderr.strip().splitlines()[-1:]}")
    return py


def test_in_a_venv_whose_torch_has_no_cuda_it_says_so_in_one_line(cpu_torch: Path) -> None:
    version = subprocess.run([str(cpu_torch), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                             capture_output=True, text=True, check=True).stdout.split()
    if version[1] != "None":
        pytest.skip(f"the local torch {version[0]} is a CUDA build")
    res = run(cpu_torch, "--here", "--runs", "1")
    assert (res.returncode, res.stdout) == (gpu_check.NO_GPU, "")
    assert res.stderr == f"gpu_check: no GPU visible: torch {version[0]} in {cpu_torch} is a build without CUDA\n"


def test_where_torch_is_missing_it_says_so_in_one_line() -> None:
    """kiln's own venv has no torch: --here there is an install problem, not a traceback."""
    if subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, check=False).returncode == 0:
        pytest.skip("torch is installed in kiln's venv")
    res = run(sys.executable, "--here")
    assert res.returncode == gpu_check.INSTALL_FAILED
    assert res.stderr == f"gpu_check: torch does not import in {sys.executable}: No module named 'torch'\n"

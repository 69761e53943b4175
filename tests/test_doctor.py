"""`kiln doctor` in fixture environments (uv venvs holding kiln wheels and torch stand-ins),
with a stand-in `nvidia-smi` first on PATH, and `kiln config --variant auto` without torch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kiln_testing.wheels import make_kiln_wheel, make_torch_build

from kiln import doctor, mirror
from kiln.home import Home
from kiln.matrix import Variant

KILN = str(Path(sys.executable).parent / "kiln")
PY_VERSION = ".".join(str(n) for n in sys.version_info[:3])
CU130_SERVES = ["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0"]

A100 = "NVIDIA A100-SXM4-80GB"
HEADER = """Mon Jun  2 10:00:00 2025
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|=========================================+========================+======================|
|   0  {name}          On  |   00000000:07:00.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+
"""


def stand_in_smi(tmp_path: Path, cc: str | None = "8.0", driver: str = "580.65.06", cuda: str = "13.0",
                 name: str = A100, gpus: int = 1) -> dict[str, str]:
    """An environment whose PATH has a stand-in nvidia-smi first, printing what the real one prints
    for ``--query-gpu=driver_version,compute_cap,name --format=csv,noheader`` and for no arguments;
    ``cc=None``: one that fails as it does on a host whose driver is not loaded."""
    bindir = tmp_path / "smi-bin"
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"
    if cc is None:
        smi.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                       "driver. Make sure that the latest NVIDIA driver is installed and running.\"\nexit 9\n")
    else:
        rows = "".join(f"{driver}, {cc}, {name}\n" for _ in range(gpus))
        smi.write_text("#!/bin/sh\n"
                       'if [ "$1" = "--query-gpu=driver_version,compute_cap,name" ]; then\n'
                       f"cat <<'EOF'\n{rows}EOF\nexit 0\nfi\n"
                       f"cat <<'EOF'\n{HEADER.format(driver=driver, cuda=cuda, name=name)}EOF\n")
    smi.chmod(0o755)
    return {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}


def no_smi(tmp_path: Path) -> dict[str, str]:
    """An environment with no nvidia-smi on PATH."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty), "HOME": str(tmp_path)}


def venv(tmp_path: Path, *wheels: Path, name: str = "env") -> str:
    """A uv venv with ``wheels`` installed as they are (no index, no dependencies): its python."""
    env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([sys.executable, "-m", "uv", "venv", "--python", sys.executable, str(tmp_path / name)],
                   check=True, capture_output=True, env=env)
    python = str(tmp_path / name / "bin" / "python")
    if wheels:
        subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--python", python, "--no-index", "--no-deps",
                        *map(str, wheels)], check=True, capture_output=True, env=env)
    return python


def kiln_doctor(python: str | None, env: dict[str, str], *args: str,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [KILN, "doctor", *(["--python", python] if python else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)


def expect(res: subprocess.CompletedProcess[str], python: str, *lines: str, problems: int = 0) -> None:
    """``res`` printed the python line, then ``lines``, and exited as ``problems`` says."""
    assert res.stdout == "".join(f"{line}\n" for line in (f"python {python} ({PY_VERSION})", *lines)), res.stderr
    if problems:
        plural = "s" if problems > 1 else ""
        assert res.stderr == f"kiln: {problems} problem{plural} with the kiln wheels in {python}\n"
        assert res.returncode == 8
    else:
        assert (res.returncode, res.stderr) == (0, "")


def mamba(dest: Path, sass: list[str], ptx: list[str] | None = None, variant: str = "cu130-torch2.14",
          served: list[str] | None = None, version: str = "2.3.2.post1") -> Path:
    minor = variant.rpartition("torch")[2]
    return make_kiln_wheel("mamba-ssm", version, variant, dest, requires=(f"torch=={minor}.*", "einops"),
                           torch=f"{minor}.1", cuda_archs="9.0",
                           cuda_archs_found={"sass": sass, "ptx": ptx or [], "with_device_code": [],
                                             "without_device_code": []},
                           archs_served=served)


def conv1d(dest: Path, variant: str = "cu130-torch2.14") -> Path:
    minor = variant.rpartition("torch")[2]
    found = {"sass": ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], "ptx": ["compute_120"]}
    return make_kiln_wheel("causal-conv1d", "1.7.0", variant, dest, requires=(f"torch=={minor}.*",),
                           torch=f"{minor}.1", cuda_archs_found=None if variant.startswith("cpu") else found,
                           archs_served=None if variant.startswith("cpu") else CU130_SERVES)


MAMBA_INFO = ("mamba-ssm 2.3.2.post1+cu130.torch2.14: kiln/cu130-torch2.14, built against torch 2.14.1; "
              "sass {sass}, ptx {ptx}; requires torch==2.14.*, einops")
CONV_INFO = ("causal-conv1d 1.7.0+cu130.torch2.14: kiln/cu130-torch2.14, built against torch 2.14.1; "
             "sass sm_75 sm_80 sm_90 sm_100 sm_120, ptx compute_120; requires torch==2.14.*")
H100_DRIVER = "driver 580.65.06 runs CUDA <= 13.0"


# ----------------------------------------------------------------------------- no GPU


def test_no_gpu_and_no_kiln_wheels_is_said_and_exits_0(tmp_path: Path) -> None:
    python = venv(tmp_path)
    expect(kiln_doctor(python, no_smi(tmp_path)), python,
           "no NVIDIA GPU found (nvidia-smi): not on PATH",
           "torch not installed",
           "no kiln wheels installed",
           "no problems")


def test_a_driver_that_is_not_loaded_is_no_gpu_and_no_problem(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1+cpu", None, wheels), conv1d(wheels, "cpu-torch2.14"),
                  make_kiln_wheel("youtokentome", "1.0.6", "main", wheels))
    expect(kiln_doctor(python, stand_in_smi(tmp_path, cc=None)), python,
           "no NVIDIA GPU found (nvidia-smi): NVIDIA-SMI has failed because it couldn't communicate with the "
           "NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.",
           "torch 2.14.1+cpu (CPU)",
           "causal-conv1d 1.7.0+cpu.torch2.14: kiln/cpu-torch2.14, built against torch 2.14.1; "
           "requires torch==2.14.*",
           "youtokentome 1.0.6: kiln/main",
           "no problems")


def test_no_gpu_skips_the_gpu_checks_of_a_cuda_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1", "13.0", wheels), mamba(wheels, ["sm_90"]))
    expect(kiln_doctor(python, no_smi(tmp_path)), python,
           "no NVIDIA GPU found (nvidia-smi): not on PATH",
           "torch 2.14.1 (CUDA 13.0)",
           MAMBA_INFO.format(sass="sm_90", ptx="none"),
           "no problems")


# ----------------------------------------------------------------------------- GPUs and their code


def test_a_gpu_with_sass(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1", "13.0", wheels), mamba(wheels, ["sm_80", "sm_90"]),
                  conv1d(wheels))
    env = stand_in_smi(tmp_path, cc="9.0", name="NVIDIA H100 80GB HBM3", gpus=8)
    expect(kiln_doctor(python, env), python,
           "GPU 0, 1, 2, 3, 4, 5, 6, 7: NVIDIA H100 80GB HBM3 (sm_90)",
           H100_DRIVER,
           "torch 2.14.1 (CUDA 13.0)",
           CONV_INFO,
           MAMBA_INFO.format(sass="sm_80 sm_90", ptx="none"),
           "no problems")


def test_a_gpu_the_wheel_runs_through_ptx_only_is_an_info_line(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1", "13.0", wheels),
                  mamba(wheels, ["sm_90"], ["compute_75"], served=CU130_SERVES))
    expect(kiln_doctor(python, stand_in_smi(tmp_path)), python,
           f"GPU 0: {A100} (sm_80)",
           H100_DRIVER,
           "torch 2.14.1 (CUDA 13.0)",
           MAMBA_INFO.format(sass="sm_90", ptx="compute_75"),
           "mamba-ssm 2.3.2.post1+cu130.torch2.14: runs on sm_80 (this GPU) through PTX compute_75: the driver "
           "compiles it on first use (a slow first start, maybe slower kernels)",
           "no problems")


def test_a_gpu_with_no_code_is_a_problem(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1", "13.0", wheels), mamba(wheels, ["sm_90"]))
    expect(kiln_doctor(python, stand_in_smi(tmp_path)), python,
           f"GPU 0: {A100} (sm_80)",
           H100_DRIVER,
           "torch 2.14.1 (CUDA 13.0)",
           MAMBA_INFO.format(sass="sm_90", ptx="none"),
           "problem: mamba-ssm 2.3.2.post1+cu130.torch2.14: no code for sm_80 (this GPU); reinstall from "
           "kiln/cu130-torch2.14 after the mirror's next --profile all build",
           problems=1)


def test_a_gpu_the_variant_does_not_serve(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1", "13.0", wheels),
                  mamba(wheels, ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], served=CU130_SERVES))
    res = kiln_doctor(python, stand_in_smi(tmp_path, cc="7.0", name="Tesla V100-SXM2-32GB"))
    assert res.stdout.splitlines()[-1] == (
        "problem: mamba-ssm 2.3.2.post1+cu130.torch2.14: no code for sm_70 (this GPU); kiln/cu130-torch2.14 serves "
        "sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_103 sm_120, not this GPU: use a variant of an older CUDA")
    assert res.returncode == 8


# ----------------------------------------------------------------------------- the driver


def test_a_driver_too_old_for_the_wheels_cuda(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1", "13.0", wheels), mamba(wheels, ["sm_80", "sm_90"]),
                  conv1d(wheels))
    expect(kiln_doctor(python, stand_in_smi(tmp_path, driver="550.54.15", cuda="12.4")), python,
           f"GPU 0: {A100} (sm_80)",
           "driver 550.54.15 runs CUDA <= 12.4",
           "torch 2.14.1 (CUDA 13.0)",
           CONV_INFO,
           MAMBA_INFO.format(sass="sm_80 sm_90", ptx="none"),
           "problem: driver 550.54.15 runs CUDA <= 12.4; kiln/cu130-* wheels need 13.0 (causal-conv1d, mamba-ssm): "
           "use a kiln/cu12* variant (kiln doctor --mirror URL names one), or a newer driver",
           problems=1)


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize(("torch", "cuda", "problem"), [
    ("2.12.1", "13.0", "torch 2.12.1 installed, causal-conv1d was built for torch 2.14: reinstall causal-conv1d "
                       "from kiln/cu130-torch2.12"),
    (None, None, "torch not installed, causal-conv1d was built for torch 2.14: install torch==2.14.* from "
                 "kiln/cu130-torch2.14"),
    ("2.14.1+cpu", None, "torch 2.14.1+cpu is a CPU build, causal-conv1d was built for CUDA 13.0: install "
                         "torch==2.14.* from kiln/cu130-torch2.14, or causal-conv1d from kiln/cpu-torch2.14"),
    ("2.14.1+cu128", "12.8", "torch 2.14.1+cu128 is a CUDA 12.8 build, causal-conv1d was built for CUDA 13.0: "
                             "reinstall causal-conv1d from kiln/cu128-torch2.14"),
])
def test_torch_that_does_not_fit_the_wheel(tmp_path: Path, torch: str | None, cuda: str | None,
                                           problem: str) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    installed = [make_torch_build(torch, cuda, wheels)] if torch else []
    python = venv(tmp_path, *installed, conv1d(wheels))
    res = kiln_doctor(python, stand_in_smi(tmp_path, cc="9.0", name="NVIDIA H100 80GB HBM3"))
    build = "not installed" if torch is None else f"{torch} ({f'CUDA {cuda}' if cuda else 'CPU'})"
    expect(res, python, "GPU 0: NVIDIA H100 80GB HBM3 (sm_90)", H100_DRIVER, f"torch {build}", CONV_INFO,
           f"problem: {problem}", problems=1)


def test_several_problems_one_line_each(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.12.1", "13.0", wheels), mamba(wheels, ["sm_90"]), conv1d(wheels))
    res = kiln_doctor(python, stand_in_smi(tmp_path, driver="550.54.15", cuda="12.4"))
    problems = [line for line in res.stdout.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: driver 550.54.15 runs CUDA <= 12.4; kiln/cu130-* wheels need 13.0 (causal-conv1d, mamba-ssm): "
        "use a kiln/cu12* variant (kiln doctor --mirror URL names one), or a newer driver",
        "problem: torch 2.12.1 installed, causal-conv1d was built for torch 2.14: reinstall causal-conv1d from "
        "kiln/cu130-torch2.12",
        "problem: mamba-ssm 2.3.2.post1+cu130.torch2.14: no code for sm_80 (this GPU); reinstall from "
        "kiln/cu130-torch2.14 after the mirror's next --profile all build",
        "problem: torch 2.12.1 installed, mamba-ssm was built for torch 2.14: reinstall mamba-ssm from "
        "kiln/cu130-torch2.12",
    ]
    assert res.returncode == 8 and res.stderr == f"kiln: 4 problems with the kiln wheels in {python}\n"


# ----------------------------------------------------------------------------- which environment


def test_the_default_environment_is_virtual_env_else_a_venv_here(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    here = tmp_path / "project"
    (here / "sub").mkdir(parents=True)
    local = venv(here, make_kiln_wheel("youtokentome", "1.0.6", "main", wheels), name=".venv")
    other = venv(tmp_path, name="other")
    res = kiln_doctor(None, no_smi(tmp_path), cwd=here / "sub")
    assert res.stdout.splitlines()[0] == f"python {local} ({PY_VERSION})"
    assert "youtokentome 1.0.6: kiln/main" in res.stdout
    res = kiln_doctor(None, {**no_smi(tmp_path), "VIRTUAL_ENV": str(tmp_path / "other")}, cwd=here)
    assert res.stdout.splitlines()[0] == f"python {other} ({PY_VERSION})"
    assert "no kiln wheels installed" in res.stdout


def test_a_python_that_does_not_run_is_one_line(tmp_path: Path) -> None:
    res = kiln_doctor(str(tmp_path / "nope" / "python"), no_smi(tmp_path))
    assert res.returncode == 6 and res.stdout == ""
    assert res.stderr.startswith(f"kiln: {tmp_path / 'nope' / 'python'}: cannot run it") and res.stderr.count("\n") == 1


def test_a_kiln_json_that_is_not_provenance_is_a_problem() -> None:
    env = doctor.parse_environment({"python": "/p", "python_version": "3.11.7", "torch": None, "kiln": [
        {"name": "x", "version": "1.0", "kiln_json": '{"variant": "main"}', "requires": []}]})
    assert env.wheels == () and len(env.unreadable) == 1
    assert env.unreadable[0].startswith("x 1.0: its kiln.json is not kiln's provenance (")


def test_parse_gpu_query() -> None:
    gpus, driver = doctor.parse_gpu_query("550.54.15, 8.0, NVIDIA A100-SXM4-80GB\n550.54.15, 8.6, NVIDIA A10, x\n")
    assert driver == "550.54.15"
    assert gpus == (doctor.Gpu(0, "NVIDIA A100-SXM4-80GB", "8.0"), doctor.Gpu(1, "NVIDIA A10, x", "8.6"))
    assert doctor.parse_gpu_query("No devices were found\n") == ((), None)


def test_variant_for_driver() -> None:
    variants = [Variant(), Variant("2.14", "13.0"), Variant("2.14", "cpu"), Variant("2.8", "12.8"),
                Variant("2.8", "12.6"), Variant("2.7", "11.8")]
    assert doctor.variant_for_driver("12.4", variants) == Variant("2.8", "12.8")  # 12.x runs any 12.y build
    assert doctor.variant_for_driver("13.1", variants) == Variant("2.14", "13.0")
    assert doctor.variant_for_driver("11.2", variants) == Variant("2.7", "11.8")
    assert doctor.variant_for_driver("10.2", variants) is None


# ----------------------------------------------------------------------------- with a mirror


@pytest.fixture(scope="module")
def kiln_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real mirror with the indexes of three variants (and kiln/main)."""
    from kiln_testing.tools import free_port

    home = Home(tmp_path_factory.mktemp("doctor-mirror"))
    variants = [Variant.parse(v) for v in ("cu130-torch2.14", "cu128-torch2.8", "cpu-torch2.14")]
    options = mirror.ServeOptions(host="127.0.0.1", port=free_port(), background=True)
    served, _ = mirror.serve(home, variants, None, options)
    try:
        yield served.url
    finally:
        mirror.stop(home)


@pytest.mark.e2e
def test_with_a_mirror_the_fixes_name_variants_it_has(tmp_path: Path, kiln_mirror: str) -> None:
    assert doctor.mirror_variants(kiln_mirror) == [Variant.parse(v) for v in (
        "cpu-torch2.14", "cu128-torch2.8", "cu130-torch2.14", "main")]
    wheels = tmp_path / "w"
    wheels.mkdir()
    python = venv(tmp_path, make_torch_build("2.14.1+cu128", "12.8", wheels),
                  mamba(wheels, ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], served=CU130_SERVES))
    res = kiln_doctor(python, stand_in_smi(tmp_path, cc="7.0", driver="550.54.15", cuda="12.4",
                                           name="Tesla V100-SXM2-32GB"), "--mirror", kiln_mirror)
    problems = [line for line in res.stdout.splitlines() if line.startswith("problem: ")]
    assert problems == [
        "problem: driver 550.54.15 runs CUDA <= 12.4; kiln/cu130-* wheels need 13.0 (mamba-ssm): use "
        "kiln/cu128-torch2.8, or a newer driver",
        "problem: mamba-ssm 2.3.2.post1+cu130.torch2.14: no code for sm_70 (this GPU); kiln/cu130-torch2.14 serves "
        "sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_103 sm_120, not this GPU: use kiln/cu128-torch2.8",
        "problem: torch 2.14.1+cu128 is a CUDA 12.8 build, mamba-ssm was built for CUDA 13.0: the mirror has no "
        "kiln/cu128-torch2.14: install torch==2.14.* from kiln/cu130-torch2.14",
    ], res.stdout
    assert res.returncode == 8


@pytest.mark.e2e
def test_config_auto_without_torch_asks_the_driver_and_the_mirror(tmp_path: Path, kiln_mirror: str) -> None:
    python = venv(tmp_path)
    env = stand_in_smi(tmp_path, driver="550.54.15", cuda="12.4")
    res = subprocess.run([KILN, "config", "--variant", "auto", "--python", python, "--mirror", kiln_mirror,
                          "--format", "uv"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == (f"found no torch in {python}; GPU sm_80, driver 550.54.15 runs CUDA <= 12.4: the newest "
                          f"variant {kiln_mirror} has for it is cu128-torch2.8\n")
    assert f'url = "{kiln_mirror}/kiln/cu128-torch2.8/+simple/"' in res.stdout
    old = stand_in_smi(tmp_path, driver="470.57.02", cuda="11.4")
    res = subprocess.run([KILN, "config", "--variant", "auto", "--python", python, "--mirror", kiln_mirror,
                          "--format", "uv"], capture_output=True, text=True, env=old)
    assert res.stderr == (f"found no torch in {python}; GPU sm_80, driver 470.57.02 runs CUDA <= 11.4; {kiln_mirror} "
                          "has no variant of CUDA 11 or older (it has cpu-torch2.14, cu128-torch2.8, cu130-torch2.14): "
                          "variant main\n")
    assert "/kiln/main/+simple/" in res.stdout


def test_config_auto_without_torch_or_gpu_is_main(tmp_path: Path) -> None:
    python = venv(tmp_path)
    res = subprocess.run([KILN, "config", "--variant", "auto", "--python", python, "--format", "pip"],
                         capture_output=True, text=True, env=no_smi(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stderr == f"found no torch in {python}; no NVIDIA GPU found (nvidia-smi: not on PATH): variant main\n"
    assert "/kiln/main/+simple/" in res.stdout


def test_config_auto_with_a_gpu_and_no_mirror_is_one_line(tmp_path: Path) -> None:
    from kiln_testing.tools import free_port

    python = venv(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    res = subprocess.run([KILN, "config", "--variant", "auto", "--python", python, "--mirror", url],
                         capture_output=True, text=True, env=stand_in_smi(tmp_path))
    assert res.returncode == 5 and res.stdout == ""
    assert res.stderr.startswith("kiln: GPU sm_80, driver 580.65.06 runs CUDA <= 13.0, but the mirror's variants "
                                 f"cannot be listed: {url}: unreachable") and res.stderr.count("\n") == 1


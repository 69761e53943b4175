"""Do kiln's CUDA wheels of causal-conv1d and mamba-ssm compute what the packages' own reference
implementations compute, on this machine's GPU, and how fast?

    python benchmarks/gpu_check.py http://127.0.0.1:3141 cu130-torch2.14 [--python 3.12] [--runs 20]

Installs both projects from the mirror's kiln/<variant> index into a fresh uv venv with
--no-build (nothing is compiled here: what runs is kiln's wheels), then, in that venv, runs on
CUDA, for float32 and bfloat16 inputs:

- causal_conv1d.causal_conv1d_fn against causal_conv1d.causal_conv1d_interface.causal_conv1d_ref
- mamba_ssm.ops.selective_scan_interface.selective_scan_fn against selective_scan_ref

and prints, for each, the max abs error, whether torch.allclose holds with the tolerances of the
packages' own tests, and the median time of the kernel and of the reference (each run ended by
torch.cuda.synchronize). Exit status: 0 all close; 1 not close; 3 the venv or the install
failed; 4 no GPU visible (one line).

    python benchmarks/gpu_check.py --here [--runs 20]

runs the checks in this interpreter, with whatever torch, causal-conv1d and mamba-ssm it has.

Before the checks, `kiln doctor` of the venv says how this GPU runs each wheel: its SASS, or the
PTX the driver compiles. To prove the PTX path that `kiln up --profile host` adds for the GPUs it
did not compile SASS for, build on a host without that GPU (e.g. `./dev up --cuda-archs 8.0`:
SASS sm_80 plus PTX compute_75) and run this on a newer GPU (an H100 or H200, sm_90): doctor then
says "through PTX compute_75", and the checks run the JIT-compiled kernels.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # kiln_testing: see its __init__

from kiln_testing.tools import uv  # standard library only: --here runs in a venv without kiln

OK, NOT_CLOSE, INSTALL_FAILED, NO_GPU = 0, 1, 3, 4  # 2: a usage error (argparse)
PROJECTS = ("causal-conv1d", "mamba-ssm")
WARMUP = 2
DEVICE = "cuda"

# The tolerances of the packages' own tests: causal-conv1d's tests/test_causal_conv1d.py and
# mamba-ssm's tests/ops/test_selective_scan.py (forward output), by input dtype.
CONV_TOL = {"float32": (3e-4, 1e-3), "bfloat16": (1e-2, 5e-2)}
SCAN_TOL = {"float32": (6e-4, 2e-3), "bfloat16": (3e-2, 5e-2)}


def fail(code: int, message: str) -> NoReturn:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------- the checks (in the venv)


def module(name: str) -> Any:
    """An installed module (torch and the packages under test are in the venv, not in kiln's)."""
    return importlib.import_module(name)


@dataclass
class Result:
    """One kernel against its reference on one input."""

    name: str
    what: str
    dtype: str
    errors: dict[str, float]
    """Max abs error of each output compared (``out``, ``last_state``)."""
    rtol: float
    atol: float
    close: bool
    kernel_ms: float
    reference_ms: float

    def line(self) -> str:
        errs = ", ".join(f"{k} {v:.3g}" for k, v in self.errors.items())
        return (f"{self.name:<18} {self.dtype:<8} {self.what}: max abs error {errs} "
                f"(rtol {self.rtol:g}, atol {self.atol:g}): {'close' if self.close else 'NOT CLOSE'}; "
                f"kernel {self.kernel_ms:.3f} ms, reference {self.reference_ms:.3f} ms "
                f"(the kernel {self.reference_ms / self.kernel_ms:.1f}x as fast)")


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """The median wall time of ``fn`` in milliseconds, each run ended by torch.cuda.synchronize."""
    torch = module("torch")

    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def compare(pairs: dict[str, tuple[Any, Any]], rtol: float, atol: float) -> tuple[dict[str, float], bool]:
    """Max abs error of each (kernel, reference) pair of tensors, and whether all are allclose."""
    torch = module("torch")
    errors: dict[str, float] = {}
    close = True
    for key, (got, want) in pairs.items():
        got, want = got.float(), want.float()
        errors[key] = float((got - want).abs().max().item())
        close = close and bool(torch.allclose(got, want, rtol=rtol, atol=atol))
    return errors, close


def check_causal_conv1d(dtype: str, runs: int, batch: int = 4, dim: int = 2048, seqlen: int = 2048,
                        width: int = 4) -> Result:
    torch = module("torch")
    causal_conv1d_fn = module("causal_conv1d").causal_conv1d_fn
    causal_conv1d_ref = module("causal_conv1d.causal_conv1d_interface").causal_conv1d_ref

    torch.manual_seed(0)
    x = torch.randn(batch, dim, seqlen, device=DEVICE, dtype=getattr(torch, dtype))
    weight = torch.randn(dim, width, device=DEVICE, dtype=torch.float32)
    bias = torch.randn(dim, device=DEVICE, dtype=torch.float32)

    def kernel() -> Any:
        return causal_conv1d_fn(x, weight, bias, activation="silu")

    def reference() -> Any:
        return causal_conv1d_ref(x, weight, bias, activation="silu")

    rtol, atol = CONV_TOL[dtype]
    with torch.no_grad():
        errors, close = compare({"out": (kernel(), reference())}, rtol, atol)
        return Result("causal_conv1d_fn", f"x {batch}x{dim}x{seqlen}, width {width}, bias, silu", dtype, errors,
                      rtol, atol, close, median_ms(kernel, runs), median_ms(reference, runs))


def check_selective_scan(dtype: str, runs: int, batch: int = 2, dim: int = 1024, dstate: int = 16,
                         seqlen: int = 1024) -> Result:
    torch = module("torch")
    interface = module("mamba_ssm.ops.selective_scan_interface")
    selective_scan_fn, selective_scan_ref = interface.selective_scan_fn, interface.selective_scan_ref

    torch.manual_seed(0)
    itype = getattr(torch, dtype)
    # As mamba-ssm's own test builds them: real A, B and C that vary along the sequence, D, z,
    # delta_bias and softplus.
    A = -0.5 * torch.rand(dim, dstate, device=DEVICE, dtype=torch.float32)
    B = torch.randn(batch, dstate, seqlen, device=DEVICE, dtype=itype)
    C = torch.randn(batch, dstate, seqlen, device=DEVICE, dtype=itype)
    D = torch.randn(dim, device=DEVICE, dtype=torch.float32)
    z = torch.randn(batch, dim, seqlen, device=DEVICE, dtype=itype)
    delta_bias = 0.5 * torch.rand(dim, device=DEVICE, dtype=torch.float32)
    u = torch.randn(batch, dim, seqlen, device=DEVICE, dtype=itype)
    delta = 0.5 * torch.rand(batch, dim, seqlen, device=DEVICE, dtype=itype)

    def kernel() -> Any:
        return selective_scan_fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True,
                                 return_last_state=True)

    def reference() -> Any:
        return selective_scan_ref(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True,
                                  return_last_state=True)

    rtol, atol = SCAN_TOL[dtype]
    with torch.no_grad():
        (out, state), (out_ref, state_ref) = kernel(), reference()
        errors, close = compare({"out": (out, out_ref), "last_state": (state, state_ref)}, rtol, atol)
        return Result("selective_scan_fn", f"u {batch}x{dim}x{seqlen}, dstate {dstate}, z, D, delta_bias, softplus",
                      dtype, errors, rtol, atol, close, median_ms(kernel, runs), median_ms(reference, runs))


def installed(project: str) -> str:
    try:
        return importlib.metadata.version(project)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def here(runs: int) -> int:
    """The checks, in this interpreter."""
    try:
        torch = module("torch")
    except ImportError as exc:
        fail(INSTALL_FAILED, f"torch does not import in {sys.executable}: {exc}")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            fail(NO_GPU, f"no GPU visible: torch {torch.__version__} in {sys.executable} is a build without CUDA")
        fail(NO_GPU, f"no GPU visible: torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device "
                     "(no driver, or CUDA_VISIBLE_DEVICES hides them)")
    props = torch.cuda.get_device_properties(0)
    print(f"gpu_check: {props.name} (sm_{props.major}{props.minor}), torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), Python {sys.version.split()[0]}, "
          + ", ".join(f"{p} {installed(p)}" for p in PROJECTS), flush=True)
    checks: list[tuple[str, Callable[[str, int], Result], str]] = [
        *(("causal_conv1d_fn", check_causal_conv1d, d) for d in CONV_TOL),
        *(("selective_scan_fn", check_selective_scan, d) for d in SCAN_TOL)]
    bad = []
    for name, check, dtype in checks:
        try:
            result = check(dtype, runs)
        except ImportError as exc:
            fail(INSTALL_FAILED, f"cannot import the package under test: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - e.g. "no kernel image is available for execution on the device"
            why = (str(exc).strip().splitlines() or [""])[0]
            print(f"{name:<18} {dtype:<8} FAILED: {type(exc).__name__}: {why}", flush=True)
            bad.append(f"{name} {dtype}")
            continue
        print(result.line(), flush=True)
        if not result.close:
            bad.append(f"{name} {dtype}")
    print(f"gpu_check: {'NOT CLOSE or FAILED: ' + ', '.join(bad) if bad else 'all close'} "
          f"(median of {runs} runs after {WARMUP} warm-up runs)", flush=True)
    return NOT_CLOSE if bad else OK


# ----------------------------------------------------------------------------- the venv (outside)


def gpu_missing() -> str | None:
    """Why no NVIDIA GPU is visible here, or None when one is (before installing gigabytes)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None if glob.glob("/dev/nvidia[0-9]*") else "no nvidia-smi and no /dev/nvidia* device on this machine"
    try:
        res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi -L failed: {exc}"
    if res.returncode != 0:
        why = (res.stdout + res.stderr).strip().splitlines()
        return f"nvidia-smi -L failed: {why[-1] if why else f'exit {res.returncode}'}"
    if not any(line.startswith("GPU ") for line in res.stdout.splitlines()):
        return "nvidia-smi -L lists no GPU"
    return None


def simple_url(mirror: str, variant: str) -> str:
    """The variant's index, as kiln lays the mirror out (kiln/<variant>)."""
    return f"{mirror.rstrip('/')}/kiln/{variant}/+simple/"


def run_uv(args: list[str], what: str) -> None:
    res = subprocess.run([uv(), *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        fail(INSTALL_FAILED, f"{what} failed: {' '.join(lines[-3:]) or f'exit {res.returncode}'}")


def doctor(py: Path) -> None:
    """`kiln doctor` of the venv, when kiln is at hand: how this GPU runs each wheel (its own SASS, or
    PTX the driver compiles), so a run on a GPU newer than a wheel's SASS says it proved the PTX path."""
    kiln = shutil.which("kiln") or str(Path(sys.executable).parent / "kiln")
    if not Path(kiln).exists():
        print("gpu_check: no kiln here to say how this GPU runs each wheel (kiln doctor)", flush=True)
        return
    res = subprocess.run([kiln, "doctor", "--python", str(py)], capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        print(f"gpu_check: kiln doctor: {line}", flush=True)


def in_venv(mirror: str, variant: str, python: str, runs: int, venv: Path | None) -> int:
    """A fresh venv with both projects from the mirror (no builds), then the checks in it."""
    if why := gpu_missing():
        fail(NO_GPU, f"no GPU visible: {why}")
    root = venv or Path(tempfile.mkdtemp(prefix="kiln-gpu-check-")) / "venv"
    try:
        run_uv(["venv", "--quiet", "--python", python, str(root)], f"uv venv --python {python}")
        py = root / "bin" / "python"
        index = simple_url(mirror, variant)
        print(f"gpu_check: installing {' '.join(PROJECTS)} from {index} (--no-build) into {root}", flush=True)
        run_uv(["pip", "install", "--quiet", "--python", str(py), "--no-build", "--index-url", index, *PROJECTS],
               f"uv pip install --no-build --index-url {index} {' '.join(PROJECTS)}")
        doctor(py)
        return subprocess.run([str(py), __file__, "--here", "--runs", str(runs)], check=False).returncode
    finally:
        if venv is None:
            shutil.rmtree(root.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py",
        description="Install causal-conv1d and mamba-ssm from a kiln mirror (no builds) and check their CUDA "
                    "kernels against the packages' own reference implementations on this GPU: max abs error, "
                    "torch.allclose, median times. Exit 0 close, 1 not close, 3 install failed, 4 no GPU visible.")
    parser.add_argument("mirror", nargs="?", help="the mirror's URL, e.g. http://127.0.0.1:3141")
    parser.add_argument("variant", nargs="?", help="the variant whose index to install from, e.g. cu130-torch2.14")
    parser.add_argument("--python", default="3.12", help="the venv's Python (default 3.12)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each function (default 20)")
    parser.add_argument("--venv", type=Path, help="create the venv here and keep it (default: a temp dir)")
    parser.add_argument("--here", action="store_true",
                        help="run the checks in this interpreter, installing nothing")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if args.here:
        return here(args.runs)
    if not args.mirror or not args.variant:
        parser.error("give the mirror's URL and a variant (or --here)")
    return in_venv(args.mirror, args.variant, args.python, args.runs, args.venv)


if __name__ == "__main__":
    sys.exit(main())

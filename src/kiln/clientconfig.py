"""`kiln config`: the lines a team pastes to install from the mirror (uv, pip, Docker, pixi),
and which variant fits the torch installed in a Python environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from kiln import archs
from kiln.errors import ConfigError, HostError, MirrorError
from kiln.matrix import Variant
from kiln.mirror import DEFAULT_HOST, DEFAULT_PORT, simple_url, url_for

FORMATS = ("uv", "pip", "docker", "pixi")
TORCH_PROBE = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "except ImportError:\n"
    "    print(json.dumps(None))\n"
    "else:\n"
    "    print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda,\n"
    "                      'hip': getattr(torch.version, 'hip', None)}))\n"
)


def default_mirror() -> str:
    return os.environ.get("KILN_MIRROR_URL", url_for(DEFAULT_HOST, DEFAULT_PORT))


@dataclass(frozen=True)
class Detected:
    """The torch found in an environment and the variant it asks for."""

    python: str
    torch: str | None
    cuda: str | None
    variant: Variant
    why: str = ""
    """Without torch: how the variant was chosen (the GPUs, the driver, the mirror's variants)."""

    def describe(self) -> str:
        if self.torch is None:
            return f"no torch in {self.python}; {self.why or 'variant'} {self.variant.name}"
        cuda = f"CUDA {self.cuda}" if self.cuda else "CPU"
        return f"torch {self.torch} ({cuda}) in {self.python}: variant {self.variant.name}"


def current_python() -> str:
    """The Python of the environment in use, found as uv finds it: $VIRTUAL_ENV's, else
    $CONDA_PREFIX's, else a ``.venv`` in the working directory or above it; else python3 on PATH,
    else kiln's own."""
    for env in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        prefix = os.environ.get(env)
        if prefix and (Path(prefix) / "bin" / "python").exists():
            return str(Path(prefix) / "bin" / "python")
    cwd = Path.cwd()
    for parent in (cwd, *cwd.parents):
        if (parent / ".venv" / "bin" / "python").exists():
            return str(parent / ".venv" / "bin" / "python")
    return shutil.which("python3") or shutil.which("python") or sys.executable


def variant_for_torch(version: str, cuda: str | None) -> Variant:
    """torch ``2.14.1+cu130`` with CUDA ``13.0`` -> cu130-torch2.14; no CUDA -> cpu-torch2.14."""
    try:
        release = Version(version).release
    except InvalidVersion:
        raise ConfigError(f"torch version {version!r} is not a PEP 440 version") from None
    minor = f"{release[0]}.{release[1] if len(release) > 1 else 0}"
    if cuda:
        parts = cuda.split(".")
        cuda = f"{parts[0]}.{parts[1] if len(parts) > 1 else 0}"
    return Variant(torch=minor, cuda=cuda or "cpu")


def detect(python: str | None = None, mirror: str | None = None) -> Detected:
    """Import torch in ``python`` (default: the current environment's) and name its variant.
    Without torch: no NVIDIA GPU -> ``main``; with one, the driver's CUDA -> the newest torch
    variant ``mirror`` (default: default_mirror()) has of a CUDA the driver runs."""
    python = python or current_python()
    try:
        res = subprocess.run([python, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"{python}: cannot run it to look for torch ({exc})") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        raise HostError(f"{python}: importing torch failed: {last}")
    found = json.loads(res.stdout.strip().splitlines()[-1])
    if found is None:
        variant, why = variant_for_machine(mirror or default_mirror())
        return Detected(python, None, None, variant, why)
    if found.get("hip"):  # a ROCm build: torch.version.cuda is None there, yet it is no cpu torch
        raise HostError(f"torch {found['version']} in {python} is a ROCm build (HIP {found['hip']}); kiln "
                        "builds CUDA and cpu variants only, and neither fits it")
    return Detected(python, found["version"], found["cuda"],
                    variant_for_torch(found["version"], found["cuda"]))


def variant_for_machine(mirror: str) -> tuple[Variant, str]:
    """The variant for this machine when no torch is installed, and the words that say why:
    no NVIDIA GPU -> main; else the newest torch variant ``mirror`` has of a CUDA the driver runs
    (the probe of `kiln doctor`)."""
    from kiln.doctor import mirror_variants, probe_machine, variant_for_driver

    machine = probe_machine()
    if not machine.gpus:
        return Variant(), f"no NVIDIA GPU found (nvidia-smi: {machine.why_none}): variant"
    gpus = ", ".join(archs.sm_name(cc) for cc in machine.ccs)
    if not machine.driver_cuda:
        raise HostError(f"GPU {gpus}, driver {machine.driver}: nvidia-smi does not say which CUDA the driver "
                        "runs; name a variant with --variant")
    said = f"GPU {gpus}, driver {machine.driver} runs CUDA <= {machine.driver_cuda}"
    try:
        variants = mirror_variants(mirror)
    except MirrorError as exc:
        raise MirrorError(f"{said}, but the mirror's variants cannot be listed: {exc.message}; "
                          "name a variant with --variant") from None
    best = variant_for_driver(machine.driver_cuda, variants)
    if best is None:
        have = ", ".join(v.name for v in variants if v.torch) or "none"
        major = machine.driver_cuda.split(".")[0]
        return Variant(), f"{said}; {mirror} has no variant of CUDA {major} or older (it has {have}): variant"
    return best, f"{said}: the newest variant {mirror} has for it is"


def render(variant: Variant, mirror: str, fmt: str) -> str:
    """The snippet for one client: uv.toml, pip.conf, Dockerfile lines or pixi.toml.

    pip ignores a plain-http index on another host unless it is a trusted host; uv takes it."""
    index = simple_url(mirror, variant.name)
    parsed = urllib.parse.urlparse(index)
    host = parsed.hostname or ""
    insecure = parsed.scheme == "http" and host not in ("127.0.0.1", "localhost", "::1")
    if fmt == "uv":
        return "\n".join(["# uv.toml ([[tool.uv.index]] in pyproject.toml)", "[[index]]", 'name = "kiln"',
                          f'url = "{index}"', "default = true"])
    if fmt == "pip":
        lines = ["# pip.conf (~/.config/pip/pip.conf or /etc/pip.conf)", "[global]", f"index-url = {index}"]
        if insecure:
            lines.append(f"trusted-host = {host}")
        return "\n".join(lines)
    if fmt == "docker":
        lines = ["# Dockerfile", f"ARG KILN_INDEX_URL={index}",
                 "ENV UV_DEFAULT_INDEX=${KILN_INDEX_URL} \\", "    PIP_INDEX_URL=${KILN_INDEX_URL}"]
        if insecure:
            lines[-1] += " \\"
            lines.append(f"    PIP_TRUSTED_HOST={host}")
        return "\n".join(lines)
    if fmt == "pixi":
        return "\n".join(["# pixi.toml ([tool.pixi.pypi-options] in pyproject.toml)", "[pypi-options]",
                          f'index-url = "{index}"'])
    raise ConfigError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")

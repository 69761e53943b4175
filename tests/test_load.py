"""The mirror under load: benchmarks/load.py's own code path, smaller. 16 `uv pip install
--no-cache` clients at once against kiln's mirror (real devpi-server behind nginx, real uv), every
one ending with exactly the versions published and mirrored; no timing is asserted.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from kiln import mirror
from kiln.home import Home

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import load  # benchmarks/load.py

pytestmark = pytest.mark.e2e
CLIENTS = 16
# `build` on Python >= 3.11 needs these two and nothing else
UPSTREAM = ("build", "packaging", "pyproject-hooks")


def test_16_clients_at_once_each_install_the_published_versions(tmp_path: Path, upstream_wheels: list[Path]) -> None:
    versions = {canonicalize_name(parse_wheel_filename(w.name)[0]): parse_wheel_filename(w.name)[1]
                for w in upstream_wheels}
    expected: dict[NormalizedName, Version] = {
        canonicalize_name("kilnload-app"): Version("0.4.0"),
        canonicalize_name("kilnload-kernels"): Version("2.3.1+cpu.torch2.14"),
        canonicalize_name("kilnload-runtime"): Version("1.0.0"),
        **{canonicalize_name(n): versions[canonicalize_name(n)] for n in UPSTREAM},
    }

    result = load.load(tmp_path, upstream_wheels, ["build"], CLIENTS, sides=("mirror",))

    assert mirror.running(Home(tmp_path / "home")) is None  # the benchmark stopped what it started
    assert result.content.expected == expected
    [phase] = result.phases
    assert len(phase.installs) == CLIENTS
    assert [i.error for i in phase.installs] == [None] * CLIENTS
    assert all(i.got == expected for i in phase.installs)
    # every wheel came whole from the mirror's nginx, and nothing it answered was an error
    wheels = [r for r in phase.requests if re.match(r"GET \S+\.whl HTTP", r[0])]
    assert len(wheels) == CLIENTS * len(expected)
    assert {status for _, status, _ in wheels} == {200}
    assert phase.bad_status == {}

"""Under CI=true an e2e test that cannot start fails the run; locally it skips and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SAMPLE = '''
import pytest

@pytest.mark.e2e
def test_needs_a_mirror():
    pytest.skip("cannot start devpi-server: port in use")

def test_unit_may_skip():
    pytest.skip("no nvcc here")
'''


def run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(Path(__file__).parent)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "ci_strict", "-p", "no:cacheprovider",
                           "-p", "no:pytest_devpi_postgresql", "-q",
                           "-rfs", "-o", "markers=e2e", str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path, env=env)


def test_under_ci_a_skipped_e2e_test_fails(tmp_path: Path) -> None:
    res = run(tmp_path, "true")
    assert res.returncode == 1, res.stdout
    assert "FAILED test_sample.py::test_needs_a_mirror" in res.stdout
    assert "an e2e test may not skip under CI=true: Skipped: cannot start devpi-server: port in use" in res.stdout
    assert "1 failed, 1 skipped" in res.stdout


def test_locally_it_skips_with_its_reason(tmp_path: Path) -> None:
    res = run(tmp_path, None)
    assert res.returncode == 0, res.stdout
    assert "SKIPPED [1] test_sample.py:6: cannot start devpi-server: port in use" in res.stdout
    assert "2 skipped" in res.stdout

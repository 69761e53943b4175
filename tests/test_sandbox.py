"""The sandbox of a build step: what a cell without CUDA can and cannot see."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import HostError
from kiln.sandbox import Sandbox, cuda_toolkit_paths, unshare


def toolkit(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A fake CUDA toolkit under tmp/opt (beside another directory), and an nvcc wrapper on PATH."""
    home = tmp_path / "opt" / "cuda-13.0"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\necho nvcc\n")
    (home / "bin" / "nvcc").chmod(0o755)
    (tmp_path / "opt" / "cuda").symlink_to(home)
    (tmp_path / "opt" / "other").mkdir()
    (tmp_path / "opt" / "other" / "kept.txt").write_text("kept\n")
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "nvcc").write_text(f"#!/bin/sh\nexec {home}/bin/nvcc \"$@\"\n")
    (wrappers / "nvcc").chmod(0o755)
    (wrappers / "gcc-ok").write_text("#!/bin/sh\necho ok\n")
    (wrappers / "gcc-ok").chmod(0o755)
    return home, tmp_path / "opt" / "cuda", wrappers


def test_toolkits_and_nvcc_wrappers_are_found(tmp_path: Path) -> None:
    home, link, wrappers = toolkit(tmp_path)
    (wrappers / "ptxas").write_text(f"#!/bin/sh\nexec {home}/bin/ptxas \"$@\"\n")
    (wrappers / "ptxas").chmod(0o755)
    dirs, files = cuda_toolkit_paths({"CUDA_HOME": str(link), "PATH": f"{wrappers}:/usr/bin"})
    assert link in dirs and home in dirs
    assert wrappers / "nvcc" in files and wrappers / "ptxas" in files
    assert wrappers / "gcc-ok" not in files


def test_cuda_variables_are_not_passed_on() -> None:
    env = {"CUDA_HOME": "/usr/local/cuda", "TORCH_CUDA_ARCH_LIST": "9.0", "FORCE_CUDA": "1", "PATH": "/usr/bin",
           "PYTORCH_NVCC": "ccache nvcc", "MAX_JOBS": "2"}
    assert Sandbox(hide_cuda=True).env(env) == {"PATH": "/usr/bin", "MAX_JOBS": "2"}
    assert Sandbox(hide_cuda=False).env(env) == env


def test_inside_the_sandbox_the_toolkit_is_gone_and_the_rest_is_there(tmp_path: Path) -> None:
    try:
        prefix = unshare(["--net", "--mount"])
    except HostError as exc:
        pytest.skip(str(exc))
    home, link, wrappers = toolkit(tmp_path)
    opt = tmp_path / "opt"
    script = (f"test -e {link} && echo link-visible; test -e {home} && echo home-visible; "
              f"cat {opt}/other/kept.txt; PATH={wrappers}:/usr/bin:/bin; command -v nvcc || echo no-nvcc; gcc-ok; "
              f"test -e {wrappers}/nvcc || echo nvcc-gone")
    cmd = [*prefix, sys.executable, "-m", "kiln.sandbox", "--stash", str(tmp_path / "stash"),
           "--hide", str(link), "--hide", str(home), "--hide", str(wrappers / "nvcc"), "--", "sh", "-c", script]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["kept", "no-nvcc", "ok", "nvcc-gone"]
    # Outside, nothing changed.
    assert home.is_dir() and link.exists() and os.access(wrappers / "nvcc", os.X_OK)


def test_wrap_without_cuda_hiding_only_blocks_the_network(tmp_path: Path) -> None:
    try:
        cmd = Sandbox().wrap(["true"], tmp_path / "stash")
    except HostError as exc:
        pytest.skip(str(exc))
    assert cmd[:2] == ["unshare", "--net"] and "kiln.sandbox" not in cmd
    assert Sandbox(network=True).wrap(["true"], tmp_path / "stash") == ["true"]

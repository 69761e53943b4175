"""A cibuildwheel container played on the host, for the tests of the CI backend's steps."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Container:
    """A cibuildwheel container played on the host: its Python (a seeded venv, pip in it as the
    images have it), the shell environment of its steps, and the directory raw wheels go to."""

    python: Path
    env: dict[str, str]
    raw: Path

    def before_build(self, cibw_env: dict[str, str], src: Path) -> subprocess.CompletedProcess[str]:
        """Run CIBW_BEFORE_BUILD in ``src`` as the container would; cibuildwheel mounts the host's /
        at /host, which the host's own paths play here."""
        from kiln.backends.cibuildwheel import HOST_MOUNT

        line = cibw_env["CIBW_BEFORE_BUILD"].replace("/output", str(self.raw)).replace(HOST_MOUNT + "/", "/")
        return subprocess.run(["sh", "-c", line], cwd=src, capture_output=True, text=True, env=self.env)

    def build(self, src: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """The frontend's build of the raw wheel (``args``: the frontend's own)."""
        return subprocess.run([str(self.python), "-m", "build", "--wheel", *args, "--outdir", str(self.raw), "."],
                              cwd=src, capture_output=True, text=True, env=self.env)


def container(dest: Path, index_url: str, python: str = "3.11") -> Container:
    """A `Container` under ``dest`` whose pip installs from ``index_url`` alone."""
    py = dest / "env" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "uv", "venv", "--quiet", "--seed", "--python", python,
                    str(py.parent.parent)], check=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))},
           "PATH": f"{py.parent}{os.pathsep}{os.environ['PATH']}", "PIP_INDEX_URL": index_url,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull}
    return Container(py, env, dest / "build" / "raw")

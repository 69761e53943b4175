"""Smoke-test a finished wheel: a fresh environment, the wheel plus its pinned runtime, and
the recipe's imports, each in its own interpreter so a failure names the module."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

from kiln.backends.local import make_env, torch_index_args
from kiln.errors import BuildError
from kiln.matrix import Cell
from kiln.toolchains import Toolchains


def smoke(wheel: Path, cell: Cell, toolchains: Toolchains, work: Path, log: IO[str],
          constraints: Path) -> None:
    """Install ``wheel`` (nothing built: --no-build) in a fresh env and import the recipe's modules."""
    print(f"kiln: smoke test of {wheel.name}", file=log, flush=True)
    env_dir = work / "smoke-env"
    python = make_env(cell.python, env_dir, ["--no-build", str(wheel)], constraints,
                      torch_index_args(cell, toolchains), log)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
    preload = "import torch; " if "torch" in [p.lower() for p in cell.recipe.pins] else ""
    for module in cell.recipe.test.imports:
        code = f"{preload}import {module}; print('kiln: import {module}: ok', getattr({module}, '__file__', ''))"
        res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env,
                             cwd=work)
        log.write(res.stdout + res.stderr)
        log.flush()
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["?"])[-1]
            raise BuildError(f"smoke test: import {module} failed: {last}")
    shutil.rmtree(env_dir, ignore_errors=True)

"""What the arch contract costs a host build: one CUDA cell built, side by side in one run, for

  (a) SASS for the host's archs alone (what a host-scoped index, serving only this host's GPUs,
      would take), and
  (b) the same plus PTX of the lowest GPU the variant index serves (what `kiln up --profile host`
      builds, so the wheel runs on every GPU the team's index serves),

each in a fresh kiln home (an empty compiler cache) with the same uv cache, every step of a cell
run (build, finish, smoke test). Prints each time, what cuobjdump found, and the ratio b/a.

    python benchmarks/host_archs.py [--recipes recipes] [--project causal-conv1d]
                                    [--variant cu130-torch2.14] [--python 3.11] [--archs 9.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from kiln.backends.registry import get_backend
from kiln.build import BuildContext, build_cells
from kiln.home import Home
from kiln.matrix import expand
from kiln.profile import ptx_floor
from kiln.provenance import CudaArchs
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", type=Path, default=Path("recipes"))
    ap.add_argument("--project", default="causal-conv1d")
    ap.add_argument("--variant", default="cu130-torch2.14")
    ap.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    ap.add_argument("--archs", default="9.0", help="the host's archs (SASS), as toolchains.yaml's host_archs")
    args = ap.parse_args()
    toolchains = load_toolchains(args.recipes)
    recipes = load_recipes(args.recipes, [args.project])
    cells = [c for c in expand(recipes, toolchains, args.variant, args.archs) if c.python == args.python]
    if len(cells) != 1:
        print(f"host_archs: {args.project} has {len(cells)} cells for {args.variant} cp{args.python}", file=sys.stderr)
        return 2
    (cell,) = cells
    floor = ptx_floor(args.archs, cell.archs_served)
    runs = {
        # (a) no contract: served by this host's GPUs alone
        "a: SASS " + args.archs: dataclasses.replace(cell, archs_served=()),
        # (b) the host profile: SASS for the host, PTX for every other served GPU
        f"b: SASS {args.archs} + PTX {floor}": dataclasses.replace(cell, ptx_archs=floor),
    }
    times: dict[str, float] = {}
    console = Console(stderr=True)
    for name, run_cell in runs.items():
        with tempfile.TemporaryDirectory(prefix="kiln-host-archs-") as tmp:
            home = Home(Path(tmp) / "home")
            run = BuildContext.of(toolchains, home, home.wheelhouse, get_backend("local"))
            (result,) = build_cells([run_cell], run, console)
            if result.status != "built":
                print(f"host_archs: {name}: {result.error}", file=sys.stderr)
                return 1
            times[name] = result.seconds
            found = CudaArchs.from_json(result.cuda_archs_found)
            print(f"{name}: {result.seconds:.0f} s, {found}", flush=True)
    (a, b) = times.values()
    print(f"b/a = {b / a:.2f} ({cell.id}; the PTX pass costs {b - a:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

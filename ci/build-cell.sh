#!/usr/bin/env bash
# Build one cell in any CI: fetch and patch its source, build with cibuildwheel in its container,
# then finish and smoke-test the wheel into wheelhouse/. Needs kiln (`pip install .`), Docker
# (or CIBW_CONTAINER_ENGINE=podman) and uv. The cell ids come from `kiln plan --json`.
#   ci/build-cell.sh causal-conv1d-1.7.0-cp311-cu130-torch2.14
set -euo pipefail
cell="${1:?usage: ci/build-cell.sh CELL (a cell id from kiln plan --json)}"
python="$(sed -E 's/.*-cp3([0-9]+)-.*/3.\1/' <<<"$cell")"   # the cell's Python, for the smoke test
rm -rf build
kiln source "$cell" --out build/src
(eval "$(kiln cibw-env "$cell")" && cd build/src && cibuildwheel --output-dir ../raw .)
uv python install "$python"
kiln finish build/raw/*.whl --cell "$cell" --source build/src --out wheelhouse

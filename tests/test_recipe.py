"""The recipe schema: what a recipe author relies on when a recipe is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.errors import BuildError, ConfigError
from kiln.matrix import expand
from kiln.recipe import load_recipe, load_recipes
from kiln.toolchains import load_toolchains
from kiln.wheel import pins_for, run_export

REPO_RECIPES = Path(__file__).parent.parent / "recipes"

GOOD = """\
project: demo
versions: ["1.0"]
build:
  requires: [numpy]
matrix:
  python: ["3.11"]
"""


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    shutil.copy(REPO_RECIPES / "toolchains.yaml", tmp_path / "toolchains.yaml")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_repository_recipes_pass_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--recipes", str(REPO_RECIPES)]) == 0
    count = len([p for p in REPO_RECIPES.glob("*.yaml") if p.name != "toolchains.yaml"])
    assert f"ok: {count} recipes" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (GOOD.replace("  requires: [numpy]", "  requires: [numpy]\n  reqiures: [x]"), 5, "unknown key 'reqiures'"),
        (GOOD + "colour: blue\n", 7, "unknown key 'colour'"),
        (GOOD.replace('["1.0"]', '[1.0]'), 2, "quote versions"),
        (GOOD.replace('["3.11"]', '["3.11", 3.12]'), 6, "expected quoted strings"),
        (GOOD.replace("[numpy]", '["numpy>>1"]'), 4, "not a PEP 508 requirement"),
        (GOOD.replace("project: demo\n", ""), 1, "project: required key is missing"),
        (GOOD.replace("  requires: [numpy]", "  memory_per_job_gb: -1"), 4, "greater than 0"),
        (GOOD + "test:\n  imports: mod\n", 8, "test.imports"),
        (GOOD.replace("matrix:\n  python: [\"3.11\"]", 'matrix:\n  torch: ["2.14"]'), 6, "cuda is empty"),
        (GOOD.replace("  requires: [numpy]", "  env:\n    X: 1"), 5, "build.env.X: expected a string, quote it"),
        (GOOD.replace("  requires: [numpy]", "  patches: [nope.patch]"), 4, "no such patch: patches/nope.patch"),
        (GOOD.replace("  requires: [numpy]", "  cuda_archs: sm90"), 4, "archs like"),
        ("project: [unclosed\n", 1, "invalid YAML"),
        (GOOD.replace("  requires: [numpy]", '  replace: {"numpy=1": numpy}'), 4, "not a PEP 508 requirement"),
        (GOOD.replace("  requires: [numpy]", "  number: -1"), 4, "greater than or equal to 0"),
        (GOOD + "runtime:\n  run_exports: {numpy: sideways}\n", 8, "expected minor, major, exact or a specifier"),
    ],
)
def test_malformed_recipe_names_file_line_and_expectation(tmp_path: Path, text: str, line: int,
                                                          fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = info.value.message
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message
    assert "\n" not in message


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, GOOD + "colour: blue\n")
    assert main(["check", "--recipes", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == f"kiln: {tmp_path / 'demo.yaml'}:7: colour: unknown key 'colour'"


def test_unknown_torch_minor_is_an_error_naming_the_recipe(tmp_path: Path) -> None:
    write(tmp_path, GOOD.replace('matrix:\n  python: ["3.11"]', 'matrix:\n  torch: ["1.99"]\n  cuda: ["13.0"]'))
    assert main(["check", "--recipes", str(tmp_path)]) == 2


def test_toolchain_unknown_index_names_line(tmp_path: Path) -> None:
    text = (REPO_RECIPES / "toolchains.yaml").read_text().replace('"12.8": pytorch', '"12.8": pytroch', 1)
    (tmp_path / "toolchains.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_toolchains(tmp_path)
    lineno = text.splitlines().index('      "12.8": pytroch') + 1
    assert info.value.message.startswith(f"{tmp_path / 'toolchains.yaml'}:{lineno}: ")
    assert "unknown index 'pytroch'" in info.value.message


def test_torch_is_pinned_by_the_run_export_table_only_when_the_build_holds_it() -> None:
    tc = load_toolchains(REPO_RECIPES)
    assert tc.run_exports == {"torch": "minor"}
    cells = {c.project: c for c in expand(load_recipes(REPO_RECIPES), tc)}
    assert pins_for(cells["causal-conv1d"], tc, {"torch": "2.14.1", "ninja": "1.13.0"}) == ["torch==2.14.*"]
    assert pins_for(cells["youtokentome"], tc, {"cython": "3.1.2"}) == []
    assert load_recipes(REPO_RECIPES, ["pytwed"])[0].runtime.requires == ["numpy"]


@pytest.mark.parametrize(("kind", "expected"), [("minor", "numpy==1.26.*"), ("major", "numpy>=1.26,<2"),
                                                ("exact", "numpy==1.26.4"), ("<2", "numpy<2")])
def test_run_export_kinds(kind: str, expected: str) -> None:
    assert run_export("numpy", kind, "1.26.4") == expected


def test_a_recipe_run_export_the_build_lacks_is_an_error(tmp_path: Path) -> None:
    tc = load_toolchains(REPO_RECIPES)
    (tmp_path / "x.yaml").write_text('project: x\nversions: ["1"]\nruntime:\n  run_exports: {numpy: major}\n')
    shutil.copy(REPO_RECIPES / "toolchains.yaml", tmp_path / "toolchains.yaml")
    cell = expand(load_recipes(tmp_path), tc)[0]
    assert pins_for(cell, tc, {"numpy": "1.26.4"}) == ["numpy>=1.26,<2"]
    with pytest.raises(BuildError, match="run-export names numpy, which the build environment lacks"):
        pins_for(cell, tc, {})


def test_only_unknown_project_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no recipe for not-a-project"):
        load_recipes(REPO_RECIPES, only=["not-a-project"])

"""Build requirements read statically: the tiers a user relies on, and build.replace."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.buildreqs import BuildRequirements, replace, static
from kiln.recipe import Recipe, load_recipe

RULES = {"numpy==1.19.*": "numpy>=2", "cython": None}


def recipe(**build: object) -> Recipe:
    return Recipe.model_validate({"project": "demo", "versions": ["1.0"], "build": build})


def tree(tmp_path: Path, pyproject: str | None) -> Path:
    (tmp_path / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    return tmp_path


def test_a_project_without_build_system_gets_pep_517s_default(tmp_path: Path) -> None:
    reqs = static(tree(tmp_path, None), recipe(requires=["numpy"]))
    assert reqs.build_system == ["setuptools>=40.8.0"] and reqs.default
    assert reqs.recipe == ["numpy"]
    assert reqs.installed_first == ["setuptools>=40.8.0", "numpy"]


def test_a_pyproject_without_build_system_is_the_default_too(tmp_path: Path) -> None:
    reqs = static(tree(tmp_path, "[tool.black]\nline-length = 99\n"), recipe())
    assert reqs.build_system == ["setuptools>=40.8.0"] and reqs.default


def test_declared_requirements_are_kept_and_the_recipe_adds(tmp_path: Path) -> None:
    src = tree(tmp_path, '[build-system]\nrequires = ["setuptools>=61", "wheel", "Cython>=0.29"]\n'
                         'build-backend = "setuptools.build_meta"\n')
    reqs = static(src, recipe(requires=["numpy<2"]))
    assert reqs.build_system == ["Cython>=0.29", "setuptools>=61", "wheel"] and not reqs.default
    assert reqs.installed_first[-1] == "numpy<2"


def test_replace_edits_what_upstream_declared(tmp_path: Path) -> None:
    src = tree(tmp_path, '[build-system]\nrequires = ["setuptools", "numpy==1.19.*", "cython<3"]\n')
    reqs = static(src, recipe(replace=RULES))
    assert reqs.build_system == ["numpy>=2", "setuptools"]
    assert reqs.declared == ["cython<3", "numpy==1.19.*", "setuptools"]
    assert reqs.replaced == {"numpy==1.19.*": "numpy>=2", "cython<3": None}
    assert "build.replace: cython<3 -> (dropped)" in reqs.describe()


def test_a_project_can_be_replaced_by_another() -> None:
    replaced: dict[str, str | None] = {}
    assert replace(["oldest-supported-numpy", "setuptools"], {"oldest-supported-numpy": "numpy"}, replaced) == \
        ["numpy", "setuptools"]
    assert replaced == {"oldest-supported-numpy": "numpy"}


def test_an_exact_rule_leaves_other_specifiers_alone() -> None:
    replaced: dict[str, str | None] = {}
    assert replace(["numpy>=1.21"], RULES, replaced) == ["numpy>=1.21"]
    assert replaced == {}


def test_tiers_are_written_beside_the_build(tmp_path: Path) -> None:
    reqs = BuildRequirements(["setuptools>=61"], ["numpy"], backend=["wheel"])
    reqs.write(tmp_path / "reqs")
    assert (tmp_path / "reqs" / "build_system-requirements.txt").read_text() == "setuptools>=61\n"
    assert (tmp_path / "reqs" / "backend-requirements.txt").read_text() == "wheel\n"
    assert '"recipe": [\n    "numpy"\n  ]' in (tmp_path / "reqs" / "build-requirements.json").read_text()


def test_an_unreadable_pyproject_fails_in_one_line(tmp_path: Path) -> None:
    from kiln.errors import BuildError

    src = tree(tmp_path, "[build-system\n")
    with pytest.raises(BuildError) as info:
        static(src, recipe())
    assert "\n" not in info.value.message and "pyproject.toml" in info.value.message


def test_recipe_replace_field_loads(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text('project: demo\nversions: ["1"]\nbuild:\n  replace: {"numpy==1.19.*": numpy, cython: null}\n')
    assert load_recipe(path).build.replace == {"numpy==1.19.*": "numpy", "cython": None}

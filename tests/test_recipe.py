"""The recipe schema: what a recipe author relies on when a recipe is wrong."""

from __future__ import annotations

import re
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


def test_check_warns_of_a_recipe_whose_matrix_leaves_no_cell(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'project: Demo\nversions: ["1.0"]\nmatrix:\n  python: ["3.11"]\n'
                           '  exclude:\n    - {python: "3.11"}\n')
    write(tmp_path, 'project: other\nversions: ["2.0"]\nmatrix:\n  python: ["3.12"]\n', "other.yaml")
    assert main(["check", "--recipes", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: 2 recipes, ") and out.endswith(" 1 cells\n"), out
    assert err == (f"kiln: warning: {path.absolute()}:5: Demo has no cells: its matrix less matrix.exclude leaves "
                   "none, so kiln builds nothing for it\n")
    assert main(["check", "--recipes", str(tmp_path), "--python", "3.12"]) == 0  # a filter: no warning
    assert capsys.readouterr().err == ""


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
        (GOOD + 'runtime:\n  replace:\n    "numpy<1.20": "numpy>>1"\n', 9, "not a PEP 508 requirement"),
        (GOOD + "runtime:\n  replace: [numpy]\n", 8, "runtime.replace"),
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
    assert tc.run_exports["torch"] == "minor"
    cells = {c.project: c for c in expand(load_recipes(REPO_RECIPES), tc)}
    pins = pins_for(cells["causal-conv1d"], tc, {"torch": "2.14.1", "ninja": "1.13.0"})
    assert [str(p) for p in pins] == ["torch==2.14.*"]
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
    assert [str(p) for p in pins_for(cell, tc, {"numpy": "1.26.4"})] == ["numpy>=1.26,<2"]
    with pytest.raises(BuildError, match="run-export names numpy, which the build environment lacks"):
        pins_for(cell, tc, {})


def test_only_unknown_project_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no recipe for not-a-project"):
        load_recipes(REPO_RECIPES, only=["not-a-project"])


# ----------------------------------------------------------------------------- what the loader refuses

HEAD = b'project: demo\nversions: ["1.0"]\n'
BOMB = (b'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
        b"b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(HEAD + b"build:\n  requires: [numpy]\nbuild:\n  requires: [ninja]\n",
                     "5: duplicate key 'build' (first on line 3)", id="duplicate-key"),
        pytest.param(HEAD + b"build:\n  env: {A: x, B: y, 'A': z}\n",
                     "4: duplicate key 'A' (first on line 4)", id="duplicate-quoted-key"),
        pytest.param(b'project: demo\nversions: ["1.0"]\x00\n',
                     "2: invalid YAML: control character U+0000 is not allowed", id="nul-byte"),
        pytest.param(HEAD + b"test:\n  imports: [a\x1bb]\n",
                     "4: invalid YAML: control character U+001B is not allowed", id="escape-byte"),
        pytest.param(HEAD + b"test:\n  imports: " + b"[" * 100 + b"]" * 100 + b"\n",
                     "4: nested deeper than 32 levels", id="deep-flow"),
        pytest.param(HEAD + b"".join(b" " * i + b"x:\n" for i in range(40)),
                     "34: nested deeper than 32 levels", id="deep-block"),
        pytest.param(HEAD + BOMB, "6: more than 10000 values once aliases are expanded", id="alias-bomb"),
        pytest.param(HEAD + b"".join(b"k%d: 1\n" % i for i in range(6000)),  # 5 values, then 2 a line
                     "5000: more than 10000 values in one file",  # the 10001st is on line 5000
                     id="too-many-values"),
        pytest.param(HEAD + b"test:\n  imports: &r [*r]\n",
                     "4: alias *r refers to a node that contains it", id="recursive-alias"),
        pytest.param(HEAD + b"test:\n  imports: [caf\xe9]\n",
                     "4: not UTF-8: byte 0xe9 at column 16; save the file as UTF-8", id="latin-1"),
        pytest.param(b"\xff\xfe" + "project: demo\n".encode("utf-16-le"),
                     "1: not UTF-8: byte 0xff at column 1; save the file as UTF-8", id="utf-16"),
        pytest.param(HEAD + b"build:\n  timeout_minutes: 99999999999999999999999\n",
                     "4: number out of range: '99999999999999999999999' (quote it if it is text)", id="huge-int"),
        pytest.param(HEAD + b"build:\n  number: " + b"9" * 5000 + b"\n",
                     "4: number out of range: '99999999999999999...999999999999999999' (quote it if it is text)",
                     id="int-beyond-python-digit-limit"),
        pytest.param(HEAD + b"build:\n  memory_per_job_gb: .inf\n",
                     "4: not a finite number: '.inf' (quote it if it is text)", id="inf"),
        pytest.param(HEAD + b"build:\n  memory_per_job_gb: 1e999\n",
                     "4: build.memory_per_job_gb: Input should be a finite number (got '1e999')", id="inf-string"),
        pytest.param(HEAD + b"build:\n  timeout_minutes: 100000\n",
                     "4: build.timeout_minutes: Input should be less than or equal to 10080 (got 100000)",
                     id="timeout-beyond-a-week"),
        pytest.param(HEAD + b"test:\n  imports: [2001-13-45]\n",
                     "4: cannot read '2001-13-45' as a YAML timestamp", id="bad-date"),
        pytest.param(HEAD + b"test:\n  imports: [!!bool maybe]\n",
                     "4: cannot read 'maybe' as a YAML bool", id="bad-tagged-scalar"),
        pytest.param(HEAD + b"test:\n  imports: [!!python/object:os.system x]\n",
                     "4: invalid YAML: could not determine a constructor for the tag "
                     "'tag:yaml.org,2002:python/object:os.system'", id="python-tag"),
        pytest.param(HEAD + b"? [a]\n: 1\n", "3: a key must be a plain value, not a sequence", id="sequence-key"),
        pytest.param(HEAD + b"---\nproject: x\n",
                     "3: invalid YAML: expected a single document in the stream, but found another document",
                     id="two-documents"),
        pytest.param(HEAD + b'"a\\nb": 1\n', "3: a\\nb: unknown key 'a\\nb'", id="newline-in-key"),
        pytest.param(b'project: demo\nversions:\n  - "1.0"\n  - 1.1\n',
                     '4: versions.1: quote versions as strings, e.g. ["1.0.6"] (got 1.1)', id="version-item-line"),
        pytest.param(HEAD + b'matrix:\n  python: ["3.11"]\n  cuda:\n    - "13.0"\n',
                     "5: matrix.cuda: cuda is given but torch is empty", id="model-validator-line"),
        pytest.param(HEAD + b"source:\n  url: x\n  sha256: nothex\n",
                     "5: source.sha256: expected 64 lowercase hex digits", id="source-union-line"),
        pytest.param(HEAD + b"source: pip\n",
                     "3: source: expected 'pypi', {url: ..., sha256: ...} or {git: ..., tag: ...} (got 'pip')",
                     id="source-kind"),
        pytest.param(HEAD + b"runtime:\n  run_exports:\n    numpy: minor\n    scipy: sideways\n",
                     "6: runtime.run_exports.scipy: expected minor, major, exact or a specifier like \"<2\", "
                     "got 'sideways'", id="mapping-value-line"),
    ],
)
def test_loader_refuses_with_one_exact_line(tmp_path: Path, data: bytes, expected: str) -> None:
    path = write(tmp_path, "")
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert info.value.message == f"{path}:{expected}"


def test_a_bad_requirement_names_its_list_items_line(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.write_bytes(HEAD + b'build:\n  requires:\n    - numpy\n    - "numpy>>1"\n')
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    # packaging's own reason, in parentheses, is worded differently from release to release
    assert re.fullmatch(re.escape(f"{path}:6: build.requires.1: not a PEP 508 requirement: 'numpy>>1' (") + r"[^\n]+\)",
                        info.value.message), info.value.message


def test_anchors_and_merges_in_moderation_load(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("build:\n  requires: [numpy]\n", "")
                 + "runtime:\n  requires: &deps [numpy, ninja]\nbuild:\n  requires: *deps\n"
                   "  env: {<<: {A: x, B: y}, B: z}\n")
    recipe = load_recipe(path)
    assert recipe.build.requires == recipe.runtime.requires == ["numpy", "ninja"]
    assert recipe.build.env == {"A": "x", "B": "z"}


@pytest.fixture
def patched(tmp_path: Path) -> Path:
    """A recipes directory with patches/fix.patch, and patches/escape.patch linking outside."""
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "fix.patch").write_text("--- a/x\n+++ b/x\n")
    (tmp_path / "outside.patch").write_text("--- a/y\n+++ b/y\n")
    (tmp_path / "patches" / "escape.patch").symlink_to("../outside.patch")
    (tmp_path / "patches" / "loop.patch").symlink_to("loop.patch")
    return tmp_path


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ("../outside.patch", "build.patches.1: ../outside.patch leaves patches/ ('..'); name a file under it"),
        ("sub/../../outside.patch", ("build.patches.1: sub/../../outside.patch leaves patches/ ('..'); "
                                     "name a file under it")),
        ("/etc/hostname", "build.patches.1: /etc/hostname is an absolute path; name a file under patches/"),
        ("escape.patch", "build.patches.1: patches/escape.patch resolves to {outside}, outside patches/"),
        ("loop.patch", "build.patches.1: patches/loop.patch: cannot resolve: Symlink loop from '{loop}'"),
        ('"a\\0b"', "build.patches.1: not a patch file name: 'a\\x00b'"),
        ("nope.patch", "build.patches.1: no such patch: patches/nope.patch"),
    ],
)
def test_patch_paths_stay_inside_recipes_patches(patched: Path, patch: str, expected: str) -> None:
    path = write(patched, GOOD.replace("  requires: [numpy]", f"  patches:\n    - fix.patch\n    - {patch}"))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    expected = expected.format(outside=(patched / "outside.patch").resolve(),
                               loop=patched / "patches" / "loop.patch")
    assert info.value.message == f"{path}:6: {expected}"


def test_a_patch_inside_patches_loads_and_its_bytes_make_the_recipe_stale(patched: Path) -> None:
    path = write(patched, GOOD.replace("  requires: [numpy]", "  patches: [fix.patch]"))
    before = load_recipe(path)
    assert before.patch_paths == [patched / "patches" / "fix.patch"]
    (patched / "patches" / "fix.patch").write_text("--- a/x\n+++ b/x\n@@ changed\n")
    assert load_recipe(path).sha256 != before.sha256


def test_cli_prints_the_nul_byte_refusal_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "")
    path.write_bytes(b"project: demo\nversions:\n  - \x00\n")
    assert main(["check", "--recipes", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"kiln: {path}:3: invalid YAML: control character U+0000 is not allowed\n"


def test_a_project_defined_twice_names_the_project_line(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    second = write(tmp_path, "# the same project again\n" + GOOD.replace("demo", "Demo"), "b.yaml")
    with pytest.raises(ConfigError) as info:
        load_recipes(tmp_path)
    assert info.value.message == f"{second}:2: project: 'Demo' is also defined in {tmp_path / 'a.yaml'}"


def test_a_recipe_names_the_line_of_a_part_found_wrong_after_loading(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('matrix:\n  python: ["3.11"]', 'matrix:\n  torch:\n    - "2.14"\n'
                                        '    - "1.99"\n  cuda: ["13.0"]'))
    assert load_recipe(path).line("matrix", "torch", 1) == 8


def test_toolchain_keys_must_be_quoted(tmp_path: Path) -> None:
    text = (REPO_RECIPES / "toolchains.yaml").read_text().replace('  "2.14":', "  2.10:", 1)
    (tmp_path / "toolchains.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_toolchains(tmp_path)
    lineno = text.splitlines().index("  2.10:") + 1
    assert info.value.message == (f"{tmp_path / 'toolchains.yaml'}:{lineno}: torch.2.1: expected a quoted key "
                                  'like "2.14" (unquoted, 2.10 reads as 2.1)')


def test_a_file_over_a_mebibyte_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert info.value.message == f"{path}:1: larger than 1 MiB; not a recipe or toolchain table"

"""The recipe loader under fuzz: generated recipes, then mutated as files go wrong in practice.

Every input either loads as a valid recipe or is refused with a ConfigError whose message is one
line, ``<file>:<line>: ...``, naming a line inside the file; ``kiln check`` prints that line and
exits 2. No other exception, hang or traceback. The number of inputs tried is printed at the end
of the module (``pytest -s`` or in the terminal summary).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.cli import main
from kiln.errors import ConfigError
from kiln.recipe import Recipe, load_recipes
from kiln.toolchains import Toolchains, load_toolchains

REPO_RECIPES = Path(__file__).parent.parent / "recipes"
TOOLCHAINS = load_toolchains(REPO_RECIPES)
RECIPE = "demo.yaml"

TRIED: Counter[str] = Counter()
"""Inputs tried, by outcome; printed when the module's tests are done."""

FUZZ = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------- valid recipes

REQUIREMENTS = ["numpy", "ninja", "packaging>=24", "cython<3", "setuptools>=68,<80",
                'wheel; python_version >= "3.11"', "torch"]
IDENTIFIER = st.from_regex(r"\A[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,5})?\Z")
VERSION = st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){0,2}(\.post[0-9]|rc[0-9])?\Z")
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@st.composite
def matrices(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"python": draw(st.lists(st.sampled_from(PYTHONS), unique=True, max_size=3))}
    minors = draw(st.lists(st.sampled_from(sorted(TOOLCHAINS.torch)), min_size=1, max_size=3, unique=True))
    common = sorted(set.intersection(*(set(TOOLCHAINS.torch[m].builds) for m in minors)))
    matrix: dict[str, Any] = {
        "torch": minors,
        "cuda": draw(st.lists(st.sampled_from(common), min_size=1, max_size=2, unique=True)),
    }
    if draw(st.booleans()):
        matrix["python"] = draw(st.lists(st.sampled_from(PYTHONS), min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        matrix["exclude"] = [{"torch": minors[0], "python": draw(st.sampled_from(PYTHONS))}]
    return matrix


def valid_recipes() -> st.SearchStrategy[dict[str, Any]]:
    build = st.fixed_dictionaries({}, optional={
        "requires": st.lists(st.sampled_from(REQUIREMENTS), unique=True, max_size=3),
        "constraints": st.lists(st.sampled_from(REQUIREMENTS[:5]), unique=True, max_size=2),
        "replace": st.just({"oldest-supported-numpy": "numpy", "numpy==1.19.*": None}),
        "env": st.dictionaries(st.from_regex(r"\A[A-Z][A-Z0-9_]{0,10}\Z"),
                               st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]),
                                       max_size=12), max_size=3),
        "patches": st.lists(st.sampled_from(["fix.patch", "sub/other.patch"]), unique=True, max_size=2),
        "memory_per_job_gb": st.integers(1, 6400).map(lambda n: n / 100),
        "timeout_minutes": st.integers(1, 600),
        "number": st.integers(0, 9),
        "cuda_archs": st.sampled_from(["upstream", "8.0;9.0", "9.0a+PTX", "8.6 9.0"]),
    })
    source = st.one_of(
        st.just("pypi"),
        st.fixed_dictionaries({"url": st.just("https://example.org/x-{version}.tar.gz"),
                               "sha256": st.from_regex(r"\A[0-9a-f]{64}\Z")}),
        st.fixed_dictionaries({"git": st.just("https://example.org/x.git")},
                              optional={"tag": st.just("release-{version}")}),
    )
    runtime = st.fixed_dictionaries({}, optional={
        "pin": st.lists(st.sampled_from(["torch", "numpy"]), unique=True, max_size=2),
        "run_exports": st.dictionaries(st.sampled_from(["numpy", "scipy"]),
                                       st.sampled_from(["minor", "major", "exact", "<2"]), max_size=2),
        "requires": st.lists(st.sampled_from(REQUIREMENTS[:4]), unique=True, max_size=2),
    })
    return st.fixed_dictionaries(
        {"project": st.sampled_from(["demo", "mamba-ssm", "Flash_Attn", "pkg.x"]),
         "versions": st.lists(VERSION, min_size=1, max_size=3)},
        optional={"source": source, "build": build, "matrix": matrices(), "runtime": runtime,
                  "test": st.fixed_dictionaries({"imports": st.lists(IDENTIFIER, max_size=3)})},
    )


# ----------------------------------------------------------------------------- mutations

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3),
    max_leaves=8,
)

HUGE = st.one_of(
    st.integers(20, 6000).map(lambda n: "9" * n),
    st.integers(20, 3000).map(lambda n: "-0x" + "f" * n),
    st.integers(64, 3000).map(lambda n: "0b" + "1" * n),
    st.sampled_from(["1e999", "-1e999", ".inf", "-.Inf", ".nan", "1_000_000_000_000_000_000_000",
                     "190:20:30:15:10:05:00:00:00:00:00:00", "2001-13-45", "2001-02-30", "0000-01-01",
                     "!!int abc", "!!int 0x", "!!float x", "!!bool maybe", "!!timestamp nope",
                     "!!binary '***'", "!!binary é", "!!python/object:os.system x", "!!set {a, b}",
                     "!!omap [a: 1, a: 2]", "!!pairs [x]", "!!str", "!!map x", "!!seq x", "!nonsense x"]),
)


@st.composite
def nested(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["list", "map", "mixed"]))
    if kind == "list":
        return "[" * depth + "x" + "]" * depth
    if kind == "map":
        return "{a: " * depth + "x" + "}" * depth
    return "[{a: " * (depth // 2) + "x" + "}]" * (depth // 2)


@st.composite
def aliases(draw: st.DrawFn) -> str:
    """Anchors and aliases: moderate reuse, merges, recursion, undefined aliases, and bombs."""
    kind = draw(st.sampled_from(["bomb", "reuse", "merge", "recursive", "undefined", "chain"]))
    if kind == "bomb":
        fan, levels = draw(st.integers(2, 10)), draw(st.integers(1, 14))
        parts = ["&b0 [x, x]"] + [f"&b{i} [" + ", ".join([f"*b{i - 1}"] * fan) + "]" for i in range(1, levels)]
        return "[" + ", ".join(parts) + "]"
    if kind == "reuse":
        return '[&v "1.0", *v, *v]'
    if kind == "merge":
        return "[&m {a: 1}, {<<: *m, b: 2}, {<<: [*m, *m], a: 3}]"
    if kind == "recursive":
        return draw(st.sampled_from(["&r [*r]", "&r {a: *r}", "[&r [x, *r]]"]))
    if kind == "undefined":
        return "*nope"
    depth = draw(st.integers(1, 400))
    return "[" + ", ".join(["&c0 [x]"] + [f"&c{i} [*c{i - 1}]" for i in range(1, depth)]) + "]"


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a recipe that a value can be swapped into."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


def put(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@dataclass
class Case:
    """One input: the bytes written as the recipe, and the mutations applied to get them."""

    data: bytes = b""
    mutations: list[str] = field(default_factory=list)


Structural = Callable[[st.DrawFn, dict[str, Any], dict[str, str]], str]


def _wrong_type(draw: st.DrawFn, doc: dict[str, Any], raw: dict[str, str]) -> str:
    path = draw(st.sampled_from(list(paths(doc))[1:]))
    put(doc, path, draw(JSONISH))
    return f"wrong type at {path}"


def _raw(strategy: st.SearchStrategy[str], name: str) -> Structural:
    def apply(draw: st.DrawFn, doc: dict[str, Any], raw: dict[str, str]) -> str:
        path = draw(st.sampled_from(list(paths(doc))[1:] + [("build", "memory_per_job_gb"), ("zz",)]))
        sentinel = f"RAWVALUE{len(raw)}X"
        raw[sentinel] = draw(strategy)
        if path[0] not in doc or not isinstance(doc[path[0]], (dict, list)):
            path = (path[0],)
        put(doc, path, sentinel)
        return f"{name} at {path}: {raw[sentinel][:60]!r}"
    return apply


def _patch_path(draw: st.DrawFn, doc: dict[str, Any], raw: dict[str, str]) -> str:
    name = draw(st.sampled_from(["../outside.patch", "/etc/hostname", "escape.patch", "sub/../fix.patch",
                                 "./fix.patch", "", ".", "..", "nope.patch", "fix.patch/", "a\x00b",
                                 "sub", "loop.patch", "dangling.patch", "sub/../../outside.patch"]))
    build = doc.setdefault("build", {})
    if not isinstance(build, dict):
        build = doc["build"] = {}
    build["patches"] = [name]
    return f"patch {name!r}"


def _drop_key(draw: st.DrawFn, doc: dict[str, Any], raw: dict[str, str]) -> str:
    key = draw(st.sampled_from(sorted(doc)))
    del doc[key]
    return f"dropped {key}"


def _unknown_key(draw: st.DrawFn, doc: dict[str, Any], raw: dict[str, str]) -> str:
    key = draw(st.text(max_size=6))
    doc[key] = draw(JSONISH)
    return f"unknown key {key!r}"


STRUCTURAL: list[Structural] = [
    _wrong_type, _raw(HUGE, "huge/tagged"), _raw(nested(), "nesting"), _raw(aliases(), "aliases"),
    _patch_path, _drop_key, _unknown_key,
]

Mutation = Callable[[st.DrawFn, bytes], tuple[bytes, str]]


def _insert(choices: list[bytes], name: str) -> Mutation:
    def apply(draw: st.DrawFn, data: bytes) -> tuple[bytes, str]:
        pos = draw(st.integers(0, len(data)))
        piece = draw(st.sampled_from(choices))
        return data[:pos] + piece + data[pos:], f"{name} {piece!r} at byte {pos}"
    return apply


CONTROL = [bytes([b]) for b in (0, 1, 7, 8, 0x0B, 0x0C, 0x1B, 0x7F)] + ["\x9b".encode(), "\ufffe".encode()]
BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff"]
BREAKS = ["\u2028".encode(), "\x85".encode(), "\ufeff".encode(), b"\r", b"\r\n", b"\t"]
YAML_BITS = [b":", b"- ", b"[", b"{", b"]", b"}", b'"', b"'", b"&x ", b"*x", b"!", b"%", b"|", b">", b"#",
             b"---\n", b"...\n", b"? ", b"\\", b",", b"@", b"`", b"\n  ", b"<<: ", b"!!binary "]


def _duplicate_line(draw: st.DrawFn, data: bytes) -> tuple[bytes, str]:
    lines = data.split(b"\n")
    keyed = [i for i, line in enumerate(lines) if re.match(rb"\s*[\w\"'.-]+\s*:", line)]
    if not keyed:
        return data.replace(b"{", b"{project: again, ", 1), "duplicate key in flow mapping"
    i = draw(st.sampled_from(keyed))
    return b"\n".join([*lines[: i + 1], lines[i], *lines[i + 1:]]), f"duplicate line {i + 1}: {lines[i][:40]!r}"


def _truncate(draw: st.DrawFn, data: bytes) -> tuple[bytes, str]:
    cut = draw(st.integers(0, len(data)))
    return data[:cut], f"truncated at byte {cut}"


def _flip(draw: st.DrawFn, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "flip (empty)"
    out = bytearray(data)
    flips = draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)), min_size=1, max_size=4))
    for pos, bit in flips:
        out[pos] ^= 1 << bit
    return bytes(out), f"bit flips {flips}"


MUTATIONS: list[Mutation] = [
    _insert(CONTROL, "control"), _insert(BAD_UTF8, "invalid UTF-8"), _insert(BREAKS, "break"),
    _insert(YAML_BITS, "syntax"), _duplicate_line, _truncate, _flip,
]


def dump(doc: dict[str, Any], flow: bool | None) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow, allow_unicode=True, width=72)


@st.composite
def recipe_inputs(draw: st.DrawFn) -> Case:
    doc = draw(valid_recipes())
    case = Case()
    raw: dict[str, str] = {}
    structural = draw(st.integers(0, 2))
    for _ in range(structural):
        case.mutations.append(draw(st.sampled_from(STRUCTURAL))(draw, doc, raw))
    text = dump(doc, draw(st.sampled_from([False, None, True])))
    for sentinel, value in raw.items():
        text = text.replace(sentinel, value)
    data = text.encode()
    for _ in range(draw(st.integers(0 if structural else 1, 3))):
        data, what = draw(st.sampled_from(MUTATIONS))(draw, data)
        case.mutations.append(what)
    case.data = data
    return case


# ----------------------------------------------------------------------------- the checks


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    line = (f"recipe fuzz: {TRIED['inputs']} inputs tried: {TRIED['loaded']} loaded, "
            f"{TRIED['refused']} refused with one file:line line; {TRIED['cli']} also through `kiln check`")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():  # what capsys.disabled() does: shown with -q too
        reporter.write_line(f"\n{line}")


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipes directory with a patch, a subdirectory, and symlinks that escape patches/."""
    root = tmp_path_factory.mktemp("fuzz")
    recipes = root / "recipes"
    (recipes / "patches" / "sub").mkdir(parents=True)
    shutil.copy(REPO_RECIPES / "toolchains.yaml", recipes / "toolchains.yaml")
    (recipes / "patches" / "fix.patch").write_text("--- a/x\n+++ b/x\n")
    (recipes / "patches" / "sub" / "other.patch").write_text("--- a/y\n+++ b/y\n")
    (recipes / "outside.patch").write_text("--- a/z\n+++ b/z\n")
    (recipes / "patches" / "escape.patch").symlink_to("../outside.patch")
    (recipes / "patches" / "loop.patch").symlink_to("loop.patch")
    (recipes / "patches" / "dangling.patch").symlink_to("nowhere.patch")
    return recipes


def lines_in(data: bytes) -> int:
    """How many lines an editor shows for ``data``."""
    return max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))


def check_input(recipes: Path, data: bytes) -> Recipe | None:
    """Load ``data`` as a recipe: a valid recipe, or None after checking the refusal's line. One
    input in ten goes through `kiln check` too."""
    path = recipes / RECIPE
    path.write_bytes(data)
    TRIED["inputs"] += 1
    cli = TRIED["inputs"] % 10 == 0
    recipe: Recipe | None = None
    message = ""
    try:
        loaded = load_recipes(recipes)
    except ConfigError as exc:
        TRIED["refused"] += 1
        message = exc.message
        assert len(message.splitlines()) == 1 and "\r" not in message, repr(message)
        m = re.match(rf"{re.escape(str(path))}:(\d+): \S", message)
        assert m, message
        assert 1 <= int(m.group(1)) <= lines_in(data), (message, lines_in(data))
    else:
        TRIED["loaded"] += 1
        [recipe] = loaded
        inside = (recipes / "patches").resolve()
        assert all(p.resolve().is_relative_to(inside) and p.resolve().is_file() for p in recipe.patch_paths)
    if cli:
        TRIED["cli"] += 1
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["check", "--recipes", str(recipes)])
        if recipe is None:
            assert rc == 2
            assert err.getvalue() == f"kiln: {message}\n"
        else:
            assert rc in (0, 2), err.getvalue()
            if rc == 2:  # valid recipe, but its matrix does not fit the toolchain table
                assert re.fullmatch(rf"kiln: {re.escape(str(path))}:\d+: [^\n]+\n", err.getvalue())
            else:
                found = re.fullmatch(r"ok: 1 recipes, \d+ torch minors, (\d+) cells\n", out.getvalue())
                assert found, out.getvalue()
                if found[1] == "0":  # a matrix that excludes every cell: valid, and said in one warning line
                    assert re.fullmatch(rf"kiln: warning: {re.escape(str(path))}:\d+: [^\n]+ has no cells: [^\n]+\n",
                                        err.getvalue()), err.getvalue()
                else:
                    assert err.getvalue() == ""
    return recipe


@FUZZ
@given(case=recipe_inputs())
def test_every_mutated_recipe_loads_or_names_one_file_line(recipes: Path, case: Case) -> None:
    check_input(recipes, case.data)


@settings(FUZZ, max_examples=150)
@given(doc=valid_recipes(), flow=st.sampled_from([False, None, True]))
def test_every_generated_recipe_loads(recipes: Path, doc: dict[str, Any], flow: bool | None) -> None:
    recipe = check_input(recipes, dump(doc, flow).encode())
    assert recipe is not None
    assert recipe.versions == doc["versions"]


@settings(FUZZ, max_examples=150)
@given(doc=valid_recipes(), data=st.data())
def test_a_key_given_twice_is_refused_naming_both_lines(recipes: Path, doc: dict[str, Any],
                                                        data: st.DataObject) -> None:
    lines = dump(doc, False).splitlines()
    keyed = [i for i, line in enumerate(lines) if re.match(r"\s*[A-Za-z_]+:( |$)", line)]
    i = data.draw(st.sampled_from(keyed))
    key = lines[i].split(":")[0].strip()
    text = "\n".join([*lines[: i + 1], lines[i], *lines[i + 1:]]) + "\n"
    path = recipes / RECIPE
    path.write_text(text)
    TRIED["inputs"] += 1
    with pytest.raises(ConfigError) as info:
        load_recipes(recipes)
    TRIED["refused"] += 1
    assert info.value.message == f"{path}:{i + 2}: duplicate key {key!r} (first on line {i + 1})"


@st.composite
def mutated_toolchains(draw: st.DrawFn) -> bytes:
    data = (REPO_RECIPES / "toolchains.yaml").read_bytes()
    for _ in range(draw(st.integers(1, 3))):
        data, _ = draw(st.sampled_from(MUTATIONS))(draw, data)
    return data


@settings(FUZZ, max_examples=150)
@given(data=mutated_toolchains())
def test_every_mutated_toolchain_table_loads_or_names_one_file_line(tmp_path_factory: pytest.TempPathFactory,
                                                                    data: bytes) -> None:
    recipes = tmp_path_factory.getbasetemp() / "fuzz-toolchains"
    recipes.mkdir(exist_ok=True)
    path = recipes / "toolchains.yaml"
    path.write_bytes(data)
    TRIED["inputs"] += 1
    try:
        tc = load_toolchains(recipes)
    except ConfigError as exc:
        TRIED["refused"] += 1
        m = re.match(rf"{re.escape(str(path))}:(\d+): \S", exc.message)
        assert m and len(exc.message.splitlines()) == 1, exc.message
        assert 1 <= int(m.group(1)) <= lines_in(data), exc.message
    else:
        TRIED["loaded"] += 1
        assert isinstance(tc, Toolchains)

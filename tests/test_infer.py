"""`kiln infer`: the rules on stored log excerpts, the static read of setup.py, and the loop end
to end on two fixture sdists from the local upstream."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kiln_testing.fixtures import FIXTURE_RECIPES, recipes_dir
from kiln_testing.index import StaticIndex
from kiln_testing.wheels import make_wheel

from kiln.cli import main
from kiln.errors import InferError
from kiln.home import Home
from kiln.infer import (
    Change,
    Context,
    Draft,
    Failure,
    bundled_library_knob,
    cmake_policy,
    compiler_strictness,
    cuda_knob,
    cython,
    dependency_moved_on,
    knobs,
    missing_module,
    needs_cuda,
    numpy_removed_api,
    old_cxx_standard,
    old_distutils,
    pkg_resources,
    python_too_new,
    required_by_message,
    setup_requires_fetch,
    static_draft,
    std_header,
    toolchain_bound,
    torch_cxx_standard,
    unbounded,
    unconditional_imports,
    unsatisfiable_bound,
    upstream_bound,
)
from kiln.matrix import Variant
from kiln.recipe import load_recipe
from kiln.toolchains import load_toolchains

TC = load_toolchains(FIXTURE_RECIPES)


class OfflineContext(Context):
    """Rules' context whose index knows only the names given (no network in unit tests)."""

    def __init__(self, known: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__("http://127.0.0.1:9/simple/", TC, "3.12")
        self.known = known

    def cuda_variant(self) -> Variant | None:
        return Variant("2.14", "13.0")

    def distribution(self, module: str) -> str | None:
        top = module.split(".")[0]
        from kiln.infer import MODULE_DISTS

        return MODULE_DISTS.get(top) or (top.replace("_", "-") if top in self.known else None)


def draft() -> Draft:
    return Draft(project="demo", version="1.0", python="3.12")


def fail(line: str, log: str = "", stage: str = "build") -> Failure:
    return Failure(stage, line, log or line)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(("failure", "expected"), [
    (fail("ModuleNotFoundError: No module named 'Cython' (the build backend's get_requires_for_build_wheel "
          "failed)"), "build.requires += cython"),
    (fail("ModuleNotFoundError: No module named 'sklearn.utils'"), "build.requires += scikit-learn"),
    (fail("ModuleNotFoundError: No module named 'yaml'"), "build.requires += pyyaml"),
    (fail("ModuleNotFoundError: No module named 'cv2'"), "build.requires += opencv-python-headless"),
    (fail("ModuleNotFoundError: No module named 'kilnfix_helper'"), "build.requires += kilnfix-helper"),
    (fail("smoke test: import demo failed: ModuleNotFoundError: No module named 'numpy'", stage="smoke"),
     "runtime.requires += numpy"),
    (fail("ModuleNotFoundError: No module named 'torch'"), "matrix.torch = [2.14], cuda = [cpu]"),
    (fail("smoke test: import demo failed: ModuleNotFoundError: No module named 'torch'", stage="smoke"),
     "runtime.requires += torch"),
])
def test_missing_module(failure: Failure, expected: str) -> None:
    change = missing_module(failure, draft(), OfflineContext({"kilnfix_helper", "torch"}))
    assert change is not None and change.describe() == expected


def test_torch_s_warning_about_a_missing_numpy_is_not_a_missing_module() -> None:
    log = ("UserWarning: Failed to initialize NumPy: No module named 'numpy' (Triggered internally at "
           "torch/csrc/utils/tensor_numpy.cpp:84.)\n"
           "binding.cpp:4:10: fatal error: THC/THC.h: No such file or directory\n")
    assert missing_module(fail("binding.cpp:4:10: fatal error: THC/THC.h: No such file or directory", log), draft(),
                          OfflineContext()) is None


def test_a_module_no_index_has_is_no_change() -> None:
    assert missing_module(fail("ModuleNotFoundError: No module named 'nowhere_to_be_found'"), draft(),
                          OfflineContext()) is None


def test_pkg_resources_at_build_and_at_run_time() -> None:
    line = "ModuleNotFoundError: No module named 'pkg_resources'"
    assert pkg_resources(fail(line), draft(), OfflineContext()).describe() == "build.requires += setuptools<81"  # type: ignore[union-attr]
    smoke = fail(f"smoke test: import demo failed: {line}", stage="smoke")
    assert pkg_resources(smoke, draft(), OfflineContext()).describe() == "runtime.requires += setuptools<81"  # type: ignore[union-attr]


NUMPY_C = """\
gcc -c demo/_fast.c
demo/_fast.c:120:5: error: 'NPY_CHAR' undeclared (first use in this function); did you mean 'NPY_BYTE'?
error: command '/usr/bin/gcc' failed with exit code 1
"""
NUMPY_2_AT_IMPORT = """\
A module that was compiled using NumPy 1.x cannot be run in
NumPy 2.2.6 as it may crash. To support both 1.x and 2.x
ImportError: numpy.core.multiarray failed to import
"""


def test_numpy_rules() -> None:
    alias = fail("AttributeError: module 'numpy' has no attribute 'int'.")
    assert numpy_removed_api(alias, draft(), OfflineContext()).describe() == "build.constraints += numpy<1.24"  # type: ignore[union-attr]
    capi = fail(NUMPY_C.splitlines()[1], NUMPY_C)
    assert numpy_removed_api(capi, draft(), OfflineContext()).describe() == "build.constraints += numpy<2"  # type: ignore[union-attr]
    runtime = fail("smoke test: import demo failed: ImportError: numpy.core.multiarray failed to import",
                   NUMPY_2_AT_IMPORT, stage="smoke")
    assert numpy_removed_api(runtime, draft(), OfflineContext()).describe() == "runtime.run_exports.numpy = major"  # type: ignore[union-attr]
    assert numpy_removed_api(fail("error: something else"), draft(), OfflineContext()) is None
    sctypes = fail("smoke test: import chainer failed: AttributeError: `np.sctypes` was removed in the NumPy 2.0 "
                   "release. Access dtypes explicitly instead.", stage="smoke")
    assert numpy_removed_api(sctypes, draft(), OfflineContext()).describe() == "runtime.requires += numpy<2"  # type: ignore[union-attr]
    dtype = fail("smoke test: import pycocotools._mask failed: ValueError: numpy.dtype size changed, may indicate "
                 "binary incompatibility. Expected 96 from C header, got 88 from PyObject", stage="smoke")
    assert numpy_removed_api(dtype, draft(), OfflineContext()).describe() == "runtime.run_exports.numpy = major"  # type: ignore[union-attr]


CYTHON3 = """\
Error compiling Cython file:
------------------------------------------------------------
demo/_core.pyx:12:4: Cannot assign type 'void (int) except * nogil' to 'void (*)(int) noexcept nogil'
"""
OLD_C = """\
demo/_core.c:2190:20: error: 'PyThreadState' {aka 'struct _ts'} has no member named 'curexc_type'
"""


def test_cython_rules() -> None:
    assert cython(fail("Error compiling Cython file:", CYTHON3), draft(), OfflineContext()).describe() == \
        "build.constraints += cython<3"  # type: ignore[union-attr]
    assert cython(fail(OLD_C.strip(), OLD_C), draft(), OfflineContext()).describe() == \
        "build.requires += cython"  # type: ignore[union-attr]
    pinned = draft()
    pinned.constraints.append("cython<3")
    assert cython(fail("Error compiling Cython file:", CYTHON3), pinned, OfflineContext()) is None


def test_numpy_distutils_still_missing_with_numpy_1_means_an_older_python() -> None:
    """numpy.distutils missing: first numpy<2 (a rule); still missing with it on 3.12+: no numpy
    has it there, so only an older Python can work (the loop moves the draft down, as for a cell
    found not buildable)."""
    gone = fail("ModuleNotFoundError: No module named 'numpy.distutils'")
    d = draft()
    assert python_too_new(gone, d) is None  # numpy 1.x not tried yet
    assert numpy_removed_api(gone, d, OfflineContext()).apply(d)  # type: ignore[union-attr]
    assert python_too_new(gone, d) == ("the build imports numpy.distutils, which no numpy has for Python 3.12 "
                                       "(numpy 1.26, the last with it, has it for 3.11 and older)")
    d.python = "3.11"
    assert python_too_new(gone, d) is None  # on 3.11 it is something else
    d.python = "3.12"
    assert python_too_new(fail("error: something else"), d) is None


def test_a_standard_library_name_python_3_12_removed_means_an_older_python() -> None:
    safe = fail("AttributeError: module 'configparser' has no attribute 'SafeConfigParser'. Did you mean: "
                "'RawConfigParser'? (the build backend's get_requires_for_build_wheel failed)")
    assert python_too_new(safe, draft()) == ("the build uses SafeConfigParser, which Python 3.12 removed from the "
                                             "standard library")
    assert python_too_new(fail("ModuleNotFoundError: No module named 'imp'"), draft()) == \
        "the build uses imp, which Python 3.12 removed from the standard library"
    older = draft()
    older.python = "3.11"
    assert python_too_new(safe, older) is None  # there it is something else
    assert python_too_new(fail("ModuleNotFoundError: No module named 'impala'"), draft()) is None
    # cykdtree 0.2.4 builds on 3.12, and its import fails there
    smoke = fail("smoke test: import cykdtree failed: ModuleNotFoundError: No module named 'imp'", stage="smoke")
    assert python_too_new(smoke, draft()) == "the package uses imp, which Python 3.12 removed from the standard library"
    assert python_too_new(smoke, older) is None


def test_an_alias_numpy_removed_wins_over_a_module_the_package_only_tries() -> None:
    """gco-wrapper 3.0.6: its import tries pygco first, then fails on np.int; numpy's rule goes first."""
    from kiln.infer import RULES

    log = ("Traceback (most recent call last):\n  File \"gco/__init__.py\", line 3, in <module>\n"
           "ModuleNotFoundError: No module named 'pygco'\n\nDuring handling of the above exception, another "
           "exception occurred:\n\nAttributeError: module 'numpy' has no attribute 'int'.\n`np.int` was a "
           "deprecated alias for the builtin `int`.\nhttps://numpy.org/devdocs/release/1.20.0-notes.html#deprecations\n")
    smoke = fail("smoke test: import gco failed: https://numpy.org/devdocs/release/1.20.0-notes.html#deprecations",
                 log, stage="smoke")
    ctx = OfflineContext({"pygco"})
    change = next(c for rule in RULES if (c := rule(smoke, draft(), ctx)) is not None)
    assert change.describe() == "runtime.requires += numpy<1.24"


def test_cython_output_shipped_without_its_pyx_that_fails_means_an_older_python() -> None:
    """editdistance 0.3.1: Cython 0.19.1's C++ and no .pyx; it compiles on Python 3.10 alone."""
    log = ("kiln: Cython output without its .pyx: editdistance/bycython.cpp (generated by Cython 0.19.1; the sdist "
           "has no .pyx to regenerate it from, so it compiles only where that Cython's output does)\n")
    line = ("editdistance/bycython.cpp:1186:24: error: ‘PyThreadState’ {aka ‘struct _ts’} has no member named "
            "‘curexc_type’ (`python -m build ...` exited 1)")
    assert python_too_new(fail(line, log + line), draft()) == (
        "editdistance/bycython.cpp (generated by Cython 0.19.1, no .pyx shipped to regenerate it from) does not "
        "compile on Python 3.12")
    other = "editdistance/_editdistance.cpp:3:9: error: ‘x’ was not declared in this scope"
    assert python_too_new(fail(other, log + other), draft()) is None  # not the generated file
    numpy = "editdistance/bycython.cpp:99:5: error: ‘NPY_CHAR’ undeclared"
    assert python_too_new(fail(numpy, log + numpy), draft()) is None  # numpy's C API: a numpy bound's to fix
    assert python_too_new(fail(line, line), draft()) is None  # not said to have no .pyx (regenerable, or none)


CXX20 = ("/env/lib/python3.12/site-packages/torch/include/c10/util/C++17.h:13:2: error: #error C++20 or later "
         "compatible compiler is required to use PyTorch. (`python -m build ...` exited 1)")


def test_torch_headers_that_refuse_the_package_s_standard_mean_an_older_torch() -> None:
    """chamferdist 1.0.3 compiles with -std=c++17, which torch 2.14's headers refuse."""
    log = (f"kiln: env CXXFLAGS=\ng++ -std=c++20 -fPIC -I/env/include -c chamferdist/ext.cpp -o ext.o -std=c++17\n"
           f"{CXX20}\nc10/core/AutogradState.h:84:23: warning: default member initializers for bit-fields only "
           "available with ‘-std=c++20’ or ‘-std=gnu++20’ [-Wc++20-extensions]\n")
    d = draft()
    assert torch_cxx_standard(fail(CXX20, log), d, OfflineContext()) is None  # no torch in the draft
    d.torch = "2.14"
    change = torch_cxx_standard(fail(CXX20, log), d, OfflineContext())
    assert change is not None and change.describe() == "matrix.torch: 2.14 -> 2.13"
    assert change.why == "torch 2.14's headers need C++20, the package compiles with C++17"
    assert change.apply(d) and d.torch == "2.13" and d.cuda is None
    assert not change.apply(d)  # moved already
    assert '  torch: ["2.13"]    # torch 2.14\'s headers need C++20' in d.yaml()
    assert torch_cxx_standard(fail(CXX20, log), d, OfflineContext()) is None  # 2.13 takes C++17: something else
    cuda = draft()
    cuda.torch, cuda.cuda = "2.14", "12.6"  # the newest older minor with the draft's CUDA build
    assert torch_cxx_standard(fail(CXX20, log), cuda, OfflineContext()).describe() == "matrix.torch: 2.14 -> 2.8"  # type: ignore[union-attr]
    cuda.cuda = "12.9"  # no older minor has it
    assert torch_cxx_standard(fail(CXX20, log), cuda, OfflineContext()) is None
    d14 = draft()
    d14.torch = "2.14"
    c14 = log.replace("-std=c++17", "-std=c++14")
    assert torch_cxx_standard(fail(CXX20, c14), d14, OfflineContext()) is None  # no torch here takes C++14
    assert torch_cxx_standard(fail(CXX20, log, stage="smoke"), d14, OfflineContext()) is None


@pytest.fixture(scope="module")
def dated_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticIndex]:
    """kilndemo 1.0's sdist, uploaded in 2021, and two dependencies' releases over the years: kilnmoved
    has a wheel for every Python in each; kilnnew's first wheel for Python 3.12 came after 2021."""
    root = tmp_path_factory.mktemp("dated")
    files = root.parent / (root.name + "-files")
    files.mkdir()
    index = StaticIndex(root)
    sdist = files / "kilndemo-1.0.tar.gz"
    sdist.write_bytes(b"not read")
    index.upload_times[sdist.name] = "2021-03-01T00:00:00Z"
    dated = [sdist]
    for name, version, tag, when in [
        ("kilnmoved", "1.0", "py3-none-any", "2019-01-01"), ("kilnmoved", "1.1", "py3-none-any", "2020-06-01"),
        ("kilnmoved", "1.2rc1", "py3-none-any", "2021-01-01"), ("kilnmoved", "2.0", "py3-none-any", "2023-01-01"),
        ("kilnnew", "1.0", "cp310-cp310-manylinux_2_17_x86_64", "2019-01-01"),
        ("kilnnew", "2.0", "cp312-cp312-manylinux_2_17_x86_64", "2023-10-01"),
        ("kilnnew", "2.1", "cp312-cp312-manylinux_2_17_x86_64", "2024-02-01"),
    ]:
        wheel = make_wheel(name, version, {f"{name}/__init__.py": ""}, files)
        named = wheel.with_name(f"{name}-{version}-{tag}.whl")
        wheel.rename(named)
        index.upload_times[named.name] = f"{when}T00:00:00Z"
        dated.append(named)
    index.add(dated)
    index.start()
    yield index
    index.stop()


def gone(name: str, module: str) -> Failure:
    return fail(f"smoke test: import kilndemo failed: ImportError: cannot import name '{name}' from '{module}' "
                f"(/smoke-env/lib/python3.12/site-packages/{module.replace('.', '/')}.py)", stage="smoke")


def test_a_name_a_dependency_dropped_bounds_it_to_the_series_of_the_release(dated_index: StaticIndex) -> None:
    """POT 0.7: `cannot import name 'scalar_search_armijo' from 'scipy.optimize.linesearch'`."""
    ctx = Context(dated_index.simple, TC, "3.12")
    d = Draft(project="kilndemo", version="1.0", python="3.12")
    change = dependency_moved_on(gone("old_helper", "kilnmoved.sub"), d, ctx)
    assert change is not None and change.describe() == "runtime.requires += kilnmoved<1.2"  # 1.1, not 1.2rc1
    assert change.why == ("kilnmoved.sub.old_helper is gone from newer kilnmoved: kilnmoved 1.1, the series current "
                          "at the release")
    assert change.apply(d) and not change.apply(d)  # bounded already: the rule cannot help twice
    attr = fail("smoke test: import kilndemo failed: AttributeError: module 'kilnnew' has no attribute 'old'",
                stage="smoke")
    newer = dependency_moved_on(attr, Draft(project="kilndemo", version="1.0", python="3.12"), ctx)
    assert newer is not None and newer.describe() == "runtime.requires += kilnnew<2.1"
    assert newer.why == ("kilnnew.old is gone from newer kilnnew: kilnnew 2.0, the oldest with a wheel for Python "
                         "3.12, which is newer than the release")
    assert dependency_moved_on(attr, Draft(project="kilndemo", version="1.0", python="3.11"),
                               Context(dated_index.simple, TC, "3.11")) is None  # no kilnnew wheel for 3.11
    draft_ = Draft(project="kilndemo", version="1.0", python="3.12")
    for refused in [gone("x", "kilndemo.core"),                      # the package's own module
                    gone("Mapping", "collections"),                  # Python's own
                    gone("x", "nowhere_to_be_found"),                # no such project
                    fail(gone("x", "kilnmoved").line, stage="build")]:  # not the smoke test
        assert dependency_moved_on(refused, draft_, ctx) is None, refused.line


def test_a_distutils_module_newer_setuptools_dropped_means_setuptools_below_60() -> None:
    gone = fail("ModuleNotFoundError: No module named 'distutils.msvccompiler'")
    d = draft()
    change = old_distutils(gone, d, OfflineContext())
    assert change is not None and change.describe() == "build.constraints += setuptools<60"
    change.apply(d)
    assert old_distutils(gone, d, OfflineContext()) is None  # pinned already: something else
    assert old_distutils(fail("No module named 'numpy.distutils'"), draft(), OfflineContext()) is None


FETCH = ("distutils.errors.DistutilsError: Command '['/env/bin/python', '-m', 'pip', '--disable-pip-version-check', "
         "'wheel', '--no-deps', '-w', '/tmp/x', '--quiet', 'cython>=0.27.3']' returned non-zero exit status 1.")


def test_setup_requires_fetched_with_pip_goes_into_build_requires() -> None:
    assert setup_requires_fetch(fail(FETCH), draft(), OfflineContext()).describe() == \
        "build.requires += cython>=0.27.3"  # type: ignore[union-attr]


def test_an_old_cython_pin_is_replaced_and_numpy_distutils_means_numpy_below_2() -> None:
    ctx = OfflineContext()
    ctx.declared = ["Cython==0.29.33", "setuptools"]
    old_c = "src/core.c:18022:34: error: 'PyThreadState' has no member named 'curexc_traceback'"
    change = cython(fail(old_c), draft(), ctx)
    assert change is not None and change.describe() == "build.replace: Cython==0.29.33 -> cython"
    d = draft()
    change.apply(d)
    assert '  replace: {"Cython==0.29.33": cython}' in d.yaml()
    gone = fail("ModuleNotFoundError: No module named 'numpy.distutils'")
    assert numpy_removed_api(gone, draft(), ctx).describe() == "build.constraints += numpy<2"  # type: ignore[union-attr]


def test_needs_said_in_words_and_old_cmake() -> None:
    words = fail("Cython is required during installation (the build backend's get_requires_for_build_wheel failed)")
    assert required_by_message(words, draft(), OfflineContext()).describe() == "build.requires += cython"  # type: ignore[union-attr]
    cmake = fail("CMake Error at CMakeLists.txt:1 (cmake_minimum_required): Compatibility with CMake < 3.5 has "
                 "been removed from CMake.")
    assert cmake_policy(cmake, draft(), OfflineContext()).describe() == "build.env.CMAKE_POLICY_VERSION_MINIMUM = 3.5"  # type: ignore[union-attr]
    assert required_by_message(fail("error: something else"), draft(), OfflineContext()) is None


def test_cuda_knobs_only_for_a_failing_torch_draft() -> None:
    ctx = OfflineContext()
    ctx.setup_py = SETUP_PY
    d = draft()
    assert cuda_knob(fail("error: nvcc not found"), d, ctx) is None  # no torch: not a torch extension
    d.torch = "2.14"
    first = cuda_knob(fail("error: nvcc not found"), d, ctx)
    assert first is not None and first.describe() == "build.env.DEMO_FORCE_BUILD = TRUE"
    first.apply(d)
    assert cuda_knob(fail("error: nvcc not found"), d, ctx).describe() == "build.env.DEMO_SKIP_CUDA_BUILD = TRUE"  # type: ignore[union-attr]
    d.cuda = "13.0"  # in a CUDA cell, a knob that turns CUDA off is never proposed
    assert cuda_knob(fail("error: nvcc not found"), d, ctx) is None


def test_cython_3_output_that_does_not_compile_and_numpy_2_headers() -> None:
    log = "Cythonizing pycocotools/_mask.pyx\ncc1: fatal error: ../common/maskApi.c: No such file or directory\n"
    first = cython(fail("cc1: fatal error: ../common/maskApi.c: No such file or directory", log), draft(),
                   OfflineContext())
    assert first is not None and first.describe() == "build.constraints += cython<3"
    d = draft()
    first.apply(d)
    system = "Cythonizing _pysndfile.pyx\n_pysndfile.cpp:1250:10: fatal error: sndfile.h: No such file or directory\n"
    assert cython(fail(system.splitlines()[1], system), draft(), OfflineContext()) is None  # no Cython brings it
    headers = "pycocotools/_mask.pyx:1:0: the NumPy Cython headers require Cython 3.0.0 or newer"
    assert cython(fail(headers, headers), d, OfflineContext()).describe() == "build.constraints += numpy<2"  # type: ignore[union-attr]


def test_a_change_already_made_does_not_apply_twice() -> None:
    d = draft()
    change = Change("build.requires", "cython", "No module named 'Cython'")
    assert change.apply(d) and not change.apply(d)
    assert Change("build.requires", "cython<3", "again").apply(d) and d.requires == ["cython<3"]
    assert not Change("build.requires", "cython", "a bare name does not loosen it").apply(d)
    assert d.requires == ["cython<3"]


UNRESOLVABLE = ("the runtime requirements of demo-1.0-py3-none-any.whl do not resolve: Because only numpy>=1.22 "
                "has wheels for cp312 and demo==1.0 depends on numpy>=1.16,<1.20, we can conclude that demo==1.0 "
                "cannot be used.")


def test_an_upstream_bound_no_release_satisfies_is_rewritten_to_its_lower_bounds() -> None:
    change = upstream_bound(fail(UNRESOLVABLE), draft(), OfflineContext())
    assert change is not None and change.describe() == "runtime.replace: numpy<1.20,>=1.16 -> numpy>=1.16"
    d = draft()
    change.apply(d)
    assert d.runtime_replace == {"numpy<1.20,>=1.16": "numpy>=1.16"}
    assert '  replace: {"numpy<1.20,>=1.16": "numpy>=1.16"}    # no release satisfies upstream\'s' in d.yaml()
    # another project's bound, or a bound that is not an upper one, is not this package's to rewrite
    assert upstream_bound(fail(UNRESOLVABLE.replace("demo==1.0 depends", "other==2 depends")), draft(),
                          OfflineContext()) is None
    assert upstream_bound(fail(UNRESOLVABLE.replace(">=1.16,<1.20", ">=1.30")), draft(), OfflineContext()) is None
    assert upstream_bound(fail("error: x.c: No such file", stage="build"), draft(), OfflineContext()) is None


CLOSURE = """\
kiln: closure: binaries only, the runtime requirements do not resolve:
error: No solution found when resolving dependencies
         And because only the following versions of numpy are available:
             numpy<=1.16.6
             numpy>=1.17
         and demo==1.0 depends on numpy>=1.8.2,<1.17, we can conclude that demo==1.0 cannot be used.
kiln: closure: no wheel for cp311: matplotlib==3.4.3, numpy==1.16.6
"""
CLOSURE_LINE = ("matplotlib 3.4.3, a runtime requirement with no wheel for cp311, failed to build (ERROR Backend "
                "subprocess exited when trying to invoke build_wheel (`python -m build ...` exited 1))")


def test_an_old_upstream_bound_behind_a_dependency_without_a_wheel_is_rewritten() -> None:
    """gco-wrapper 3.0.6 pins numpy<1.17: its closure has no wheel for cp311 and builds none."""
    change = upstream_bound(fail(CLOSURE_LINE, CLOSURE + CLOSURE_LINE), draft(), OfflineContext())
    assert change is not None and change.describe() == "runtime.replace: numpy<1.17,>=1.8.2 -> numpy>=1.8.2"
    without = CLOSURE.replace("the runtime requirements do not resolve", "resolved")
    assert upstream_bound(fail(CLOSURE_LINE, without + CLOSURE_LINE), draft(), OfflineContext()) is None


EXCLUDES = ("Because you require torch>=2.0,<2.8 and torch==2.14.1, we can conclude that your requirements are "
            "unsatisfiable. (`uv pip install ...` exited 1)")


def test_a_build_requirement_bound_below_every_torch_kiln_builds_is_replaced() -> None:
    """dbscan-torch 0.2.0 declares torch>=2.0,<2.8 at build time; the table's oldest minor is 2.8."""
    d = draft()
    assert toolchain_bound(fail(EXCLUDES), d, OfflineContext()) is None  # no torch in the draft
    d.torch = "2.14"
    change = toolchain_bound(fail(EXCLUDES), d, OfflineContext())
    assert change is not None and change.describe() == "build.replace: torch<2.8,>=2.0 -> torch>=2.0"
    assert change.why == "upstream's torch<2.8,>=2.0 excludes every torch minor kiln builds"
    within = EXCLUDES.replace("<2.8", "<2.10")  # 2.8 is in the table: the draft's torch is what to change
    assert toolchain_bound(fail(within), d, OfflineContext()) is None
    other = EXCLUDES.replace("torch>=2.0,<2.8", "numpy<1.20").replace("torch==2.14.1", "numpy==2.2.0")
    assert toolchain_bound(fail(other), d, OfflineContext()) is None  # not the toolchain's pin
    assert toolchain_bound(fail(EXCLUDES, stage="smoke"), d, OfflineContext()) is None


CYTHON_NP_INT = """Error compiling Cython file:
------------------------------------------------------------
...
    def update(self, np.ndarray[DTYPE_t, ndim=2] X ,
                            np.ndarray[np.int_t, ndim=1] I,
                                              ^
------------------------------------------------------------

msmtools/estimation/dense/tmat_sampling/sampler_revpi.pyx:91:47: Invalid type.
"""


def test_a_numpy_type_numpy_2_s_cython_declarations_dropped_means_numpy_below_2() -> None:
    """msmtools 1.2.6: `np.int_t` is not in numpy 2's __init__.pxd."""
    line = ("Cython.Compiler.Errors.CompileError: msmtools/estimation/dense/tmat_sampling/sampler_revpi.pyx "
            "(`python -m build ...` exited 1)")
    d = draft()
    change = numpy_removed_api(fail(line, CYTHON_NP_INT + line), d, OfflineContext())
    assert change is not None and change.describe() == "build.constraints += numpy<2"
    change.apply(d)
    assert numpy_removed_api(fail(line, CYTHON_NP_INT + line), d, OfflineContext()) is None  # pinned: Cython's turn
    own = CYTHON_NP_INT.replace("np.int_t", "my_index_t")
    assert numpy_removed_api(fail(line, own + line), draft(), OfflineContext()) is None  # not numpy's type


@pytest.mark.parametrize(("requirement", "expected"), [
    ("numpy<1.20", "numpy"), ("numpy>=1.16,<1.20", "numpy>=1.16"), ("scipy~=1.4", "scipy>=1.4"),
    ("torch==1.*", "torch>=1"), ("x!=1.1,<=2", "x!=1.1"),
    ('numpy==1.17.3; python_version >= "3.8"', 'numpy>=1.17.3; python_version >= "3.8"')])
def test_unbounded(requirement: str, expected: str) -> None:
    from packaging.requirements import Requirement

    assert unbounded(Requirement(requirement)) == expected


CUDA_ONLY = """\
import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension
if not torch.cuda.is_available():
    raise Exception("CPU version is not implemented")
setup(ext_modules=[CUDAExtension("demo._C", ["demo/kernel.cu"])], cmdclass={"build_ext": BuildExtension})
"""


def test_a_cpu_draft_that_needs_cuda_moves_to_the_host_s_cuda_variant() -> None:
    d = draft()
    line = "Exception: CPU version is not implemented (the build backend's get_requires_for_build_wheel failed)"
    assert needs_cuda(fail(line), d, OfflineContext()) is None  # no torch: not a torch extension
    d.torch = "2.14"
    d.env = {"DEMO_SKIP_CUDA_BUILD": "TRUE", "DEMO_FORCE_BUILD": "TRUE"}
    change = needs_cuda(fail(line), d, OfflineContext())
    assert change is not None and change.describe() == "matrix.torch = [2.14], cuda = [13.0]"
    assert change.apply(d) and d.cuda == "13.0" and d.env == {"DEMO_FORCE_BUILD": "TRUE"}
    assert needs_cuda(fail(line), d, OfflineContext()) is None  # a CUDA cell already
    assert '  cuda: ["13.0"]    # the extension needs CUDA: Exception: CPU version is not implemented' in d.yaml()
    assert needs_cuda(fail("error: x.c: No such file"), draft(), OfflineContext()) is None
    torch_draft = draft()
    torch_draft.torch = "2.14"
    warned = "No CUDA runtime is found, using CUDA_HOME='/usr/local/cuda'\ncpu/x.cpp:47:10: error: 'unique_ptr' is not"
    assert needs_cuda(fail("cpu/x.cpp:47:10: error: 'unique_ptr' is not a member of 'std'", warned), torch_draft,
                      OfflineContext()) is None  # torch's warning in the log is no reason to move to CUDA


def test_code_a_newer_compiler_rejects_gets_the_diagnostic_back_as_a_warning() -> None:
    narrowing = ("cld/x.cc:7089:1: error: narrowing conversion of '-14' from 'int' to 'uint8' [-Wnarrowing] "
                 "(`python -m build ...` exited 1)")
    d = draft()
    first = compiler_strictness(fail(narrowing), d, OfflineContext())
    assert first is not None and first.describe() == "build.env.CXXFLAGS = -Wno-narrowing"
    first.apply(d)
    assert compiler_strictness(fail(narrowing), d, OfflineContext()) is None  # set already: nothing more to try
    implicit = "x.c:3:5: error: implicit declaration of function 'foo' [-Wimplicit-function-declaration]"
    second = compiler_strictness(fail(implicit), d, OfflineContext())
    assert second is not None and second.describe() == "build.env.CFLAGS = -Wno-error=implicit-function-declaration"
    second.apply(d)
    assert compiler_strictness(fail(implicit), d, OfflineContext()) is None
    assert compiler_strictness(fail("x.c:1: error: unknown type name 'foo'"), draft(), OfflineContext()) is None


TR1 = ("cppjieba/deps/limonp/StdExtension.hpp:19:17: error: ‘template<class _Key, class _Tp, class _Hash, class "
       "_Pred, class _Alloc> class std::tr1::unordered_map’ conflicts with a previous declaration (`python -m build "
       "...` exited 1)")


def test_old_cxx_is_compiled_with_the_standard_it_was_written_for() -> None:
    d = draft()
    first = old_cxx_standard(fail(TR1), d, OfflineContext())
    assert first is not None and first.describe() == "build.env.CXXFLAGS = -std=c++11"
    first.apply(d)
    # the compile command holds it, and setup.py's own -std after it wins: nothing more to try
    overridden = f"kiln: env CXXFLAGS=-std=c++11\nc++ -std=c++11 -fPIC -c src/main.cpp -std=c++14\n{TR1}"
    assert old_cxx_standard(fail(TR1, overridden), d, OfflineContext()) is None
    unread = f"kiln: env CXXFLAGS=-std=c++11\nc++ -fPIC -c src/main.cpp\n{TR1}"  # setuptools before 72: CFLAGS
    second = old_cxx_standard(fail(TR1, unread), d, OfflineContext())
    assert second is not None and second.describe() == "build.env.CFLAGS = -std=c++11"
    second.apply(d)
    assert old_cxx_standard(fail(TR1, unread), d, OfflineContext()) is None  # both set: nothing more to try
    removed = "x.cpp:3:18: error: ISO C++17 does not allow dynamic exception specifications"
    other = draft()
    other.env["CXXFLAGS"] = "-Wno-narrowing"
    change = old_cxx_standard(fail(removed), other, OfflineContext())
    assert change is not None and change.describe() == "build.env.CXXFLAGS = -Wno-narrowing -std=c++14"
    assert old_cxx_standard(fail("x.cpp:1: error: 'foo' was not declared in this scope"), draft(),
                            OfflineContext()) is None
    assert old_cxx_standard(fail(TR1, stage="smoke"), draft(), OfflineContext()) is None


def test_stale_cython_output_kept_for_want_of_cython_that_fails_means_cython() -> None:
    """murmurhash 0.26: its Cython 0.20.1 C++ fails on 3.12 with an error no other rule knows."""
    log = ("kiln: Cython output kept: murmurhash/mrmr.cpp (generated by Cython 0.20.1; no Cython in the build "
           "environment to regenerate it)\n")
    line = ("murmurhash/mrmr.cpp:1355:9: error: invalid conversion from ‘int’ to ‘PyObject*’ {aka ‘_object*’} "
            "[-fpermissive] (`python -m build ...` exited 1)")
    d = draft()
    change = cython(fail(line, log + line), d, OfflineContext())
    assert change is not None and change.describe() == "build.requires += cython"
    assert change.why == ("murmurhash/mrmr.cpp (generated by Cython 0.20.1) does not compile; kiln regenerates it "
                          "with Cython")
    change.apply(d)
    assert cython(fail(line, log + line), d, OfflineContext()) is None
    other = "murmurhash/other.cpp:3:9: error: invalid conversion from ‘int’ to ‘PyObject*’"
    assert cython(fail(other, log + other), draft(), OfflineContext()) is None  # not the stale file


def test_a_pyx_whose_c_is_not_shipped_means_cython() -> None:
    """setuptools compiles pyworld.cpp for pyworld.pyx when Cython is missing, and there is none."""
    line = "cc1plus: fatal error: pyworld/pyworld.cpp: No such file or directory (`python -m build ...` exited 1)"
    ctx = OfflineContext()
    ctx.setup_py = 'ext = [Extension("pyworld.pyworld", ["pyworld/pyworld.pyx", "lib/World/src/cheaptrick.cpp"])]'
    d = draft()
    change = cython(fail(line), d, ctx)
    assert change is not None and change.describe() == "build.requires += cython"
    change.apply(d)
    assert cython(fail(line), d, ctx) is None  # Cython is there: something else is wrong
    ctx.setup_py = 'ext = [Extension("pyworld.pyworld", ["pyworld/pyworld.cpp"])]'  # a C++ file of its own, missing
    assert cython(fail(line), draft(), ctx) is None


def test_a_standard_name_used_without_its_header_gets_the_header_included() -> None:
    line = "cpu/src/neighbors.cpp:47:10: error: ‘unique_ptr’ is not a member of ‘std’ (`python -m build ...` exited 1)"
    d = draft()
    change = std_header(fail(line), d, OfflineContext())
    assert change is not None and change.describe() == "build.env.CXXFLAGS = -include memory"
    change.apply(d)
    assert std_header(fail(line), d, OfflineContext()) is None  # included already: nothing more to try
    limits = "x.cc:3:20: error: 'numeric_limits' is not a member of 'std'"
    assert std_header(fail(limits), d, OfflineContext()).describe() == (  # type: ignore[union-attr]
        "build.env.CXXFLAGS = -include memory -include limits")
    assert std_header(fail("x.cc:3: error: 'frobnicate' is not a member of 'std'"), draft(), OfflineContext()) is None


def test_a_build_requirement_bound_no_python_has_a_wheel_within_is_replaced() -> None:
    reason = "numpy<v1.20.0 has no wheel for cp313 (a build requirement: [build-system].requires)"
    change = unsatisfiable_bound(reason, draft())
    assert change is not None and change.describe() == "build.replace: numpy<v1.20.0 -> numpy"
    assert unsatisfiable_bound(reason.replace("numpy<v1.20.0", "numpy>=1.16"), draft()) is None  # no upper bound
    # Bottleneck 1.3.2 pins numpy per Python with markers, as oldest-supported-numpy does
    marked = ('numpy==1.17.3; python_version >= "3.8" and platform_system != "AIX" has no wheel for cp312 (a build '
              'requirement: [build-system].requires)')
    d = draft()
    change = unsatisfiable_bound(marked, d)
    assert change is not None and change.key == 'numpy==1.17.3; python_version >= "3.8" and platform_system != "AIX"'
    assert change.value == 'numpy>=1.17.3; python_version >= "3.8" and platform_system != "AIX"'
    change.apply(d)
    assert yaml.safe_load(d.yaml())["build"]["replace"] == {change.key: change.value}  # quoted as YAML reads it back
    assert unsatisfiable_bound(reason.replace("[build-system].requires", "recipe build.requires"), draft()) is None
    assert unsatisfiable_bound("kilnpicky 1.0.0 requires Python >=3.11 (Requires-Python in its PKG-INFO), not 3.10.13",
                               draft()) is None


def test_a_missing_library_header_sets_the_knob_that_builds_the_bundled_one() -> None:
    ctx = OfflineContext()
    ctx.setup_py = ('import os\nif os.environ.get("BUILD_LIB") == "1":\n    pass\n'
                    'FORCE = os.getenv("X_SKIP_CUDA_BUILD")\n')
    line = "src/x/_x_cffi.c:258:14: fatal error: fuzzy.h: No such file or directory (`python -m build ...` exited 1)"
    change = bundled_library_knob(fail(line), draft(), ctx)
    assert change is not None and change.describe() == "build.env.BUILD_LIB = 1"
    d = draft()
    change.apply(d)
    assert bundled_library_knob(fail(line), d, ctx) is None  # no other knob to try
    assert bundled_library_knob(fail("error: x.c: No such file"), draft(), ctx) is None
    ctx.setup_py = "import os\n"
    assert bundled_library_knob(fail(line), draft(), ctx) is None


# ----------------------------------------------------------------------------- the sdist read statically


SETUP_PY = """\
import os
import sys
import numpy as np
from Cython.Build import cythonize
from setuptools import setup
from demo import __version__
try:
    import torch
except ImportError:
    torch = None
FORCE = os.getenv("DEMO_FORCE_BUILD", "FALSE") == "TRUE"
SKIP = os.environ.get('DEMO_SKIP_CUDA_BUILD')
"""


def test_unconditional_imports_and_knobs() -> None:
    assert unconditional_imports(SETUP_PY) == ["os", "sys", "numpy", "Cython", "setuptools", "demo"]
    assert knobs(SETUP_PY) == {"DEMO_FORCE_BUILD": "TRUE", "DEMO_SKIP_CUDA_BUILD": "TRUE"}
    assert unconditional_imports("def broken(:\n") == []


def test_a_draft_is_a_valid_commented_recipe(tmp_path: Path) -> None:
    d = draft()
    for change in (Change("build.requires", "cython", "No module named 'Cython'"),
                   Change("build.constraints", "numpy<2", "C code uses numpy 1.x API"),
                   Change("runtime.requires", "setuptools<81", "pkg_resources"),
                   Change("matrix.torch", "2.14", "setup.py imports torch"),
                   Change("build.env", "TRUE", "a knob", key="DEMO_FORCE_BUILD"),
                   Change("runtime.run_exports", "major", "numpy 1.x", key="numpy")):
        change.apply(d)
    path = tmp_path / "demo.yaml"
    path.write_text(d.yaml())
    shutil.copy(FIXTURE_RECIPES / "toolchains.yaml", tmp_path / "toolchains.yaml")
    recipe = load_recipe(path)
    assert recipe.build.requires == ["cython"] and recipe.build.constraints == ["numpy<2"]
    assert recipe.build.env == {"DEMO_FORCE_BUILD": "TRUE"}
    assert recipe.matrix.torch == ["2.14"] and recipe.matrix.cuda == ["cpu"]
    assert recipe.runtime.requires == ["setuptools<81"] and recipe.runtime.run_exports == {"numpy": "major"}
    assert "  requires: [cython]    # No module named 'Cython'" in d.yaml()
    assert '  constraints: ["numpy<2"]    # C code uses numpy 1.x API' in d.yaml()


# ----------------------------------------------------------------------------- end to end


def recipes_with_toolchains(tmp_path: Path) -> Path:
    return recipes_dir(tmp_path / "recipes")


def infer(spec: str, recipes: Path, tmp_path: Path, upstream: StaticIndex, *args: str) -> int:
    """`kiln infer SPEC` for Python 3.11 against the local upstream."""
    return main(["infer", spec, "--recipes", str(recipes), "--home", str(tmp_path / "home"), "--python", "3.11",
                 "--index-url", upstream.simple, *args])


def test_an_import_a_declared_build_requirement_brings_in_is_not_drafted(tmp_path: Path,
                                                                         upstream: StaticIndex) -> None:
    """setup.py imports pyproject_hooks, which [build-system].requires brings in through `build`
    (as oldest-supported-numpy brings numpy): the draft does not declare it again. An import that
    nothing declared brings in still is."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools", "build"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    (src / "setup.py").write_text("import pyproject_hooks\nimport kilnfix_helper\nfrom setuptools import setup\n"
                                  "setup(name='meta')\n")
    ctx = Context(upstream.simple, load_toolchains(recipes_with_toolchains(tmp_path)), "3.11")
    draft = Draft("meta", "1.0", "3.11")
    said: list[str] = []
    static_draft(draft, src, ctx, said.append)
    assert said == ["try 0 (setup.py): imports kilnfix_helper -> build.requires += kilnfix-helper"]
    assert {"build", "setuptools", "pyproject-hooks", "packaging"} <= ctx.declared_closure()


def test_a_setup_py_that_builds_cuda_code_only_is_drafted_as_a_cuda_cell(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "setup.py").write_text(CUDA_ONLY)
    d = draft()
    said: list[str] = []
    static_draft(d, src, OfflineContext(), said.append)
    assert said == ["try 0 (setup.py): imports torch -> matrix.torch = [2.14], cuda = [13.0]"]
    assert ('  cuda: ["13.0"]    # setup.py builds CUDA code only (line 4: it refuses to run unless '
            'torch.cuda.is_available())') in d.yaml()
    (src / "setup.py").write_text(SETUP_PY.replace("try:\n    import torch\nexcept ImportError:\n    torch = None\n",
                                                   "import torch\n"))
    d = draft()
    static_draft(d, src, OfflineContext({"demo"}), lambda line: None)
    assert d.torch == "2.14" and d.cuda is None  # a torch extension with a cpu build: a cpu cell


def test_infer_finds_a_build_and_a_runtime_requirement(tmp_path: Path, upstream: StaticIndex,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipes = recipes_with_toolchains(tmp_path)
    assert infer("kilnrt", recipes, tmp_path, upstream) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "try 0 (setup.py): imports kilnfix_helper -> build.requires += kilnfix-helper"
    assert out[1] == ("try 1: smoke test: import kilnrt failed: ModuleNotFoundError: No module named "
                      "'kilnfix_helper' -> runtime.requires += kilnfix-helper")
    assert out[2] == f"try 2: built and smoke-tested kilnrt-1.0.0-cp311-main -> wrote {recipes / 'kilnrt.yaml'}"
    recipe = load_recipe(recipes / "kilnrt.yaml")
    assert recipe.build.requires == ["kilnfix-helper"] and recipe.runtime.requires == ["kilnfix-helper"]
    assert recipe.versions == ["1.0.0"]
    # The drafted recipe is a recipe like any other: kiln build builds it.
    assert main(["build", "--recipes", str(recipes), "--home", str(tmp_path / "home2"),
                 "--index-url", upstream.simple]) == 0


def test_infer_with_a_relative_home(tmp_path: Path, upstream: StaticIndex, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`--home home`, as a user types it: the trial home's links to the shared caches must
    still point at the home (they once resolved beside the link, and the build failed)."""
    recipes = recipes_with_toolchains(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["infer", "kilnrt", "--recipes", "recipes", "--home", "home", "--python", "3.11",
                 "--index-url", upstream.simple]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "wrote recipes/kilnrt.yaml after 2 tries"
    assert load_recipe(recipes / "kilnrt.yaml").runtime.requires == ["kilnfix-helper"]
    assert Home(Path("home")).root == tmp_path / "home"


def test_infer_gives_up_with_its_exit_code_and_writes_nothing(tmp_path: Path, upstream: StaticIndex,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipes = recipes_with_toolchains(tmp_path)
    assert infer("kilnbroken==1.0.0", recipes, tmp_path, upstream) == InferError.exit_code == 10
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["try 1: RuntimeError: kilnbroken: this platform is not supported (the "
                                         "build backend's get_requires_for_build_wheel failed) -> no rule applies"]
    err = captured.err.strip()
    assert "\n" not in err
    assert err.startswith("kiln: kilnbroken 1.0.0: no working recipe; last failure: RuntimeError: kilnbroken: "
                          "this platform is not supported")
    assert sorted(p.name for p in recipes.iterdir()) == ["toolchains.yaml"]


def test_infer_never_overwrites_a_recipe(tmp_path: Path, upstream: StaticIndex,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    recipes = recipes_with_toolchains(tmp_path)
    (recipes / "kilnrt.yaml").write_text("# mine\n")
    assert main(["infer", "kilnrt", "--recipes", str(recipes), "--home", str(tmp_path / "home"),
                 "--index-url", upstream.simple]) == 2
    assert capsys.readouterr().err.strip() == (f"kiln: {recipes / 'kilnrt.yaml'}: exists already; infer drafts "
                                               "recipes that do not exist yet")
    assert (recipes / "kilnrt.yaml").read_text() == "# mine\n"


def test_infer_drafts_a_runtime_dependency_s_recipe_on_the_way(tmp_path: Path, upstream: StaticIndex,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    recipes = recipes_with_toolchains(tmp_path)
    assert infer("kilnuser", recipes, tmp_path, upstream) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("try 1: kilnrt 1.0.0, a runtime requirement with no wheel for cp311, does not build")
    assert out[0].endswith("-> kiln infer kilnrt==1.0.0")
    assert "  [kilnrt] try 0 (setup.py): imports kilnfix_helper -> build.requires += kilnfix-helper" in out
    assert f"wrote {recipes / 'kilnrt.yaml'} (a runtime dependency's recipe)" in out
    assert sorted(p.name for p in recipes.iterdir()) == ["kilnrt.yaml", "kilnuser.yaml", "toolchains.yaml"]
    assert load_recipe(recipes / "kilnrt.yaml").runtime.requires == ["kilnfix-helper"]


def test_infer_fails_when_a_dependency_cannot_be_fixed(tmp_path: Path, upstream: StaticIndex,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipes = recipes_with_toolchains(tmp_path)
    assert infer("kilnneeds", recipes, tmp_path, upstream) == InferError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.startswith("kiln: kilnneeds 1.0.0: its runtime dependency kilnbroken==1.0.0 has no working recipe: "
                          "kilnbroken 1.0.0: no working recipe; last failure: RuntimeError: kilnbroken")
    assert sorted(p.name for p in recipes.iterdir()) == ["toolchains.yaml"]


def test_infer_rewrites_an_upstream_bound_no_release_satisfies(tmp_path: Path, upstream: StaticIndex,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    recipes = recipes_with_toolchains(tmp_path)
    assert infer("kilnold", recipes, tmp_path, upstream) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("try 1: the runtime requirements of kilnold-1.0.0-py3-none-any.whl do not resolve: ")
    assert out[0].endswith(" -> runtime.replace: kilnfix-helper<1.0 -> kilnfix-helper")
    assert out[1] == f"try 2: built and smoke-tested kilnold-1.0.0-cp311-main -> wrote {recipes / 'kilnold.yaml'}"
    assert load_recipe(recipes / "kilnold.yaml").runtime.replace == {"kilnfix-helper<1.0": "kilnfix-helper"}

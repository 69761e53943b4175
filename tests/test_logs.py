"""The one line a failed cell reports: the log's decisive line."""

from __future__ import annotations

import pytest

from kiln.logs import decisive_line

SETUPTOOLS_MISSING = """\
* Getting build dependencies for wheel...
Traceback (most recent call last):
  File "setup.py", line 1, in <module>
    from setuptools import setup
ModuleNotFoundError: No module named 'setuptools'

ERROR Backend subprocess exited when trying to invoke get_requires_for_build_wheel
"""

GCC = """\
gcc -c foo.c -o foo.o
foo.c:3:10: fatal error: numpy/arrayobject.h: No such file or directory
    3 | #include "numpy/arrayobject.h"
compilation terminated.
error: command '/usr/bin/gcc' failed with exit code 1
ERROR Backend subprocess exited when trying to invoke build_wheel
"""

NVCC = """\
[1/2] nvcc -c kernel.cu
kernel.cu(12): error: identifier "foo" is undefined
1 error detected in the compilation of "kernel.cu".
Traceback (most recent call last):
RuntimeError: Error compiling objects for extension
"""

PROBE = """\
/usr/lib/gcc/x86_64-linux-gnu/12/include/avx512erintrin.h:55:20: error: '__W' is used uninitialized
INFO: CCompilerOpt.cache_flush[864] : write cache to path -> build/ccompiler_opt_cache_ext.py
lap/_lapjv.cpp:181:12: fatal error: longintrepr.h: No such file or directory
error: Command "c++ -c lap/_lapjv.cpp" failed with exit status 1
"""

UV = """\
Using Python 3.11.7 environment at: env
error: No solution found when resolving dependencies
  cause: Because there is no version of kilnfix-helper==9.9.9 and you require
         kilnfix-helper==9.9.9, we can conclude that your requirements are
         unsatisfiable.
"""

CMAKE = """\
running build_ext
CMake Error at CMakeLists.txt:1 (cmake_minimum_required):
  Compatibility with CMake < 3.5 has been removed from CMake.

-- Configuring incomplete, errors occurred!
subprocess.CalledProcessError: Command '['cmake', '.']' returned non-zero exit status 1.
ERROR Backend subprocess exited when trying to invoke build_wheel
"""

UV_TTY = """\
  × No solution found when resolving dependencies:
  ╰─▶ Because foo was not found in the package registry and you require foo, we can conclude that
      your requirements are unsatisfiable.
"""


@pytest.mark.parametrize(("text", "line"), [
    (SETUPTOOLS_MISSING, "ModuleNotFoundError: No module named 'setuptools'"),
    (GCC, "foo.c:3:10: fatal error: numpy/arrayobject.h: No such file or directory"),
    (NVCC, 'kernel.cu(12): error: identifier "foo" is undefined'),
    (PROBE, "lap/_lapjv.cpp:181:12: fatal error: longintrepr.h: No such file or directory"),
    ("Cythonizing x.pyx\ncc1: fatal error: ../common/maskApi.c: No such file or directory\ncompilation terminated.\n"
     "error: command '/usr/bin/gcc' failed with exit code 1\n",
     "cc1: fatal error: ../common/maskApi.c: No such file or directory"),
    (UV, "Because there is no version of kilnfix-helper==9.9.9 and you require kilnfix-helper==9.9.9, "
         "we can conclude that your requirements are unsatisfiable."),
    (UV_TTY, "Because foo was not found in the package registry and you require foo, we can conclude "
             "that your requirements are unsatisfiable."),
    (CMAKE, "CMake Error at CMakeLists.txt:1 (cmake_minimum_required): Compatibility with CMake < 3.5 has been "
            "removed from CMake."),
    ("building...\nsomething went wrong\n", "something went wrong"),
    ("", None),
])
def test_decisive_line(text: str, line: str | None) -> None:
    assert decisive_line(text) == line

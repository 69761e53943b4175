"""The GPU shim: in a cell's build steps torch answers about GPUs for the cell, never for the
build box.

A CUDA-only extension's setup.py asks torch for a GPU (``if not torch.cuda.is_available(): raise
Exception("CPU version is not implemented")``) or picks its architectures from the one it finds
(``torch.cuda.get_device_capability()``); torch's own ``cpp_extension``, without
TORCH_CUDA_ARCH_LIST, compiles for the GPUs it sees. The answer would be the build box's: none on a
CI runner, whatever GPU a workstation has. With the shim, in the compile step and in the backend
hook (which runs the same setup.py), ``torch.cuda`` answers:

- in a CUDA cell, as a machine with one GPU per target architecture of the cell, lowest first
  (`answer_for`: the cell's TORCH_CUDA_ARCH_LIST when kiln sets one, which on a host build is the
  host profile's archs; else the GPUs the cell's variant index serves): ``is_available()`` True,
  ``device_count()`` the number of architectures, ``current_device()`` 0, so
  ``get_device_capability()`` is the lowest target architecture; ``get_device_name()`` and
  ``get_device_properties()`` say they are kiln's stand-ins. torch's ``cpp_extension`` without
  TORCH_CUDA_ARCH_LIST then compiles SASS for every target architecture (and PTX of one), which
  is what the variant index's arch contract asks for (kiln.wheel.check_served);
- in a cell without CUDA, as a machine without a GPU, even on a build box that has some:
  ``is_available()`` False, ``device_count()`` 0, and what asks for a device raises
  RuntimeError("No CUDA GPUs are available"), as torch does there.

The first answer in each process is said on stderr, so in the cell's log (``kiln: GPU shim:
torch.cuda.is_available() -> True ...``). Nothing else of torch changes (``torch.version.cuda``,
``get_arch_list()``, a tensor put on ``cuda`` still fails: there is no GPU), and nothing outside
the build steps sees the shim: not the smoke test, not a user's environment, not the wheel.

This file runs in two places, so it imports the standard library alone. kiln imports it as
``kiln.gpushim``: `answer_for` computes a cell's answer, which travels as KILN_GPU_SHIM
(``7.5;8.0;9.0``; empty: no GPU) among kiln's own variables of the build steps (kiln.build.build_env,
kiln.sandbox); `kiln.pthshim.install_into` puts a copy of this file into the build environment's site-packages as
``_kiln_gpu_shim.py`` with ``_kiln_gpu_shim.pth``, which makes every Python process started there
call `activate` (the cibuildwheel backend does the same in the container's Python, `kiln.pthshim.install_command`).
`activate` does nothing without KILN_GPU_SHIM (kiln's own probes of the build environment); with it,
it puts an import hook first on ``sys.meta_path`` that replaces the functions above once
``torch.cuda`` has been imported. A ``.pth`` file is read with ``-I``, ``-E`` and ``-P`` too (only
``-S`` skips site-packages altogether), and it neither shadows nor replaces an interpreter's or a
project's ``sitecustomize``/``usercustomize``, as a ``sitecustomize.py`` put first on PYTHONPATH
would (and PYTHONPATH would also reach cibuildwheel's test step, which takes the build's
environment).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # every Python process of a build environment imports this file: nothing more
    import ast
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    from kiln.matrix import Cell
    from kiln.toolchains import Toolchains

ENV = "KILN_GPU_SHIM"
"""The GPUs torch answers with in a build step: compute capabilities, ``;``-separated, lowest first
(``7.5;8.0;9.0``); empty: no GPU; unset: the shim is off."""

MODULE = "_kiln_gpu_shim"
"""This file's name in a build environment's site-packages."""

PTH = f"{MODULE}.pth"
PTH_LINE = f"import {MODULE}; {MODULE}.activate()\n"
"""The ``.pth`` line that activates the shim in every Python process of the build environment."""

NO_GPU = "No CUDA GPUs are available"


# ----------------------------------------------------------------------------- kiln's side


def parse(value: str) -> tuple[tuple[int, int], ...]:
    """The compute capabilities of a TORCH_CUDA_ARCH_LIST-like value, sorted, each once:
    ``"9.0;8.0+PTX 9.0a"`` -> ((8, 0), (9, 0)); ``""`` -> (). A part that names no compute
    capability (``Ampere``) is a ValueError."""
    found: set[tuple[int, int]] = set()
    for part in value.replace(" ", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        major, dot, minor = part.split("+", 1)[0].rstrip("af").partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            raise ValueError(f"{part!r} is not a compute capability (like 8.0, 9.0a or 7.5+PTX)")
        found.add((int(major), int(minor)))
    return tuple(sorted(found))


def answer_for(cell: Cell, toolchains: Toolchains, arch_list: str | None = None) -> str:
    """What torch answers with in ``cell``'s build steps, as KILN_GPU_SHIM: no GPU for a cell
    without CUDA; else one GPU per target architecture: ``arch_list`` (the TORCH_CUDA_ARCH_LIST
    the build gets, when kiln or the recipe sets one), else the GPUs the cell's variant index
    serves (its ``archs_served``; toolchains.yaml's list for a closure cell, which has none)."""
    if cell.variant.cuda_major is None or cell.variant.cuda is None:
        return ""
    gpus: Sequence[tuple[int, int]] = ()
    if arch_list:
        try:
            gpus = parse(arch_list)
        except ValueError:
            gpus = ()  # named archs (torch's "Ampere"): fall back to the served list
    if not gpus:
        served = cell.archs_served or toolchains.archs_served(cell.variant.cuda, cell.recipe.build.gpus)
        gpus = parse(";".join(served))
    return ";".join(f"{major}.{minor}" for major, minor in gpus)


def describe(value: str | None) -> str:
    """One log line: what torch answers with in the build steps."""
    if value is None:
        return "GPU shim off: torch answers about this machine's GPUs"
    try:
        gpus = parse(value)
    except ValueError as exc:
        return f"GPU shim off: {ENV}={value!r} (the recipe's build.env): {exc}"
    if not gpus:
        return ("GPU shim: torch.cuda in the build steps answers as a machine without a GPU "
                f"(a cell without CUDA; {ENV}, see kiln.sandbox)")
    return (f"GPU shim: torch.cuda in the build steps answers as {_gpus(gpus)}, kiln's stand-in{_s(gpus)} for "
            f"the cell's target architectures (no GPU is used; {ENV}, see kiln.sandbox)")


def cuda_only(setup_py: str) -> str | None:
    """Why a setup.py builds only with CUDA, for `kiln infer` to draft a CUDA cell (the shim lets
    it build without a GPU) rather than a cpu cell that cannot work: it refuses to run unless
    ``torch.cuda.is_available()`` (``if not torch.cuda.is_available(): raise ...`` or
    ``sys.exit``, also within ``or``/``and``; ``assert torch.cuda.is_available()``), or it builds a
    ``CUDAExtension`` under no condition but ``__name__ == "__main__"``. None when it may build
    without CUDA, or does not parse."""
    import ast

    try:
        tree = ast.parse(setup_py)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _without_gpu(node.test) and any(_stops(s) for s in node.body):
            return f"line {node.lineno}: it refuses to run unless torch.cuda.is_available()"
        if isinstance(node, ast.Assert) and any(_is_available(n) for n in _operands(node.test)):
            return f"line {node.lineno}: it asserts torch.cuda.is_available()"
    for call in _unconditional_calls(tree):
        func = call.func
        if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) == "CUDAExtension":
            return f"line {call.lineno}: it builds a CUDAExtension unconditionally"
    return None


def _is_available(node: ast.expr) -> bool:
    """``torch.cuda.is_available()`` or ``cuda.is_available()``."""
    import ast

    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "is_available"):
        return False
    owner = node.func.value
    return (isinstance(owner, ast.Attribute) and owner.attr == "cuda") or (
        isinstance(owner, ast.Name) and owner.id == "cuda")


def _operands(test: ast.expr) -> list[ast.expr]:
    """The operands of ``and``/``or``, nested ones too; else ``test`` itself."""
    import ast

    return [v for value in test.values for v in _operands(value)] if isinstance(test, ast.BoolOp) else [test]


def _without_gpu(test: ast.expr) -> bool:
    """Whether ``test`` holds when there is no GPU: ``not ...is_available()`` (or ``== False``,
    ``is False``), alone or as an operand of ``or``/``and``."""
    import ast

    for part in _operands(test):
        if isinstance(part, ast.UnaryOp) and isinstance(part.op, ast.Not) and _is_available(part.operand):
            return True
        if (isinstance(part, ast.Compare) and _is_available(part.left) and len(part.ops) == 1
                and isinstance(part.ops[0], ast.Eq | ast.Is)
                and isinstance(part.comparators[0], ast.Constant) and part.comparators[0].value is False):
            return True
    return False


def _stops(stmt: ast.stmt) -> bool:
    """A ``raise``, or a call of ``sys.exit``/``exit``/``quit``/``os._exit``."""
    import ast

    if isinstance(stmt, ast.Raise):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        func = stmt.value.func
        return (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) in ("exit", "quit", "_exit")
    return False


def _unconditional_calls(node: ast.AST) -> list[ast.Call]:
    """The calls in ``node`` under no ``if`` (but ``if __name__ == "__main__"``), no conditional
    expression and no ``except``."""
    import ast

    found: list[ast.Call] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and not any(isinstance(n, ast.Name) and n.id == "__name__"
                                                 for n in ast.walk(child.test)):
            continue
        if isinstance(child, ast.IfExp | ast.ExceptHandler):
            continue
        if isinstance(child, ast.Call):
            found.append(child)
        found += _unconditional_calls(child)
    return found


def _gpus(gpus: Sequence[tuple[int, int]]) -> str:
    ccs = ", ".join(f"{major}.{minor}" for major, minor in gpus)
    return f"{len(gpus)} GPU{_s(gpus)} of compute capability {ccs}"


def _s(items: Sequence[object]) -> str:
    return "s" if len(items) > 1 else ""


# ----------------------------------------------------------------------------- inside a build step


class StandInProperties:
    """What ``torch.cuda.get_device_properties`` answers under the shim: a GPU of a target
    architecture, named as kiln's stand-in, with no memory and no multiprocessors."""

    def __init__(self, index: int, major: int, minor: int) -> None:
        self.name = f"kiln stand-in GPU {major}.{minor} (no device: kiln's GPU shim, see kiln.sandbox)"
        self.major = major
        self.minor = minor
        self.total_memory = 0
        self.multi_processor_count = 0
        self.is_integrated = 0
        self.is_multi_gpu_board = 0
        self.warp_size = 32
        self.uuid = f"kiln-stand-in-{index}"
        self.gcnArchName = ""  # torch names it so (ROCm); cpp_extension looks for it

    def __repr__(self) -> str:
        return (f"_CudaDeviceProperties(name={self.name!r}, major={self.major}, minor={self.minor}, "
                f"total_memory=0MB, multi_processor_count=0)")


class _Shim:
    """The answers of one process: ``gpus`` (compute capabilities, lowest first) and the device
    selected (``set_device``)."""

    def __init__(self, gpus: tuple[tuple[int, int], ...]) -> None:
        self.gpus = gpus
        self.current = 0
        self.said = False

    def say(self, call: str, result: object) -> None:
        """Say once per process that the shim answered, and as what."""
        if self.said:
            return
        self.said = True
        what = (f"answers as {_gpus(self.gpus)} (kiln's stand-in{_s(self.gpus)} for the cell's target architectures; "
                "no GPU is used)" if self.gpus else "answers as a machine without a GPU (a cell without CUDA)")
        print(f"kiln: GPU shim: torch.cuda.{call} -> {result!r}: torch {what}; see kiln.sandbox",
              file=sys.stderr, flush=True)

    def index(self, device: Any, call: str) -> int:
        """The device index torch's functions take (None: the current one; ``cuda:1``; a
        torch.device), checked to name a stand-in."""
        if not self.gpus:
            self.say(call, RuntimeError(NO_GPU))
            raise RuntimeError(f"{NO_GPU} (kiln's GPU shim: a cell without CUDA is built as on a machine "
                               "without a GPU)")
        if device is None:
            index = self.current
        elif isinstance(device, int):
            index = device
        elif isinstance(device, str):
            _, _, number = device.partition(":")
            index = int(number) if number else self.current
        else:
            found = getattr(device, "index", None)
            index = self.current if found is None else int(found)
        if not 0 <= index < len(self.gpus):
            raise AssertionError("Invalid device id")
        return index

    def patch(self, cuda: ModuleType) -> None:
        """Replace ``torch.cuda``'s answers about devices with the shim's."""

        def is_available() -> bool:
            self.say("is_available()", bool(self.gpus))
            return bool(self.gpus)

        def device_count() -> int:
            self.say("device_count()", len(self.gpus))
            return len(self.gpus)

        def current_device() -> int:
            index = self.index(None, "current_device()")
            self.say("current_device()", index)
            return index

        def set_device(device: Any) -> None:
            if isinstance(device, int) and device < 0:
                return  # torch's no-op
            self.current = self.index(device, "set_device()")

        def get_device_properties(device: Any = None) -> StandInProperties:
            index = self.index(device, "get_device_properties()")
            props = StandInProperties(index, *self.gpus[index])
            self.say("get_device_properties()", props)
            return props

        def get_device_capability(device: Any = None) -> tuple[int, int]:
            index = self.index(device, "get_device_capability()")
            self.say("get_device_capability()", self.gpus[index])
            return self.gpus[index]

        def get_device_name(device: Any = None) -> str:
            index = self.index(device, "get_device_name()")
            name = StandInProperties(index, *self.gpus[index]).name
            self.say("get_device_name()", name)
            return name

        for fn in (is_available, device_count, current_device, set_device, get_device_properties,
                   get_device_capability, get_device_name):
            fn.__doc__ = f"kiln's GPU shim (see kiln.sandbox): {getattr(cuda, fn.__name__, fn).__doc__ or ''}"
            setattr(cuda, fn.__name__, fn)


class _Loader:
    """``torch.cuda``'s own loader, then the shim's answers; the module keeps its own loader."""

    def __init__(self, inner: Any, shim: _Shim) -> None:
        self.inner = inner
        self.shim = shim

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None:
            spec.loader = self.inner
        module.__loader__ = self.inner
        self.inner.exec_module(module)
        try:
            self.shim.patch(module)
        except Exception as exc:  # noqa: BLE001 - a broken shim must not break the build it serves
            print(f"kiln: GPU shim: could not patch torch.cuda: {exc!r}", file=sys.stderr, flush=True)


class _Finder:
    """First on ``sys.meta_path``: finds ``torch.cuda`` as the other finders do, with `_Loader`."""

    def __init__(self, shim: _Shim) -> None:
        self.shim = shim

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "torch.cuda":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    # a Loader by its methods: importlib.abc would cost each process ~20 ms to import
                    spec.loader = _Loader(spec.loader, self.shim)  # type: ignore[assignment]
                return spec
        return None


_activated = False


def activate() -> None:
    """In a build step (KILN_GPU_SHIM set): torch.cuda answers with the shim's GPUs once imported.
    Called by ``_kiln_gpu_shim.pth`` as the interpreter starts."""
    global _activated
    value = os.environ.get(ENV)
    if value is None or _activated:  # once, even where site-packages is read twice (lib64 -> lib)
        return
    _activated = True
    try:
        shim = _Shim(parse(value))
    except ValueError as exc:
        print(f"kiln: GPU shim: {ENV}={value!r}: {exc}; the shim is off", file=sys.stderr, flush=True)
        return
    sys.meta_path.insert(0, _Finder(shim))
    if "torch.cuda" in sys.modules:
        shim.patch(sys.modules["torch.cuda"])

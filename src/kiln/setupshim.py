"""The setup.py shim: in a build environment, setuptools' PEP 517 backend runs setup.py with
``__builtins__`` bound as ``python setup.py`` binds it, to the ``builtins`` module.

Old setup.py files of numpy-era packages say ``__builtins__.__NUMPY_SETUP__ = False`` (numpy's own
setup.py trick, copied into many). Run as ``python setup.py``, setup.py is ``__main__``, whose
``__builtins__`` is the ``builtins`` module, and the line works. setuptools' backend
(``setuptools.build_meta``, which ``python -m build`` and every PEP 517 frontend call) runs it with
``exec(code, locals())``: a namespace without ``__builtins__``, into which ``exec`` puts the
builtins module's *dict*, and the line fails with ``AttributeError: 'dict' object has no attribute
'__NUMPY_SETUP__'``. The package is not wrong for the way it was written to be built.

With the shim, ``setuptools.build_meta``'s own calls of ``exec`` (and only those: the module gets a
global ``exec`` of its own, which its code finds before the builtin) run code that names
``__builtins__`` (setup.py's text, or a code object that loads that name) in a namespace whose
``__builtins__`` is the ``builtins`` module, as under ``python setup.py``; any other code, and
every namespace that sets ``__builtins__`` itself, is run exactly as before. Nothing of setuptools'
files changes, whatever its version (every ``setuptools.build_meta`` runs setup.py through ``exec``).
When the shim acts it says so, once per process, on stderr, so in the cell's log (``kiln: setup.py
shim: ...``).

Like kiln.gpushim this file runs inside the build environment, so it imports the standard library
alone: `kiln.pthshim.install_into` puts a copy of it into the environment's site-packages as
``_kiln_setup_shim.py`` with ``_kiln_setup_shim.pth``, which makes every Python process there call
`activate` (the cibuildwheel backend does the same in the container's Python, `kiln.pthshim.install_command`);
`activate` puts an import hook first on ``sys.meta_path`` that gives ``setuptools.build_meta`` its
``exec`` once imported. The smoke test's environment has no shim, and the wheel holds none of it.
"""

from __future__ import annotations

import builtins
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # every Python process of a build environment imports this file: nothing more
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import CodeType, ModuleType
    from typing import Any

MODULE = "_kiln_setup_shim"
"""This file's name in a build environment's site-packages."""
PTH = f"{MODULE}.pth"
PTH_LINE = f"import {MODULE}; {MODULE}.activate()\n"
"""The ``.pth`` line that activates the shim in every Python process of the build environment."""
TARGET = "setuptools.build_meta"
"""The module whose calls of ``exec`` the shim serves: setuptools' PEP 517 backend."""
SAID = ("kiln: setup.py shim: {file} uses __builtins__ as the builtins module, as under `python setup.py`; "
        "setuptools.build_meta runs it with a dict there, so kiln gives it the module (see kiln.sandbox)")


# ----------------------------------------------------------------------------- kiln's side


# ----------------------------------------------------------------------------- inside a build step


def names_builtins(source: object) -> bool:
    """Whether code refers to ``__builtins__``: a code object (or one nested in it) that loads the
    name, or a source text that compiles to one (a comment naming it does not count)."""
    if isinstance(source, str | bytes | bytearray):
        if b"__builtins__" not in (source.encode() if isinstance(source, str) else source):
            return False
        try:
            source = compile(source, "<setup.py>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return True  # exec will say what is wrong with it
    if not hasattr(source, "co_names"):
        return False
    code: CodeType = source  # type: ignore[assignment]
    return "__builtins__" in code.co_names or any(names_builtins(c) for c in code.co_consts
                                                  if hasattr(c, "co_names"))


class _Said:
    done = False


def setup_exec(source: Any, namespace: dict[str, Any] | None = None, mapping: Any = None, /,
               **kwargs: Any) -> None:
    """``exec`` as ``setuptools.build_meta`` calls it, with ``__builtins__`` the builtins module
    in a namespace that lacks it, when the code names ``__builtins__``."""
    if namespace is None:  # exec() without a namespace runs in its caller's, not in this function's
        frame = sys._getframe(1)
        namespace, mapping = frame.f_globals, frame.f_locals if mapping is None else mapping
    if isinstance(namespace, dict) and "__builtins__" not in namespace and names_builtins(source):
        namespace["__builtins__"] = builtins
        if not _Said.done:
            _Said.done = True
            print(SAID.format(file=namespace.get("__file__") or "setup.py"), file=sys.stderr, flush=True)
    exec(source, namespace, mapping, **kwargs)


class _Loader:
    """``setuptools.build_meta``'s own loader, then its ``exec``; the module keeps its own loader."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None:
            spec.loader = self.inner
        module.__loader__ = self.inner
        module.exec = setup_exec  # type: ignore[attr-defined]  # found before the builtin by its code
        self.inner.exec_module(module)


class _Finder:
    """First on ``sys.meta_path``: finds ``setuptools.build_meta`` as the other finders do, with `_Loader`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: ModuleSpec | None = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
                return spec
        return None


_activated = False


def activate() -> None:
    """``setuptools.build_meta`` gets the shim's ``exec`` once imported. Called by
    ``_kiln_setup_shim.pth`` as the interpreter starts."""
    global _activated
    if _activated:  # once, even where site-packages is read twice (lib64 -> lib)
        return
    _activated = True
    sys.meta_path.insert(0, _Finder())
    if TARGET in sys.modules:
        sys.modules[TARGET].exec = setup_exec  # type: ignore[attr-defined]

"""How a standalone shim module gets into a build environment: a copy of its own file, and a
``.pth`` file whose one line activates it when the environment's Python starts (site's rule for
lines that begin with ``import``). The shims (kiln.gpushim, kiln.setupshim) import nothing of
kiln's, since kiln is not installed where they run; each names its ``MODULE``, ``PTH`` and
``PTH_LINE``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def install_into(shim: ModuleType, site_packages: Path) -> Path:
    """Put ``shim`` into ``site_packages``: its file as ``<MODULE>.py`` and the ``.pth`` file that
    activates it; returns the ``.pth`` file."""
    source = Path(str(shim.__file__))
    (site_packages / f"{shim.MODULE}.py").write_text(source.read_text())
    pth: Path = site_packages / str(shim.PTH)
    pth.write_text(str(shim.PTH_LINE))
    return pth


def install_command(shim: ModuleType, source: str) -> list[str]:
    """The command that does `install_into` for the ``python`` on PATH (a cibuildwheel
    container's), copying ``shim``'s file from ``source`` (its path as that command sees it)."""
    code = ("import shutil, sysconfig; d = sysconfig.get_paths()['purelib']; "
            f"shutil.copyfile({source!r}, d + '/{shim.MODULE}.py'); "
            f"open(d + '/{shim.PTH}', 'w').write({shim.PTH_LINE!r})")
    return ["python", "-c", code]

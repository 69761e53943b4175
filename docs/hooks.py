"""mkdocs hook: the pages that kiln's own code writes.

Markers in a page's markdown are replaced at build time:

- ``<!-- model-reference kiln.recipe:Recipe -->``: the pydantic model and every model it holds,
  each with its docstring and a table of its YAML keys (type, default, the field's docstring).
  The schema is its own reference: a field without a docstring is a warning, so
  ``mkdocs build --strict`` fails on it.
- ``<!-- error-table -->``: every subclass of ``kiln.errors.KilnError`` (every kiln module is
  imported first, so a class defined outside errors.py shows too), sorted by exit code.
- ``<!-- exit-code NAME -->``: the exit code of the error class NAME, linked to the table.
- ``<!-- include PATH -->``: a file of the repository (PATH relative to mkdocs.yml), inlined.
- ``<!-- benchmarks -->``: each ``benchmarks/*.py``'s module docstring.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import pkgutil
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import annotated_types
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

log = logging.getLogger("mkdocs.hooks.kiln")

_MARKER = re.compile(r"<!--\s*(model-reference|error-table|exit-code|include|benchmarks)\b\s*(.*?)\s*-->")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    root = Path(config.config_file_path).parent

    def replace(m: re.Match[str]) -> str:
        kind, arg = m.group(1), m.group(2)
        where = page.file.src_uri
        if kind == "model-reference":
            module, _, name = arg.partition(":")
            return model_reference(getattr(importlib.import_module(module), name), where)
        if kind == "error-table":
            return error_table()
        if kind == "exit-code":
            return exit_code(arg, where)
        if kind == "include":
            path = root / arg
            if not path.is_file():
                log.warning("%s: <!-- include %s -->: no such file", where, arg)
                return ""
            # a marker indented (inside an admonition, say) indents the whole file as much
            line_start = markdown.rfind("\n", 0, m.start()) + 1
            indent = markdown[line_start:m.start()]
            text = path.read_text().rstrip("\n")
            return text.replace("\n", "\n" + indent) if indent.isspace() else text
        return benchmarks(root / "benchmarks")

    return _MARKER.sub(replace, markdown)


# --- models ---------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """``text`` as one table cell: paragraphs joined, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _type(annotation: Any) -> str:
    """A field's type as a reader of the YAML sees it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin is list:
        return f"list[{_type(args[0])}]"
    if origin is dict:
        return f"dict[{_type(args[0])}, {_type(args[1])}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {annotated_types.Gt: ("gt", ">"), annotated_types.Ge: ("ge", "≥"),
           annotated_types.Lt: ("lt", "<"), annotated_types.Le: ("le", "≤"),
           annotated_types.MinLen: ("min_length", "length ≥")}


def _bounds(field: FieldInfo) -> str:
    out = []
    for meta in field.metadata:
        for cls, (attr, sign) in _BOUNDS.items():
            if isinstance(meta, cls):
                out.append(f"{sign} {getattr(meta, attr)}")
    return f" ({', '.join(out)})" if out else ""


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return f"see [{type(value).__name__}](#{type(value).__name__.lower()})"
    if value == "":
        return "(empty)"
    try:
        return f"`{json.dumps(value)}`"
    except TypeError:
        return f"`{value}`"


def model_reference(top: type[BaseModel], where: str) -> str:
    """``top`` and every model reachable from its fields, breadth first."""
    order: list[type[BaseModel]] = [top]
    keys: dict[type[BaseModel], str] = {top: ""}
    out: list[str] = []
    for model in order:
        key = keys[model]
        out.append(f"### {model.__name__}\n")
        if key:
            out.append(f"The value of `{key}`.\n")
        out.append(f"{(model.__doc__ or '').strip()}\n")
        out.append("| key | type | default | what |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            doc = field.description
            for nested in _models_in(field.annotation):
                if nested not in keys:
                    keys[nested] = _nested_key(key, name, field.annotation, nested)
                    order.append(nested)
                if not doc:
                    doc = nested.__doc__
            if not doc:
                log.warning("%s: %s.%s has no docstring (write one under the field)", where, model.__name__, name)
            out.append(f"| `{name}` | {_type(field.annotation)}{_bounds(field)} | {_default(field)} "
                       f"| {_cell(doc or '')} |")
        out.append("")
    return "\n".join(out)


def _nested_key(parent: str, name: str, annotation: Any, nested: type[BaseModel]) -> str:
    """Where ``nested`` sits in the YAML: `build`, `source`, `torch.<key>`, `run_exports.<key>`."""
    key = f"{parent}.{name}" if parent else name
    stack = [annotation]
    while stack:
        a = stack.pop()
        if typing.get_origin(a) is dict and nested in _models_in(typing.get_args(a)[1]):
            return f"{key}.<key>"
        if typing.get_origin(a) is list and nested in _models_in(typing.get_args(a)[0]):
            return f"{key}[]"
        stack.extend(typing.get_args(a))
    return key


# --- errors ---------------------------------------------------------------------------------


def _error_classes() -> list[type]:
    import kiln
    import kiln.errors

    for mod in pkgutil.walk_packages(kiln.__path__, "kiln."):
        if mod.name.rpartition(".")[2] == "__main__":  # runs a program when imported
            continue
        try:
            with warnings.catch_warnings():  # devpi-server's dependencies warn on import; not kiln's concern here
                warnings.simplefilter("ignore", DeprecationWarning)
                importlib.import_module(mod.name)
        except Exception as exc:  # noqa: BLE001 - a module that cannot load is reported, not fatal to the rest
            log.warning("error table: cannot import %s: %s", mod.name, exc)
    seen: list[type] = []
    stack: list[type] = [kiln.errors.KilnError]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return [c for c in seen if c.__module__.startswith("kiln.")]


def _first_paragraph(doc: str | None) -> str:
    return _cell((doc or "").strip().split("\n\n")[0])


def error_table() -> str:
    rows = sorted(_error_classes(), key=lambda c: (c.exit_code, len(c.__mro__), c.__name__))
    out = ["| exit code | error | defined in | what |", "|---|---|---|---|"]
    for cls in rows:
        base = cls.__mro__[1].__name__
        parent = "" if base == "Exception" else f" (a {base})"
        what = _first_paragraph(cls.__doc__)
        out.append(f"| {cls.exit_code} | `{cls.__name__}`{parent} | `{cls.__module__}` | {what} |")
    return "\n".join(out) + "\n"


def exit_code(name: str, where: str) -> str:
    for cls in _error_classes():
        if cls.__name__ == name:
            return f"[{cls.exit_code}](errors.md)"
    log.warning("%s: <!-- exit-code %s -->: no such KilnError subclass", where, name)
    return "?"


# --- benchmarks -----------------------------------------------------------------------------


def benchmarks(folder: Path) -> str:
    out = []
    for path in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc:
            log.warning("benchmarks: %s has no module docstring", path.name)
            continue
        out.append(f"## `{path.name}`\n\n{doc}\n")
    return "\n".join(out)

"""Load YAML keeping each node's line, so validation errors can name file:line.

One pass: the text is composed once into a node tree (kept for line numbers) and the data is
constructed from that tree. The loader refuses, as one-line ``file:line: ...`` ConfigErrors,
what would otherwise end in a traceback, a hang or a silent surprise: files over ``MAX_BYTES``,
bytes that are not UTF-8, characters YAML forbids (NUL and other controls), a key given twice in
one mapping, nesting deeper than ``MAX_DEPTH``, more than ``MAX_NODES`` values (aliases expanded),
aliases that refer to themselves, numbers that are not finite or do not fit in 64 bits, and
scalars that a tag claims but that do not read as one (``!!int abc``, ``2001-13-45``).

Lines are counted as an editor does: after each ``\\n``. YAML also breaks lines at ``\\r``,
U+0085, U+2028 and U+2029; those do not move the line a message names.
"""

from __future__ import annotations

import bisect
import math
import re
import reprlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from kiln.errors import ConfigError

MAX_DEPTH = 32
"""Deepest nesting of collections accepted (aliases count as the nesting they stand for)."""
MAX_NODES = 10_000
"""Most values a document may hold once its aliases are expanded (a recipe holds about 50)."""
MAX_BYTES = 1 << 20
"""Largest file read (a recipe is about 1 KiB; the toolchain table about 4 KiB)."""
INT_RANGE = range(-(2**63), 2**63)
"""Integers a recipe may hold: 64-bit signed."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ErrorAt(ValueError):
    """A validator's error about one part of the value it checks (a list item's index, a mapping's
    key), so the message names that part's line rather than the field's."""

    def __init__(self, loc: tuple[str | int, ...] | str | int, message: str) -> None:
        super().__init__(message)
        self.loc: tuple[str | int, ...] = loc if isinstance(loc, tuple) else (loc,)


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that kiln refuses (duplicate key, too deep, too large, unreadable scalar)."""


_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxtuple = 4
_repr.maxlevel = 2


def short(value: object) -> str:
    """``repr(value)``, cut short for messages."""
    return _repr.repr(value)


def one_line(text: str) -> str:
    """``text`` with line breaks and other non-printable characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Lines:
    """Character offset -> 1-based line, counted as an editor counts them."""

    def __init__(self, text: str) -> None:
        self.breaks = [m.start() for m in re.finditer("\n", text)]
        self.last = max(1, len(self.breaks) + (0 if not text or text.endswith("\n") else 1))

    def at(self, index: int) -> int:
        """The line of the character at ``index``; the end of the text is on the last line."""
        return min(bisect.bisect_left(self.breaks, index) + 1, self.last)


class _Loader(yaml.SafeLoader):
    """SafeLoader, bounded: see the module docstring for what it refuses."""

    def __init__(self, text: str, lines: Lines) -> None:
        super().__init__(text)
        self.lines = lines  # (Reader's self.line is its own: the line it reads)
        self.depth = 0  # collections open around the node being composed
        self.expanded = 0  # values composed so far, aliases counted as what they stand for
        self.aliased = False  # whether an alias was expanded so far
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once composed
        self.keys: dict[int, object] = {}  # id(key node) -> the key it constructs to

    def _line_of(self, node: Node) -> int:
        return self.lines.at(node.start_mark.index)

    def _grow(self, values: int, mark: yaml.Mark) -> None:
        self.expanded += values
        if self.expanded > MAX_NODES:
            how = "once aliases are expanded" if self.aliased else "in one file"
            raise _Refused(None, None, f"more than {MAX_NODES} values {how}", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self.sizes:
                    raise _Refused(None, None, f"alias *{event.anchor} refers to a node that contains it",
                                   event.start_mark)
                values, depth = self.sizes[id(target)]
                if self.depth + depth > MAX_DEPTH:
                    raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels (through alias "
                                   f"*{event.anchor})", event.start_mark)
                self.aliased = True
                self._grow(values, event.start_mark)
            return super().compose_node(parent, index)  # an undefined alias is YAML's own error
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        assert node is not None
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        self.sizes[id(node)] = (1 + sum(self.sizes[id(c)][0] for c in children),
                                1 + max((self.sizes[id(c)][1] for c in children), default=0))
        self._grow(1, node.start_mark)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        by_text: dict[str, Node] = {}
        by_value: dict[Hashable, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                kind = "sequence" if isinstance(key_node, SequenceNode) else "mapping"
                raise _Refused(None, None, f"a key must be a plain value, not a {kind}", key_node.start_mark)
            key = "<<" if key_node.tag == _MERGE_TAG else self.construct_object(key_node)
            self.keys[id(key_node)] = key
            first = by_text.get(str(key))
            if first is None and isinstance(key, Hashable):
                first = by_value.get(key)
            if first is not None:
                raise _Refused(None, None, f"duplicate key {short(key)} (first on line {self._line_of(first)})",
                               key_node.start_mark)
            by_text[str(key)] = key_node
            if isinstance(key, Hashable):
                by_value[key] = key_node
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            what = short(node.value) if isinstance(node, ScalarNode) else "this collection"
            raise _Refused(None, None, f"cannot read {what} as a YAML {kind}", node.start_mark) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            value = super().construct_yaml_int(node)
        except ValueError:
            if not re.fullmatch(r"[-+]?[0-9_]+", node.value):
                raise
            value = INT_RANGE.stop  # more digits than Python reads: out of range
        if value not in INT_RANGE:
            raise _Refused(None, None, f"number out of range: {short(node.value)} (quote it if it is text)",
                           node.start_mark)
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _Refused(None, None, f"not a finite number: {short(node.value)} (quote it if it is text)",
                           node.start_mark)
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file: its bytes, its data and its node tree (for line numbers)."""

    path: Path
    data: Any
    root: Node | None
    raw: bytes = b""
    lines: Lines = field(default_factory=lambda: Lines(""), repr=False, compare=False)
    keys: dict[int, object] = field(default_factory=dict, repr=False, compare=False)
    """id(key node) -> the key it constructs to (``2.14`` and ``"2.14"`` both name ``2.14``)."""

    def _line(self, node: Node) -> int:
        return self.lines.at(node.start_mark.index)

    def _is(self, key_node: Node, key: str | int) -> bool:
        value = self.keys.get(id(key_node), key_node.value)
        return value == key or str(value) == str(key)

    def locate(self, loc: Sequence[str | int]) -> tuple[int, tuple[str | int, ...]]:
        """The 1-based line of the deepest node along ``loc`` that exists, and ``loc`` less the
        parts that name no node: pydantic's union members (``url-source``) and ``[key]``."""
        node = self.root
        line = self._line(node) if node is not None else 1
        kept: list[str | int] = []
        for i, key in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(node, MappingNode):
                # the last pair with the key wins, as in the data (merged pairs come first)
                found = next(((k, v) for k, v in reversed(node.value) if self._is(k, key)), None)
                if found is not None:
                    line, node = self._line(found[0]), found[1]
                    kept.append(key)
                elif last and key != "[key]":
                    kept.append(key)  # a missing key: named, on its mapping's line
            elif isinstance(node, SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                node = node.value[key]
                line = self._line(node)
                kept.append(key)
        return line, tuple(kept)

    def line_of(self, loc: Sequence[str | int]) -> int:
        """1-based line of the deepest node along ``loc`` that exists."""
        return self.locate(loc)[0]

    def error(self, loc: Sequence[str | int], message: str) -> ConfigError:
        line, kept = self.locate(loc)
        where = ".".join(str(p) for p in kept)
        return ConfigError(f"{self.path}:{line}: " + one_line(f"{where + ': ' if where else ''}{message}"))


def load_yaml(path: Path) -> YamlDoc:
    """Parse ``path``; whatever it holds, a refusal is a one-line ConfigError naming file:line."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}:1: larger than {MAX_BYTES >> 20} MiB; not a recipe or toolchain table")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8: byte 0x{raw[exc.start]:02x} at column {column}; "
                          "save the file as UTF-8") from None
    lines = Lines(text)
    try:
        loader = _Loader(text, lines)  # checks every character is one YAML allows
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except ReaderError as exc:
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else short(exc.character)
        raise ConfigError(f"{path}:{lines.at(exc.position)}: invalid YAML: control character {char} "
                          "is not allowed") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = lines.at(mark.index) if mark is not None else 1
        problem = exc.problem or exc.context or "unreadable"
        if exc.context and problem.startswith("but "):  # "expected a single document ..., but found another"
            problem = f"{exc.context}, {problem}"
        prefix = "" if isinstance(exc, _Refused) else "invalid YAML: "
        raise ConfigError(f"{path}:{line}: {prefix}{one_line(problem)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}:1: invalid YAML: {one_line(str(exc))}") from None
    return YamlDoc(path=path, data=data, root=root, raw=raw, lines=lines, keys=loader.keys)


def pydantic_error(doc: YamlDoc, exc: Any) -> ConfigError:
    """The first pydantic validation error as a one-line ConfigError naming its line."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, ErrorAt):
        loc += cause.loc
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {short(loc[-1])}"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
        msg = f"{msg} (got {short(err['input'])})"
    msg = msg.removeprefix("Value error, ")
    return doc.error(loc, msg)


def round_trip(text: str, where: Path) -> tuple[Any, Any]:
    """(the ruamel.yaml ``YAML`` that writes ``text`` back byte for byte, the data it loaded):
    comments, key order, flow or block style and quoting kept (``preserve_quotes``). Of the
    indentations ruamel writes, the one that writes the file back unchanged is used; when none
    does, the file is refused (ConfigError) rather than reformatted."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    for mapping, offset in ((2, 0), (2, 2), (2, 4), (4, 0), (4, 2), (4, 4)):
        sequence = offset + 2
        yml = YAML(typ="rt")
        yml.preserve_quotes = True
        yml.width = 1 << 16
        yml.indent(mapping=mapping, sequence=max(sequence, mapping), offset=offset)
        try:
            data = yml.load(text)
        except YAMLError as exc:
            raise ConfigError(f"{where}: invalid YAML: {one_line(str(exc))}") from None
        if dump_round_trip(yml, data) == text:
            return yml, data
    raise ConfigError(f"{where}: cannot edit it without reformatting it (an indentation ruamel.yaml "
                      "does not write back); edit it by hand")


def dump_round_trip(yml: Any, data: object) -> str:
    """``data`` as ``yml`` (a round-trip ``YAML``) writes it."""
    import io

    buf = io.StringIO()
    yml.dump(data, buf)
    return buf.getvalue()


def append_to_list(text: str, key: str, values: list[str], where: Path) -> str:
    """``text`` (a YAML mapping) with ``values`` appended to its top-level list ``key``, edited as a
    person would (kiln.yamlsrc.round_trip): every comment, key order, flow or block style and
    quoting kept (new items are quoted as the list's last item is, double quotes when it is bare)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, PlainScalarString, ScalarString
    from ruamel.yaml.tokens import CommentToken

    yml, data = round_trip(text, where)
    seq = data.get(key) if isinstance(data, CommentedMap) else None
    if not isinstance(seq, CommentedSeq):
        raise ConfigError(f"{where}: expected a list at {key!r}")
    last = seq[-1] if seq else None
    kind = type(last) if isinstance(last, ScalarString) else DoubleQuotedScalarString
    seq.extend(kind(v) for v in values)
    if seq.fa.flow_style():  # a comment after `[...]` keeps its distance, as an editor moves it
        grown = sum(len(", ") + len(v) + (0 if kind is PlainScalarString else 2) for v in values)
        grown -= 0 if last is not None else len(", ")
        tokens = {id(t): t for t in (*(data.ca.items.get(key) or [])[2:3], *(seq.ca.comment or [])[:1])
                  if isinstance(t, CommentToken)}
        for token in tokens.values():
            token.column += grown
    return dump_round_trip(yml, data)

"""YAML documents that remember where each value came from.

A problem found in a definition is reported with its file, its line and its JSON
pointer; this module maps a pointer back to the line of the YAML node it names. The
document is parsed once, into both its values and its node tree. A document whose
values come from ``devflow.memo`` keeps its text instead, and is parsed for its lines
only when a problem must be placed. PyYAML is imported when a document is parsed, not
with this module: a read command whose definitions are remembered never loads it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from jsonpointer import JsonPointer

from devflow import jsontext
from devflow.errors import Code, DevflowError

if TYPE_CHECKING:
    import yaml


@dataclass(frozen=True, slots=True)
class Source:
    """A parsed YAML document and the node tree its locations come from (or its text,
    parsed again for them when needed)."""

    path: Path | None
    data: Any
    root: yaml.Node | None
    text: str | None = None

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """1-based line of the deepest node along ``path`` that exists."""
        node = self.root
        if node is None and self.text is not None:
            node = _parse(self.text)[0]
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            node, line = child, child.start_mark.line + 1
        return line

    def where(self, path: Sequence[str | int]) -> str:
        name = str(self.path) if self.path else "<definition>"
        line = self.line_of(path)
        return f"{name}:{line}" if line else name


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    import yaml  # noqa: PLC0415 - see the module doc
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value  # type: ignore[no-any-return]  # PyYAML's nodes are untyped
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]  # as above
    return None


def read(path: Path) -> str:
    """A definition file's text (UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DevflowError(Code.FILE_NOT_FOUND, f"{path}: no such file",
                           hint="check the path") from None
    except UnicodeDecodeError as exc:
        raise DevflowError(Code.YAML_INVALID, f"{path}: not UTF-8 text: byte "
                           f"{exc.object[exc.start]:#04x} at offset {exc.start} ({exc.reason})",
                           hint="definitions are UTF-8 YAML files", file=str(path)) from None
    except OSError as exc:
        raise DevflowError(Code.YAML_INVALID, f"{path}: cannot be read: {exc.strerror}",
                           hint="definitions are UTF-8 YAML files", file=str(path)) from exc


def load_yaml(path: Path) -> Source:
    return parse_yaml(read(path), path)


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree and its values, from one parse, refusing what definitions
    do not allow (``parse_yaml``)."""
    loader = _loader_class()(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def parse_yaml(text: str, path: Path | None = None) -> Source:
    """The document in ``text``, its nodes kept for locations.

    Refused, with the line: anchors and aliases (``&a`` / ``*a``, merge keys too), before
    anything expands them, so a "billion laughs" of a few hundred bytes costs nothing;
    nesting deeper than ``MAX_DEPTH``; and values that are not JSON (dates, binary, sets,
    keys that are not strings, NaN, strings no database can keep): a definition is hashed
    and stored as JSON.
    """
    import yaml  # noqa: PLC0415 - see the module doc
    name = str(path) if path else "<definition>"
    try:
        root, data = _parse(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise DevflowError(
            Code.YAML_INVALID, f"{where}: not valid YAML: {exc.problem or exc}",
            hint=_hint(exc), file=name, line=mark.line + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise DevflowError(Code.YAML_INVALID, f"{name}: not valid YAML: {exc}",
                           hint="fix the YAML syntax", file=name) from exc
    except Exception as exc:  # what PyYAML's constructors raise on a hostile tag, outside a node
        raise DevflowError(Code.YAML_INVALID, f"{name}: a value cannot be read: "
                           f"{type(exc).__name__}: {exc}", hint="remove the explicit tag "
                           "(!!...) or quote the value", file=name) from exc
    source = Source(path=path, data=data, root=root)
    if (found := _not_json(data)) is not None:
        at, why = found
        raise DevflowError(Code.YAML_INVALID, f"{source.where(at)}: at {_pointer(at)}: {why}",
                           hint="a definition holds JSON values only: strings, numbers, "
                                "booleans, null, lists and mappings with string keys; quote "
                                "a value that YAML reads as something else",
                           file=name, line=source.line_of(at))
    return source


#: nesting a definition may have, as for JSON (see devflow.jsontext for why)
MAX_DEPTH: Final = jsontext.MAX_DEPTH


@functools.cache
def _loader_class() -> Any:
    """PyYAML's safe loader, refusing anchors, aliases and deep nesting while it composes
    (built at the first parse: PyYAML is imported then)."""
    import yaml  # noqa: PLC0415 - see the module doc

    class Loader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped
            anchor = getattr(event, "anchor", None)  # aliases, and nodes that define one
            if anchor is not None:
                kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
                raise Refused(f"YAML {kind}{anchor} found: anchors and aliases are not "
                              "allowed in definitions", _mark(event),
                              "write the value out where the alias was; definitions are small")
            if isinstance(event, yaml.CollectionStartEvent):
                self._depth += 1
                if self._depth > MAX_DEPTH:
                    raise Refused(f"nested more than {MAX_DEPTH} levels deep", _mark(event),
                                  f"definitions nest at most {MAX_DEPTH} levels")
            try:
                return super().compose_node(parent, index)
            finally:
                if isinstance(event, yaml.CollectionStartEvent):
                    self._depth -= 1

        def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except yaml.YAMLError:
                raise
            except Exception as exc:  # PyYAML's constructors raise anything on a
                # hostile explicit tag (!!bool 12: KeyError, !!timestamp x: AttributeError)
                raise yaml.constructor.ConstructorError(
                    None, None, f"cannot read this value ({type(exc).__name__}: {exc})",
                    node.start_mark) from exc

    class Refused(yaml.MarkedYAMLError):
        """A YAML feature definitions do not allow, at its place, with what to do instead."""

        def __init__(self, problem: str, mark: yaml.error.Mark | None, hint: str) -> None:
            super().__init__(None, None, problem, mark)
            self.hint = hint

    return Loader


def _mark(event: yaml.Event) -> yaml.error.Mark | None:
    import yaml  # noqa: PLC0415 - see the module doc
    mark = event.start_mark
    return mark if isinstance(mark, yaml.error.Mark) else None


def _hint(exc: yaml.MarkedYAMLError) -> str:
    hint = getattr(exc, "hint", None)
    if isinstance(hint, str):
        return hint
    return "fix the YAML syntax at that line (indentation, quoting, a missing colon)"


def _pointer(path: Sequence[str | int]) -> str:
    return JsonPointer.from_parts(path).path or "/"


_JSON_SCALARS: Final = (str, int, float, bool, type(None))


def _not_json(data: Any) -> tuple[tuple[str | int, ...], str] | None:
    """A place in ``data`` that is not a JSON value, and why (walked without recursion)."""
    pending: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while pending:
        at, value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return at, f"the key {key!r} is not a string (quote it)"
                pending.append(((*at, key), item))
        elif isinstance(value, list):
            pending.extend(((*at, i), item) for i, item in enumerate(value))
        elif not isinstance(value, _JSON_SCALARS):
            return at, f"{type(value).__name__} values are not JSON (quote it to make a string)"
        elif isinstance(value, float) and not math.isfinite(value):
            return at, f"{value} is not a JSON number"
        elif isinstance(value, str) and (why := jsontext.unstorable(value)):
            return at, f"the string {why}"
    return None

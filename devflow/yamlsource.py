"""YAML documents that remember where each value came from.

A problem found in a definition is reported with its file, its line and its JSON
pointer; this module maps a pointer back to the line of the YAML node it names. The
document is parsed once (with libyaml when PyYAML has it), into both its values and its
node tree. A document whose values come from ``devflow.memo`` keeps its text instead,
and is parsed for its lines only when a problem must be placed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    except (OSError, UnicodeDecodeError) as exc:
        raise DevflowError(Code.YAML_INVALID, f"{path}: cannot be read: {exc}",
                           hint="definitions are UTF-8 YAML files") from exc


def load_yaml(path: Path) -> Source:
    return parse_yaml(read(path), path)


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree and its values, from one parse (libyaml when there)."""
    import yaml  # noqa: PLC0415 - see the module doc
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def parse_yaml(text: str, path: Path | None = None) -> Source:
    import yaml  # noqa: PLC0415 - see the module doc
    name = str(path) if path else "<definition>"
    try:
        root, data = _parse(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise DevflowError(
            Code.YAML_INVALID, f"{where}: not valid YAML: {exc.problem or exc}",
            hint="fix the YAML syntax at that line (indentation, quoting, a missing colon)",
            file=name, line=mark.line + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise DevflowError(Code.YAML_INVALID, f"{name}: not valid YAML: {exc}",
                           hint="fix the YAML syntax", file=name) from exc
    return Source(path=path, data=data, root=root)

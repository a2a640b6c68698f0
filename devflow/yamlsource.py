"""YAML documents that remember where each value came from.

A problem found in a definition is reported with its file, its line and its JSON
pointer; this module maps a pointer back to the line of the YAML node it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devflow.errors import Code, DevflowError


@dataclass(frozen=True, slots=True)
class Source:
    """A parsed YAML document and the node tree its locations come from."""

    path: Path | None
    data: Any
    root: yaml.Node | None

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """1-based line of the deepest node along ``path`` that exists."""
        node = self.root
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
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value  # type: ignore[no-any-return]  # PyYAML's nodes are untyped
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]  # as above
    return None


def load_yaml(path: Path) -> Source:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DevflowError(Code.FILE_NOT_FOUND, f"{path}: no such file",
                           hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DevflowError(Code.YAML_INVALID, f"{path}: cannot be read: {exc}",
                           hint="definitions are UTF-8 YAML files") from exc
    return parse_yaml(text, path)


def parse_yaml(text: str, path: Path | None = None) -> Source:
    name = str(path) if path else "<definition>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
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

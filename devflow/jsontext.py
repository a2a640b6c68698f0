"""JSON that devflow reads from people and agents: checked before and after it is parsed.

Artifacts, schema files, ``--sections-file``, ``schemas check FILE`` and the lines of an
agent's stream output are read with ``loads``, which refuses, as ``BadJSON`` with a
message a person understands:

- bytes that are not UTF-8 (naming the byte offset);
- nesting deeper than ``MAX_DEPTH`` arrays and objects, found by a scan of the bytes
  *before* ``json.loads`` runs: the parser, jsonschema, the report and the hashes all
  walk a value recursively, and 3,000 levels (6 KB) would exhaust Python's stack in
  any of them;
- ``NaN`` and ``Infinity``, and numbers Python cannot hold (a float that overflows, an
  integer of more than 4,300 digits): they are not JSON, and a report or a database
  column that received one would not be JSON either;
- strings holding ``\\u0000`` or an unpaired surrogate (``\\ud800``): PostgreSQL cannot
  store the first, and no UTF-8 file or column can hold the second.

Why 64 levels: every layer that walks a JSON value recursively takes at most about five
Python frames per level (measured: jsonschema checking an instance against a recursive
schema takes four, checking a schema against the meta-schema five), so 64 levels stay
near 320 frames, well inside Python's default limit of 1,000 whatever the caller's own
stack; 128 would come within reach of it. Nothing devflow ships comes close: its sample
artifacts are at most four levels deep, its schema files at most ten.
"""

from __future__ import annotations

import array
import itertools
import json
import math
import re
import sys
from typing import Any, Final

MAX_DEPTH: Final = 64
#: a JSON string, escapes included; one never closed runs to the end of the bytes (so no
#: quote is tried twice: the scan stays linear), as it ends what ``json.loads`` reads
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
#: brackets as steps of depth, read as signed bytes: +1 opens, -1 (0xff) closes
_STEP: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_TOKEN: Final = re.compile(_STRING.pattern + rb"|[\[\]{}]", re.DOTALL)
#: an escape that may decode to a character no store can keep: \u0000 or a surrogate
_RISKY_ESCAPE: Final = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


class BadJSON(ValueError):
    """Why the bytes are not JSON devflow accepts; ``str()`` is the message for a person,
    ``line`` and ``column`` (1-based) the place when the parser named one."""

    def __init__(self, message: str, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.line, self.column = line, column


def loads(data: bytes | str) -> Any:
    """The JSON value of ``data``, or ``BadJSON`` saying what is wrong and where."""
    if isinstance(data, str):
        text, data = data, data.encode("utf-8", "surrogatepass")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJSON(f"not UTF-8 text: byte {data[exc.start]:#04x} at offset "
                          f"{exc.start} ({exc.reason})") from None
    if (offset := too_deep(data)) is not None:
        raise BadJSON(f"nested more than {MAX_DEPTH} arrays or objects deep (level "
                      f"{MAX_DEPTH + 1} opens at byte {offset}); devflow reads JSON up to "
                      f"{MAX_DEPTH} levels deep") from None
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float,
                           parse_int=_int)
    except json.JSONDecodeError as exc:
        raise BadJSON(f"not valid JSON at line {exc.lineno} column {exc.colno}: "
                      f"{exc.msg}", exc.lineno, exc.colno) from None
    except ValueError as exc:  # from the number and constant parsers below
        raise BadJSON(f"not valid JSON: {exc}") from None
    if _RISKY_ESCAPE.search(data):
        _check_strings(value)
    return value


def too_deep(data: bytes) -> int | None:
    """The byte offset where nesting passes ``MAX_DEPTH``, or None when it never does.

    Brackets inside strings do not count. Nothing here recurses or runs Python code per
    byte: the strings go in one linear substitution, the rest is summed in C.
    """
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return None  # cannot be deeper than its number of brackets
    outside = _STRING.sub(b"", data)
    steps = array.array("b", outside.translate(_STEP, _NOT_BRACKETS))
    if max(itertools.accumulate(steps), default=0) <= MAX_DEPTH:
        return None
    return _offset_too_deep(data)


def _offset_too_deep(data: bytes) -> int:
    """Where the first bracket too deep is (only for the message: a walk token by token)."""
    depth = 0
    for match in _TOKEN.finditer(data):
        token = match[0]
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in (b"]", b"}"):
            depth -= 1
    return len(data)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _int(text: str) -> int:
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        raise ValueError(f"an integer has more than {limit} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _check_strings(value: Any) -> None:
    """Refuse strings no UTF-8 file or PostgreSQL column can keep (iteratively)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and (why := unstorable(item)):
            raise BadJSON(f"not JSON devflow accepts: a string {why}")


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 text (a NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return f"holds a NUL character (\\u0000) at character {text.index(chr(0))}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds an unpaired surrogate (\\u{ord(text[exc.start]):04x}) at character "
                f"{exc.start}")
    return None

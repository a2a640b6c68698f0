"""A persona's ``options``, checked against the JSON Schema its backend declares.

Each backend declares its options next to itself (``options_schema``: Draft 2020-12, an
object schema with ``additionalProperties: false``), and keeps in code only what a
schema cannot say (an argv's placeholders, a duration). ``problems`` turns what the
validator finds into ``definitions.Problem``s at the option's place, so a persona's
file names the line; an option name that is not declared is refused, with the
declared name it is closest to.

Shipped backends' schemas are source files of devflow: a change to one changes the
code stamp under which a persona's check is remembered (``devflow.memo``), so a
remembered pass never outlives the schema it passed.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping
from typing import Any, Final

from devflow.definitions import Problem
from devflow.errors import Code

#: a duration (``90s``, ``20m``, ``1h30m``) or a number of seconds; parsed by
#: ``command.check_timeout``
DURATION: Final[Mapping[str, Any]] = {
    "type": ["string", "number"],
    "description": "a duration (90s, 20m, 1h) that wins over the phase's timeout"}
ARGV: Final[Mapping[str, Any]] = {
    "type": "array", "items": {"type": "string"},
    "description": "a list of arguments (never a shell string); placeholders such as "
                   "{prompt_file} are whole arguments"}
STRINGS: Final[Mapping[str, Any]] = {"type": "array", "items": {"type": "string"}}
COUNT: Final[Mapping[str, Any]] = {"type": "integer", "minimum": 0}
PRICES: Final[Mapping[str, Any]] = {
    "type": "object", "minProperties": 1, "additionalProperties": False,
    "properties": {name: {"type": "number", "minimum": 0}
                   for name in ("input", "output", "cached_input")},
    "description": "USD per million tokens: input, output (and cached_input)"}


def schema(properties: Mapping[str, Mapping[str, Any]], *,
           required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An options schema: an object of these properties, and no others."""
    body: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                            "type": "object", "additionalProperties": False,
                            "properties": {k: dict(v) for k, v in properties.items()}}
    if required:
        body["required"] = list(required)
    return body


def problems(options_schema: Mapping[str, Any], options: Any) -> list[Problem]:
    """What is wrong with ``options`` against ``options_schema``; each problem's path
    is the place in the persona (``options`` first)."""
    validator = _validator(json.dumps(options_schema, sort_keys=True))
    if isinstance(options, Mapping):
        options = dict(options)  # a loaded persona's are read-only (a mappingproxy)
    found = []
    for error in sorted(validator.iter_errors(options), key=lambda e: list(e.absolute_path)):
        at = ("options", *error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            declared = sorted(error.schema.get("properties", {}))
            found += [Problem(Code.BACKEND_OPTION_INVALID, (*at, name),
                              _unknown(str(name), declared, at))
                      for name in error.instance if name not in declared]
        elif error.validator == "pattern" and "description" in error.schema:
            found.append(Problem(Code.BACKEND_OPTION_INVALID, at,
                                 f"{error.instance!r}: write {error.schema['description']}"))
        else:
            found.append(Problem(Code.BACKEND_OPTION_INVALID, at, error.message))
    return found


def _unknown(name: str, declared: list[str], at: tuple[str | int, ...]) -> str:
    where = "" if len(at) == 1 else f" in {'.'.join(str(p) for p in at[1:])}"
    close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
    return (f"unknown option {name!r}{where}"
            + (f": did you mean {close[0]!r}?" if close else "")
            + f" (known: {', '.join(declared) or 'none'})")


@functools.cache
def _validator(text: str) -> Any:
    import jsonschema  # noqa: PLC0415 - only when a persona is checked (not remembered)
    body = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(body)
    return jsonschema.Draft202012Validator(body)

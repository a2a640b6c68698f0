"""Artifacts the scripted agent writes: realistic samples for the built-in schemas, a minimal
valid instance built from any other schema, and an instance a schema refuses."""

from __future__ import annotations

import copy
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Final

from devflow.schemas import SchemaRegistry

_SAMPLES: Final = Path(__file__).resolve().parent / "samples"
_BY_SCHEMA: Final = {"dev/spec@1": "spec.json", "dev/phase-plan@1": "phase-plan.json",
                     "dev/implementation@1": "implementation.json", "dev/review@1": "review.json"}


@cache
def _sample(name: str) -> Any:
    return json.loads((_SAMPLES / name).read_text(encoding="utf-8"))


def valid(schema_id: str, schemas: SchemaRegistry) -> Any:
    """A document that validates against ``schema_id``."""
    if schema_id in _BY_SCHEMA:
        return copy.deepcopy(_sample(_BY_SCHEMA[schema_id]))
    return _minimal(schemas.get(schema_id).contents, schemas, schemas.get(schema_id).contents, 0)


@lru_cache(maxsize=64)
def valid_text(schema_id: str, schemas: SchemaRegistry) -> str:
    """``valid(schema_id)`` as the indented JSON file an agent writes (made once)."""
    return json.dumps(valid(schema_id, schemas), indent=2) + "\n"


def invalid(schema_id: str, schemas: SchemaRegistry) -> Any:
    """A document ``schema_id`` refuses (for the scripted ``invalid`` scenarios)."""
    candidates: tuple[Any, ...] = ({"devflow_scripted": "invalid"}, [], "not an artifact", 0, None)
    for candidate in candidates:
        if schemas.validate(schema_id, candidate):
            return candidate
    return {"devflow_scripted": "invalid"}


def phase_plan(count: int, role: str, prefix: str) -> dict[str, Any]:
    return {
        "summary": f"{count} follow-up phase(s) planned by the scripted planner.",
        "phases": [{
            "key": f"{prefix}-step-{i}", "title": f"Follow-up step {i}", "role": role,
            "instructions": f"Follow-up step {i} of the plan made in phase {prefix}.",
            "artifact": {"path": f".devflow/{prefix}-step-{i}.json",
                         "schema": "dev/implementation@1"},
        } for i in range(1, count + 1)],
    }


def _minimal(schema: Any, schemas: SchemaRegistry, root: Any,  # noqa: PLR0911, PLR0912
             depth: int) -> Any:
    if depth > 12 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return _minimal(target, schemas, root, depth + 1)
        other = schemas.get(ref.split("#")[0]).contents
        return _minimal(other, schemas, other, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("oneOf", "anyOf", "allOf"):
        if schema.get(key):
            return _minimal(schema[key][0], schemas, root, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _minimal(props.get(name, {}), schemas, root, depth + 1)
                for name in schema.get("required", [])}
    if kind == "array":
        return [_minimal(schema.get("items", {}), schemas, root, depth + 1)
                for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2026-01-01T00:00:00Z"
        if fmt in ("uri", "uri-reference"):
            return "https://example.com/"
        return "x" * max(schema.get("minLength", 1), 1)
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None

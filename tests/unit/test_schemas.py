"""The schema registry: ids, $ref across files, formats, broken files, one validator per schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devflow.backends import samples
from devflow.catalog import Catalog, Dirs
from devflow.errors import Code, DevflowError
from devflow.schemas import Issue, SchemaRegistry, pointer

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _write(directory: Path, name: str, body: dict[str, Any] | str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else json.dumps(body), encoding="utf-8")
    return path


@pytest.fixture
def user_schemas(tmp_path: Path) -> Path:
    directory = tmp_path / "schemas"
    _write(directory, "acme/item.v1.json", {
        "$schema": DRAFT, "$id": "acme/item@1", "title": "An item",
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "minLength": 1},
                       "when": {"type": "string", "format": "date-time"},
                       "link": {"type": "string", "format": "uri"}},
        "$defs": {"tag": {"type": "string", "pattern": "^[a-z]+$"}},
    })
    # in another directory level, referring to the first by id, to a $defs entry of it,
    # and to a built-in schema
    _write(directory, "lists/basket.v1.json", {
        "$schema": DRAFT, "$id": "acme/lists/basket@1", "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": {"$ref": "acme/item@1"}},
                       "tags": {"type": "array", "items": {"$ref": "acme/item@1#/$defs/tag"}},
                       "finding": {"$ref": "common/finding@1"}},
    })
    return directory


@pytest.fixture
def registry(user_schemas: Path) -> SchemaRegistry:
    return Catalog(Dirs.with_builtins(schemas=[user_schemas])).schemas


def test_builtin_schemas_load_and_are_all_valid() -> None:
    reg = Catalog(Dirs.with_builtins()).schemas
    assert reg.broken == []
    assert {"dev/spec@1", "dev/phase-plan@1", "dev/implementation@1", "dev/review@1",
            "common/final-report@1", "devflow/template@1", "devflow/persona@1"} <= set(reg.ids())
    assert reg.ids() == sorted(reg.ids())


def test_the_samples_of_the_scripted_agent_are_valid() -> None:
    reg = Catalog(Dirs.with_builtins()).schemas
    sample_dir = Path(samples.__file__).parent / "samples"
    checked = 0
    for schema_id, name in [("dev/spec@1", "spec.json"), ("dev/phase-plan@1", "phase-plan.json"),
                            ("dev/implementation@1", "implementation.json"),
                            ("dev/review@1", "review.json")]:
        assert reg.validate(schema_id, json.loads((sample_dir / name).read_text())) == []
        checked += 1
    assert checked == 4


def test_review_findings_name_severity_file_line_and_message() -> None:
    reg = Catalog(Dirs.with_builtins()).schemas
    good = {"verdict": "request_changes", "summary": "One problem.", "findings": [
        {"key": "F1", "severity": "major", "file": "src/a.py", "line": 3, "message": "Wrong."}]}
    assert reg.validate("dev/review@1", good) == []
    bad = {**good, "findings": [{"key": "F1", "severity": "fatal", "file": "src/a.py",
                                 "line": 0, "message": "Wrong."}]}
    pointers = {i.pointer for i in reg.validate("dev/review@1", bad)}
    assert pointers == {"/findings/0/severity", "/findings/0/line"}


def test_ref_across_files_by_id(registry: SchemaRegistry) -> None:
    good = {"items": [{"name": "apple"}], "tags": ["fruit"],
            "finding": {"key": "k", "severity": "info", "file": "a", "message": "m"}}
    assert registry.validate("acme/lists/basket@1", good) == []
    bad = {"items": [{"name": "apple"}, {"colour": "red"}], "tags": ["Fruit"],
           "finding": {"key": "k", "severity": "awful", "file": "a", "message": "m"}}
    issues = registry.validate("acme/lists/basket@1", bad)
    by_pointer = {i.pointer: i.message for i in issues}
    assert set(by_pointer) == {"/items/1", "/tags/0", "/finding/severity"}
    assert issues == sorted(issues, key=lambda i: (i.pointer, i.message))


def test_formats_are_checked(registry: SchemaRegistry) -> None:
    assert registry.validate("acme/item@1", {
        "name": "x", "when": "2024-05-01T12:30:00Z", "link": "https://example.org/a?b=c"}) == []
    issues = registry.validate("acme/item@1", {
        "name": "x", "when": "yesterday at noon", "link": "not a uri"})
    assert [(i.pointer, "format" in i.message or "is not a" in i.message) for i in issues] == [
        ("/link", True), ("/when", True)]
    # a date without a time and a relative reference are not what these formats mean
    issues = registry.validate("acme/item@1", {"name": "x", "when": "2024-05-01",
                                               "link": "/relative/path"})
    assert {i.pointer for i in issues} == {"/when", "/link"}


def test_builtin_formats_are_checked_too() -> None:
    reg = Catalog(Dirs.with_builtins()).schemas
    schema = reg.get("common/final-report@1").contents
    assert schema["properties"]["generated_at"]["format"] == "date-time"
    issues = reg.validate("common/final-report@1", {"generated_at": "not a time"})
    assert "/generated_at" in {i.pointer for i in issues}


def test_the_validator_is_compiled_once(registry: SchemaRegistry) -> None:
    first = registry.validator("acme/lists/basket@1")
    assert registry.validator("acme/lists/basket@1") is first
    registry.validate("acme/lists/basket@1", {"items": []})
    assert registry.validator("acme/lists/basket@1") is first
    assert registry.validator("acme/item@1") is not first


def test_an_unknown_schema_is_not_found(registry: SchemaRegistry) -> None:
    with pytest.raises(DevflowError) as caught:
        registry.validate("acme/nothing@1", {})
    assert caught.value.code is Code.SCHEMA_NOT_FOUND and caught.value.exit_code == 4
    assert "acme/nothing@1" in caught.value.message and caught.value.hint
    assert "acme/nothing@1" not in registry and "acme/item@1" in registry


def test_a_ref_that_cannot_be_resolved_is_schema_invalid(tmp_path: Path) -> None:
    _write(tmp_path, "dangling.json", {"$schema": DRAFT, "$id": "acme/dangling@1",
                                       "properties": {"x": {"$ref": "acme/missing@1"}}})
    reg = SchemaRegistry.from_dirs([tmp_path])
    assert reg.validate("acme/dangling@1", {"y": 1}) == []  # the $ref is not reached
    with pytest.raises(DevflowError) as caught:
        reg.validate("acme/dangling@1", {"x": 1})
    assert caught.value.code is Code.SCHEMA_INVALID
    assert "acme/dangling@1" in caught.value.message


def test_broken_files_are_listed_without_hiding_the_others(tmp_path: Path) -> None:
    good = {"$schema": DRAFT, "$id": "acme/good@1", "type": "object"}
    _write(tmp_path, "good.json", good)
    broken = {
        "bad-json.json": '{"$id": "acme/bad-json@1", "type": ',
        "no-id.json": {"$schema": DRAFT, "type": "object"},
        "long-id.json": {"$schema": DRAFT, "$id": "https://example.org/x.json"},
        "not-a-schema.json": {"$schema": DRAFT, "$id": "acme/bad-type@1", "type": 12},
        "list.json": "[1, 2]",
        "twice.json": {**good, "type": "array"},  # the same id, other contents
    }
    for name, body in broken.items():
        _write(tmp_path, name, body)
    reg = Catalog(Dirs.with_builtins(schemas=[tmp_path])).schemas
    assert "dev/spec@1" in reg
    # acme/good@1 is defined twice with different contents: like a template, it is
    # refused where it is used, never silently taken from the first file
    assert "acme/good@1" not in reg
    with pytest.raises(DevflowError) as caught:
        reg.validate("acme/good@1", {})
    assert caught.value.code is Code.SCHEMA_VERSION_CONFLICT
    listed = {path.name: error for path, error in reg.broken}
    assert set(listed) == set(broken)
    for name, error in listed.items():
        expected = Code.SCHEMA_VERSION_CONFLICT if name == "twice.json" else Code.SCHEMA_INVALID
        assert error.code is expected, name
    assert "bad-json.json:1:" in listed["bad-json.json"].message  # the place in the file
    assert "/type" in listed["not-a-schema.json"].message
    with pytest.raises(DevflowError):  # neither definition is used
        reg.get("acme/good@1")


def test_broken_schemas_appear_in_the_catalog(tmp_path: Path) -> None:
    _write(tmp_path, "broken.json", "{")
    catalog = Catalog(Dirs.with_builtins(schemas=[tmp_path]))
    kinds = {(b.kind, b.path.name, b.error.code) for b in catalog.broken()}
    assert kinds == {("schema", "broken.json", Code.SCHEMA_INVALID)}


def test_the_same_schema_twice_with_the_same_contents_is_fine(tmp_path: Path) -> None:
    builtin = Catalog(Dirs.with_builtins()).schemas.get("dev/spec@1")
    _write(tmp_path, "copy.json", builtin.path.read_text())
    reg = Catalog(Dirs.with_builtins(schemas=[tmp_path])).schemas
    assert reg.broken == []
    assert reg.get("dev/spec@1").path == builtin.path


def test_pointer_escapes_its_parts() -> None:
    assert pointer([]) == ""
    assert pointer(["a/b", "c~d", 0]) == "/a~1b/c~0d/0"
    assert str(Issue("", "bad")) == "/: bad"
    assert str(Issue("/x", "bad")) == "/x: bad"


def test_any_of_reports_the_specific_problem(tmp_path: Path) -> None:
    _write(tmp_path, "choice.json", {
        "$schema": DRAFT, "$id": "acme/choice@1",
        "properties": {"v": {"anyOf": [{"type": "integer", "minimum": 10},
                                       {"type": "string"}]}}})
    reg = SchemaRegistry.from_dirs([tmp_path])
    issues = reg.validate("acme/choice@1", {"v": 3})
    assert len(issues) == 1 and issues[0].pointer == "/v"
    # one branch's own complaint, not the umbrella "is not valid under any of the given schemas"
    assert issues[0].message in ("3 is less than the minimum of 10", "3 is not of type 'string'")


# -- references that resolve to nothing, found before any instance reaches them -------------
def test_dangling_references_are_found_transitively_with_where_they_are(tmp_path: Path) -> None:
    _write(tmp_path, "outer.json", {
        "$schema": DRAFT, "$id": "acme/outer@1", "type": "object",
        "properties": {"inner": {"$ref": "acme/inner@1"},
                       "local": {"$ref": "#/$defs/nowhere"},
                       "fine": {"$ref": "#/$defs/word"},
                       "anchored": {"$ref": "#no-such-anchor"},
                       "tree": {"$ref": "#"}},          # a cycle: followed once
        "$defs": {"word": {"type": "string"},
                  "unused": {"items": {"$ref": "acme/typo@1"}}},  # never reached, still found
    })
    _write(tmp_path, "inner.json", {
        "$schema": DRAFT, "$id": "acme/inner@1", "type": "object",
        "properties": {"finding": {"$ref": "common/finding@1"},
                       "gone": {"$ref": "common/findng@1#/properties/key"}}})
    reg = Catalog(Dirs.with_builtins(schemas=[tmp_path])).schemas
    found = [(d.schema, d.ref, d.why) for d in reg.dangling("acme/outer@1")]
    assert found == [
        ("acme/inner@1", "common/findng@1#/properties/key", "no schema has that id"),
        ("acme/outer@1", "#/$defs/nowhere", "the pointer leads nowhere in the schema"),
        ("acme/outer@1", "#no-such-anchor", "no such anchor in the schema"),
        ("acme/outer@1", "acme/typo@1", "no schema has that id"),
    ]
    assert str(reg.dangling("acme/outer@1")[1]) == (
        "$ref '#/$defs/nowhere' in schema acme/outer@1 cannot be resolved (the pointer leads "
        "nowhere in the schema)")
    assert reg.dangling("acme/inner@1") == reg.dangling("acme/outer@1")[:1]
    assert reg.dangling("acme/outer@1") is reg.dangling("acme/outer@1")  # walked once


def test_the_builtin_schemas_have_no_dangling_reference() -> None:
    reg = Catalog(Dirs.with_builtins()).schemas
    assert {i: reg.dangling(i) for i in reg.ids()} == {i: [] for i in reg.ids()}


def test_references_below_an_id_are_judged_as_validation_would(tmp_path: Path) -> None:
    # an $id below the root moves the base URI (to acme/acme/parts/part@1, relative to
    # acme/scoped@1), where no schema is registered: validation cannot resolve either
    # reference, and the walk says so before an instance reaches them
    _write(tmp_path, "scoped.json", {
        "$schema": DRAFT, "$id": "acme/scoped@1",
        "properties": {"part": {"$id": "acme/parts/part@1", "$defs": {"n": {"type": "number"}},
                                "properties": {"n": {"$ref": "#/$defs/n"},
                                               "m": {"$ref": "#/$defs/m"}}}}})
    reg = SchemaRegistry.from_dirs([tmp_path])
    assert {d.ref for d in reg.dangling("acme/scoped@1")} == {"#/$defs/n", "#/$defs/m"}
    with pytest.raises(DevflowError) as caught:
        reg.validate("acme/scoped@1", {"part": {"n": 1}})
    assert caught.value.code is Code.SCHEMA_INVALID

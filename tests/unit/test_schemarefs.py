"""Inlined references: the same verdict and messages as the schema as written, faster."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devflow import schemarefs
from devflow.backends import samples
from devflow.catalog import Catalog, Dirs
from devflow.schemas import SchemaRegistry, pointer


@pytest.fixture(scope="module")
def builtins() -> SchemaRegistry:
    return Catalog(Dirs.with_builtins()).schemas


def as_written(reg: SchemaRegistry, schema_id: str, doc: Any) -> list[tuple[str, str]]:
    """The issues of a validator on the schema exactly as its file has it."""
    validator = jsonschema.Draft202012Validator(
        reg.get(schema_id).contents, registry=reg._registry,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [(pointer(e.absolute_path), e.message) for e in validator.iter_errors(doc)]


def inlined(reg: SchemaRegistry, schema_id: str, doc: Any) -> list[tuple[str, str]]:
    return [(pointer(e.absolute_path), e.message)
            for e in reg.validator(schema_id).iter_errors(doc)]


def mutations(doc: Any, rng: random.Random) -> Iterator[Any]:
    """The document with one thing broken: a value of the wrong type, a key removed or
    added, an array emptied or given a stray item; at every depth."""
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])
    walk(doc, [])
    for path in paths:
        for how in ("type", "drop", "extra", "empty", "stray"):
            changed = copy.deepcopy(doc)
            parent: Any = changed
            for part in path[:-1]:
                parent = parent[part]
            target = parent[path[-1]] if path else changed
            if how == "type" and path:
                parent[path[-1]] = rng.choice([17, "x", None, [], {}, 2.5, True])
            elif how == "drop" and isinstance(target, dict) and target:
                target.pop(rng.choice(sorted(target)))
            elif how == "extra" and isinstance(target, dict):
                target["unexpected"] = 1
            elif how == "empty" and isinstance(target, list) and path:
                parent[path[-1]] = []
            elif how == "stray" and isinstance(target, list):
                target.append({"odd": True})
            else:
                continue
            yield changed


@pytest.mark.parametrize("schema_id", ["dev/spec@1", "dev/phase-plan@1", "dev/implementation@1",
                                       "dev/review@1", "common/final-report@1",
                                       "devflow/template@1", "devflow/persona@1"])
def test_every_mutation_of_a_sample_gets_the_same_errors_in_the_same_order(
        builtins: SchemaRegistry, schema_id: str) -> None:
    rng = random.Random(schema_id)
    catalog = Catalog(Dirs.with_builtins())
    doc = (dict(catalog.template("development@1").definition) if schema_id == "devflow/template@1"
           else dict(catalog.personas()[0].definition) if schema_id == "devflow/persona@1"
           else samples.valid(schema_id, builtins))
    assert inlined(builtins, schema_id, doc) == as_written(builtins, schema_id, doc) == []
    compared = refused = 0
    for changed in mutations(doc, rng):
        expected = as_written(builtins, schema_id, changed)
        assert inlined(builtins, schema_id, changed) == expected, json.dumps(changed)[:300]
        compared += 1
        refused += bool(expected)
    assert compared > 10 and refused > compared // 3


def test_references_across_files_and_inside_one_are_inlined(builtins: SchemaRegistry) -> None:
    def refs(node: Any) -> int:
        if isinstance(node, dict):
            return ("$ref" in node and isinstance(node["$ref"], str)) + sum(
                refs(v) for k, v in node.items() if k != "$defs")
        return sum(refs(v) for v in node) if isinstance(node, list) else 0
    for schema_id in ("dev/implementation@1", "dev/review@1", "dev/spec@1"):
        written = builtins.get(schema_id).contents
        assert refs(written) > 0
        assert refs(builtins.validator(schema_id).schema) == 0


def test_a_recursive_reference_stays_and_still_validates() -> None:
    tree = {"$id": "t/tree@1", "type": "object", "required": ["name"],
            "properties": {"name": {"$ref": "#/$defs/name"},
                           "children": {"type": "array", "items": {"$ref": "#"}},
                           "leaf": {"$ref": "#/$defs/leaf"}},
            "$defs": {"name": {"type": "string", "minLength": 1},
                      "leaf": {"type": "object", "properties": {"up": {"$ref": "#"}}}}}
    out = schemarefs.inlined("t/tree@1", tree, lambda uri: None)
    assert out["properties"]["name"] == {"type": "string", "minLength": 1}
    assert out["properties"]["children"]["items"] == {"$ref": "#"}
    assert out["properties"]["leaf"] == {"$ref": "#/$defs/leaf"}  # it reaches the root
    validator = jsonschema.Draft202012Validator(out)
    good = {"name": "a", "children": [{"name": "b", "children": []}], "leaf": {"up": {"name": "c"}}}
    assert list(validator.iter_errors(good)) == []
    bad = {"name": "a", "children": [{"name": ""}], "leaf": {"up": {"name": 3}}}
    assert sorted(pointer(e.absolute_path) for e in validator.iter_errors(bad)) == [
        "/children/0/name", "/leaf/up/name"]


def test_a_ref_beside_keywords_that_check_stays_annotations_do_not_matter() -> None:
    schema = {"$id": "t/s@1", "$defs": {"n": {"type": "integer"}, "b": {
        "properties": {"a": {"type": "integer"}}}},
              "properties": {"x": {"$ref": "#/$defs/n", "minimum": 3},
                             "y": {"$ref": "#/$defs/n", "description": "a count"}},
              "$ref": "#/$defs/b", "unevaluatedProperties": False}
    out = schemarefs.inlined("t/s@1", schema, lambda uri: None)
    assert out["properties"]["x"] == {"$ref": "#/$defs/n", "minimum": 3}
    assert out["properties"]["y"] == {"type": "integer"}
    assert out["$ref"] == "#/$defs/b"
    doc = {"a": "x", "x": 1}
    assert [e.message for e in jsonschema.Draft202012Validator(out).iter_errors(doc)] == [
        e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def test_only_schema_positions_are_walked() -> None:
    """A property named like a keyword ("default", "enum", "$ref") is a schema; a value
    under "enum" or "default" is not."""
    cfg = {"$id": "common/cfg@1", "properties": {"default": {"$ref": "#/$defs/v"},
                                                 "$ref": {"type": "string"}},
           "$defs": {"v": {"type": "integer"}}}
    main = {"$id": "dev/main@1", "properties": {"c": {"$ref": "common/cfg@1"},
                                                "e": {"enum": [{"$ref": "#/$defs/v"}]}},
            "$defs": {"v": {"type": "string"}}}
    out = schemarefs.inlined("dev/main@1", main,
                             lambda uri: cfg if uri.endswith("common/cfg@1") else None)
    assert out["properties"]["c"]["properties"] == {"default": {"type": "integer"},
                                                    "$ref": {"type": "string"}}
    assert out["properties"]["e"] == {"enum": [{"$ref": "#/$defs/v"}]}
    validator = jsonschema.Draft202012Validator(out)
    assert [e.message for e in validator.iter_errors({"c": {"default": "5"}})] == [
        "'5' is not of type 'integer'"]


def test_a_target_in_another_dialect_or_behind_an_encoded_fragment() -> None:
    old = {"$schema": "http://json-schema.org/draft-07/schema#", "$id": "t/old@1",
           "dependencies": {"a": ["b"]}}
    main = {"$id": "t/m@1", "properties": {"o": {"$ref": "t/old@1"},
                                           "p": {"$ref": "#/$defs/a%20b"}},
            "$defs": {"a b": {"type": "integer"}, "a%20b": {"type": "string"}}}
    out = schemarefs.inlined("t/m@1", main, lambda uri: old if uri == "t/old@1" else None)
    assert out["properties"]["o"] == {"$ref": "t/old@1"}  # as written: draft-07 applies
    assert out["properties"]["p"] == {"type": "integer"}  # the fragment is percent-decoded


def test_definitions_that_use_each_other_many_times_are_inlined_once_each() -> None:
    defs = {f"d{i}": {"type": "object", "properties": {
        "l": {"$ref": f"#/$defs/d{i + 1}"}, "r": {"$ref": f"#/$defs/d{i + 1}"}}}
        for i in range(40)}
    defs["d40"] = {"type": "integer"}
    schema = {"$id": "t/deep@1", "properties": {"x": {"$ref": "#/$defs/d0"}}, "$defs": defs}
    out = schemarefs.inlined("t/deep@1", schema, lambda uri: None)  # 2^40 paths: once each
    d0 = out["properties"]["x"]
    assert d0["properties"]["l"] is d0["properties"]["r"]  # one copy, shared
    errors = list(jsonschema.Draft202012Validator(out).iter_errors({"x": {"l": {"r": 3}}}))
    assert [e.message for e in errors] == ["3 is not of type 'object'"]


def test_a_schema_with_an_id_or_anchor_below_its_root_is_used_as_written() -> None:
    scoped = {"$id": "t/s@1", "properties": {"x": {"$ref": "#/$defs/n"}},
              "$defs": {"n": {"$anchor": "num", "type": "integer"}}}
    assert schemarefs.inlined("t/s@1", scoped, lambda uri: None) == scoped
    other = {"$id": "t/o@1", "$defs": {"m": {"$id": "inner", "type": "string"}}}
    pointing = {"$id": "t/p@1", "properties": {"y": {"$ref": "t/o@1"}}}
    out = schemarefs.inlined("t/p@1", pointing, lambda uri: other if uri == "t/o@1" else None)
    assert out["properties"]["y"] == {"$ref": "t/o@1"}


def test_a_reference_that_cannot_be_found_stays_for_the_validator_to_refuse(
        tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "t/a@1",
        "type": "object", "properties": {"x": {"$ref": "t/missing@1"}}}))
    reg = Catalog(Dirs.with_builtins(schemas=[tmp_path])).schemas
    assert reg.validator("t/a@1").schema["properties"]["x"] == {"$ref": "t/missing@1"}

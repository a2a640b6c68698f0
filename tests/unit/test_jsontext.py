"""JSON read from people and agents: nesting checked before parsing, numbers and strings
a report or a database can keep, and every layer that walks a value safe at the limit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devflow import artifacts, definitions, jsontext, redact, report
from devflow.backends.base import json_object
from devflow.errors import Code, DevflowError
from devflow.schemas import SchemaRegistry, load_schema_file

SCHEMAS = Path(__file__).parents[2] / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: the artifact of the issue: 3,000 levels in 6 KB
DEEP = b"[" * 3000 + b"]" * 3000


def nested(levels: int) -> bytes:
    return b'{"c":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> SchemaRegistry:
    extra = tmp_path_factory.mktemp("schemas")
    # a schema that recurses as deep as its instance: the worst case for jsonschema's stack
    (extra / "tree.json").write_text(json.dumps({
        "$schema": DRAFT, "$id": "acme/tree@1", "type": "object",
        "properties": {"c": {"$ref": "#"}}, "additionalProperties": False}))
    return SchemaRegistry.from_dirs([SCHEMAS, extra])


# -- the depth scan -----------------------------------------------------------------------
@pytest.mark.parametrize(("data", "offset"), [
    (DEEP, 64),
    (b"[" * 65 + b"]" * 65, 64),
    (nested(65), 5 * 64),
    (b'["[[[[", ' + b"{" * 65, 9 + 63),       # brackets in a string do not count
    (b'"\\"[[[", ' + b"[" * 70, 9 + 64),       # nor those after an escaped quote
    (b"[" * 100 + b'"unterminated', 64),
])
def test_nesting_deeper_than_the_limit_is_found_with_its_offset(data: bytes,
                                                                offset: int) -> None:
    assert jsontext.too_deep(data) == offset


@pytest.mark.parametrize("data", [
    b"[" * 64 + b"]" * 64,
    nested(64),
    b"[" + b"[]," * 10_000 + b"[]]",                # many brackets, shallow
    json.dumps("[" * 5000).encode(),                # deep only inside a string
    b'"unterminated [[[[' + b"[" * 100,             # nothing after an unterminated string
    b"",
])
def test_nesting_within_the_limit_passes(data: bytes) -> None:
    assert jsontext.too_deep(data) is None


def test_the_scan_stays_linear_on_bytes_made_to_defeat_it() -> None:
    # a quote followed by escaped quotes would make a scanner that retries each quote
    # quadratic; 5 MB of brackets are summed in C
    for data in (b'"' + b'\\"' * 2_500_000, b"[" * 5_000_000, b"[]" * 2_500_000):
        started = time.perf_counter()
        jsontext.too_deep(data)
        assert time.perf_counter() - started < 2.0


# -- what loads refuses --------------------------------------------------------------------
@pytest.mark.parametrize(("data", "says"), [
    (DEEP, "nested more than 64 arrays or objects deep (level 65 opens at byte 64)"),
    ("café".encode("latin-1"), "not UTF-8 text: byte 0xe9 at offset 3"),
    (b"[1, 2", "not valid JSON at line 1 column 6"),
    (b"NaN", "NaN is not a JSON number"),
    (b"[-Infinity]", "-Infinity is not a JSON number"),
    (b"[1e999]", "the number 1e999 is too large"),
    (b"1" * 5000, "an integer has more than 4300 digits"),
    (b'{"a": "x\\u0000y"}', "holds a NUL character (\\u0000) at character 1"),
    (b'["\\ud800"]', "unpaired surrogate (\\ud800)"),
    (b'{"\\udfff": 1}', "unpaired surrogate (\\udfff)"),
])
def test_loads_refuses_with_a_message_that_says_what(data: bytes, says: str) -> None:
    with pytest.raises(jsontext.BadJSON) as caught:
        jsontext.loads(data)
    assert says in str(caught.value)


def test_loads_reads_json_and_text() -> None:
    assert jsontext.loads(b'{"a": [1, 2.5, "\\ud83d\\ude00", "\\\\u0000"]}') == {
        "a": [1, 2.5, "\U0001f600", "\\u0000"]}
    assert jsontext.loads(nested(64).decode()) == json.loads(nested(64))
    assert json_object('{"type": "x"}') == {"type": "x"}
    assert json_object('{"c":' * 3000) is None  # an agent's line: refused, not a crash


# -- every layer at the limit, and past it -----------------------------------------------
def test_an_artifact_of_3000_levels_is_invalid_not_a_recursion_error(
        registry: SchemaRegistry) -> None:
    for schema in ("acme/tree@1", "dev/spec@1", "dev/review@1"):
        checked = artifacts.check_bytes(DEEP, schema, registry)
        assert checked.code is Code.ARTIFACT_INVALID
        assert any("nested more than 64" in str(i) for i in checked.issues)
        assert checked.data == DEEP and checked.sha256  # the bytes, to be kept and shown


def test_64_levels_pass_every_layer_that_walks_them(registry: SchemaRegistry) -> None:
    data = nested(64)
    checked = artifacts.check_bytes(data, "acme/tree@1", registry)
    assert checked.valid, checked.issues
    bad = data.replace(b"{}", b'{"x": 1}')  # an error at the bottom: jsonschema's deepest path
    refused = artifacts.check_bytes(bad, "acme/tree@1", registry)
    assert refused.code is Code.ARTIFACT_INVALID and refused.issues[0].pointer.count("/c") == 63
    definitions.definition_hash({"name": "x", "options": checked.value})
    body = {"report_version": 1, "generated_at": "2024-01-01T00:00:00Z",
            "run": {"id": "r", "state": "failed"}, "unresolved": [],
            "findings": [{"key": "k", "deep": checked.value}]}
    assert registry.validate(report.REPORT_SCHEMA, body) == []
    json.dumps(redact.Redactor(lambda: ["a-secret"])(body), indent=2)  # what report.write does


def test_a_schema_file_too_deep_is_schema_invalid_and_one_at_the_limit_loads(
        tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"$id": "acme/deep@1", "x": ' + DEEP + b"}")
    with pytest.raises(DevflowError) as caught:
        load_schema_file(deep)
    assert caught.value.code is Code.SCHEMA_INVALID and "nested more than 64" in str(caught.value)
    # 31 levels of properties are 63 levels of JSON: the meta-schema check walks them
    body = {"type": "string"}
    for _ in range(31):
        body = {"type": "object", "properties": {"c": body}}
    fine = tmp_path / "fine.json"
    fine.write_text(json.dumps({"$schema": DRAFT, "$id": "acme/fine@1", **body}))
    assert load_schema_file(fine).id == "acme/fine@1"

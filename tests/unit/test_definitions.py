"""Templates and personas: parsed, checked, each problem placed; canonical hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from devflow import backends, definitions, schemas
from devflow.catalog import Catalog, Dirs
from devflow.definitions import DefinitionError, Persona, Template
from devflow.errors import Code, DevflowError
from devflow.yamlsource import parse_yaml
from tests.unit.malformed_definitions import CASES, GOOD_PERSONA, GOOD_TEMPLATE, Case


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(Dirs.with_builtins(), check_persona_options=backends.check_options)


def _template(catalog: Catalog, text: str, path: Path | None = None) -> Template:
    return catalog.load_template(parse_yaml(text, path))


def _persona(catalog: Catalog, text: str) -> Persona:
    return catalog.load_persona(parse_yaml(text))


# -- a good template ----------------------------------------------------------------------------
def test_a_good_template_parses_with_every_field(catalog: Catalog) -> None:
    t = _template(catalog, GOOD_TEMPLATE)
    assert t.ref == "custom@1" and t.version == "1"
    assert t.description == "A small workflow for tests."
    assert dict(t.roles) == {"implementer": "Changes the code.", "reviewer": ""}
    assert [p.key for p in t.phases] == ["implement", "review"]
    implement, review = t.phases
    assert implement.title == "Implement the change" and review.title == "review"
    assert implement.role == "implementer"
    assert implement.artifact == definitions.ArtifactSpec(".devflow/implementation.json",
                                                          "dev/implementation@1")
    assert implement.timeout == 1800.0 and review.timeout is None
    assert implement.max_repairs == definitions.DEFAULT_MAX_REPAIRS
    assert review.gates == ("final",)
    gate = t.gates["final"]
    assert gate.timeout == 86400.0 and gate.warn_before == 3600.0
    assert gate.options == definitions.ACTIONS and gate.message == "Read the review."
    assert t.hash == definitions.definition_hash(t.definition)


def test_phase_definitions_survive_their_json_round_trip(catalog: Catalog) -> None:
    for phase in _template(catalog, GOOD_TEMPLATE).phases:
        assert definitions.PhaseDef.from_json(phase.to_json()) == phase


def test_the_builtin_templates_and_personas_are_valid(catalog: Catalog) -> None:
    assert catalog.broken() == []
    assert catalog.conflicts() == []
    refs = {t.ref for t in catalog.templates()}
    assert {"development@1", "quick@1"} <= refs
    development = catalog.template("development@1")
    assert [p.key for p in development.phases] == ["spec", "plan", "implement", "review"]
    assert [p.key for p in development.phases if p.gates] == ["spec", "review"]
    plan = next(p for p in development.phases if p.key == "plan")
    assert plan.artifact is not None and plan.artifact.schema == "dev/phase-plan@1"
    quick = catalog.template("quick")
    assert [p.key for p in quick.phases] == ["implement", "review"]
    assert not quick.gates and all(not p.gates for p in quick.phases)
    personas = {p.ref: p for p in catalog.personas()}
    for role in ("planner", "implementer", "reviewer"):
        backends_for_role = {p.backend for p in personas.values() if role in p.roles}
        assert {"scripted", "claude-code", "codex", "aider"} <= backends_for_role, role


# -- malformed definitions: code, file, line and pointer ----------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_malformed_definition_names_its_file_line_and_pointer(
        catalog: Catalog, tmp_path: Path, case: Case) -> None:
    path = case.write(tmp_path)
    with pytest.raises(DevflowError) as caught:
        catalog.check_file(path, case.kind)
    error = caught.value
    assert error.code == case.code
    assert error.exit_code == 2
    assert error.hint
    if case.pointer is None:  # YAML syntax: file:line:column
        assert f"{path}:{case.line}:" in error.message
        assert error.details["line"] == case.line
        return
    assert isinstance(error, DefinitionError)
    first = error.details["problems"][0]
    assert first == {"code": case.code, "where": f"{path}:{case.line}",
                     "pointer": case.pointer or "/", "message": first["message"]}
    assert f"{path}:{case.line}: at {case.pointer or '/'}: " in error.message
    assert error.details["file"] == str(path)


def test_every_problem_is_reported_at_once(catalog: Catalog) -> None:
    text = (GOOD_TEMPLATE.replace("roles: [reviewer]", "roles: [auditor]")
            .replace("gates: [final]", "gates: [nightly]")
            .replace("path: .devflow/review.json", "path: ../review.json"))
    with pytest.raises(DefinitionError) as caught:
        _template(catalog, text)
    codes = [p.code for p in caught.value.problems]
    assert sorted(codes) == sorted([Code.UNKNOWN_ROLE, Code.UNKNOWN_GATE, Code.PATH_ESCAPE])
    assert caught.value.message.startswith("3 problems:")
    assert "<definition>:" in caught.value.message  # no file: named as such


@pytest.mark.parametrize(("old", "new", "code", "pointer"), [
    ("timeout: 30m\n", "timeout: 0\n", Code.BAD_DURATION, "/phases/0/timeout"),
    ("warn_before: 1h", "warn_before: 25h", Code.DEFINITION_INVALID, "/gates/final/warn_before"),
    ("    timeout: 24h\n", "", Code.DEFINITION_INVALID, "/gates/final/warn_before"),
    ("path: .devflow/review.json", "path: .git/hooks/review.json", Code.PATH_ESCAPE,
     "/phases/1/artifact/path"),
    ("path: .devflow/review.json", "path: C:/review.json", Code.PATH_ESCAPE,
     "/phases/1/artifact/path"),
    ("gates: [final]", "gates: [final, final]", Code.DEFINITION_INVALID, "/phases/1/gates/1"),
    ("version: 1", "version: 0", Code.DEFINITION_INVALID, "/version"),
    ("name: custom", "name: Custom Flow", Code.DEFINITION_INVALID, "/name"),
    ("    gates: [final]\n", "    gates: [final]\n    max_repairs: 99\n", Code.DEFINITION_INVALID,
     "/phases/1/max_repairs"),
])
def test_more_cross_checks(catalog: Catalog, old: str, new: str, code: Code,
                           pointer: str) -> None:
    assert GOOD_TEMPLATE.count(old) == 1
    with pytest.raises(DefinitionError) as caught:
        _template(catalog, GOOD_TEMPLATE.replace(old, new))
    assert (caught.value.problems[0].code, schemas.pointer(
        caught.value.problems[0].path)) == (code, pointer)


def test_a_gated_phase_needs_an_artifact(catalog: Catalog) -> None:
    text = GOOD_TEMPLATE.replace(
        "    artifact:\n      path: .devflow/review.json\n      schema: dev/review@1\n", "")
    with pytest.raises(DefinitionError) as caught:
        _template(catalog, text)
    assert caught.value.problems[0].code is Code.DEFINITION_INVALID
    assert caught.value.problems[0].path == ("phases", 1, "gates")
    assert "needs an artifact" in caught.value.problems[0].message


def test_escalation_steps_must_be_in_order(catalog: Catalog) -> None:
    text = GOOD_TEMPLATE.replace("warn_before: 1h\n", (
        "warn_before: 1h\n"
        "    escalation:\n"
        "      - {after: 8h, to: [leads], audit_reason: second}\n"
        "      - {after: 4h, to: [oncall], audit_reason: first}\n"))
    with pytest.raises(DefinitionError) as caught:
        _template(catalog, text)
    assert [(p.code, p.path) for p in caught.value.problems] == [
        (Code.DEFINITION_INVALID, ("gates", "final", "escalation"))]


def test_a_nan_timeout_is_refused(catalog: Catalog) -> None:
    # NaN is no JSON value: refused where the YAML is read, before the hash or the database
    with pytest.raises(DevflowError) as caught:
        _template(catalog, GOOD_TEMPLATE.replace("timeout: 30m", "timeout: .nan"))
    assert caught.value.code is Code.YAML_INVALID
    assert "at /phases/0/timeout: nan is not a JSON number" in caught.value.message


@pytest.mark.parametrize(("path", "ok"), [
    (".devflow/spec.json", True),
    ("spec.json", True),
    ("a/b/c.json", True),
    ("a/./b.json", True),
    ("..", False),
    ("../x.json", False),
    ("a/../../x.json", False),
    ("a\\..\\..\\x.json", False),
    ("/abs/x.json", False),
    ("\\abs\\x.json", False),
    ("C:\\x.json", False),
    (".git/config", False),
    ("", False),
])
def test_check_artifact_path(path: str, ok: bool) -> None:
    assert (definitions.check_artifact_path(path) is None) is ok


# -- personas -----------------------------------------------------------------------------------
def test_a_good_persona_parses(catalog: Catalog) -> None:
    text = GOOD_PERSONA + "model: m-1\nenv:\n  allow: [HOME, LC_*]\n  set: {DEBUG: 1}\n"
    p = _persona(catalog, text)
    assert (p.ref, p.roles, p.backend, p.model) == ("custom-implementer@1", ("implementer",),
                                                    "scripted", "m-1")
    assert dict(p.options) == {"scenario": "ok"}
    assert p.env_allow == ("HOME", "LC_*") and dict(p.env_set) == {"DEBUG": "1"}
    assert p.hash == definitions.definition_hash(p.definition)


def test_a_persona_says_how_its_agent_is_sandboxed(catalog: Catalog) -> None:
    assert _persona(catalog, GOOD_PERSONA).sandbox == definitions.SandboxDef()
    off = _persona(catalog, GOOD_PERSONA + "sandbox: none\n")
    assert off.sandbox.enabled is False and off.sandbox.to_json() == "none"
    wide = _persona(catalog, GOOD_PERSONA + "sandbox:\n  network: none\n"
                                            "  read_only: [/opt/tools, ~/.config/tool]\n"
                                            "  writable: [~/.cache/tool]\n")
    assert wide.sandbox == definitions.SandboxDef(
        network="none", read_only=("/opt/tools", "~/.config/tool"),
        writable=("~/.cache/tool",))
    for bad, where in (("sandbox: off\n", "/sandbox"),
                       ("sandbox: {network: lan}\n", "/sandbox"),
                       ("sandbox: {writable: [cache]}\n", "/sandbox/writable/0")):
        with pytest.raises(DefinitionError) as caught:
            _persona(catalog, GOOD_PERSONA + bad)
        assert caught.value.places[0][1] == where, (bad, caught.value.places)


def test_persona_options_are_checked_by_the_backend(catalog: Catalog) -> None:
    text = GOOD_PERSONA.replace("scenario: ok", "scenario: no-such-scenario-at-all")
    with pytest.raises(DefinitionError) as caught:
        _persona(catalog, text)
    assert caught.value.problems[0].code is Code.BACKEND_OPTION_INVALID
    assert caught.value.problems[0].path == ("options", "scenario")


def test_parse_ref() -> None:
    assert definitions.parse_ref("development") == ("development", None)
    assert definitions.parse_ref(" development@1 ") == ("development", "1")
    assert definitions.parse_ref("x-y_z@1.2-rc") == ("x-y_z", "1.2-rc")
    for bad in ("", "@1", "Dev@1", "a@", "a@1@2", "a b"):
        with pytest.raises(DevflowError) as caught:
            definitions.parse_ref(bad)
        assert caught.value.code is Code.INVALID_INPUT


# -- canonical hashes ---------------------------------------------------------------------------
def test_the_hash_is_sha256_of_sorted_compact_json() -> None:
    body = {"version": 1, "name": "x", "b": {"z": [1, 2], "a": "é"}}
    canonical = '{"b":{"a":"é","z":[1,2]},"name":"x","version":"1"}'
    assert definitions.definition_hash(body) == hashlib.sha256(canonical.encode()).hexdigest()


def test_key_order_and_whitespace_do_not_change_the_hash(catalog: Catalog) -> None:
    block = _template(catalog, GOOD_TEMPLATE)
    flowed = _template(catalog, """
        gates: {final: {warn_before: 1h, timeout: 24h,   message: "Read the review."}}
        phases:
          - {roles: [implementer], key: implement, timeout: 30m,
             instructions: "Make the change.", title: "Implement the change",
             artifact: {schema: dev/implementation@1, path: .devflow/implementation.json}}
          - instructions: Review the change.
            gates:
              - final
            artifact: {schema: dev/review@1, path: .devflow/review.json}
            roles: [reviewer]
            key: review
        roles: {reviewer: {}, implementer: {description: Changes the code.}}
        description: A small workflow for tests.
        version: 1
        name: custom
        """.replace("\n        ", "\n"))
    assert flowed.hash == block.hash


def test_version_as_number_or_string_hashes_alike(catalog: Catalog) -> None:
    as_int = _template(catalog, GOOD_TEMPLATE)
    as_str = _template(catalog, GOOD_TEMPLATE.replace("version: 1", 'version: "1"'))
    assert as_int.definition["version"] == 1 and as_str.definition["version"] == "1"
    assert as_int.hash == as_str.hash
    assert definitions.definition_hash({"name": "p", "version": 2}) == \
        definitions.definition_hash({"name": "p", "version": "2"})


@pytest.mark.parametrize(("old", "new"), [
    ("Make the change.", "Make the change!"),
    ("timeout: 30m", "timeout: 31m"),
    ("version: 1", "version: 2"),
    ("reviewer: {}", "reviewer: {description: Reads.}"),
])
def test_a_change_of_body_changes_the_hash(catalog: Catalog, old: str, new: str) -> None:
    assert _template(catalog, GOOD_TEMPLATE).hash != _template(
        catalog, GOOD_TEMPLATE.replace(old, new)).hash


def test_a_template_whose_schema_has_a_dangling_ref_names_the_schema_and_the_ref(
        tmp_path: Path) -> None:
    (tmp_path / "outer.json").write_text(
        '{"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "acme/outer@1",'
        ' "properties": {"x": {"$ref": "acme/missing@1"}}}', encoding="utf-8")
    catalog = Catalog(Dirs.with_builtins(schemas=[tmp_path]),
                      check_persona_options=backends.check_options)
    text = GOOD_TEMPLATE.replace("schema: dev/review@1", "schema: acme/outer@1")
    path = tmp_path / "custom.yaml"
    with pytest.raises(DefinitionError) as caught:
        _template(catalog, text, path)
    [problem] = caught.value.problems
    assert problem.code is Code.SCHEMA_INVALID and problem.path == ("phases", 1, "artifact",
                                                                    "schema")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "acme/outer@1" in t)
    assert caught.value.message == (
        f"{path}:{line}: at /phases/1/artifact/schema: phase 'review' uses schema "
        "acme/outer@1, where $ref 'acme/missing@1' in schema acme/outer@1 cannot be resolved "
        "(no schema has that id)")
    assert "$ref" in caught.value.hint

"""Property tests: random and hand-made hostile bytes at every entry point of devflow.

Requirements, definitions (template and persona YAML, schema JSON), artifacts and the
command line (in process, through ``devflow.cli.main.main``) each get random bytes,
known-hostile ones (an alias bomb, 3,000 levels of nesting, NaN, a NUL, Latin-1,
surrogates, explicit YAML tags) and good documents with such fragments spliced in. The
outcome is always a documented error code (or a success), never ``internal_error`` or
another exception, and bad input creates nothing: no run row, no worktree, no branch,
no file in the workspace. Each test keeps to a bounded number of examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from devflow import artifacts, backends, jsontext, yamlsource
from devflow.app import App
from devflow.backends import samples
from devflow.catalog import Catalog, Dirs
from devflow.cli.main import main
from devflow.errors import Code, DevflowError
from devflow.requests import StartRequest
from devflow.schemas import SchemaFile, SchemaRegistry, load_schema_file
from devflow.settings import Settings
from tests.integration.helpers import QUICK_BINDS, branches
from tests.unit.malformed_definitions import GOOD_PERSONA, GOOD_TEMPLATE, alias_bomb

T = TypeVar("T")
#: every code a person can meet; internal_error is the one that must never come out
DOCUMENTED = frozenset(Code) - {Code.INTERNAL}
BUILTIN_SCHEMAS = ["dev/spec@1", "dev/implementation@1", "dev/review@1", "dev/phase-plan@1"]
DEEP = b"[" * 3000 + b"]" * 3000

HOSTILE = [
    b"", b" \n\t\r\n", "café".encode("latin-1"), b"\x89PNG\r\n\x1a\n\x00\x00", b"text\x00",
    b"\xff\xfe\x00a", b"\xed\xa0\x80", DEEP, b"{" * 100_000, b'"' + b'\\"' * 5000,
    b"NaN", b"[Infinity]", b"1e999", b"1" * 5000, b'{"a": "\\u0000"}', b'["\\ud800"]',
    alias_bomb().encode(), b"a: &a [x]\nb: *a\n", b"a: !!python/object/apply:os.system [id]\n",
    b"a: !!binary ???\n", b"a: !!timestamp soon\n", b"a: !!bool 12\n", b"? [a]\n: b\n",
    b"a: 2024-01-01\n", b"a: .nan\n", b"1: x\n", b'a: "\\0"\n', b"---\na: 1\n---\nb: 2\n",
    b"a: " + b"[" * 200 + b"\n", b"\t\x01\x02", b"%YAML 9.9\n---\na: 1\n", b"- - - - -\n",
]
FRAGMENTS = [
    "&a ", "*a", "<<: *a\n", "!!binary ", "!!set ", "!!python/name:os.system ", "2024-01-01",
    ".nan", "-.inf", "[" * 70, "{" * 70, '"\\0"', '"\\ud800"', "\t", "\x01", "1" * 5000,
    "? [a]\n: b\n", "---\n", "\\", '"', "'", "null", "[]", "{}", ": ", "- ", "\n  ", "#",
    "NaN", "Infinity", "\\u0000", "\\udfff", "\xe9", "\U0001f600", "$ref", '"$ref": "x@1"',
]


def splice(text: str) -> st.SearchStrategy[bytes]:
    """``text`` with a hostile fragment put in, or a slice of it replaced, at random."""
    return st.builds(
        lambda at, cut, fragment: (text[:at] + fragment + text[at + cut:]).encode(
            "utf-8", "surrogatepass"),
        st.integers(0, len(text)), st.integers(0, 20), st.sampled_from(FRAGMENTS))


def _outcome(call: Callable[[], T]) -> tuple[T | None, DevflowError | None]:
    try:
        return call(), None
    except DevflowError as exc:
        return None, exc


def hostile(*texts: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=3000), st.sampled_from(HOSTILE),
                     *(splice(t) for t in texts))


def _profile(examples: int) -> Any:
    # a deadline per example far above what a refusal takes, far below an expansion
    return settings(max_examples=examples, deadline=timedelta(seconds=20), database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(Dirs.with_builtins())


@pytest.fixture(scope="module")
def options_catalog() -> Catalog:
    return Catalog(Dirs.with_builtins(), check_persona_options=backends.check_options)


# -- definitions and schemas (no database involved) ----------------------------------------
@_profile(120)
@given(kind=st.sampled_from(["template", "persona"]),
       data=hostile(GOOD_TEMPLATE, GOOD_PERSONA))
def test_any_definition_bytes_are_a_definition_or_a_documented_error(
        tmp_path_factory: pytest.TempPathFactory, options_catalog: Catalog, kind: str,
        data: bytes) -> None:
    directory = tmp_path_factory.mktemp("definition")
    path = directory / "custom.yaml"
    path.write_bytes(data)
    load = options_catalog.load_template if kind == "template" else options_catalog.load_persona
    # what check_file does, without keeping it on the shelf for the next example
    checked, error = _outcome(lambda: load(yamlsource.load_yaml(path)))
    assert error is None or error.code in DOCUMENTED, error
    if checked is not None:  # a definition that loaded is JSON through and through
        json.dumps(dict(checked.definition), allow_nan=False).encode("utf-8")
    assert sorted(p.name for p in directory.iterdir()) == ["custom.yaml"]


SCHEMA = json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema",
                     "$id": "acme/thing@1", "type": "object",
                     "properties": {"a": {"$ref": "#/$defs/a"}, "f": {"$ref": "common/finding@1"}},
                     "$defs": {"a": {"type": "array", "items": {"type": "string"}}}})


@pytest.fixture(scope="module")
def builtin_files() -> list[SchemaFile]:
    return [load_schema_file(p)
            for p in sorted((Path(__file__).parents[2] / "schemas").rglob("*.json"))]


@_profile(120)
@given(data=hostile(SCHEMA), instance=st.sampled_from([{}, {"a": ["x"]}, {"f": {}}, [], 1]))
def test_any_schema_file_is_a_schema_or_a_documented_error(
        tmp_path_factory: pytest.TempPathFactory, builtin_files: list[SchemaFile], data: bytes,
        instance: Any) -> None:
    path = tmp_path_factory.mktemp("schemas") / "thing.json"
    path.write_bytes(data)
    def use() -> None:  # what SchemaRegistry.from_dirs does with a file, and what uses it
        schema = load_schema_file(path)
        registry = SchemaRegistry([*builtin_files, schema])
        registry.dangling(schema.id)
        registry.validate(schema.id, instance)
    _, error = _outcome(use)
    assert error is None or error.code in DOCUMENTED, error


# -- artifacts -----------------------------------------------------------------------------
_GOOD_ARTIFACTS = [samples.valid_text(s, Catalog(Dirs.with_builtins()).schemas)
                   for s in BUILTIN_SCHEMAS]


@_profile(150)
@given(schema=st.sampled_from(BUILTIN_SCHEMAS), data=hostile(*_GOOD_ARTIFACTS))
def test_any_artifact_bytes_are_valid_or_artifact_invalid(catalog: Catalog, schema: str,
                                                          data: bytes) -> None:
    checked = artifacts.check_bytes(data, schema, catalog.schemas)
    assert checked.code in (None, Code.ARTIFACT_INVALID)
    assert checked.data == data  # the bytes as read, to be kept when refused
    for issue in checked.issues:  # what goes into the event and the report is storable
        assert jsontext.unstorable(issue.message) is None
        assert jsontext.unstorable(issue.pointer) is None
    if checked.valid:
        json.dumps(checked.value, allow_nan=False).encode("utf-8")


# -- requirements and the command line: a run is involved, on both databases -----------------
@pytest.fixture
def watched(settings: Settings, repo: Path) -> Iterator[App]:
    """An app to look at what bad input left (nothing), open for the whole test."""
    application = App(settings)
    yield application
    application.close()


def _nothing_created(app: App, settings: Settings, repo: Path) -> None:
    assert app.runs() == []
    assert not settings.workspace.exists() or not any(settings.workspace.iterdir())
    assert branches(repo) == ["main"]


def _acceptable_text(data: bytes) -> bool:
    """What the requirements rule accepts (an oracle written apart from it)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    return bool(text.strip()) and all(c in "\t\n\x0b\x0c\r" or ord(c) >= 0x20 for c in text)


@_profile(40)
@given(data=hostile("Add a farewell function.\n"))
def test_any_requirements_bytes_refused_create_nothing(watched: App, settings: Settings,
                                                       repo: Path, data: bytes) -> None:
    assume(not _acceptable_text(data))
    with pytest.raises(DevflowError) as caught:
        watched.start(StartRequest(repo=repo, base="main", template="quick@1", actor="tester",
                                   requirements=data, requirements_source="req.md",
                                   binds=QUICK_BINDS), detach=True)
    assert caught.value.code is Code.INVALID_INPUT
    assert "req.md" in caught.value.message
    _nothing_created(watched, settings, repo)


#: values of ``run start`` options that are each refused (one is enough to refuse a run)
BAD_START = {
    "--base": ["no-such-branch", "-rf", "--help", "main..HEAD", "../main", "main:x", "@{-1}"],
    "--template": ["nope@1", "quick@99", "Quick", "quick@", "../quick", "quick@1 x", "é"],
    "--bind": ["implementer=nope@1", "nobody=scripted-implementer@1", "implementer=",
               "=scripted-implementer@1", "implementer=scripted-implementer@x y"],
    "--scenario": ["implement=nope", "implement=slow:x", "implement=plan:-1", "x="],
    "--max-cost": ["nan", "inf", "-inf", "-1", "0", "1e999", "x"],
    "--run-id": ["-x", "a b", "x" * 49, "ünï", "a/b", "..", "\udce9"],
    "--objective": ["", "   ", "\t\n", "caf\udce9"],
    "--repo": ["/nonexistent/repo", "/dev/null", "/"],
}


@st.composite
def bad_start(draw: st.DrawFn, repo: Path, requirements: Path) -> list[str]:
    """``run start`` argv with at least one refused value, the rest good or random."""
    bad = draw(st.sets(st.sampled_from(sorted(BAD_START)), min_size=1, max_size=3))
    good = {"--base": "main", "--template": "quick@1", "--repo": str(repo),
            "--objective": "Add a farewell."}
    argv = ["run", "start", "--detach", "--json", "--requirements", str(requirements)]
    for option in sorted(set(BAD_START) | set(good)):
        if option in bad:
            argv += [option, draw(st.sampled_from(BAD_START[option]) | st.text(max_size=30)
                                  .map(lambda t, o=option: _surely_bad(o, t)))]
        elif option in good:
            argv += [option, good[option]]
    argv += [f"--bind={r}={p}@1" for r, p in QUICK_BINDS.items() if "--bind" not in bad]
    return argv


def _surely_bad(option: str, text: str) -> str:
    """Random text made invalid for ``option`` whatever it is."""
    return {"--max-cost": "-" + text.strip("-") + "1", "--objective": text.strip() and " \t",
            "--run-id": "-" + text, "--repo": "/nonexistent/" + text.replace("\x00", ""),
            "--bind": "nobody" + text.replace("=", "") + "=x", "--scenario": "p=" + text + "?",
            }.get(option, "no-such-" + text.replace("\x00", ""))


@st.composite
def other_commands(draw: st.DrawFn, files: Path) -> list[str]:
    """Read and decide commands on things that do not exist, with random values."""
    text = st.text(max_size=40).filter(lambda t: "\x00" not in t)
    number = st.one_of(st.integers(), st.integers(2**62, 2**80), st.just(-1)).map(str) | text
    file = files / f"doc{draw(st.integers(0, 9))}.json"
    file.write_bytes(draw(hostile(*_GOOD_ARTIFACTS)))
    shapes: list[list[Any]] = [
        ["run", "status", text], ["events", text, "--after", number], ["report", text],
        ["approvals", "show", number], ["approvals", "list", "--run", text],
        ["run", "list", "--limit", number],
        ["approve", text, "--comment", text, "--approval", number],
        ["approve", text, "--sections-file", str(file)],
        ["templates", "show", text], ["personas", "show", text], ["schemas", "show", text],
        ["schemas", "check", "--schema", st.sampled_from(BUILTIN_SCHEMAS) | text, str(file)],
        ["templates", "validate", str(file)], ["personas", "validate", str(file)],
    ]
    shape = draw(st.sampled_from(shapes))
    return [draw(part) if isinstance(part, st.SearchStrategy) else part
            for part in shape] + ["--json"]


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    code = exited.value.code
    return code if isinstance(code, int) else 1, out, err


def _assert_documented(argv: list[str], exit_code: int, out: str, err: str) -> None:
    assert "Traceback" not in err, (argv, err)
    assert exit_code in (0, 2, 3, 4), (argv, exit_code, out, err)
    body = json.loads(out) if out.strip().startswith("{") else {}
    error = body.get("error") if isinstance(body, dict) else None
    if error is not None:
        assert error["code"] in DOCUMENTED, (argv, error)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DEVFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in {"DEVFLOW_HOME": str(settings.home),
                        "DEVFLOW_DATABASE_URL": settings.database_url,
                        "DEVFLOW_WORKSPACE": str(settings.workspace),
                        "DEVFLOW_ACTOR": "tester", "DEVFLOW_LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("cli_env")
def test_any_command_line_is_a_documented_outcome_and_bad_input_creates_nothing(
        watched: App, settings: Settings, repo: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    requirements = tmp_path / "requirements.md"
    requirements.write_text("Add a farewell function.\n", encoding="utf-8")
    files = tmp_path / "files"
    files.mkdir()

    @_profile(60)
    @given(argv=st.one_of(bad_start(repo, requirements), other_commands(files)))
    def check(argv: list[str]) -> None:
        note(f"argv: {argv!r}")
        exit_code, out, err = _run_cli(argv, capsys)
        _assert_documented(argv, exit_code, out, err)
        if argv[:2] == ["run", "start"]:
            assert exit_code != 0, (argv, out)
        _nothing_created(watched, settings, repo)

    check()

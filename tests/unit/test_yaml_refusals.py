"""YAML that definitions and config.yaml refuse before anything expands or hashes it:
anchors and aliases (the "billion laughs"), deep nesting, values that are not JSON;
each with its file and line, and a broken file never hiding the others."""

from __future__ import annotations

import textwrap
import tracemalloc
from pathlib import Path

import pytest

from devflow import backends
from devflow.catalog import Catalog, Dirs
from devflow.errors import Code, DevflowError
from devflow.settings import Settings
from devflow.yamlsource import parse_yaml
from tests.unit.malformed_definitions import GOOD_PERSONA, GOOD_TEMPLATE, alias_bomb


def _refused(text: str, path: Path | None = None) -> DevflowError:
    with pytest.raises(DevflowError) as caught:
        parse_yaml(text, path)
    assert caught.value.code is Code.YAML_INVALID and caught.value.exit_code == 2
    assert caught.value.hint
    return caught.value


def test_an_alias_bomb_is_refused_at_its_first_anchor_without_growing(tmp_path: Path) -> None:
    text = alias_bomb()
    assert len(text.encode()) < 1024
    path = tmp_path / "bomb.yaml"
    tracemalloc.start()
    try:
        error = _refused(text, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # expanded, it would take gigabytes
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "&l0" in t)
    assert error.message.startswith(f"{path}:{line}:")
    assert "anchor &l0" in error.message and "not allowed in definitions" in error.message
    assert error.details["line"] == line and error.details["file"] == str(path)


@pytest.mark.parametrize(("text", "line", "says"), [
    ("a: 1\nb: *undefined\n", 2, "alias *undefined"),
    ("base: &base {x: 1}\nother:\n  <<: *base\n", 1, "anchor &base"),   # merge keys need one
    ("a: 1\nb: &lonely 2\n", 2, "anchor &lonely"),                      # an unused anchor too
    ("a: " + "[" * 65 + "]" * 65 + "\n", 1, "nested more than 64 levels deep"),
    ("".join("  " * i + f"k{i}:\n" for i in range(70)) + "  " * 70 + "x\n", 65,
     "nested more than 64 levels deep"),
])
def test_yaml_features_definitions_do_not_allow(text: str, line: int, says: str) -> None:
    error = _refused(text, Path("def.yaml"))
    assert error.message.startswith(f"def.yaml:{line}:") and says in error.message


def test_64_levels_of_yaml_are_read() -> None:
    assert parse_yaml("a: " + "[" * 63 + "]" * 63 + "\n").data["a"] is not None


@pytest.mark.parametrize(("text", "line", "says"), [
    ("name: x\nversion: 2024-01-01\n", 2, "at /version: date values are not JSON"),
    ("when: 2024-01-01 10:00:00\n", 1, "datetime values are not JSON"),
    ("a:\n  b:\n    1: one\n", 3, "at /a/b: the key 1 is not a string (quote it)"),
    ("a: !!binary aGVsbG8=\n", 1, "bytes values are not JSON"),
    ("a: !!set {x}\n", 1, "set values are not JSON"),
    ("a:\n  - .inf\n", 2, "at /a/0: inf is not a JSON number"),
    ('a: "x\\0y"\n', 1, "NUL character"),
    ('a: "\\ud800"\n', 1, "unpaired surrogate"),
])
def test_values_that_are_not_json_are_refused_at_their_line(text: str, line: int,
                                                            says: str) -> None:
    error = _refused(text, Path("def.yaml"))
    assert error.message.startswith(f"def.yaml:{line}:") and says in error.message
    assert "string" in error.hint


@pytest.mark.parametrize("text", [
    "a: !!bool 12\n", "a: !!timestamp soon\n", "a: !!float x\n", "a: !!int x\n",
    "a: " + "1" * 5000 + "\n", "a: \x01\n", "? [a, b]\n: c\n", "a: !!python/name:os.system\n",
])
def test_values_yaml_itself_cannot_read_are_yaml_invalid(text: str) -> None:
    _refused(text)


def test_a_bomb_persona_is_set_aside_and_the_others_stay_usable(tmp_path: Path) -> None:
    bomb = tmp_path / "custom-implementer.yaml"
    bomb.write_text(alias_bomb(), encoding="utf-8")
    (tmp_path / "fine.yaml").write_text(GOOD_PERSONA.replace("custom-implementer", "fine"),
                                        encoding="utf-8")
    catalog = Catalog(Dirs.with_builtins(personas=[tmp_path]),
                      check_persona_options=backends.check_options)
    assert catalog.persona("fine@1").backend == "scripted"
    assert catalog.persona("scripted-implementer@1").backend == "scripted"
    [broken] = catalog.broken()
    assert broken.path == bomb and broken.error.code is Code.YAML_INVALID
    with pytest.raises(DevflowError) as caught:  # named when it is asked for (by file name)
        catalog.persona("custom-implementer@1")
    assert caught.value.code is Code.YAML_INVALID


def test_a_template_with_an_anchor_is_refused_by_templates_validate(tmp_path: Path) -> None:
    assert "  reviewer: {}\n" in GOOD_TEMPLATE
    text = GOOD_TEMPLATE.replace("  reviewer: {}\n", "  reviewer: &r {}\n  auditor: *r\n")
    path = tmp_path / "t.yaml"
    path.write_text(text, encoding="utf-8")
    catalog = Catalog(Dirs.with_builtins(), check_persona_options=backends.check_options)
    with pytest.raises(DevflowError) as caught:
        catalog.check_file(path, "template")
    assert caught.value.code is Code.YAML_INVALID and f"{path}:7:" in caught.value.message


@pytest.mark.parametrize(("text", "says"), [
    ("max_concurrent_runs: &n 5\nmax_recoveries: *n\n", "anchor &n"),
    ("groups:\n  leads: " + "[" * 70 + "]" * 70 + "\n", "nested more than 64"),
    ("actor: 2024-01-01\n", "date values are not JSON"),
])
def test_config_yaml_refuses_the_same(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "config.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(DevflowError) as caught:
        Settings.load(env={"DEVFLOW_HOME": str(tmp_path)})
    error = caught.value
    assert error.code is Code.CONFIG_INVALID and says in error.message
    assert str(tmp_path / "config.yaml") in error.message and error.details["line"]

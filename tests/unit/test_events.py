"""The event vocabulary: one declaration per type, every emission through it, the docs
generated from it (devflow/events.py)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from devflow import events, states
from devflow.states import RunState

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "devflow"
REGISTRY = PACKAGE / "events.py"
#: the names of the module's EventType constants
CONSTANTS = {name for name, value in vars(events).items()
             if isinstance(value, events.EventType)}


@functools.cache
def _trees() -> list[tuple[Path, ast.Module]]:
    """devflow's modules parsed, once for the three tests that read them (nothing
    changes them: ``ast.walk`` only reads)."""
    return [(path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
            for path in sorted(PACKAGE.rglob("*.py")) if path != REGISTRY]


def test_docs_events_md_is_what_the_registry_generates() -> None:
    written = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    assert written == events.markdown(), \
        "docs/events.md differs from devflow/events.py: python -m devflow.events > docs/events.md"


def test_the_docs_name_every_declared_type_and_field() -> None:
    written = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    for declared in events.declared():
        assert f"\n## {declared.name}\n" in written
        section = written.split(f"\n## {declared.name}\n")[1].split("\n## ")[0]
        for field in declared.fields:
            assert f"| `{field.name}` |" in section, (declared.name, field.name)


def test_no_code_builds_an_event_without_the_registry() -> None:
    """Every ``NewEvent`` in devflow/ is made by ``EventType.new``."""
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "NewEvent":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_no_code_spells_an_event_name_as_a_string() -> None:
    """A type is named through its declaration (``events.AGENT_EXITED.name``), so a
    renamed or removed type fails at import or in mypy, never silently."""
    names = {t.name for t in events.declared()}
    found = [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
             for path, tree in _trees() for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in names]
    assert found == []


def test_every_declared_type_is_emitted_somewhere() -> None:
    """The vocabulary has no dead words: each constant is used outside the registry
    (the run's terminal events through ``events.ENDED``)."""
    used = {node.attr for _, tree in _trees() for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "events"}
    assert "ENDED" in used
    through_ended = {name for name in CONSTANTS
                     if getattr(events, name) in events.ENDED.values()}
    assert CONSTANTS - used - through_ended == set()


def test_each_terminal_state_has_its_event() -> None:
    assert set(events.ENDED) == set(states.TERMINAL)
    assert all(t.name == f"run.{state}" for state, t in events.ENDED.items())


def test_a_declared_event_is_built() -> None:
    new = events.AGENT_PROGRESS.new("spec", {"attempt": 1, "notes": ["reading"]}, key="k")
    assert (new.type, new.phase, dict(new.payload), new.key) == (
        "agent.progress", "spec", {"attempt": 1, "notes": ["reading"]}, "k")
    # fields present only sometimes may be left out
    assert events.ENDED[RunState.COMPLETED].new(payload={"by": "devflow"}).type == \
        "run.completed"


@pytest.mark.parametrize(("phase", "payload", "problem"), [
    ("spec", {"attempt": 1}, "field 'notes' is missing"),
    ("spec", {"attempt": 1, "notes": [], "mood": "ok"}, "field 'mood' is not declared"),
    ("spec", {"attempt": "1", "notes": []}, "field 'attempt' is str, declared integer"),
    ("spec", {"attempt": True, "notes": []}, "field 'attempt' is bool, declared integer"),
    (None, {"attempt": 1, "notes": []}, "a phase event needs the phase's key"),
])
def test_a_payload_unlike_its_declaration_is_refused(
        phase: str | None, payload: dict[str, object], problem: str) -> None:
    with pytest.raises(events.EventError, match=r"agent\.progress") as caught:
        events.AGENT_PROGRESS.new(phase, payload)
    assert problem in str(caught.value)


def test_a_run_event_takes_no_phase_and_nullable_fields_take_null() -> None:
    with pytest.raises(events.EventError, match="not a phase event"):
        events.SETUP_COMPLETED.new("spec", {"commands": 1})
    payload = {"by": "ann", "reason": None, "from": "executing", "authentication": None}
    assert events.RUN_PAUSED.new(payload=payload).payload["reason"] is None
    with pytest.raises(events.EventError, match="'from' is NoneType, declared string"):
        events.RUN_PAUSED.new(payload={**payload, "from": None})


def test_an_undeclared_name_is_an_error() -> None:
    assert events.get("phase.started") is events.PHASE_STARTED
    with pytest.raises(events.EventError, match=r"no event type 'phase\.begun'"):
        events.get("phase.begun")

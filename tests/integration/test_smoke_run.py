"""A run of development@1 with scripted agents, from start to report, on both databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devflow import events as vocabulary
from devflow import git
from devflow.app import App
from devflow.approvals import DecisionRequest, new_token
from devflow.backends import scripted
from devflow.engine.start import StartRequest
from tests.conftest import SCRIPTED
from tests.integration.helpers import quick


def test_development_run_reaches_a_validated_report(app: App, repo: Path) -> None:
    view = app.start(StartRequest(repo=repo, base="main", template="development@1",
                                  requirements="Add a farewell function.", actor="tester",
                                  binds=SCRIPTED, scenarios={"plan": "plan:0"}))
    gates = []
    while view.gate is not None:
        gates.append(view.gate.gate)
        app.decide(DecisionRequest(run_id=view.run.id, action="approve", actor="tester",
                                   token=new_token()))
        view, drove = app.drive(view.run.id)
        assert drove
    assert gates == ["spec_review", "final_review"]
    assert view.run.state == "completed"
    assert [p.state for p in view.phases] == ["completed"] * 4
    report = json.loads((Path(view.run.workspace) / "report.json").read_text())
    assert app.catalog.schemas.validate("common/final-report@1", report) == []
    assert report["run"]["state"] == "completed"
    subjects = git.out(["log", "--format=%s", f"{view.run.base_sha}..{view.run.branch}"], repo)
    assert subjects.splitlines() == [f"devflow({k}): attempt 1"
                                     for k in ("review", "implement", "plan", "spec")]
    events = list(app.events(view.run.id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # what was stored is what devflow/events.py declares, payloads included
    assert [(e.type, found) for e in events
            if (found := vocabulary.get(e.type).problems(e.phase, e.payload))] == []


def test_the_scripted_agent_takes_its_script_from_a_file_when_it_is_large(
        app: App, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script goes to the agent in its environment, or in a file past a size (an
    environment string is capped); both ways the agent does the same."""
    view = app.start(quick(repo))
    assert view.run.state == "completed"
    assert not list((Path(view.run.workspace) / "logs").rglob("*.script.json"))
    monkeypatch.setattr(scripted, "_SCRIPT_IN_ENV", 0)
    view = app.start(quick(repo))
    assert view.run.state == "completed"
    assert [p.state for p in view.phases] == ["completed"] * len(view.phases)
    files = sorted(p.name for p in (Path(view.run.workspace) / "logs").rglob("*.script.json"))
    assert files == sorted(f"{p.key}.attempt-1.script.json" for p in view.phases)

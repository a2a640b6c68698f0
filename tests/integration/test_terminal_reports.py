"""Every terminal move gets its final report by one path (DESIGN.md §3.2).

A transaction that moves a run into a terminal state (``RunTx.move_run``, the one way
a run's state changes) makes ``Context.change`` write the report once it committed;
no call site writes one by hand. Three checks keep it so:

- every move into completed, failed or aborted that the run move table allows, taken
  from the table (not a list written here), is made by a bare ``move_run`` and finds
  its report written: a new terminal move is covered the day it enters the table;
- no code outside the store opens a run transaction but through ``Context.change``,
  and ``write_report`` has no caller but it and the two recoveries (the sweep's
  missing reports, a report asked for whose file is gone): a call site that would
  end a run and skip the report cannot exist;
- the ways a person, a driver or the sweep end a run, through the real entry points
  (the CLI's ``run abort`` at a gate, a reject, the sweep failing a run, ...), leave
  the report, written after the terminal event.
"""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from devflow import model
from devflow.app import App
from devflow.approvals import DecisionRequest, new_token
from devflow.errors import DevflowError
from devflow.requests import StartRequest
from devflow.settings import Settings
from devflow.states import RUN_MOVES, TERMINAL, RunState
from tests.conftest import ROOT
from tests.integration.helpers import QUICK_BINDS, development, quick

#: every (from, to) of the move table that ends a run
TERMINAL_MOVES = [(source, target) for source in RunState
                  for target in sorted(RUN_MOVES[source]) if target in TERMINAL]


def assert_reported(app: App, run_id: str, state: RunState) -> None:
    """The run is ``state`` with its report written, composed from the committed state,
    and ``report.written`` follows the terminal event."""
    run = app.store.runs.get(run_id)
    assert (run.state, run.report_status) == (state, "written"), (run.state, run.report_status)
    body = json.loads((Path(run.workspace) / "report.json").read_text(encoding="utf-8"))
    assert body["run"]["state"] == str(state)
    assert app.catalog.schemas.validate("common/final-report@1", body) == []
    assert (Path(run.workspace) / "report.md").is_file()
    types = [e.type for e in app.events(run_id)]
    assert types.count(f"run.{state}") == 1, types
    assert "report.written" in types[types.index(f"run.{state}") + 1:], types


# -- the move table ---------------------------------------------------------------------------
def test_the_table_has_terminal_moves_from_every_state_that_is_not_final() -> None:
    assert {source for source, _ in TERMINAL_MOVES} == set(RunState) - TERMINAL
    assert {target for _, target in TERMINAL_MOVES} == TERMINAL


@pytest.mark.parametrize(("source", "target"), TERMINAL_MOVES,
                         ids=[f"{s}-to-{t}" for s, t in TERMINAL_MOVES])
def test_every_terminal_move_of_the_table_writes_the_report(app: App, repo: Path,
                                                            source: RunState,
                                                            target: RunState) -> None:
    run_id = app.start(quick(repo), detach=True).run.id  # bound, its worktree made
    # put the run in ``source`` as it is (the move table, not a path to it, is tested)
    app.store.db.write(lambda conn: conn.execute(
        sa.text("UPDATE run SET state = :state, paused_from = :paused_from WHERE id = :id"),
        {"state": str(source), "id": run_id,
         "paused_from": str(RunState.EXECUTING) if source is RunState.PAUSED else None}))
    app.context().change(run_id, lambda tx: tx.move_run(
        target, model.NewEvent(f"run.{target}", payload={"by": "tester"})))
    assert_reported(app, run_id, target)


# -- no way around it ---------------------------------------------------------------------------
def _calls(path: Path) -> Iterator[tuple[str, int]]:
    """What in ``path`` opens a run transaction or writes a report: (what, line)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("RunTx", "write_report"):
            yield func.id, node.lineno
        elif isinstance(func, ast.Attribute):
            if func.attr == "write_report":
                yield "write_report", node.lineno
            elif func.attr == "change" and isinstance(func.value, ast.Attribute) \
                    and func.value.attr == "runs":
                yield "runs.change", node.lineno


def test_a_run_changes_only_through_context_change_and_reports_have_one_writer() -> None:
    package = ROOT / "devflow"
    found: dict[tuple[str, str], int] = {}
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "store"):
            continue
        where = path.relative_to(ROOT).as_posix()
        for what, _ in _calls(path):
            found[(what, where)] = found.get((what, where), 0) + 1
    assert found == {
        ("runs.change", "devflow/engine/context.py"): 1,  # Context.change
        ("write_report", "devflow/engine/context.py"): 1,  # after a terminal move's commit
        ("write_report", "devflow/sweep.py"): 1,  # terminal runs without a report
        ("write_report", "devflow/app.py"): 1,  # a report asked for whose file is gone
    }, found


# -- the real ways a run ends -------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now


TIMED = """\
name: timed
version: 1
roles: {implementer: {}, reviewer: {}}
gates:
  check: {message: Look., timeout: 1h}
phases:
  - key: implement
    roles: [implementer]
    artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
    gates: [check]
"""


def _at_gate(app: App, repo: Path) -> str:
    view = app.start(development(repo))
    assert view.gate is not None and view.gate.gate == "spec_review"
    return view.run.id


def _decide(app: App, run_id: str, action: str) -> None:
    app.decide(DecisionRequest(run_id=run_id, action=action, actor="tester",
                               token=new_token(), comment="Not this way."))


def completed(app: App, repo: Path, **_: Any) -> str:
    return app.start(quick(repo)).run.id


def failed_after_the_repairs(app: App, repo: Path, **_: Any) -> str:
    return app.start(quick(repo, scenarios={"implement": "invalid"})).run.id


def failed_making_the_worktree(app: App, repo: Path, **_: Any) -> str:
    blocked = Path(app.settings.workspace) / "blocked" / "main"
    blocked.mkdir(parents=True)
    (blocked / "squatter.txt").write_text("not a worktree\n", encoding="utf-8")
    with pytest.raises(DevflowError):
        app.start(quick(repo, run_id="blocked"))
    return "blocked"


def rejected_at_the_gate(app: App, repo: Path, **_: Any) -> str:
    run_id = _at_gate(app, repo)
    _decide(app, run_id, "reject")
    return run_id


def aborted_by_decision_at_the_gate(app: App, repo: Path, **_: Any) -> str:
    run_id = _at_gate(app, repo)
    _decide(app, run_id, "abort")
    return run_id


def aborted_from_the_cli_at_the_gate(app: App, repo: Path, cli: Any, **_: Any) -> str:
    run_id = _at_gate(app, repo)
    cli("run", "abort", run_id, "--reason", "changed my mind", "--json", check=0)
    return run_id


def aborted_while_paused(app: App, repo: Path, **_: Any) -> str:
    run_id = _at_gate(app, repo)
    app.pause(run_id, "tester")
    app.abort(run_id, "tester", "not now")
    return run_id


def failed_by_the_sweep(app: App, repo: Path, **_: Any) -> str:
    run_id = app.start(quick(repo), detach=True).run.id
    assert app.store.leases.claim(run_id, "ghost", -1) is not None  # a driver that died
    assert [a.kind for a in app.sweep(policy="fail").actions] == ["failed"]
    return run_id


def failed_by_the_gate_timeout(app: App, repo: Path, tmp_path: Path, **_: Any) -> str:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "timed.yaml").write_text(TIMED, encoding="utf-8")
    clock = Clock()
    timed = App(app.settings.replace(templates_dirs=(templates,)), clock=clock)
    try:
        view = timed.start(StartRequest(repo=repo, base="main", template="timed@1",
                                        requirements="r", actor="tester", binds=QUICK_BINDS))
        assert view.gate is not None
        clock.now += timedelta(hours=2)
        assert [a.kind for a in timed.sweep().actions] == ["timed_out"]
        return view.run.id
    finally:
        timed.close()


ENDINGS: dict[str, tuple[Callable[..., str], RunState]] = {
    "completed": (completed, RunState.COMPLETED),
    "failed_after_the_repairs": (failed_after_the_repairs, RunState.FAILED),
    "failed_making_the_worktree": (failed_making_the_worktree, RunState.FAILED),
    "rejected_at_the_gate": (rejected_at_the_gate, RunState.FAILED),
    "aborted_by_decision_at_the_gate": (aborted_by_decision_at_the_gate, RunState.ABORTED),
    "aborted_from_the_cli_at_the_gate": (aborted_from_the_cli_at_the_gate, RunState.ABORTED),
    "aborted_while_paused": (aborted_while_paused, RunState.ABORTED),
    "failed_by_the_sweep": (failed_by_the_sweep, RunState.FAILED),
    "failed_by_the_gate_timeout": (failed_by_the_gate_timeout, RunState.FAILED),
}


def test_the_endings_reach_every_terminal_state() -> None:
    assert {state for _, state in ENDINGS.values()} == TERMINAL


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_each_way_a_run_ends_leaves_its_report(app: App, repo: Path, tmp_path: Path,
                                               settings: Settings, cli: Any,
                                               ending: str) -> None:
    end, state = ENDINGS[ending]
    run_id = end(app, repo, cli=cli, tmp_path=tmp_path)
    assert_reported(app, run_id, state)

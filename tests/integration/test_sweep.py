"""The sweep on both databases: escalation chains and deadlines under a controllable clock,
expired leases with a real orphaned process, max_recoveries, missing reports, dry runs."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devflow import access, model
from devflow.app import App
from devflow.approvals import DecisionRequest, new_token
from devflow.backends import process
from devflow.engine.start import StartRequest
from devflow.settings import Settings
from devflow.states import PhaseState, RunState
from tests.conftest import SCRIPTED

GATED = """\
name: gated
version: 1
roles: {implementer: {}, reviewer: {}}
gates:
  check:
    message: Check the implementation.
    approvers: [alice]
    timeout: 10h
    warn_before: 1h
    escalation:
      - {after: 1h, to: [bob], keep_previous: false, audit_reason: "alice did not answer"}
      - {after: 2h, to: [carol], audit_reason: "bob did not answer either"}
      - {after: 3h, action: reject, audit_reason: "nobody answered in 3h"}
phases:
  - key: implement
    roles: [implementer]
    artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
    gates: [check]
"""

TIMED = """\
name: timed
version: 1
roles: {implementer: {}, reviewer: {}}
gates:
  check: {message: Look., timeout: 1h, warn_before: 15m}
phases:
  - key: implement
    roles: [implementer]
    artifact: {path: .devflow/implementation.json, schema: dev/implementation@1}
    gates: [check]
"""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, **delta: float) -> None:
        with self._lock:
            self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "gated.yaml").write_text(GATED)
    (directory / "timed.yaml").write_text(TIMED)
    return directory


@pytest.fixture
def timed_app(settings: Settings, templates: Path, clock: Clock) -> Iterator[App]:
    application = App(settings.replace(templates_dirs=(templates,)), clock=clock)
    yield application
    application.close()


def _start(app: App, repo: Path, template: str, *, detach: bool = False) -> str:
    view = app.start(StartRequest(repo=repo, base="main", template=template,
                                  requirements="r", actor="tester",
                                  binds={"implementer": SCRIPTED["implementer"],
                                         "reviewer": SCRIPTED["reviewer"]}), detach=detach)
    return view.run.id


def _types(app: App, run_id: str) -> list[str]:
    return [e.type for e in app.events(run_id)]


def test_escalation_chain_applies_each_step_once_in_order(timed_app: App, repo: Path,
                                                          clock: Clock) -> None:
    run_id = _start(timed_app, repo, "gated@1")
    approval = timed_app.view(run_id).gate
    assert approval is not None and approval.approvers == ("alice",)

    clock.advance(minutes=59)
    assert [a.kind for a in timed_app.sweep().actions] == []
    clock.advance(minutes=1)
    assert [a.kind for a in timed_app.sweep().actions] == ["escalated"]
    assert timed_app.store.approvals.get(approval.id).approvers == ("bob",)

    clock.advance(hours=1)
    results: list[list[str]] = []
    barrier = threading.Barrier(2)

    def sweep() -> None:
        barrier.wait()
        results.append([a.kind for a in timed_app.sweep().actions])

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [[], ["escalated"]]
    assert timed_app.store.approvals.get(approval.id).approvers == ("bob", "carol")

    clock.advance(hours=1)
    kinds = [a.kind for a in timed_app.sweep().actions]
    assert kinds == ["decided"]
    run = timed_app.store.runs.get(run_id)
    assert run.state is RunState.FAILED
    assert run.failure_code == "approval_rejected"
    assert timed_app.sweep().actions == []
    escalated = [e for e in timed_app.events(run_id) if e.type == "approval.escalated"]
    assert [e.payload["step"] for e in escalated] == [1, 2, 3]
    report = json.loads((Path(run.workspace) / "report.json").read_text())
    decisions = report["approvals"][0]["decisions"]
    assert [(d["actor"], d["action"], d["comment"]) for d in decisions] == [
        ("system:escalation", "reject", "nobody answered in 3h")]
    assert decisions[0]["authentication"] == {
        "method": "system", "principal": "system:escalation", "id": None,
        "attribution": "self"}


def test_escalation_stops_when_a_person_decides(timed_app: App, repo: Path,
                                                clock: Clock) -> None:
    run_id = _start(timed_app, repo, "gated@1")
    clock.advance(hours=1, minutes=1)
    assert [a.kind for a in timed_app.sweep().actions] == ["escalated"]
    # bob, the approver the chain escalated to, as the CLI would authenticate him
    timed_app.decide(DecisionRequest(run_id=run_id, action="approve", actor="bob",
                                     token=new_token(),
                                     principal=access.Principal(access.OS_ACCOUNT, "bob")))
    clock.advance(hours=9)
    assert timed_app.sweep().actions == []
    assert _types(timed_app, run_id).count("approval.escalated") == 1
    view, _ = timed_app.drive(run_id)
    assert view.run.state is RunState.COMPLETED


def test_gate_timeout_without_chain_warns_once_then_rejects(timed_app: App, repo: Path,
                                                            clock: Clock) -> None:
    run_id = _start(timed_app, repo, "timed@1")
    clock.advance(minutes=46)
    assert [a.kind for a in timed_app.sweep().actions] == ["warned"]
    assert timed_app.sweep().actions == []
    clock.advance(minutes=15)
    assert [a.kind for a in timed_app.sweep().actions] == ["timed_out"]
    run = timed_app.store.runs.get(run_id)
    assert run.state is RunState.FAILED and run.failure_code == "approval_timeout"
    assert _types(timed_app, run_id).count("approval.expiring") == 1
    assert run.report_status == "written"


def _ghost_attempt(app: App, run_id: str, clock: Clock,
                   start: int | None = None) -> subprocess.Popen[bytes]:
    """What a driver that died mid-agent leaves: a lease, a running phase, a live agent
    (recorded with its start time, or with ``start`` when given)."""
    lease = app.store.leases.claim(run_id, "ghost:host:1", 30)
    assert lease is not None
    agent = subprocess.Popen(["sleep", "60"], start_new_session=True)
    recorded = process.start_time(agent.pid) if start is None else start

    def fn(tx: object) -> None:
        from devflow.store import RunTx
        assert isinstance(tx, RunTx)
        tx.move_run(RunState.EXECUTING)
        tx.move_phase("implement", PhaseState.RUNNING, model.NewEvent("phase.started",
                      "implement", {"attempt": 1}), attempt=1)
        tx.start_invocation(phase_key="implement", attempt=1, kind="agent", backend="scripted",
                            argv=["sleep", "60"], host=app.context().host, pid=agent.pid,
                            pgid=agent.pid, process_start=recorded)
    app.store.runs.change(run_id, fn, lease=lease)
    return agent


def test_expired_lease_is_recovered_and_its_orphan_killed(timed_app: App, repo: Path,
                                                          clock: Clock) -> None:
    run_id = _start(timed_app, repo, "quick@1", detach=True)
    agent = _ghost_attempt(timed_app, run_id, clock)
    try:
        assert timed_app.sweep().actions == []  # the lease is alive: untouched
        assert process.group_alive(agent.pid)
        clock.advance(seconds=31)
        assert [a.kind for a in timed_app.sweep(dry_run=True).actions] == ["would_recover"]
        assert process.group_alive(agent.pid)
        kinds = [a.kind for a in timed_app.sweep().actions]
        assert kinds == ["recovered"]
        assert agent.wait(timeout=5) is not None
    finally:
        if agent.poll() is None:
            agent.kill()
    run = timed_app.store.runs.get(run_id)
    assert run.lease_owner is None and run.recoveries == 1
    interrupted = [e for e in timed_app.events(run_id) if e.type == "phase.interrupted"]
    assert interrupted[0].payload["agents"][0]["agent"] == "killed"
    assert interrupted[0].payload["artifact"] == "absent"
    view, drove = timed_app.drive(run_id)
    assert drove and view.run.state is RunState.COMPLETED
    implement = next(p for p in view.phases if p.key == "implement")
    assert implement.attempt == 2


def test_a_reused_pid_is_left_alone_and_the_sweep_says_so(timed_app: App, repo: Path,
                                                           clock: Clock) -> None:
    """The recorded pid is that of a live, unrelated process (it started at another time
    than the recorded agent): the sweep recovers the run and kills nothing."""
    run_id = _start(timed_app, repo, "quick@1", detach=True)
    unrelated = _ghost_attempt(timed_app, run_id, clock, start=1)  # not its start time
    try:
        clock.advance(seconds=31)
        dry = timed_app.sweep(dry_run=True).actions
        assert dry[0].detail["agents"][0]["agent"].startswith("gone; pid ")
        actions = timed_app.sweep().actions
        assert [a.kind for a in actions] == ["recovered"]
        said = actions[0].detail["agents"][0]["agent"]
        assert said == (f"gone; pid {unrelated.pid} now belongs to another process, "
                        f"left alone"), said
        assert unrelated.poll() is None and process.group_alive(unrelated.pid)
    finally:
        unrelated.kill()
        unrelated.wait()
    interrupted = [e for e in timed_app.events(run_id) if e.type == "phase.interrupted"]
    assert "left alone" in interrupted[0].payload["agents"][0]["agent"]


def test_too_many_recoveries_fail_the_run_with_a_report(timed_app: App, repo: Path,
                                                        clock: Clock) -> None:
    run_id = _start(timed_app, repo, "quick@1", detach=True)
    for _ in range(timed_app.settings.max_recoveries + 1):
        lease = timed_app.store.leases.claim(run_id, "ghost", 30)
        assert lease is not None
        clock.advance(seconds=31)
        timed_app.sweep()
    run = timed_app.store.runs.get(run_id)
    assert run.state is RunState.FAILED
    assert run.failure_code == "process_restart_unrecovered"
    assert (Path(run.workspace) / "report.json").exists()


def test_policy_fail_fails_at_the_first_recovery(timed_app: App, repo: Path,
                                                 clock: Clock) -> None:
    run_id = _start(timed_app, repo, "quick@1", detach=True)
    assert timed_app.store.leases.claim(run_id, "ghost", 30) is not None
    clock.advance(seconds=31)
    assert [a.kind for a in timed_app.sweep(policy="fail").actions] == ["failed"]
    assert timed_app.store.runs.get(run_id).failure_code == "process_restart_unrecovered"


def test_missing_report_is_written(app: App, repo: Path) -> None:
    run_id = _start(app, repo, "quick@1", detach=True)
    app.abort(run_id, "tester", "for the test")
    report = Path(app.store.runs.get(run_id).workspace) / "report.json"
    report.unlink()
    app.store.runs.change(run_id, lambda tx: tx.set_run(report_status=None))
    assert [a.kind for a in app.sweep(dry_run=True).actions] == ["report_missing"]
    assert not report.exists()
    assert [a.kind for a in app.sweep().actions] == ["report_written"]
    assert json.loads(report.read_text())["run"]["state"] == "aborted"


def test_worker_once_drives_detached_runs_and_registers(app: App, tmp_path: Path) -> None:
    from devflow.requests import WorkerOptions
    from tests.conftest import make_repo
    runs = [_start(app, make_repo(tmp_path / f"r{i}"), "quick@1", detach=True) for i in range(3)]
    stats = app.work(WorkerOptions(name="t", concurrency=2, poll=0.1, once=True))
    assert sorted(stats.driven) == sorted(runs)
    assert all(app.store.runs.get(r).state is RunState.COMPLETED for r in runs)
    workers = app.workers(include_stopped=True)
    assert [w.name for w in workers] == ["t"] and workers[0].stopped_at is not None

"""Runs end to end through the library, on SQLite and PostgreSQL: reports, repairs, agent
failures and timeouts, phase plans, checkpoint commits, events, re-created worktrees."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from devflow import git, model
from devflow.app import App, RunView
from devflow.approvals import DecisionRequest, new_token
from devflow.errors import Code, DevflowError
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.integration.helpers import (
    alive,
    app_with_templates,
    approve_through,
    commits_by_subject,
    development,
    procs_of_run,
    quick,
    report_of,
    subjects,
    worktrees,
    write_template,
)

#: What this run must have logged, in DESIGN.md's vocabulary (types may be added, never renamed).
EXPECTED_TYPES = {
    "run.created", "run.completed", "phase.started", "phase.artifact_invalid",
    "phase.completed", "phase.planned", "checkpoint.committed", "agent.started",
    "agent.exited", "approval.requested", "approval.resolved", "report.written",
}


def _valid_report(app: App, view: RunView) -> dict[str, Any]:
    assert view.run.report_status == "written"
    body = report_of(view)
    assert app.catalog.schemas.validate("common/final-report@1", body) == []
    assert body["run"]["id"] == view.run.id
    assert body["run"]["state"] == str(view.run.state)
    assert (Path(view.run.workspace) / "report.md").is_file()
    return body


def _phase(view: RunView, key: str) -> Any:
    return next(p for p in view.phases if p.key == key)


def _invalid_events(app: App, run_id: str, phase: str) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in app.events(run_id)
            if e.type == "phase.artifact_invalid" and e.phase == phase]


# -- happy path ---------------------------------------------------------------------------
def test_quick_run_completes_with_a_valid_report(app: App, repo: Path) -> None:
    view = app.start(quick(repo))
    assert view.gate is None
    assert view.run.state == "completed"
    assert [(p.key, p.state, p.attempt) for p in view.phases] == [
        ("implement", "completed", 1), ("review", "completed", 1)]
    body = _valid_report(app, view)
    assert [p["state"] for p in body["phases"]] == ["completed", "completed"]
    assert body["validation_errors"] == []
    assert body["run"]["failure"] is None
    assert {c["subject"] for c in body["git"]["commits"]} == {
        "devflow(implement): attempt 1", "devflow(review): attempt 1"}
    # the scripted implementer edits README.md: the diffstat says so
    assert "README.md" in {f["path"] for f in body["git"]["files"]}
    markdown = (Path(view.run.workspace) / "report.md").read_text(encoding="utf-8")
    assert f"# devflow run {view.run.id}: completed" in markdown
    # what was validated is kept with its sha256
    for phase in view.phases:
        stored = Path(view.run.workspace) / "artifacts" / f"{phase.key}.attempt-1.json"
        assert phase.artifact_stored == str(stored)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == phase.artifact_sha
    assert [e.type for e in app.events(view.run.id)][-1] == "report.written"


def test_run_gets_its_own_worktree_and_branch(app: App, repo: Path) -> None:
    view = app.start(quick(repo), detach=True)
    run = view.run
    assert run.state == "bound"
    assert run.branch == f"devflow/{run.id}/main"
    assert Path(run.worktree) == Path(app.settings.workspace) / run.id / "main"
    assert Path(run.worktree).resolve() in [p.resolve() for p in worktrees(repo)]
    assert git.out(["rev-parse", "--abbrev-ref", "HEAD"], Path(run.worktree)) == run.branch
    assert run.base_sha == git.out(["rev-parse", "main"], repo)
    # left to workers: the lease taken to create it was given up with its worktree
    assert (run.lease_owner, run.lease_expires_at, run.lease_fence) == (None, None, 1)
    assert [e.type for e in app.events(run.id)][-1] == "worktree.created"
    assert app.store.runs.get(run.id) == run
    view, drove = app.drive(run.id)
    assert drove and view.run.state == "completed"
    assert view.run.lease_fence == 2


def test_a_started_run_is_returned_as_stored(app: App, repo: Path) -> None:
    """start returns the run as the worktree's transaction left it, not read again."""
    import anyio

    from devflow.engine import start as engine_start
    ctx = app.context()
    detached = anyio.run(engine_start.start_detached, ctx, quick(repo), "tester-1")
    assert detached == app.store.runs.get(detached.id)
    git.run(["branch", "other"], repo)  # one active run per branch
    held, lease = anyio.run(engine_start.start, ctx, quick(repo, base="other"), "tester-2")
    assert held == app.store.runs.get(held.id)
    assert (held.lease_owner, held.lease_fence) == (lease.owner, lease.fence) == ("tester-2", 1)
    assert app.store.leases.release(held.id, lease)


# -- repairs ------------------------------------------------------------------------------
def test_repair_that_succeeds_feeds_the_errors_back(app: App, repo: Path) -> None:
    view = app.start(quick(repo, scenarios={"implement": "invalid-then-ok"}))
    assert view.run.state == "completed"
    implement = _phase(view, "implement")
    assert (implement.attempt, implement.repairs) == (2, 1)
    assert [i.attempt for i in app.store.runs.invocations(view.run.id)
            if i.phase_key == "implement"] == [1, 2]
    refused = _invalid_events(app, view.run.id, "implement")
    assert [r["attempt"] for r in refused] == [1]
    assert refused[0]["code"] == "artifact_invalid" and refused[0]["repair"] is True
    messages = [e["message"] for e in refused[0]["errors"]]
    assert any("'summary' is a required property" in m for m in messages)

    prompts = Path(view.run.workspace) / "prompts"
    first = (prompts / "implement.attempt-1.md").read_text(encoding="utf-8")
    second = (prompts / "implement.attempt-2.md").read_text(encoding="utf-8")
    assert "previous attempt was refused" not in first
    assert "previous attempt was refused" in second
    assert "artifact_invalid" in second
    for message in messages:
        assert message in second
    # what validated is kept as the artifact; the refused bytes beside it, to be read
    kept = Path(view.run.workspace) / "artifacts"
    assert sorted(p.name for p in kept.glob("implement.*")) == [
        "implement.attempt-1.invalid.json", "implement.attempt-2.json"]
    body = _valid_report(app, view)
    assert [(v["phase"], v["attempt"]) for v in body["validation_errors"]] == [("implement", 1)]


def test_repairs_exhausted_fail_the_run_with_the_errors_in_the_report(app: App,
                                                                      repo: Path) -> None:
    view = app.start(quick(repo, scenarios={"implement": "invalid"}))
    assert view.run.state == "failed"
    assert view.run.failure_code == "artifact_invalid"
    implement = _phase(view, "implement")
    assert implement.state == "failed"
    assert (implement.attempt, implement.repairs) == (3, 2)  # max_repairs: 2 in quick@1
    assert implement.failure_code == "artifact_invalid"
    assert "'summary' is a required property" in (implement.failure_reason or "")
    assert implement.artifact_sha is None
    assert _phase(view, "review").attempt == 0  # never started

    body = _valid_report(app, view)
    assert body["run"]["failure"]["code"] == "artifact_invalid"
    assert [(v["phase"], v["attempt"], v["code"]) for v in body["validation_errors"]] == [
        ("implement", n, "artifact_invalid") for n in (1, 2, 3)]
    for entry in body["validation_errors"]:
        assert any("'summary' is a required property" in e["message"] for e in entry["errors"])
    failed = next(p for p in body["phases"] if p["key"] == "implement")
    assert failed["failure"]["code"] == "artifact_invalid"
    assert "'summary' is a required property" in failed["failure"]["reason"]
    markdown = (Path(view.run.workspace) / "report.md").read_text(encoding="utf-8")
    assert "## Validation errors" in markdown
    assert "'summary' is a required property" in markdown
    # no artifact was kept as valid; what each attempt wrote is kept to be read
    assert sorted(p.name for p in (Path(view.run.workspace) / "artifacts").glob(
        "implement.*")) == [f"implement.attempt-{n}.invalid.json" for n in (1, 2, 3)]


@pytest.mark.parametrize(("scenario", "code", "message"), [
    ("exit-1", "agent_failed", "exit code 1"),
    ("no-artifact", "artifact_missing", "no artifact at .devflow/implementation.json"),
])
def test_agent_failures_fail_the_run_after_the_repairs(app: App, repo: Path, scenario: str,
                                                       code: str, message: str) -> None:
    view = app.start(quick(repo, scenarios={"implement": scenario}))
    assert view.run.state == "failed"
    assert view.run.failure_code == code
    implement = _phase(view, "implement")
    assert implement.state == "failed" and implement.attempt == 3
    assert message in (implement.failure_reason or "")
    invocations = app.store.runs.invocations(view.run.id)
    assert [i.attempt for i in invocations] == [1, 2, 3]
    expected_exit = 1 if scenario == "exit-1" else 0
    assert {i.exit_code for i in invocations} == {expected_exit}
    assert all(i.ended_at is not None and i.duration_ms is not None for i in invocations)
    assert all(i.argv and i.pid and i.pgid for i in invocations)
    body = _valid_report(app, view)
    assert [v["code"] for v in body["validation_errors"]] == [code] * 3
    assert [i["exit_code"] for i in body["invocations"]] == [expected_exit] * 3
    # the agent's output went to log files in the run's workspace
    logs = Path(view.run.workspace) / "logs"
    assert (logs / "implement.attempt-1.stdout.log").read_text(encoding="utf-8").strip()


_TIMEOUT_TEMPLATE = """\
    name: short-fuse
    version: 1
    roles:
      implementer:
    phases:
      - key: work
        roles: [implementer]
        artifact:
          path: .devflow/work.json
          schema: dev/implementation@1
        timeout: 1s
        max_repairs: 0
"""


@pytest.mark.parametrize("scenario", ["hang", "slow:30"])
def test_timeout_kills_the_whole_process_group(settings: Settings, repo: Path, tmp_path: Path,
                                               scenario: str) -> None:
    write_template(tmp_path / "templates", "short-fuse", _TIMEOUT_TEMPLATE)
    app = app_with_templates(settings, tmp_path / "templates")
    run_id = f"fuse-{scenario.replace(':', '')}"
    outcome: dict[str, Any] = {}

    def start() -> None:
        try:
            outcome["view"] = app.start(StartRequest(
                repo=repo, base="main", template="short-fuse@1", requirements="x",
                actor="tester", binds={"implementer": "scripted-implementer"},
                scenarios={"work": scenario}, run_id=run_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    try:
        began = time.monotonic()
        thread = threading.Thread(target=start)
        thread.start()
        seen: dict[int, list[str]] = {}
        while thread.is_alive():
            for proc in procs_of_run(run_id):
                try:
                    seen.setdefault(proc.pid, proc.cmdline())
                except psutil.Error:  # it ended meanwhile
                    continue
            time.sleep(0.05)
        thread.join()
        elapsed = time.monotonic() - began
        assert "error" not in outcome, outcome.get("error")
        view: RunView = outcome["view"]
        assert seen, "the agent's processes were never seen running"
        if scenario == "hang":
            assert ["sleep", "3600"] in seen.values(), seen
        assert alive(seen) == [], f"processes of the agent survived: {seen}"
        assert procs_of_run(run_id) == []
        assert elapsed < 15
        assert view.run.state == "failed"
        assert view.run.failure_code == "agent_timeout"
        (invocation,) = app.store.runs.invocations(run_id)
        assert invocation.outcome == "timeout"
        assert invocation.exit_code is None and invocation.signal is not None
        assert 1000 <= (invocation.duration_ms or 0) < 15000
        assert invocation.pgid and _group_members(invocation.pgid) == []
        assert _valid_report(app, view)["run"]["failure"]["code"] == "agent_timeout"
    finally:
        app.close()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


# -- phase plans --------------------------------------------------------------------------
def test_phase_plan_adds_phases_after_review(app: App, repo: Path) -> None:
    view = app.start(development(repo, scenarios={"plan": "plan:2"}))
    view, gates = approve_through(app, view)
    assert gates == ["spec_review", "final_review"]
    assert view.run.state == "completed"
    assert [(p.key, p.origin, p.state) for p in view.phases] == [
        ("spec", "template", "completed"), ("plan", "template", "completed"),
        ("implement", "template", "completed"), ("review", "template", "completed"),
        ("plan-step-1", "plan:plan", "completed"), ("plan-step-2", "plan:plan", "completed")]
    started = [e.phase for e in app.events(view.run.id) if e.type == "phase.started"]
    assert started == ["spec", "plan", "implement", "review", "plan-step-1", "plan-step-2"]
    (planned,) = [e for e in app.events(view.run.id) if e.type == "phase.planned"]
    assert planned.payload["phases"] == ["plan-step-1", "plan-step-2"]
    assert subjects(repo, view.run.base_sha or "", view.run.branch)[-2:] == [
        "devflow(plan-step-1): attempt 1", "devflow(plan-step-2): attempt 1"]
    body = _valid_report(app, view)
    assert [p["key"] for p in body["phases"]][-2:] == ["plan-step-1", "plan-step-2"]


_COLLIDE_TEMPLATE = """\
    name: collide
    version: 1
    roles:
      planner:
      implementer:
    phases:
      - key: plan
        roles: [planner]
        artifact:
          path: .devflow/plan.json
          schema: dev/phase-plan@1
        max_repairs: 1
      - key: plan-step-1
        roles: [implementer]
        artifact:
          path: .devflow/step.json
          schema: dev/implementation@1
"""


def test_phase_plan_key_collision_fails_the_run_clearly(settings: Settings, repo: Path,
                                                        tmp_path: Path) -> None:
    write_template(tmp_path / "templates", "collide", _COLLIDE_TEMPLATE)
    app = app_with_templates(settings, tmp_path / "templates")
    try:
        view = app.start(StartRequest(
            repo=repo, base="main", template="collide@1", requirements="x", actor="tester",
            binds={"planner": "scripted-planner", "implementer": "scripted-implementer"},
            scenarios={"plan": "plan:1"}))
        assert view.run.state == "failed"
        assert view.run.failure_code == "phase_plan_invalid"
        assert "plan-step-1" in (view.run.failure_reason or "")
        assert "already taken" in (view.run.failure_reason or "")
        assert [(p.key, p.state, p.attempt) for p in view.phases] == [
            ("plan", "failed", 2), ("plan-step-1", "pending", 0)]
        body = _valid_report(app, view)
        assert {(v["phase"], v["code"]) for v in body["validation_errors"]} == {
            ("plan", "phase_plan_invalid")}
        pointers = {e["pointer"] for v in body["validation_errors"] for e in v["errors"]}
        assert "/phases/0/key" in pointers
    finally:
        app.close()


# -- checkpoints --------------------------------------------------------------------------
_CHECKPOINT_TEMPLATE = """\
    name: checkpoints
    version: 1
    roles:
      implementer:
    phases:
      - key: first
        roles: [implementer]
        artifact:
          path: .devflow/same.json
          schema: dev/implementation@1
      - key: again
        roles: [implementer]
        artifact:
          path: .devflow/same.json
          schema: dev/implementation@1
      - key: note
        roles: [implementer]
      - key: edit
        roles: [implementer]
        artifact:
          path: .devflow/edit.json
          schema: dev/implementation@1
"""


def test_one_checkpoint_commit_per_phase_that_changed_files(settings: Settings, repo: Path,
                                                           tmp_path: Path) -> None:
    write_template(tmp_path / "templates", "checkpoints", _CHECKPOINT_TEMPLATE)
    app = app_with_templates(settings, tmp_path / "templates")
    try:
        # `again` writes the very bytes `first` wrote: nothing changes, nothing is committed
        view = app.start(StartRequest(
            repo=repo, base="main", template="checkpoints@1", requirements="x", actor="tester",
            binds={"implementer": "scripted-implementer"},
            scenarios={"first": "invalid-then-ok", "again": "ok", "edit": "edit"}))
        assert view.run.state == "completed", view.run.failure_reason
        assert [(p.key, p.state) for p in view.phases] == [
            ("first", "completed"), ("again", "completed"), ("note", "skipped"),
            ("edit", "completed")]
        base, branch = view.run.base_sha or "", view.run.branch
        assert subjects(repo, base, branch) == ["devflow(first): attempt 2",
                                                "devflow(edit): attempt 1"]
        shas = commits_by_subject(repo, base, branch)
        assert _phase(view, "first").checkpoint_sha == shas["devflow(first): attempt 2"]
        assert _phase(view, "again").checkpoint_sha is None
        assert _phase(view, "note").checkpoint_sha is None
        assert _phase(view, "edit").checkpoint_sha == shas["devflow(edit): attempt 1"]
        assert view.run.checkpoint_sha == shas["devflow(edit): attempt 1"]
        committed = [(e.phase, e.payload["sha"]) for e in app.events(view.run.id)
                     if e.type == "checkpoint.committed"]
        assert committed == [("first", shas["devflow(first): attempt 2"]),
                             ("edit", shas["devflow(edit): attempt 1"])]
        # each checkpoint holds what its phase changed, authored by devflow
        files = git.out(["show", "--name-only", "--format=%an <%ae>",
                         shas["devflow(edit): attempt 1"]], repo).splitlines()
        assert files[0] == "devflow <devflow@localhost>"
        assert set(files[1:]) - {""} == {".devflow/edit.json", "README.md"}
        # the worktree holds nothing uncommitted once the run is done
        assert git.out(["status", "--porcelain"], Path(view.run.worktree)) == ""
    finally:
        app.close()


# -- events -------------------------------------------------------------------------------
def test_events_are_numbered_without_gaps(app: App, repo: Path) -> None:
    view = app.start(development(repo, scenarios={"spec": "invalid-then-ok", "plan": "plan:1"}))
    view, _ = approve_through(app, view)
    assert view.run.state == "completed"
    events = list(app.events(view.run.id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(events) > 30
    assert events[0].type == "run.created"
    assert events[-1].type == "report.written"
    types = {e.type for e in events}
    assert types >= EXPECTED_TYPES, EXPECTED_TYPES - types
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*\.[a-z]+(_[a-z]+)*", t) for t in types), types
    assert all(e.run_id == view.run.id for e in events)
    later = list(app.events(view.run.id, after=10))
    assert [e.seq for e in later] == list(range(11, len(events) + 1))
    assert list(app.events(view.run.id, after=len(events))) == []


# -- worktrees ----------------------------------------------------------------------------
def test_worktree_deleted_by_hand_is_recreated(app: App, repo: Path) -> None:
    view = app.start(development(repo))
    assert view.gate is not None and view.gate.gate == "spec_review"
    tree = Path(view.run.worktree)
    spec_commit = _phase(view, "spec").checkpoint_sha
    assert spec_commit
    shutil.rmtree(tree)
    assert not tree.exists()

    view, gates = approve_through(app, view)
    assert gates == ["spec_review", "final_review"]
    assert view.run.state == "completed", view.run.failure_reason
    assert (tree / ".git").is_file()
    assert tree.resolve() in [p.resolve() for p in worktrees(repo)]
    assert git.out(["rev-parse", "--abbrev-ref", "HEAD"], tree) == view.run.branch
    created = [e.payload for e in app.events(view.run.id) if e.type == "worktree.created"]
    assert len(created) == 2
    assert created[1]["from"] == view.run.branch  # re-created from the run's branch
    assert subjects(repo, view.run.base_sha or "", view.run.branch) == [
        "devflow(spec): attempt 1", "devflow(plan): attempt 1",
        "devflow(implement): attempt 1", "devflow(review): attempt 1"]
    assert commits_by_subject(repo, view.run.base_sha or "",
                              view.run.branch)["devflow(spec): attempt 1"] == spec_commit
    _valid_report(app, view)


def test_worktree_failure_after_insert_fails_the_run_with_a_report(app: App,
                                                                  repo: Path) -> None:
    blocked = Path(app.settings.workspace) / "blocked" / "main"
    blocked.mkdir(parents=True)
    (blocked / "squatter.txt").write_text("not a worktree\n", encoding="utf-8")
    with pytest.raises(DevflowError) as caught:
        app.start(quick(repo, run_id="blocked"))
    assert caught.value.code is Code.WORKTREE_FAILED
    run = app.store.runs.get("blocked")
    assert run.state == "failed"
    assert run.failure_code == "worktree_failed"
    assert run.report_status == "written"
    assert [r.id for r in app.runs()] == ["blocked"]
    body = report_of(app.view("blocked"))
    assert app.catalog.schemas.validate("common/final-report@1", body) == []
    assert (blocked / "squatter.txt").exists()  # what was there is not destroyed


def test_decision_after_the_worktree_was_deleted_still_checks_the_evidence(
        app: App, repo: Path, tmp_path: Path) -> None:
    view = app.start(development(repo))
    assert view.gate is not None and view.gate.gate == "spec_review"
    shutil.rmtree(view.run.worktree)
    # someone moves the run branch to a spec the approver never saw
    other = tmp_path / "elsewhere"
    git.run(["worktree", "prune"], repo)
    git.run(["worktree", "add", "--quiet", str(other), view.run.branch], repo)
    (other / ".devflow" / "spec.json").write_text('{"summary": "not what was shown"}\n',
                                                  encoding="utf-8")
    git.run(["commit", "--quiet", "--no-verify", "-am", "swap the spec"], other, env=git.AUTHOR)
    git.run(["worktree", "remove", "--force", str(other)], repo)
    with pytest.raises(DevflowError) as caught:
        app.decide(DecisionRequest(run_id=view.run.id, action="approve", actor="tester",
                                   token=new_token()))
    assert caught.value.code is Code.APPROVAL_STALE
    assert app.view(view.run.id).run.state == "awaiting_approval"


# -- limits -------------------------------------------------------------------------------
def test_artifact_over_the_size_cap_fails_the_phase(settings: Settings, repo: Path) -> None:
    app = App(settings.replace(artifact_max_bytes=64))
    try:
        view = app.start(quick(repo))
        assert view.run.state == "failed"
        assert view.run.failure_code == "artifact_too_large"
        implement = _phase(view, "implement")
        assert "the cap of 64" in (implement.failure_reason or "")
        assert implement.artifact_stored is None
        _valid_report(app, view)
    finally:
        app.close()


def test_events_of_a_long_run_are_all_listed(app: App, repo: Path) -> None:
    view = app.start(quick(repo), detach=True)

    def filler(tx: Any) -> None:
        for i in range(1100):
            tx.event(model.NewEvent("test.filler", None, {"i": i}))

    app.store.runs.change(view.run.id, filler)
    events = list(app.events(view.run.id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(events) > 1100
    assert [e.seq for e in app.events(view.run.id, after=50)][-1] == len(events)


# -- binding ------------------------------------------------------------------------------
_REAL_CLIS = [name for name in ("claude", "codex", "aider") if shutil.which(name)]
_no_real_clis = pytest.mark.skipif(bool(_REAL_CLIS), reason=f"agent CLIs on PATH: {_REAL_CLIS}")


@_no_real_clis
def test_start_without_bind_binds_the_scripted_personas_on_a_fresh_machine(
        app: App, repo: Path) -> None:
    view = app.start(StartRequest(repo=repo, base="main", template="quick@1",
                                  requirements="x", actor="tester"), detach=True)
    bound = {b.role: b.persona_ref for b in app.store.runs.bindings(view.run.id)}
    assert bound == {"implementer": "scripted-implementer@1", "reviewer": "scripted-reviewer@1"}


@_no_real_clis
def test_explicit_bind_to_an_unavailable_backend_is_refused(app: App, repo: Path) -> None:
    with pytest.raises(DevflowError) as caught:
        app.start(StartRequest(repo=repo, base="main", template="quick@1", requirements="x",
                               actor="tester", binds={"implementer": "claude-implementer",
                                                      "reviewer": "scripted-reviewer"}),
                  detach=True)
    assert caught.value.code is Code.BACKEND_UNAVAILABLE
    assert caught.value.exit_code == 2
    assert app.runs() == []


def test_role_no_persona_fills_is_refused_naming_it(settings: Settings, repo: Path,
                                                    tmp_path: Path) -> None:
    write_template(tmp_path / "templates", "lonely", """\
        name: lonely
        version: 1
        roles:
          astronaut:
        phases:
          - key: work
            roles: [astronaut]
            artifact:
              path: .devflow/work.json
              schema: dev/implementation@1
        """)
    app = app_with_templates(settings, tmp_path / "templates")
    try:
        with pytest.raises(DevflowError) as caught:
            app.start(StartRequest(repo=repo, base="main", template="lonely@1",
                                   requirements="x", actor="tester"), detach=True)
        assert caught.value.code is Code.NO_PERSONA_FOR_ROLE
        assert "astronaut" in caught.value.message
        assert app.runs() == []
        assert [p.resolve() for p in worktrees(repo)] == [repo.resolve()]
    finally:
        app.close()


_COMMAND_PERSONA = """\
    name: cmd-implementer
    version: 1
    description: Any program, here python doing nothing.
    roles: [implementer]
    backend: command
    options:
      argv: [python3, -c, pass]
    prompt: You implement.
"""


def test_a_scenario_names_a_phase_of_the_template_done_by_a_scripted_agent(
        settings: Settings, repo: Path, tmp_path: Path) -> None:
    write_template(tmp_path / "personas", "cmd-implementer", _COMMAND_PERSONA)
    app = App(settings.replace(personas_dirs=(tmp_path / "personas",)))
    try:
        with pytest.raises(DevflowError) as typo:
            app.start(quick(repo, scenarios={"implment": "ok"}))
        assert typo.value.code is Code.INVALID_INPUT
        assert "implment" in typo.value.message and "implement, review" in typo.value.hint
        with pytest.raises(DevflowError) as real:
            app.start(StartRequest(
                repo=repo, base="main", template="quick@1", requirements="x", actor="tester",
                binds={"implementer": "cmd-implementer", "reviewer": "scripted-reviewer"},
                scenarios={"implement": "exit-1"}))
        assert real.value.code is Code.INVALID_INPUT
        assert "cmd-implementer@1" in real.value.message and "command" in real.value.message
        assert app.runs() == []  # bad input leaves nothing
    finally:
        app.close()

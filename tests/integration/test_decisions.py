"""Gates and human decisions through the library, on SQLite and PostgreSQL.

Issue 5 (sections 1-4 and partial approval) and DESIGN.md §2, §3.1 and §3.7: idempotent
decisions keyed by (approval, token), conflicts, stale evidence, approve / request
changes / reject / abort, pause and resume around a gate, the gate block, approvers,
partial approval of a phase plan and of a review's findings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from devflow import access, git, model
from devflow.app import App
from devflow.approvals import DecisionRequest, DecisionResult, new_token
from devflow.errors import Code, DevflowError, Kind
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.conftest import ROOT, make_repo
from tests.gates_support import (
    GATE_KEYS,
    approve_through,
    binds,
    decide,
    prompt_text,
    read_report,
    sha256_file,
    snapshot,
    start,
    write_templates,
)

CONCURRENT = 200
WORKERS = 40  # 5 waves of 40 threads, each wave released together by a barrier


@pytest.fixture
def tpl_dir(tmp_path: Path) -> Path:
    return write_templates(tmp_path / "templates")


@pytest.fixture
def gapp(settings: Settings, tpl_dir: Path) -> Iterator[App]:
    application = App(settings.replace(templates_dirs=(tpl_dir,)))
    yield application
    application.close()


def refused(code: Code, fn: Any, *args: Any, **kw: Any) -> DevflowError:
    with pytest.raises(DevflowError) as info:
        fn(*args, **kw)
    assert info.value.code is code, repr(info.value)
    return info.value


def event_types(app: App, run_id: str) -> list[str]:
    events = list(app.events(run_id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return [e.type for e in events]


# -- idempotency ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name_it", [True, False], ids=["with-approval-id", "run-only"])
def test_200_concurrent_identical_decisions_record_exactly_one(gapp: App, repo: Path,
                                                               name_it: bool) -> None:
    view = start(gapp, repo)
    gate = view.gate
    assert gate is not None
    request = DecisionRequest(run_id=view.run.id, action="approve", actor="tester",
                              token=new_token(), approval_id=gate.id if name_it else None)
    barrier = threading.Barrier(WORKERS)

    def one(_: int) -> DecisionResult | DevflowError:
        barrier.wait(timeout=120)
        try:
            return gapp.decide(request)
        except DevflowError as exc:
            return exc

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(one, range(CONCURRENT)))

    errors = [r for r in results if isinstance(r, DevflowError)]
    assert not errors, f"{len(errors)} callers failed, e.g. {errors[0]!r}"
    ok = [r for r in results if isinstance(r, DecisionResult)]
    recorded = gapp.store.approvals.decisions(approval_id=gate.id)
    assert len(recorded) == 1
    assert {r.decision.id for r in ok} == {recorded[0].id}
    assert sum(not r.replayed for r in ok) == 1
    assert sum(r.replayed for r in ok) == CONCURRENT - 1
    assert all(r.outcome == ok[0].outcome for r in ok)
    assert ok[0].outcome["approval_state"] == "approved"
    assert {r.decision.client_token for r in ok} == {request.token}
    assert gapp.store.approvals.get(gate.id).state == "approved"
    assert gapp.store.runs.get(view.run.id).state == "executing"
    types = event_types(gapp, view.run.id)
    assert types.count("approval.resolved") == 1
    assert types.count("phase.completed") == 1


def test_racing_decisions_with_different_tokens_record_one(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    gate = view.gate
    assert gate is not None
    actions = ["approve", "reject", "request_changes", "abort"] * 5
    barrier = threading.Barrier(len(actions))

    def one(action: str) -> DecisionResult | DevflowError:
        barrier.wait(timeout=120)
        try:
            return decide(gapp, view.run.id, action, approval_id=gate.id, comment="why")
        except DevflowError as exc:
            return exc

    with ThreadPoolExecutor(len(actions)) as pool:
        results = list(pool.map(one, actions))
    won = [r for r in results if isinstance(r, DecisionResult)]
    lost = [r for r in results if isinstance(r, DevflowError)]
    assert len(won) == 1 and not won[0].replayed
    assert {e.code for e in lost} == {Code.APPROVAL_CONFLICT}
    recorded = gapp.store.approvals.decisions(approval_id=gate.id)
    assert [d.id for d in recorded] == [won[0].decision.id]
    assert gapp.store.approvals.get(gate.id).state == won[0].outcome["approval_state"]
    assert event_types(gapp, view.run.id).count("approval.resolved") == 1


def test_one_token_racing_with_two_actions_records_one(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    gate = view.gate
    assert gate is not None
    token = new_token()
    actions = ["approve", "reject"] * 8
    barrier = threading.Barrier(len(actions))

    def one(action: str) -> DecisionResult | DevflowError:
        barrier.wait(timeout=120)
        try:
            return decide(gapp, view.run.id, action, token=token, approval_id=gate.id)
        except DevflowError as exc:
            return exc

    with ThreadPoolExecutor(len(actions)) as pool:
        results = list(pool.map(one, actions))
    [recorded] = gapp.store.approvals.decisions(approval_id=gate.id)
    for action, result in zip(actions, results, strict=True):
        if action == recorded.action:
            assert isinstance(result, DecisionResult), repr(result)
            assert result.decision.id == recorded.id
        else:
            assert isinstance(result, DevflowError)
            assert result.code is Code.APPROVAL_CONFLICT
    assert sum(isinstance(r, DecisionResult) and not r.replayed for r in results) == 1


def test_a_retry_racing_the_first_decision_without_approval_id_gets_its_outcome(
        gapp: App, repo: Path) -> None:
    """The first decision lands after the retry found the request pending, before the retry
    locks the run (a SQLAlchemy event on the engine orders the two; nothing of devflow is
    replaced): under the lock, the retry must find the decision its token made."""
    view = start(gapp, repo)
    request = DecisionRequest(run_id=view.run.id, action="approve", actor="tester",
                              token=new_token())
    retry_thread = threading.get_ident()
    first: list[DecisionResult] = []
    held: list[str] = []

    def hold(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if threading.get_ident() != retry_thread or held:
            return
        if "FROM approval_request LEFT OUTER JOIN approval_decision" in statement:
            held.append(statement)
            racer = threading.Thread(target=lambda: first.append(gapp.decide(request)))
            racer.start()
            racer.join(timeout=60)

    engine = gapp.store.db.engine
    sa_event.listen(engine, "after_cursor_execute", hold)
    try:
        retry = gapp.decide(request)
    finally:
        sa_event.remove(engine, "after_cursor_execute", hold)
    assert held and len(first) == 1, "the interleaving did not happen"
    assert not first[0].replayed
    assert retry.replayed
    assert retry.decision.id == first[0].decision.id
    assert len(gapp.store.approvals.decisions(run_id=view.run.id)) == 1


def test_a_decision_names_its_run_by_a_unique_prefix(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    assert view.gate is not None
    token = new_token()
    first = decide(gapp, view.run.id[:8], "approve", token=token)
    assert not first.replayed and first.run.id == view.run.id
    assert first.decision.approval_id == view.gate.id
    again = decide(gapp, view.run.id[:8], "approve", token=token)
    assert again.replayed and again.decision.id == first.decision.id


def test_the_recorded_decision_is_the_one_returned_and_named_by_its_event(
        gapp: App, repo: Path) -> None:
    # On PostgreSQL the decision takes an id from its sequence under the run's lock and is
    # inserted with the transaction's other writes; what was recorded must be what was
    # returned, with its outcome, and the event must name it.
    view = start(gapp, repo)
    assert view.gate is not None
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    engine = gapp.store.db.engine
    sa_event.listen(engine, "before_cursor_execute", seen)
    try:
        first = decide(gapp, view.run.id, "approve", comment="looks right")
    finally:
        sa_event.remove(engine, "before_cursor_execute", seen)
    alone = [s for s in statements if s.startswith("INSERT INTO approval_decision")]
    if gapp.store.db.is_sqlite:
        assert len(alone) == 1
    else:  # its id came with the lock; it went with the other writes
        assert not alone, statements
        assert any("nextval" in s and "FOR UPDATE" in s for s in statements), statements
        assert [s for s in statements if s.startswith("WITH") and
                "INSERT INTO approval_decision" in s], statements
    recorded = gapp.store.approvals.decisions(approval_id=view.gate.id)
    assert [d.id for d in recorded] == [first.decision.id]
    assert recorded[0].comment == "looks right" and recorded[0].action == "approve"
    assert recorded[0].evidence == first.decision.evidence
    resolved = [e.payload for e in gapp.events(view.run.id) if e.type == "approval.resolved"]
    assert resolved[-1]["decision_id"] == first.decision.id
    again = decide(gapp, view.run.id, "approve", token=first.decision.client_token)
    assert again.replayed and again.outcome == first.outcome
    assert first.outcome["run_state"] == str(first.run.state)
    # the next gate's decision gets an id of its own
    next_gate = gapp.drive(view.run.id)[0].gate
    assert next_gate is not None
    second = decide(gapp, view.run.id, "approve")
    assert second.decision.id != first.decision.id
    assert [d.id for d in gapp.store.approvals.decisions(approval_id=next_gate.id)] == [
        second.decision.id]


def test_same_token_replays_and_another_action_with_it_conflicts(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    assert view.gate is not None
    token = new_token()
    first = decide(gapp, view.run.id, "approve", token=token)
    assert not first.replayed
    # after resolution, without naming the request: the token finds it
    again = decide(gapp, view.run.id, "approve", token=token)
    named = decide(gapp, view.run.id, "approve", token=token, approval_id=view.gate.id)
    for replay in (again, named):
        assert replay.replayed
        assert replay.decision.id == first.decision.id
        assert replay.outcome == first.outcome
        assert replay.to_json()["replayed"] is True
    # a replay is not checked against the worktree: it decides nothing new
    (Path(view.run.worktree) / "later.txt").write_text("changed after the decision\n")
    late = decide(gapp, view.run.id, "approve", token=token)
    assert late.replayed and late.decision.id == first.decision.id
    before = snapshot(gapp, view.run.id)
    for action in ("reject", "request_changes", "abort"):
        error = refused(Code.APPROVAL_CONFLICT, decide, gapp, view.run.id, action, token=token)
        assert error.kind is Kind.CONFLICT
        assert error.exit_code == 3
    assert snapshot(gapp, view.run.id) == before
    assert len(gapp.store.approvals.decisions(approval_id=view.gate.id)) == 1


def test_a_replay_is_its_deciders_only(gapp: App, repo: Path) -> None:
    """Another actor holding the token (it shows in the approvals' JSON) learns nothing:
    the replay is refused as a conflict, and nothing changes."""
    view = start(gapp, repo)
    token = new_token()
    decide(gapp, view.run.id, "approve", token=token, actor="alice")
    before = snapshot(gapp, view.run.id)
    error = refused(Code.APPROVAL_CONFLICT, decide, gapp, view.run.id, "approve", token=token,
                    actor="bob")
    assert "someone else" in error.message and "approved" not in error.message
    assert snapshot(gapp, view.run.id) == before
    assert decide(gapp, view.run.id, "approve", token=token, actor="alice").replayed


def test_replay_after_the_run_moved_on_does_not_decide_the_next_gate(gapp: App,
                                                                      repo: Path) -> None:
    view = start(gapp, repo)
    token = new_token()
    first = decide(gapp, view.run.id, "approve", token=token)
    view, _ = gapp.drive(view.run.id)
    assert view.gate is not None and view.gate.gate == "final_review"
    replay = decide(gapp, view.run.id, "approve", token=token)
    assert replay.replayed and replay.decision.id == first.decision.id
    assert replay.approval.gate == "spec_review"
    assert gapp.store.approvals.get(view.gate.id).state == "pending"
    assert len(gapp.store.approvals.decisions(run_id=view.run.id)) == 1
    assert gapp.store.runs.get(view.run.id).state == "awaiting_approval"


@pytest.mark.parametrize(("first", "state"), [("approve", "approved"),
                                               ("request_changes", "changes_requested"),
                                               ("reject", "rejected")])
def test_a_new_decision_on_a_resolved_request_conflicts_naming_its_state(
        gapp: App, repo: Path, first: str, state: str) -> None:
    view = start(gapp, repo)
    assert view.gate is not None
    decide(gapp, view.run.id, first, actor="alice", comment="first")
    before = snapshot(gapp, view.run.id)
    for action in ("approve", "reject", "abort"):
        error = refused(Code.APPROVAL_CONFLICT, decide, gapp, view.run.id, action,
                        approval_id=view.gate.id)
        assert state in error.hint
        assert "alice" in error.hint
        assert error.details.get("state") == state
    assert snapshot(gapp, view.run.id) == before


# -- evidence ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["artifact", "untracked-file", "tracked-file", "committed",
                                    "not-shown"])
def test_stale_evidence_is_refused_and_changes_nothing(gapp: App, repo: Path,
                                                        change: str) -> None:
    view = start(gapp, repo)
    gate = view.gate
    assert gate is not None and gate.evidence.artifact_path
    tree = Path(view.run.worktree)
    artifact = tree / gate.evidence.artifact_path
    original = artifact.read_bytes()
    assert sha256_file(artifact) == gate.evidence.artifact_sha
    readme = tree / "README.md"
    readme_text = readme.read_text(encoding="utf-8")
    extra: dict[str, Any] = {}
    if change == "artifact":
        artifact.write_bytes(original.replace(b"{", b"{ ", 1))  # still valid, other bytes
    elif change == "untracked-file":
        (tree / "sneaked-in.txt").write_text("not shown to the approver\n", encoding="utf-8")
    elif change in ("tracked-file", "committed"):
        readme.write_text(readme_text + "\nchanged behind the approver's back\n",
                          encoding="utf-8")
        if change == "committed":
            git.run(["commit", "--quiet", "--no-verify", "-am", "sneaked in"], tree,
                    env=git.AUTHOR)
    else:
        extra["expect_artifact_sha"] = "0" * 64
    before = snapshot(gapp, view.run.id)
    token = new_token()
    for action in ("approve", "request_changes"):
        error = refused(Code.APPROVAL_STALE, decide, gapp, view.run.id, action, token=token,
                        **extra)
        assert error.exit_code == 3
    assert snapshot(gapp, view.run.id) == before
    assert gapp.store.approvals.get(gate.id).state == "pending"
    assert gapp.store.approvals.decisions(approval_id=gate.id) == []
    # once the worktree is back as it was shown, the same token decides
    if change == "committed":
        git.run(["reset", "--quiet", "--hard", gate.evidence.head_sha or ""], tree)
    artifact.write_bytes(original)
    readme.write_text(readme_text, encoding="utf-8")
    (tree / "sneaked-in.txt").unlink(missing_ok=True)
    result = decide(gapp, view.run.id, "approve", token=token)
    assert not result.replayed and result.approval.state == "approved"
    assert result.decision.evidence["artifact_sha256"] == gate.evidence.artifact_sha
    assert result.decision.evidence["tree"] == gate.evidence.tree_sha


@pytest.mark.parametrize("branch_moved", [False, True], ids=["branch-as-shown", "branch-moved"])
def test_without_its_worktree_a_decision_checks_the_run_branch(gapp: App, repo: Path,
                                                               tmp_path: Path,
                                                               branch_moved: bool) -> None:
    view = start(gapp, repo)
    gate = view.gate
    assert gate is not None
    shutil.rmtree(view.run.worktree)
    git.run(["worktree", "prune"], repo)
    if branch_moved:  # someone commits on the run branch elsewhere
        other = tmp_path / "elsewhere"
        git.run(["worktree", "add", "--quiet", str(other), view.run.branch], repo)
        (other / "README.md").write_text("rewritten elsewhere\n", encoding="utf-8")
        git.run(["commit", "--quiet", "--no-verify", "-am", "elsewhere"], other, env=git.AUTHOR)
        git.run(["worktree", "remove", "--force", str(other)], repo)
        before = snapshot(gapp, view.run.id)
        refused(Code.APPROVAL_STALE, decide, gapp, view.run.id, "approve")
        assert snapshot(gapp, view.run.id) == before
        return
    result = decide(gapp, view.run.id, "approve")
    assert result.decision.evidence.get("checked") is not False
    assert result.decision.evidence["artifact_sha256"] == gate.evidence.artifact_sha
    assert result.decision.evidence["tree"] == gate.evidence.tree_sha
    view, drove = gapp.drive(view.run.id)  # the worktree is made again from the branch
    assert drove and view.gate is not None and view.gate.gate == "final_review"


# -- what each decision does ------------------------------------------------------------------
def test_approve_completes_the_phase_and_the_run_goes_on(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    result = decide(gapp, view.run.id, "approve")
    assert result.outcome == {"action": "approve", "approval_state": "approved",
                              "run_state": "executing", "phase_state": "completed",
                              "terminal": False}
    after = gapp.view(view.run.id)
    assert after.gate is None and after.run.state == "executing"
    view, drove = gapp.drive(view.run.id)
    assert drove
    assert view.gate is not None
    assert (view.gate.gate, view.gate.phase_key, view.gate.round) == ("final_review", "review", 1)
    assert [(p.key, str(p.state)) for p in view.phases] == [
        ("spec", "completed"), ("plan", "completed"), ("implement", "completed"),
        ("review", "awaiting_approval")]
    resolved = [e for e in gapp.events(view.run.id) if e.type == "approval.resolved"]
    assert [(e.payload["gate"], e.payload["action"], e.payload["actor"]) for e in resolved] == [
        ("spec_review", "approve", "tester")]


def test_two_rounds_of_changes_then_approve(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    run_id = view.run.id
    comments = ["Name the function `farewell`, not `bye`.",
                "Add an acceptance criterion for an empty name."]
    for n, comment in enumerate(comments, start=1):
        assert view.gate is not None
        assert (view.gate.gate, view.gate.round) == ("spec_review", n)
        result = decide(gapp, run_id, "request_changes", comment=comment)
        assert result.outcome["phase_state"] == "pending"
        assert result.outcome["run_state"] == "executing"
        view, drove = gapp.drive(run_id)
        assert drove
        prompt = prompt_text(view.run.workspace, "spec", n + 1)
        assert "Changes requested by tester" in prompt
        assert comment in prompt
    assert "Changes requested" not in prompt_text(view.run.workspace, "spec", 1)
    assert view.gate is not None and view.gate.round == 3
    decide(gapp, run_id, "approve", comment="Good now.")
    approvals = gapp.store.approvals.find(run_id=run_id)
    assert [(a.gate, a.round, str(a.state)) for a in approvals] == [
        ("spec_review", 1, "changes_requested"), ("spec_review", 2, "changes_requested"),
        ("spec_review", 3, "approved")]
    decisions = gapp.store.approvals.decisions(run_id=run_id)
    assert [(d.action, d.actor, d.comment) for d in decisions] == [
        ("request_changes", "tester", comments[0]), ("request_changes", "tester", comments[1]),
        ("approve", "tester", "Good now.")]
    for decision, approval in zip(decisions, approvals, strict=True):
        assert decision.approval_id == approval.id
        assert decision.evidence["artifact_sha256"] == approval.evidence.artifact_sha
        assert decision.evidence["tree"] == approval.evidence.tree_sha
        assert decision.client_token
        assert decision.created_at >= approval.opened_at
    spec = next(p for p in gapp.store.runs.phases(run_id) if p.key == "spec")
    assert (str(spec.state), spec.attempt, spec.round) == ("completed", 3, 3)
    view, _ = gapp.drive(run_id)
    assert view.gate is not None and view.gate.gate == "final_review"


def test_changes_requested_must_say_which_and_rewind_goes_only_with_them(
        gapp: App, repo: Path) -> None:
    view = start(gapp, repo, "gated-plan@1", scenarios={"plan": "plan:2"})
    assert view.gate is not None
    before = snapshot(gapp, view.run.id)
    for kw in ({}, {"comment": "  \n"}, {"sections": {"plan-step-1": "approve"}}):
        error = refused(Code.INVALID_INPUT, decide, gapp, view.run.id, "request_changes", **kw)
        assert "comment" in error.hint and error.exit_code == 2
    error = refused(Code.INVALID_INPUT, decide, gapp, view.run.id, "approve", rewind=True)
    assert "request_changes" in error.message
    assert snapshot(gapp, view.run.id) == before
    # a rejected section says what to change, without a comment
    done = decide(gapp, view.run.id, "request_changes", sections={"plan-step-1": "reject"})
    assert done.outcome["phase_state"] == "pending"


@pytest.mark.parametrize("rewind", [True, False], ids=["rewind", "no-rewind"])
def test_request_changes_with_rewind_resets_the_worktree_first(gapp: App, repo: Path,
                                                               rewind: bool) -> None:
    view = start(gapp, repo, "gated-build@1")
    readme = Path(view.run.worktree) / "README.md"
    assert "build, attempt 1" in readme.read_text(encoding="utf-8")
    decide(gapp, view.run.id, "request_changes", comment="Start over.", rewind=rewind)
    view, _ = gapp.drive(view.run.id)
    assert view.gate is not None and view.gate.round == 2
    text = readme.read_text(encoding="utf-8")
    assert "build, attempt 2" in text
    assert ("build, attempt 1" in text) is not rewind
    subjects = git.out(["log", "--format=%s", f"{view.run.base_sha}..{view.run.branch}"],
                       repo).splitlines()
    assert subjects == (["devflow(build): attempt 2"] if rewind else
                        ["devflow(build): attempt 2", "devflow(build): attempt 1"])
    # the run's last checkpoint is where its branch is (a later recovery resets there)
    assert view.run.checkpoint_sha == git.out(["rev-parse", view.run.branch], repo)
    changed = [e for e in gapp.events(view.run.id) if e.type == "phase.changes_requested"]
    assert [e.payload["rewind"] for e in changed] == [rewind]


@pytest.mark.parametrize(("action", "state", "code"), [("reject", "failed", "approval_rejected"),
                                                        ("abort", "aborted", None)])
def test_reject_and_abort_end_the_run_with_a_report(gapp: App, repo: Path, action: str,
                                                    state: str, code: str | None) -> None:
    view = start(gapp, repo)
    token = new_token()
    result = decide(gapp, view.run.id, action, actor="carol", token=token,
                    comment="Not this way.")
    assert result.outcome["terminal"] is True
    assert result.outcome["run_state"] == state
    # (ending the run reads its invocations, which writes the decision first on
    # PostgreSQL; its outcome, set after, must still be recorded)
    replay = decide(gapp, view.run.id, action, actor="carol", token=token)
    assert replay.replayed and replay.outcome == result.outcome
    run = gapp.store.runs.get(view.run.id)
    assert (str(run.state), run.failure_code, run.report_status) == (state, code, "written")
    report = read_report(run.workspace)
    assert gapp.catalog.schemas.validate("common/final-report@1", report) == []
    assert report["run"]["state"] == state
    assert (Path(run.workspace) / "report.md").is_file()
    [approval] = report["approvals"]
    assert approval["gate"] == "spec_review"
    assert approval["state"] == {"reject": "rejected", "abort": "aborted"}[action]
    assert [(d["action"], d["actor"], d["comment"], d["token"]) for d in approval["decisions"]] \
        == [(action, "carol", "Not this way.", token)]
    assert {p.key: str(p.state) for p in gapp.store.runs.phases(run.id)}["spec"] == "failed"
    types = event_types(gapp, run.id)
    assert f"run.{state}" in types and types[-1] == "report.written"


def test_run_abort_at_a_gate_aborts_the_request_and_writes_the_report(gapp: App,
                                                                      repo: Path) -> None:
    view = start(gapp, repo)
    assert view.gate is not None
    first = gapp.abort(view.run.id, "tester", "changed my mind")
    assert first.changed and first.run.state == "aborted"
    approval = gapp.store.approvals.get(view.gate.id)
    assert (str(approval.state), approval.resolved_by) == ("aborted", "tester")
    report = read_report(first.run.workspace)
    assert gapp.catalog.schemas.validate("common/final-report@1", report) == []
    assert report["run"]["state"] == "aborted"
    assert [(a["gate"], a["state"], a["decisions"]) for a in report["approvals"]] == [
        ("spec_review", "aborted", [])]
    before = snapshot(gapp, view.run.id)
    again = gapp.abort(view.run.id, "tester")
    assert not again.changed and again.run.state == "aborted"
    error = refused(Code.APPROVAL_CONFLICT, decide, gapp, view.run.id, "approve",
                    approval_id=view.gate.id)
    assert "aborted" in error.hint
    assert snapshot(gapp, view.run.id) == before


# -- pause, resume, abort ---------------------------------------------------------------------
@pytest.mark.parametrize(("action", "state"), [("reject", "failed"), ("abort", "aborted")])
def test_a_paused_run_takes_only_reject_and_abort(gapp: App, repo: Path, action: str,
                                                  state: str) -> None:
    view = start(gapp, repo)
    gate = view.gate
    assert gate is not None
    paused = gapp.pause(view.run.id, "tester", "lunch")
    assert paused.changed
    assert (str(paused.run.state), paused.run.paused_from) == ("paused", "awaiting_approval")
    repeat = gapp.pause(view.run.id, "tester")
    assert not repeat.changed and repeat.run.state == "paused"
    assert gapp.view(view.run.id).gate is None
    assert "gate" not in gapp.view(view.run.id).to_json()
    before = snapshot(gapp, view.run.id)
    for refused_action in ("approve", "request_changes"):
        error = refused(Code.ILLEGAL_TRANSITION, decide, gapp, view.run.id, refused_action)
        assert error.exit_code == 3
    assert snapshot(gapp, view.run.id) == before
    # resume goes back to the state the run came from, at the same gate
    resumed = gapp.resume(view.run.id, "tester")
    assert resumed.changed
    assert (str(resumed.run.state), resumed.run.paused_from) == ("awaiting_approval", None)
    again = gapp.view(view.run.id)
    assert again.gate is not None and again.gate.id == gate.id
    assert not gapp.resume(view.run.id, "tester").changed
    # paused again: reject and abort are accepted
    gapp.pause(view.run.id, "tester")
    result = decide(gapp, view.run.id, action, comment="stop")
    assert not result.replayed and result.outcome["run_state"] == state
    run = gapp.store.runs.get(view.run.id)
    assert run.state == state and run.report_status == "written"
    report = read_report(run.workspace)
    assert gapp.catalog.schemas.validate("common/final-report@1", report) == []
    assert [d["action"] for d in report["approvals"][0]["decisions"]] == [action]


def test_resume_returns_to_executing_and_a_paused_run_is_not_driven(gapp: App,
                                                                   repo: Path) -> None:
    view = start(gapp, repo)
    decide(gapp, view.run.id, "approve")
    paused = gapp.pause(view.run.id, "tester")
    assert paused.changed and paused.run.paused_from == "executing"
    still, drove = gapp.drive(view.run.id)
    assert not drove and still.run.state == "paused"
    resumed = gapp.resume(view.run.id, "tester")
    assert resumed.changed and resumed.run.state == "executing"
    view, drove = gapp.drive(view.run.id)
    assert drove and view.gate is not None and view.gate.gate == "final_review"
    events = [e for e in gapp.events(view.run.id) if e.type in ("run.paused", "run.resumed")]
    assert [(e.type, e.payload.get("from") or e.payload.get("to")) for e in events] == [
        ("run.paused", "executing"), ("run.resumed", "executing")]


def _drive_in_background(app: App, repo: Path, scenario: str) -> tuple[str, threading.Thread,
                                                                      model.Invocation]:
    """A detached run whose spec agent works for a while, driven by a thread; its invocation."""
    view = app.start(StartRequest(repo=repo, base="main", template="development@1",
                                  requirements="Add a farewell function.", actor="tester",
                                  binds=binds("development@1"),
                                  scenarios={"spec": scenario, "plan": "plan:0"}), detach=True)
    driver = threading.Thread(target=app.drive, args=(view.run.id,), daemon=True)
    driver.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [i for i in app.store.runs.invocations(view.run.id) if i.pid]
        if running:
            return view.run.id, driver, running[0]
        time.sleep(0.05)
    raise AssertionError("the agent did not start")


def _group_gone(pgid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_abort_while_an_agent_works_terminates_it_and_writes_the_report(gapp: App,
                                                                        repo: Path) -> None:
    run_id, driver, invocation = _drive_in_background(gapp, repo, "slow:60")
    assert invocation.pgid is not None
    began = time.monotonic()
    changed = gapp.abort(run_id, "tester", "taking too long")
    assert changed.changed and changed.run.state == "aborted"
    driver.join(timeout=30)
    assert not driver.is_alive()
    assert time.monotonic() - began < 30  # not the agent's 60 s
    # the sandbox's PID namespace dies with its outer bwrap: its processes are gone (and
    # reaped) within moments, not at once
    assert _group_gone(invocation.pgid, within=10.0)
    run = gapp.store.runs.get(run_id)
    assert run.state == "aborted" and run.report_status == "written"
    assert {p.key: str(p.state) for p in gapp.store.runs.phases(run_id)}["spec"] == "failed"
    assert gapp.store.approvals.find(run_id=run_id) == []
    report = read_report(run.workspace)
    assert gapp.catalog.schemas.validate("common/final-report@1", report) == []
    assert report["run"]["state"] == "aborted"
    types = event_types(gapp, run_id)
    assert types.count("run.aborted") == 1 and "phase.completed" not in types


@pytest.mark.slow
def test_abort_while_an_agent_works_closes_its_invocation(gapp: App, repo: Path) -> None:
    run_id, driver, invocation = _drive_in_background(gapp, repo, "slow:60")
    gapp.abort(run_id, "tester", "taking too long")
    driver.join(timeout=30)
    assert not driver.is_alive()
    [closed] = gapp.store.runs.invocations(run_id)
    assert closed.id == invocation.id
    assert closed.ended_at is not None and closed.outcome is not None
    report = read_report(gapp.store.runs.get(run_id).workspace)
    assert [i["outcome"] is not None for i in report["invocations"]] == [True]


@pytest.mark.slow
def test_pause_while_an_agent_works_stops_before_the_next_step(gapp: App, repo: Path) -> None:
    run_id, driver, _ = _drive_in_background(gapp, repo, "slow:4")
    paused = gapp.pause(run_id, "tester", "wait")
    assert paused.changed and paused.run.paused_from == "executing"
    driver.join(timeout=60)
    assert not driver.is_alive()
    run = gapp.store.runs.get(run_id)
    # the attempt under way finished and its gate opened; the run stays paused
    assert (str(run.state), run.paused_from) == ("paused", "awaiting_approval")
    [pending] = gapp.approvals(pending=True, run_id=run_id)
    assert pending.gate == "spec_review"
    assert gapp.view(run_id).gate is None
    resumed = gapp.resume(run_id, "tester")
    assert resumed.changed and resumed.run.state == "awaiting_approval"
    gate = gapp.view(run_id).gate
    assert gate is not None and gate.id == pending.id


def test_pause_resume_abort_on_terminal_runs(gapp: App, repo: Path) -> None:
    failed = start(gapp, repo)
    decide(gapp, failed.run.id, "reject")
    for verb in ("pause", "resume", "abort"):
        error = refused(Code.ILLEGAL_TRANSITION, getattr(gapp, verb), failed.run.id, "tester")
        assert error.kind is Kind.CONFLICT
        assert "failed" in error.message
    assert gapp.store.runs.get(failed.run.id).state == "failed"
    aborted = start(gapp, repo)
    assert gapp.abort(aborted.run.id, "tester").changed
    assert not gapp.abort(aborted.run.id, "tester").changed  # a repeat, not a conflict
    for verb in ("pause", "resume"):
        refused(Code.ILLEGAL_TRANSITION, getattr(gapp, verb), aborted.run.id, "tester")
    completed = approve_through(gapp, start(gapp, repo), "spec_review", "final_review")
    assert completed.run.state == "completed"
    for verb in ("pause", "resume", "abort"):
        refused(Code.ILLEGAL_TRANSITION, getattr(gapp, verb), completed.run.id, "tester")


# -- the gate block ---------------------------------------------------------------------------
def test_gate_block_while_waiting_and_absent_otherwise(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    body = view.to_json()
    gate = body["gate"]
    assert set(gate) == GATE_KEYS
    approval = gapp.store.approvals.find(pending=True, run_id=view.run.id)[0]
    assert gate["approval_id"] == approval.id
    assert (gate["gate"], gate["phase"], gate["round"]) == ("spec_review", "spec", 1)
    assert gate["options"] == ["approve", "request_changes", "reject", "abort"]
    assert gate["message"].startswith("Review the specification")
    assert gate["artifact"] == {
        "path": ".devflow/spec.json",
        "sha256": sha256_file(Path(view.run.worktree) / ".devflow/spec.json")}
    assert approval.deadline is not None
    assert approval.deadline - approval.opened_at == timedelta(hours=24)
    assert gate["deadline"] is not None and gate["deadline"].endswith("Z")
    decide(gapp, view.run.id, "approve")
    assert "gate" not in gapp.view(view.run.id).to_json()  # executing
    view, _ = gapp.drive(view.run.id)
    assert view.to_json()["gate"]["gate"] == "final_review"
    decide(gapp, view.run.id, "reject", comment="no")
    ended = gapp.view(view.run.id)
    assert ended.run.state == "failed"
    assert ended.gate is None and "gate" not in ended.to_json()


def test_gate_without_timeout_has_no_deadline(gapp: App, repo: Path) -> None:
    view = start(gapp, repo, "gated-build@1")
    assert view.to_json()["gate"]["deadline"] is None


# -- who may decide ---------------------------------------------------------------------------
def account(name: str) -> access.Principal:
    """An OS account as the CLI would authenticate it (the library trusts its caller's)."""
    return access.Principal(access.OS_ACCOUNT, name)


def test_only_approvers_and_members_of_their_groups_may_decide(gapp: App, settings: Settings,
                                                               tpl_dir: Path,
                                                               repo: Path) -> None:
    view = start(gapp, repo, "guarded@1")
    assert view.gate is not None and view.gate.approvers == ("alice",)
    before = snapshot(gapp, view.run.id)
    for name in ("tester", "bob", "Alice"):
        error = refused(Code.NOT_AUTHORIZED, decide, gapp, view.run.id, "approve", actor=name,
                        principal=account(name))
        assert error.exit_code == 3 and "alice" in error.hint and name in error.message
    refused(Code.NOT_AUTHORIZED, decide, gapp, view.run.id, "reject", actor="tester",
            principal=account("tester"))
    assert snapshot(gapp, view.run.id) == before
    decide(gapp, view.run.id, "approve", actor="alice", principal=account("alice"))
    view, _ = gapp.drive(view.run.id)
    assert view.gate is not None and view.gate.gate == "leads_gate"
    refused(Code.NOT_AUTHORIZED, decide, gapp, view.run.id, "approve", actor="bob",
            principal=account("bob"))
    grouped = App(settings.replace(templates_dirs=(tpl_dir,),
                                   groups={"leads": ("bob", "dave")}))
    try:
        for name in ("alice", "tester"):
            error = refused(Code.NOT_AUTHORIZED, decide, grouped, view.run.id, "approve",
                            actor=name, principal=account(name))
            assert "leads (bob, dave)" in error.message
        decide(grouped, view.run.id, "approve", actor="bob", principal=account("bob"))
    finally:
        grouped.close()
    view, _ = gapp.drive(view.run.id)
    assert view.run.state == "completed"
    decisions = gapp.store.approvals.decisions(run_id=view.run.id)
    assert [(d.actor, d.authentication) for d in decisions] == [
        ("alice", {"method": "os_account", "principal": "alice", "id": None,
                   "attribution": "self"}),
        ("bob", {"method": "os_account", "principal": "bob", "id": None,
                 "attribution": "self"})]


def test_groups_come_from_the_configuration_file(tmp_path: Path) -> None:
    home = tmp_path / "cfg-home"
    home.mkdir()
    (home / "config.yaml").write_text("groups:\n  leads: [bob, dave]\n", encoding="utf-8")
    loaded = Settings.load(env={}, home=str(home), workspace=str(tmp_path / "ws"))
    assert loaded.groups == {"leads": ("bob", "dave")}


# -- several gates, options -------------------------------------------------------------------
def test_two_gates_on_one_phase_open_one_after_the_other(gapp: App, repo: Path) -> None:
    view = start(gapp, repo, "double@1")
    assert view.gate is not None and view.gate.gate == "tech"
    assert len(gapp.approvals(pending=True, run_id=view.run.id)) == 1
    first = decide(gapp, view.run.id, "approve")
    assert first.outcome["phase_state"] == "awaiting_approval"
    assert first.outcome["run_state"] == "awaiting_approval"
    second = gapp.view(view.run.id)
    assert second.gate is not None
    assert second.gate.id == first.outcome["next_approval_id"]
    assert (second.gate.gate, second.gate.round) == ("product", 1)
    assert second.gate.options == ("approve", "reject")
    assert second.gate.evidence == view.gate.evidence
    assert gapp.drive(view.run.id)[1] is False  # still waiting: nothing to drive
    before = snapshot(gapp, view.run.id)
    for action in ("request_changes", "abort"):
        error = refused(Code.INVALID_INPUT, decide, gapp, view.run.id, action)
        assert "approve, reject" in error.hint and error.exit_code == 2
    assert snapshot(gapp, view.run.id) == before
    done = decide(gapp, view.run.id, "approve")
    assert done.outcome["phase_state"] == "completed"
    view, _ = gapp.drive(view.run.id)
    assert view.run.state == "completed"
    assert [(a.gate, str(a.state)) for a in gapp.approvals(run_id=view.run.id)] == [
        ("tech", "approved"), ("product", "approved")]


# -- partial approval -------------------------------------------------------------------------
def test_partial_approval_of_a_phase_plan_appends_only_approved_phases(gapp: App,
                                                                      repo: Path) -> None:
    view = start(gapp, repo, "gated-plan@1", scenarios={"plan": "plan:3"})
    assert view.gate is not None and view.gate.sections == "/phases"
    result = decide(gapp, view.run.id, "approve", sections={"plan-step-2": "reject"})
    assert result.decision.sections == {"plan-step-2": "reject"}
    view, _ = gapp.drive(view.run.id)
    assert view.run.state == "completed"
    assert [(p.key, str(p.state)) for p in view.phases] == [
        ("plan", "completed"), ("plan-step-1", "completed"), ("plan-step-3", "completed")]
    planned = [e.payload for e in gapp.events(view.run.id) if e.type == "phase.planned"]
    assert planned == [{"phases": ["plan-step-1", "plan-step-3"], "dropped": ["plan-step-2"]}]
    prompts = Path(view.run.workspace) / "prompts"
    assert (prompts / "plan-step-1.attempt-1.md").is_file()
    assert (prompts / "plan-step-3.attempt-1.md").is_file()
    assert not list(prompts.glob("plan-step-2.*"))
    report = read_report(view.run.workspace)
    assert report["approvals"][0]["decisions"][0]["sections"] == {"plan-step-2": "reject"}


def test_unknown_section_is_refused_and_changes_nothing(gapp: App, repo: Path) -> None:
    view = start(gapp, repo, "gated-plan@1", scenarios={"plan": "plan:3"})
    before = snapshot(gapp, view.run.id)
    error = refused(Code.UNKNOWN_SECTION, decide, gapp, view.run.id, "approve",
                    sections={"plan-step-1": "approve", "plan-step-9": "reject"})
    assert error.exit_code == 2 and "plan-step-9" in error.message
    assert "plan-step-1, plan-step-2, plan-step-3" in error.hint
    refused(Code.INVALID_INPUT, decide, gapp, view.run.id, "approve",
            sections={"plan-step-1": "maybe"})
    assert snapshot(gapp, view.run.id) == before


def test_sections_on_a_gate_without_sections_are_refused(gapp: App, repo: Path) -> None:
    view = start(gapp, repo)
    before = snapshot(gapp, view.run.id)
    refused(Code.UNKNOWN_SECTION, decide, gapp, view.run.id, "approve",
            sections={"summary": "reject"})
    assert snapshot(gapp, view.run.id) == before


def test_a_rejected_finding_sends_the_review_back_with_it_in_the_prompt(gapp: App,
                                                                       repo: Path) -> None:
    view = approve_through(gapp, start(gapp, repo), "spec_review")
    assert view.gate is not None and view.gate.gate == "final_review"
    result = decide(gapp, view.run.id, "approve", comment="Almost there.",
                    sections={"truncate-off-by-one": "approve", "cli-help-text": "reject"},
                    section_comments={"cli-help-text": "The help text is required."})
    assert result.outcome["phase_state"] == "pending"
    assert result.decision.sections == {"truncate-off-by-one": "approve",
                                        "cli-help-text": "reject"}
    view, _ = gapp.drive(view.run.id)
    assert view.gate is not None
    assert (view.gate.gate, view.gate.round) == ("final_review", 2)
    review = next(p for p in view.phases if p.key == "review")
    assert review.attempt == 2
    prompt = prompt_text(view.run.workspace, "review", 2)
    assert "Almost there." in prompt
    assert "section `cli-help-text` was rejected: The help text is required." in prompt
    assert "section `truncate-off-by-one` was rejected" not in prompt
    # the implementation is not redone
    implement = next(p for p in view.phases if p.key == "implement")
    assert implement.attempt == 1
    decide(gapp, view.run.id, "approve")
    view, _ = gapp.drive(view.run.id)
    assert view.run.state == "completed"


# -- which request --------------------------------------------------------------------------
def test_no_pending_request_and_a_request_of_another_run(gapp: App, repo: Path,
                                                         tmp_path: Path) -> None:
    first = start(gapp, repo)
    decide(gapp, first.run.id, "approve")
    error = refused(Code.NO_PENDING_APPROVAL, decide, gapp, first.run.id, "approve")
    assert error.exit_code == 3 and "executing" in error.hint
    other = start(gapp, make_repo(tmp_path / "other"))
    assert other.gate is not None
    before = snapshot(gapp, other.run.id)
    error = refused(Code.APPROVAL_NOT_FOUND, decide, gapp, first.run.id, "approve",
                    approval_id=other.gate.id)
    assert error.exit_code == 4 and other.run.id in error.message
    refused(Code.APPROVAL_NOT_FOUND, decide, gapp, first.run.id, "approve", approval_id=999_999)
    refused(Code.RUN_NOT_FOUND, decide, gapp, "no-such-run", "approve")
    assert snapshot(gapp, other.run.id) == before


# -- many processes (PostgreSQL) --------------------------------------------------------------
PROCESSES = 16


@pytest.mark.slow
@pytest.mark.postgresql_only
def test_concurrent_identical_decisions_from_processes_record_one(
        pg_url: str, home: Path, tmp_path: Path) -> None:
    settings = Settings.load(env={}, home=str(home), database_url=pg_url,
                             workspace=str(tmp_path / "ws"), actor="tester")
    app = App(settings)
    children: list[subprocess.Popen[str]] = []
    try:
        view = start(app, make_repo(tmp_path / "repo"))
        assert view.gate is not None
        token = new_token()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
        argv = [sys.executable, "-m", "tests.decide_child", str(home), pg_url,
                str(tmp_path / "ws"), view.run.id, token]
        # half name the request, half let the run's pending request be found
        children = [subprocess.Popen(argv + ([str(view.gate.id)] if n % 2 else []), cwd=ROOT,
                                     env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                    for n in range(PROCESSES)]
        for child in children:  # every child is connected and waits
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:  # then all go at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outcomes = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            outcomes.append(json.loads(out))
        errors = [o for o in outcomes if not o["ok"]]
        assert not errors, errors
        recorded = app.store.approvals.decisions(approval_id=view.gate.id)
        assert len(recorded) == 1
        assert {o["decision"] for o in outcomes} == {recorded[0].id}
        assert sorted(o["replayed"] for o in outcomes) == [False] + [True] * (PROCESSES - 1)
        assert all(o["outcome"] == outcomes[0]["outcome"] for o in outcomes)
        types = event_types(app, view.run.id)
        assert types.count("approval.resolved") == 1
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
        app.close()

"""The real ``devflow`` command on gates and decisions, on SQLite and PostgreSQL (issue 5).

decide / approve / reject / request-changes, approvals show, run pause|resume|abort, the
gate block of --json output, approvers from --as, DEVFLOW_ACTOR and config groups, partial
approval with --section and --sections-file, exit codes, and many processes deciding at
once (PostgreSQL).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devflow import access
from devflow.catalog import Catalog, Dirs
from tests.conftest import as_json, make_repo
from tests.gates_support import (
    GATE_KEYS,
    bind_args,
    cli_argv,
    prompt_text,
    run_cli,
    sha256_file,
    write_templates,
)

Cli = Callable[..., subprocess.CompletedProcess[str]]
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def dcli(cli: Cli, tmp_path: Path) -> Cli:
    """``cli`` with this module's templates on DEVFLOW_TEMPLATES_DIR."""
    templates = write_templates(tmp_path / "templates")

    def run(*args: str, env: dict[str, str] | None = None,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        return cli(*args, env={"DEVFLOW_TEMPLATES_DIR": str(templates), **(env or {})}, **kw)
    return run


def start(dcli: Cli, repo: Path, template: str = "development@1", *args: str) -> dict[str, Any]:
    if template == "development@1" and not any(a.startswith("plan=") for a in args):
        args = (*args, "--scenario", "plan=plan:0")
    body = as_json(dcli("run", "start", "--repo", str(repo), "--base", "main", "--template",
                        template, "--objective", "Add a farewell function.",
                        *bind_args(template), *args, "--json", check=0))
    assert isinstance(body, dict) and body["run"]["state"] == "awaiting_approval", body
    return body


def error_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    error = as_json(result)["error"]
    assert isinstance(error, dict)
    return error


def show(dcli: Cli, approval_id: int) -> dict[str, Any]:
    body = as_json(dcli("approvals", "show", str(approval_id), "--json", check=0))
    assert isinstance(body, dict)
    return body


def schemas() -> Any:
    return Catalog(Dirs.with_builtins()).schemas


# -- the acceptance of the issue --------------------------------------------------------------
@pytest.mark.slow
def test_a_person_reviews_asks_for_changes_approves_and_reads_the_report(dcli: Cli,
                                                                        repo: Path) -> None:
    started = start(dcli, repo)
    run_id, gate = started["run"]["id"], started["gate"]
    worktree = Path(started["run"]["worktree"])
    shown = show(dcli, gate["approval_id"])
    assert shown["approval"]["state"] == "pending"
    assert shown["approval"]["evidence"]["artifact_sha256"] == gate["artifact"]["sha256"]
    assert shown["artifact"] == json.loads((worktree / ".devflow/spec.json").read_text())
    assert shown["decisions"] == []
    text = dcli("approvals", "show", str(gate["approval_id"]), check=0).stdout
    assert "spec_review" in text and "Review the specification" in text

    comment = "Say what farewell() returns for an empty name."
    changed = as_json(dcli("request-changes", run_id, "--comment", comment, "--json", check=0))
    assert changed["decision"]["action"] == "request_changes"
    assert changed["gate"]["round"] == 2 and changed["driven"] is True
    assert comment in prompt_text(started["run"]["workspace"], "spec", 2)

    approved = as_json(dcli("approve", run_id, "--as", "alice", "--json", check=0))
    assert approved["gate"]["gate"] == "final_review"
    done = as_json(dcli("approve", run_id, "--as", "bob", "--comment", "Ship it.", "--json",
                        check=0))
    assert done["run"]["state"] == "completed" and "gate" not in done
    report = json.loads(dcli("report", run_id, "--format", "json", check=0).stdout)
    assert schemas().validate("common/final-report@1", report) == []
    assert [(a["gate"], a["round"], a["state"],
             [(d["action"], d["actor"], d["comment"]) for d in a["decisions"]])
            for a in report["approvals"]] == [
        ("spec_review", 1, "changes_requested", [("request_changes", "tester", comment)]),
        ("spec_review", 2, "approved", [("approve", "alice", None)]),
        ("final_review", 1, "approved", [("approve", "bob", "Ship it.")])]
    markdown = dcli("report", run_id, check=0).stdout
    assert "alice" in markdown and "bob" in markdown


# -- idempotency ------------------------------------------------------------------------------
@pytest.mark.slow
def test_token_replay_and_conflicts(dcli: Cli, repo: Path) -> None:
    started = start(dcli, repo)
    run_id, approval_id = started["run"]["id"], started["gate"]["approval_id"]
    token = "retry-token-1"
    first = as_json(dcli("decide", run_id, "approve", "--token", token, "--no-drive", "--json",
                         check=0))
    assert first["replayed"] is False and first["token"] == token
    assert first["driven"] is False and "gate" not in first
    assert first["run"]["state"] == "executing"
    again = dcli("decide", run_id, "approve", "--token", token, "--no-drive", "--json", check=0)
    replay = as_json(again)
    assert replay["replayed"] is True
    assert replay["decision"]["id"] == first["decision"]["id"]
    assert replay["outcome"] == first["outcome"]

    other = dcli("decide", run_id, "reject", "--token", token, "--json", check=3)
    assert error_of(other)["code"] == "approval_conflict"
    late = dcli("decide", run_id, "request-changes", "--approval", str(approval_id),
                "--comment", "too late", "--json", check=3)
    error = error_of(late)
    assert error["code"] == "approval_conflict"
    assert "approved" in error["hint"]
    body = show(dcli, approval_id)
    assert body["approval"]["state"] == "approved"
    assert [d["token"] for d in body["decisions"]] == [token]
    assert body["approval"]["resolved_by"] == "tester"


def test_without_a_token_one_is_made_and_printed(dcli: Cli, repo: Path) -> None:
    started = start(dcli, repo, "double@1")
    run_id = started["run"]["id"]
    human = dcli("approve", run_id, check=0)  # the first gate: the second opens at once
    found = re.search(r"token ([0-9a-f]{32})", human.stdout)
    assert found, human.stdout
    assert "--token" in human.stdout
    body = as_json(dcli("approve", run_id, "--no-drive", "--json", check=0))
    assert HEX32.match(body["token"]) and body["token"] != found[1]
    assert body["decision"]["token"] == body["token"] and body["replayed"] is False
    assert body["approval"]["gate"] == "product"
    replay = dcli("approve", run_id, "--token", found[1], "--no-drive", check=0)
    assert "replayed" in replay.stdout and "tech" in replay.stdout


# -- evidence ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["artifact", "untracked-file", "artifact-sha-not-shown"])
def test_stale_evidence_is_refused(dcli: Cli, repo: Path, change: str) -> None:
    started = start(dcli, repo)
    run_id, gate = started["run"]["id"], started["gate"]
    tree = Path(started["run"]["worktree"])
    artifact = tree / gate["artifact"]["path"]
    original = artifact.read_bytes()
    extra: list[str] = []
    if change == "artifact":
        artifact.write_bytes(original + b"\n")
    elif change == "untracked-file":
        (tree / "sneaked-in.txt").write_text("not shown\n", encoding="utf-8")
    else:  # the caller binds its decision to the bytes it was shown
        extra = ["--artifact-sha", "0" * 64]
    refused = dcli("approve", run_id, *extra, "--json", check=3)
    assert error_of(refused)["code"] == "approval_stale"
    body = show(dcli, gate["approval_id"])
    assert body["approval"]["state"] == "pending" and body["decisions"] == []
    if extra:
        shown = dcli("approve", run_id, "--artifact-sha", gate["artifact"]["sha256"],
                     "--no-drive", "--json", check=0)
        assert as_json(shown)["approval"]["state"] == "approved"


# -- pause, resume, abort ---------------------------------------------------------------------
@pytest.mark.slow
def test_pause_resume_and_deciding_on_a_paused_run(dcli: Cli, repo: Path) -> None:
    started = start(dcli, repo)
    run_id, gate = started["run"]["id"], started["gate"]
    paused = as_json(dcli("run", "pause", run_id, "--reason", "lunch", "--json", check=0))
    assert paused["changed"] is True and paused["run"]["state"] == "paused"
    assert paused["run"]["paused_from"] == "awaiting_approval" and "gate" not in paused
    again = as_json(dcli("run", "pause", run_id, "--json", check=0))
    assert again["changed"] is False and again["run"]["state"] == "paused"
    for action in ("approve", "request-changes"):
        assert error_of(dcli(action, run_id, "--json", check=3))["code"] == "illegal_transition"
    assert show(dcli, gate["approval_id"])["decisions"] == []
    resumed = as_json(dcli("run", "resume", run_id, "--json", check=0))
    assert resumed["changed"] is True and resumed["run"]["state"] == "awaiting_approval"
    assert resumed["gate"] == gate
    repeat = as_json(dcli("run", "resume", run_id, "--json", check=0))
    assert repeat["changed"] is False and repeat["gate"] == gate

    dcli("run", "pause", run_id, "--json", check=0)
    rejected = as_json(dcli("reject", run_id, "--comment", "Not now.", "--json", check=0))
    assert rejected["run"]["state"] == "failed" and "gate" not in rejected
    assert rejected["run"]["failure"]["code"] == "approval_rejected"
    for verb in ("pause", "resume", "abort"):
        result = dcli("run", verb, run_id, "--json", check=3)
        assert error_of(result)["code"] == "illegal_transition"
    report = json.loads(dcli("report", run_id, "--format", "json", check=0).stdout)
    assert report["run"]["state"] == "failed"
    assert [(d["action"], d["actor"]) for d in report["approvals"][0]["decisions"]] == [
        ("reject", "tester")]


def test_abort_decision_on_a_paused_run_is_accepted(dcli: Cli, repo: Path) -> None:
    started = start(dcli, repo)
    run_id = started["run"]["id"]
    dcli("run", "pause", run_id, "--json", check=0)
    aborted = as_json(dcli("decide", run_id, "abort", "--comment", "Stop.", "--json", check=0))
    assert aborted["run"]["state"] == "aborted" and "gate" not in aborted
    report = json.loads(dcli("report", run_id, "--format", "json", check=0).stdout)
    assert schemas().validate("common/final-report@1", report) == []
    assert report["run"]["state"] == "aborted"
    assert [(d["action"], d["actor"], d["comment"])
            for d in report["approvals"][0]["decisions"]] == [("abort", "tester", "Stop.")]


def test_run_abort_writes_the_report_and_pause_after_it_conflicts(dcli: Cli,
                                                                  repo: Path) -> None:
    started = start(dcli, repo)
    run_id = started["run"]["id"]
    aborted = as_json(dcli("run", "abort", run_id, "--reason", "wrong repo", "--json"))
    assert aborted["changed"] is True and aborted["run"]["state"] == "aborted"
    assert "gate" not in aborted
    report = json.loads(dcli("report", run_id, "--format", "json", check=0).stdout)
    assert schemas().validate("common/final-report@1", report) == []
    assert [(a["gate"], a["state"]) for a in report["approvals"]] == [("spec_review", "aborted")]
    assert error_of(dcli("run", "pause", run_id, "--json", check=3))["code"] == \
        "illegal_transition"


def test_repeating_run_abort_is_a_no_op_that_exits_0(dcli: Cli, repo: Path) -> None:
    started = start(dcli, repo)
    run_id = started["run"]["id"]
    dcli("run", "abort", run_id, "--json")
    repeat = dcli("run", "abort", run_id, "--json")
    assert as_json(repeat)["changed"] is False
    assert repeat.returncode == 0, repeat.stdout


# -- the gate block ---------------------------------------------------------------------------
@pytest.mark.slow
def test_gate_block_in_start_status_and_decide_and_absent_otherwise(dcli: Cli,
                                                                    repo: Path) -> None:
    started = start(dcli, repo)
    run_id, gate = started["run"]["id"], started["gate"]
    assert set(gate) == GATE_KEYS
    assert set(gate["artifact"]) == {"path", "sha256"}
    assert (gate["gate"], gate["phase"], gate["round"]) == ("spec_review", "spec", 1)
    assert gate["options"] == ["approve", "request_changes", "reject", "abort"]
    assert gate["message"].startswith("Review the specification")
    assert gate["artifact"]["sha256"] == sha256_file(
        Path(started["run"]["worktree"]) / gate["artifact"]["path"])
    assert isinstance(gate["deadline"], str) and gate["deadline"].endswith("Z")
    status = as_json(dcli("run", "status", run_id, "--json", check=0))
    assert status["gate"] == gate

    changed = as_json(dcli("request-changes", run_id, "--comment", "More detail.", "--json",
                           check=0))
    assert set(changed["gate"]) == GATE_KEYS
    assert changed["gate"]["round"] == 2
    assert changed["gate"]["approval_id"] != gate["approval_id"]
    assert changed["approval"]["id"] == gate["approval_id"]

    approved = as_json(dcli("approve", run_id, "--no-drive", "--json", check=0))
    assert approved["run"]["state"] == "executing" and "gate" not in approved
    assert "gate" not in as_json(dcli("run", "status", run_id, "--json", check=0))
    driven = as_json(dcli("run", "drive", run_id, "--json", check=0))
    assert driven["gate"]["gate"] == "final_review" and driven["gate"]["phase"] == "review"

    rejected = as_json(dcli("reject", run_id, "--json", check=0))
    assert rejected["run"]["state"] == "failed" and "gate" not in rejected
    final = as_json(dcli("run", "status", run_id, "--json", check=0))
    assert final["run"]["phases"][-1]["key"] == "review"
    assert "gate" not in final


def test_events_carry_the_gate_block_while_waiting(dcli: Cli, repo: Path) -> None:
    started = start(dcli, repo)
    run_id, gate = started["run"]["id"], started["gate"]
    lines = dcli("events", run_id, "--json", check=0).stdout.splitlines()
    requested = [e for e in map(json.loads, lines) if e["type"] == "approval.requested"]
    assert len(requested) == 1
    payload = requested[0]["payload"]
    block = payload["gate"] if isinstance(payload.get("gate"), dict) else {
        **payload, "phase": requested[0]["phase"]}
    assert {key: block.get(key) for key in GATE_KEYS} == gate


def test_two_gates_on_a_phase_and_an_option_the_gate_does_not_offer(dcli: Cli,
                                                                    repo: Path) -> None:
    started = start(dcli, repo, "double@1")
    run_id = started["run"]["id"]
    assert started["gate"]["gate"] == "tech"
    first = as_json(dcli("approve", run_id, "--json", check=0))
    assert first["gate"]["gate"] == "product" and first["gate"]["round"] == 1
    assert first["gate"]["options"] == ["approve", "reject"]
    assert first["driven"] is False
    refused = dcli("request-changes", run_id, "--comment", "x", "--json", check=2)
    assert error_of(refused)["code"] == "invalid_input"
    done = as_json(dcli("approve", run_id, "--json", check=0))
    assert done["run"]["state"] == "completed" and "gate" not in done


# -- who may decide ---------------------------------------------------------------------------
@pytest.mark.slow
def test_approvers_by_name_by_actor_variable_and_by_group(dcli: Cli, repo: Path,
                                                          home: Path) -> None:
    started = start(dcli, repo, "guarded@1")
    run_id, gate = started["run"]["id"], started["gate"]
    refused = dcli("approve", run_id, "--json", check=3)
    error = error_of(refused)
    assert error["code"] == "not_authorized"
    assert "tester" in error["message"] and "alice" in error["hint"]
    # --as names alice, but the OS account running the command is not alice: refused,
    # unless the configuration lets this account act for others
    as_alice = dcli("approve", run_id, "--as", "alice", "--json", check=3)
    assert error_of(as_alice)["code"] == "not_authorized"
    me = access.os_account().name
    (home / "config.yaml").write_text(f"act_for_others: [{me}]\n", encoding="utf-8")
    by_name = as_json(dcli("approve", run_id, "--as", "alice", "--json", check=0))
    assert by_name["decision"]["actor"] == "alice"
    assert by_name["decision"]["authentication"]["attribution"] == "delegated"
    assert by_name["gate"]["gate"] == "leads_gate"
    # the actor comes from DEVFLOW_ACTOR; bob may decide only once the group names him
    as_bob = {"DEVFLOW_ACTOR": "bob"}
    before = dcli("approve", run_id, "--json", env=as_bob, check=3)
    assert error_of(before)["code"] == "not_authorized" and "bob" in error_of(before)["message"]
    (home / "config.yaml").write_text(f"act_for_others: [{me}]\ngroups:\n  leads: [bob, dave]\n",
                                      encoding="utf-8")
    by_group = as_json(dcli("approve", run_id, "--json", env=as_bob, check=0))
    assert by_group["decision"]["actor"] == "bob"
    assert by_group["run"]["state"] == "completed"
    assert show(dcli, gate["approval_id"])["decisions"][0]["actor"] == "alice"


# -- partial approval -------------------------------------------------------------------------
def test_partial_approval_of_a_phase_plan(dcli: Cli, repo: Path) -> None:
    started = start(dcli, repo, "gated-plan@1", "--scenario", "plan=plan:3")
    run_id, gate = started["run"]["id"], started["gate"]
    unknown = dcli("decide", run_id, "approve", "--section", "plan-step-9=reject", "--json",
                   check=2)
    error = error_of(unknown)
    assert error["code"] == "unknown_section" and "plan-step-9" in error["message"]
    assert show(dcli, gate["approval_id"])["decisions"] == []

    done = as_json(dcli("decide", run_id, "approve", "--section", "plan-step-2=reject",
                        "--json", check=0))
    assert done["decision"]["sections"] == {"plan-step-2": "reject"}
    assert done["run"]["state"] == "completed"
    assert [(p["key"], p["state"]) for p in done["run"]["phases"]] == [
        ("plan", "completed"), ("plan-step-1", "completed"), ("plan-step-3", "completed")]


def test_rejected_findings_from_a_sections_file_go_into_the_next_review_prompt(
        dcli: Cli, repo: Path, tmp_path: Path) -> None:
    started = start(dcli, repo)
    run_id = started["run"]["id"]
    at_review = as_json(dcli("approve", run_id, "--json", check=0))
    assert at_review["gate"]["gate"] == "final_review"
    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(json.dumps({
        "truncate-off-by-one": {"verdict": "reject", "comment": "Fix the cut at max_length."},
        "cli-help-text": "approve"}), encoding="utf-8")
    again = as_json(dcli("approve", run_id, "--sections-file", str(verdicts), "--json",
                         check=0))
    assert again["decision"]["sections"] == {"truncate-off-by-one": "reject",
                                             "cli-help-text": "approve"}
    assert (again["gate"]["gate"], again["gate"]["round"]) == ("final_review", 2)
    prompt = prompt_text(started["run"]["workspace"], "review", 2)
    assert "section `truncate-off-by-one` was rejected: Fix the cut at max_length." in prompt
    assert "section `cli-help-text` was rejected" not in prompt


# -- which request --------------------------------------------------------------------------
@pytest.mark.slow
def test_no_pending_request_and_a_request_of_another_run(dcli: Cli, repo: Path,
                                                         tmp_path: Path) -> None:
    first = start(dcli, repo)
    run_id = first["run"]["id"]
    dcli("approve", run_id, "--no-drive", "--json", check=0)
    assert error_of(dcli("approve", run_id, "--json", check=3))["code"] == "no_pending_approval"
    other = start(dcli, make_repo(tmp_path / "other"))
    foreign = dcli("approve", run_id, "--approval", str(other["gate"]["approval_id"]),
                   "--json", check=4)
    assert error_of(foreign)["code"] == "approval_not_found"


# -- many processes (PostgreSQL) --------------------------------------------------------------
CLI_PROCESSES = 20


@pytest.mark.slow
@pytest.mark.postgresql_only
def test_concurrent_identical_cli_decisions_record_one(pg_url: str, home: Path,
                                                       tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    repo = make_repo(tmp_path / "repo")
    started = json.loads(run_cli(
        home, pg_url, workspace, "run", "start", "--repo", str(repo), "--base", "main",
        "--template", "development@1", "--objective", "Add a farewell function.",
        *bind_args("development@1"), "--scenario", "plan=plan:0", "--json", check=0).stdout)
    run_id, approval_id = started["run"]["id"], started["gate"]["approval_id"]
    token = "one-decision-many-callers"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")},
           "DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": pg_url,
           "DEVFLOW_WORKSPACE": str(workspace), "DEVFLOW_ACTOR": "tester",
           "DEVFLOW_LOG_FORMAT": "json"}
    argv = cli_argv("decide", run_id, "approve", "--token", token, "--no-drive", "--json")
    children = [subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for _ in range(CLI_PROCESSES)]
    results = []
    try:
        for child in children:
            out, err = child.communicate(timeout=180)
            assert child.returncode == 0, f"{out}\n{err}"
            results.append(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    body = json.loads(run_cli(home, pg_url, workspace, "approvals", "show", str(approval_id),
                              "--json", check=0).stdout)
    assert len(body["decisions"]) == 1
    assert {r["decision"]["id"] for r in results} == {body["decisions"][0]["id"]}
    assert sorted(r["replayed"] for r in results) == [False] + [True] * (CLI_PROCESSES - 1)
    assert all(r["outcome"] == results[0]["outcome"] for r in results)
    assert body["approval"]["state"] == "approved"

"""The real ``devflow`` command on runs, on SQLite and PostgreSQL: JSON shapes of run start,
status and list, the gate block, events, reports, exit codes, and bad input that leaves
nothing behind."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devflow import git
from devflow.app import App
from devflow.catalog import Catalog, Dirs
from tests.conftest import as_json, make_repo
from tests.integration.helpers import (
    CLI_BINDS,
    QUICK_CLI_BINDS,
    branches,
    requirements_file,
    write_template,
)

Cli = Callable[..., subprocess.CompletedProcess[str]]
RUN_KEYS = {"id", "state", "template", "repo", "base", "branch", "worktree", "phases"}
PHASE_KEYS = {"key", "title", "state", "role", "attempt", "artifact", "checkpoint"}
GATE_KEYS = {"approval_id", "gate", "phase", "message", "options", "artifact"}
EVENT_KEYS = {"seq", "type", "ts", "phase", "payload"}


def _schemas() -> Any:
    return Catalog(Dirs.with_builtins()).schemas


def _start(cli: Cli, repo: Path, tmp_path: Path, *args: str, check: int | None = 0,
           template: str = "development@1") -> subprocess.CompletedProcess[str]:
    binds = CLI_BINDS if template.startswith("development") else QUICK_CLI_BINDS
    return cli("run", "start", "--repo", str(repo), "--base", "main", "--template", template,
               "--requirements", str(requirements_file(tmp_path)), *binds, *args, "--json",
               check=check)


def _event_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_run_start_status_and_list_json_shapes_with_a_gate(cli: Cli, repo: Path,
                                                          tmp_path: Path) -> None:
    started = as_json(_start(cli, repo, tmp_path, "--scenario", "plan=plan:0"))
    run = started["run"]
    assert set(run) >= RUN_KEYS
    assert run["state"] == "awaiting_approval"
    assert run["template"] == "development@1"
    assert run["repo"] == str(repo.resolve())
    assert run["base"] == "main"
    assert run["branch"] == f"devflow/{run['id']}/main"
    assert Path(run["worktree"]).is_dir()
    assert [p["key"] for p in run["phases"]] == ["spec", "plan", "implement", "review"]
    assert all(set(p) >= PHASE_KEYS for p in run["phases"])
    assert [p["state"] for p in run["phases"]] == [
        "awaiting_approval", "pending", "pending", "pending"]
    gate = started["gate"]
    assert set(gate) >= GATE_KEYS
    assert (gate["gate"], gate["phase"]) == ("spec_review", "spec")
    assert "approve" in gate["options"]
    assert gate["message"]
    assert gate["artifact"]["path"] == ".devflow/spec.json"
    assert gate["artifact"]["sha256"] == run["phases"][0]["artifact"]["sha256"]

    status = as_json(cli("run", "status", run["id"], "--json", check=0))
    assert status["run"]["id"] == run["id"]
    assert status["run"]["state"] == "awaiting_approval"
    assert status["gate"]["approval_id"] == gate["approval_id"]

    listed = as_json(cli("run", "list", "--json", check=0))
    assert set(listed) == {"runs"}
    assert [r["id"] for r in listed["runs"]] == [run["id"]]
    assert listed["runs"][0]["state"] == "awaiting_approval"
    waiting = as_json(cli("run", "list", "--state", "awaiting_approval", "--json", check=0))
    assert [r["id"] for r in waiting["runs"]] == [run["id"]]

    # no report before the run ends: a conflict that says why
    early = cli("report", run["id"], "--format", "json", check=3)
    assert "illegal_transition" in early.stderr and early.stdout == ""

    # approving drives on: to the next gate, then to the end, when the gate block is gone
    second = as_json(cli("approve", run["id"], "--json", check=0))
    assert second["gate"]["gate"] == "final_review"
    done = as_json(cli("approve", run["id"], "--json", check=0))
    assert done["run"]["state"] == "completed"
    assert "gate" not in done
    final = as_json(cli("run", "status", run["id"], "--json", check=0))
    assert final["run"]["state"] == "completed"
    assert "gate" not in final
    assert [p["state"] for p in final["run"]["phases"]] == ["completed"] * 4

    report = json.loads(cli("report", run["id"], "--format", "json", check=0).stdout)
    assert _schemas().validate("common/final-report@1", report) == []
    assert report["run"]["id"] == run["id"] and report["run"]["state"] == "completed"
    path = cli("report", run["id"], "--path", check=0).stdout.strip()
    assert path == str(Path(run["worktree"]).parent / "report.md")
    assert Path(path).read_text(encoding="utf-8").startswith(
        f"# devflow run {run['id']}: completed")


@pytest.mark.slow
def test_events_json_one_object_per_line_and_after(cli: Cli, repo: Path,
                                                   tmp_path: Path) -> None:
    started = as_json(_start(cli, repo, tmp_path, template="quick@1"))
    assert "gate" not in started  # quick@1 has no gate
    run = started["run"]
    assert run["state"] == "completed"
    events = _event_lines(cli("events", run["id"], "--json", check=0))
    assert events
    assert all(set(e) >= EVENT_KEYS for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run.created" and events[-1]["type"] == "report.written"
    assert all(isinstance(e["payload"], dict) and isinstance(e["ts"], str) for e in events)
    assert {e["phase"] for e in events if e["type"] == "phase.completed"} == {
        "implement", "review"}
    later = _event_lines(cli("events", run["id"], "--json", "--after", "5", check=0))
    assert later == events[5:]
    # --follow on a finished run prints what there is and ends
    followed = _event_lines(cli("events", run["id"], "--json", "--follow", check=0, timeout=30))
    assert followed == events


def test_failed_run_exits_1_with_its_report(cli: Cli, repo: Path, tmp_path: Path) -> None:
    result = _start(cli, repo, tmp_path, "--scenario", "implement=invalid", template="quick@1",
                    check=1)
    run = as_json(result)["run"]
    assert run["state"] == "failed"
    assert run["failure"]["code"] == "artifact_invalid"
    report = json.loads(cli("report", run["id"], "--format", "json", check=0).stdout)
    assert _schemas().validate("common/final-report@1", report) == []
    assert [v["attempt"] for v in report["validation_errors"]] == [1, 2, 3]
    # the human form says so too; showing a failed run is a success: exit 0
    human = cli("run", "status", run["id"], check=0).stdout
    assert "failed" in human and "artifact_invalid" in human
    assert "/: " not in human  # a reason about the attempt names no place in a document


def test_start_with_a_scenario_per_phase_repairs(cli: Cli, repo: Path, tmp_path: Path) -> None:
    run = as_json(_start(cli, repo, tmp_path, "--scenario", "implement=invalid-then-ok",
                         template="quick@1"))["run"]
    assert run["state"] == "completed"
    implement = run["phases"][0]
    assert (implement["key"], implement["attempt"], implement["repairs"]) == ("implement", 2, 1)
    prompt = Path(run["workspace"]) / "prompts" / "implement.attempt-2.md"
    assert "'summary' is a required property" in prompt.read_text(encoding="utf-8")


# -- bad input: clear errors, exit codes, nothing left behind -----------------------------
def test_missing_base_branch_exits_4_and_leaves_nothing(cli: Cli, repo: Path,
                                                        tmp_path: Path) -> None:
    result = cli("run", "start", "--repo", str(repo), "--base", "no-such-branch", "--template",
                 "quick@1", "--requirements", str(requirements_file(tmp_path)),
                 *QUICK_CLI_BINDS, "--json", check=4)
    error = as_json(result)["error"]
    assert error["code"] == "base_branch_not_found"
    assert "no-such-branch" in error["message"]
    assert "main" in error["hint"]  # the branches that do exist
    assert as_json(cli("run", "list", "--json", check=0)) == {"runs": []}
    assert branches(repo) == ["main"]
    human = cli("run", "start", "--repo", str(repo), "--base", "no-such-branch", "--template",
                "quick@1", "--requirements", str(requirements_file(tmp_path)),
                *QUICK_CLI_BINDS, check=4)
    assert "base_branch_not_found" in human.stderr


def test_not_a_git_repo_exits_2(cli: Cli, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = cli("run", "start", "--repo", str(plain), "--base", "main", "--template",
                 "quick@1", "--requirements", str(requirements_file(tmp_path)),
                 *QUICK_CLI_BINDS, "--json", check=2)
    assert as_json(result)["error"]["code"] == "not_a_git_repo"
    missing = cli("run", "start", "--repo", str(tmp_path / "nowhere"), "--base", "main",
                  "--template", "quick@1", "--requirements", str(requirements_file(tmp_path)),
                  *QUICK_CLI_BINDS, "--json", check=2)
    assert as_json(missing)["error"]["code"] == "not_a_git_repo"
    assert as_json(cli("run", "list", "--json", check=0)) == {"runs": []}


def test_unknown_template_exits_4(cli: Cli, repo: Path, tmp_path: Path) -> None:
    result = _start(cli, repo, tmp_path, template="no-such-template@1", check=4)
    error = as_json(result)["error"]
    assert error["code"] == "template_not_found"
    assert "development@1" in error["hint"]
    assert as_json(cli("run", "list", "--json", check=0)) == {"runs": []}
    assert branches(repo) == ["main"]


@pytest.mark.parametrize("path", ["../outside.json", "/tmp/outside.json"])
def test_escaping_artifact_path_in_a_template_exits_2(cli: Cli, repo: Path, tmp_path: Path,
                                                      path: str) -> None:
    templates = tmp_path / "templates"
    write_template(templates, "escape", f"""\
        name: escape
        version: 1
        roles:
          implementer:
        phases:
          - key: work
            roles: [implementer]
            artifact:
              path: {path}
              schema: dev/implementation@1
        """)
    result = cli("--templates-dir", str(templates), "run", "start", "--repo", str(repo),
                 "--base", "main", "--template", "escape@1", "--requirements",
                 str(requirements_file(tmp_path)), "--bind=implementer=scripted-implementer@1",
                 "--json", check=2)
    error = as_json(result)["error"]
    assert error["code"] == "path_escape"
    assert path in error["message"]
    assert as_json(cli("run", "list", "--json", check=0)) == {"runs": []}


def test_concurrent_start_on_an_active_branch_exits_3_naming_the_run(cli: Cli, repo: Path,
                                                                      tmp_path: Path) -> None:
    first = as_json(_start(cli, repo, tmp_path, "--detach", template="quick@1"))["run"]
    assert first["state"] == "bound"
    result = _start(cli, repo, tmp_path, template="quick@1", check=3)
    error = as_json(result)["error"]
    assert error["code"] == "active_run_exists"
    assert first["id"] in error["message"]
    # a start on another branch of the same repository is fine
    git.run(["branch", "other", "main"], repo)
    other = cli("run", "start", "--repo", str(repo), "--base", "other", "--template", "quick@1",
                "--requirements", str(requirements_file(tmp_path)), *QUICK_CLI_BINDS,
                "--detach", "--json", check=0)
    assert as_json(other)["run"]["base"] == "other"


def test_start_in_a_subdirectory_reads_requirements_from_stdin(cli: Cli, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "nested")
    run = as_json(cli("run", "start", "--repo", str(repo / "src" / "sample"), "--template",
                      "quick@1", "--requirements", "-", *QUICK_CLI_BINDS, "--json",
                      input_text="Add a farewell, from standard input.\n", check=0))["run"]
    assert run["repo"] == str(repo.resolve())
    assert run["base"] == "main"  # the repository's current branch
    assert run["state"] == "completed"
    prompt = Path(run["workspace"]) / "prompts" / "implement.attempt-1.md"
    assert "Add a farewell, from standard input." in prompt.read_text(encoding="utf-8")


def test_without_base_a_bad_repo_is_named_as_such(cli: Cli, tmp_path: Path) -> None:
    """With no --base, devflow asks git for the current branch first: what is wrong with
    --repo is still said as such, never as git missing or a traceback."""
    plain = tmp_path / "plain"
    plain.mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory\n", encoding="utf-8")
    for path, says in ((plain, "is not a git repository"),
                       (tmp_path / "nowhere", "is not a directory"),
                       (a_file, "is not a directory")):
        result = cli("run", "start", "--repo", str(path), "--template", "quick@1",
                     "--requirements", str(requirements_file(tmp_path)), *QUICK_CLI_BINDS,
                     "--json", check=2)
        error = as_json(result)["error"]
        assert error["code"] == "not_a_git_repo", path
        assert says in error["message"]
    assert as_json(cli("run", "list", "--json", check=0)) == {"runs": []}


def test_without_base_a_detached_head_asks_for_one(cli: Cli, repo: Path,
                                                   tmp_path: Path) -> None:
    git.run(["checkout", "--quiet", "--detach"], repo)
    result = cli("run", "start", "--repo", str(repo), "--template", "quick@1",
                 "--requirements", str(requirements_file(tmp_path)), *QUICK_CLI_BINDS,
                 "--json", check=2)
    error = as_json(result)["error"]
    assert error["code"] == "invalid_input"
    assert "detached" in error["message"]
    assert error["hint"] == "pass --base BRANCH"
    assert as_json(cli("run", "list", "--json", check=0)) == {"runs": []}


def test_status_says_who_drives_a_runnable_run(cli: Cli, app: App, repo: Path,
                                               tmp_path: Path) -> None:
    """A run nobody holds waits for a worker: status says so and how to drive it here; a
    held lease names its owner; a lease that ran out points at the sweep."""
    run_id = as_json(_start(cli, repo, tmp_path, "--detach", template="quick@1"))["run"]["id"]

    def driver() -> str:
        lines = cli("run", "status", run_id, check=0).stdout.splitlines()
        return next(line.split("driver", 1)[1].strip() for line in lines
                    if line.strip().startswith("driver"))

    assert driver() == (f"none: a worker (`devflow worker`) takes it up, or "
                        f"`devflow run drive {run_id}` drives it here")
    lease = app.store.leases.claim(run_id, "w-test", 60)
    assert lease is not None
    assert driver().startswith("w-test (lease until ")
    app.store.leases.release(run_id, lease)
    gone = app.store.leases.claim(run_id, "w-gone", -5)  # a lease already out
    assert gone is not None
    assert driver().startswith("none: the lease of w-gone ran out at ")
    assert driver().endswith("`devflow sweep` recovers the run")
    app.store.leases.release(run_id, gone)
    cli("run", "drive", run_id, check=0)
    assert "driver" not in cli("run", "status", run_id, check=0).stdout  # completed

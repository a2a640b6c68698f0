"""``devflow worktree prune`` through the real command, on SQLite and PostgreSQL: nothing
that exists nowhere else is deleted unless a person names the run with --force; a dry
run says what it would do; what was pruned is recorded and shown, and not listed again."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devflow import git
from tests.conftest import as_json
from tests.integration.helpers import CLI_BINDS, QUICK_CLI_BINDS, requirements_file

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _start(cli: Cli, repo: Path, tmp_path: Path, *args: str, check: int = 0,
           template: str = "quick@1") -> dict[str, Any]:
    binds = QUICK_CLI_BINDS if template.startswith("quick") else CLI_BINDS
    result = cli("run", "start", "--repo", str(repo), "--base", "main", "--template", template,
                 "--requirements", str(requirements_file(tmp_path)), *binds, *args, "--json",
                 check=check)
    run: dict[str, Any] = as_json(result)["run"]
    return run


def _prune(cli: Cli, *args: str, check: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = as_json(cli("worktree", "prune", *args, "--json", check=check))
    return body


def _ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["run_id"] for item in items}


def _report(run: dict[str, Any]) -> tuple[dict[str, Any], str]:
    workspace = Path(run["workspace"])
    return (json.loads((workspace / "report.json").read_text(encoding="utf-8")),
            (workspace / "report.md").read_text(encoding="utf-8"))


def test_prune_keeps_work_found_nowhere_else_until_forced(cli: Cli, repo: Path,
                                                          tmp_path: Path) -> None:
    clean = _start(cli, repo, tmp_path)
    untracked = _start(cli, repo, tmp_path)
    changed = _start(cli, repo, tmp_path)
    failed = _start(cli, repo, tmp_path, "--scenario", "implement=exit-1", check=1)
    assert [r["state"] for r in (clean, untracked, changed, failed)] == [
        "completed", "completed", "completed", "failed"]
    (Path(untracked["worktree"]) / "mine.txt").write_text("a file the user added\n")
    (Path(changed["worktree"]) / "README.md").write_text("edited by hand\n")
    worktrees = {r["id"]: Path(r["worktree"]) for r in (clean, untracked, changed, failed)}
    commits = _report(clean)[0]["git"]["commits"]
    assert commits

    # a dry run: what would go, what stays and why, how to force it; nothing changes
    dry = _prune(cli, "--dry-run")
    assert dry["dry_run"] is True
    assert [(i["run_id"], i["worktree"], i["branch"]) for i in dry["removed"]] == [
        (clean["id"], clean["worktree"], None)]
    kept = {i["run_id"]: i for i in dry["kept"]}
    assert set(kept) == {untracked["id"], changed["id"], failed["id"]}
    assert kept[untracked["id"]]["kept"] == ["1 untracked file(s): mine.txt"]
    assert kept[changed["id"]]["kept"] == ["1 uncommitted change(s): README.md"]
    [never] = kept[failed["id"]]["kept"]  # its worktree is clean: kept for the attempt alone
    assert "the run failed and attempt 3 of phase implement was never committed" in never
    assert kept[failed["id"]]["force"] == f"devflow worktree prune --force {failed['id']}"
    assert all(path.is_dir() for path in worktrees.values())

    text = cli("worktree", "prune", "--dry-run", check=0).stdout
    assert f"{clean['id']}  would remove {clean['worktree']}" in text
    assert f"{untracked['id']}  kept {untracked['worktree']}: 1 untracked file(s)" in text
    assert f"to remove it anyway: devflow worktree prune --force {changed['id']}" in text
    assert "would remove 1 worktree, kept 3; would free" in text
    assert "deleted" not in text and "removed" not in text
    text = cli("worktree", "prune", "--delete-branches", "--dry-run", check=0).stdout
    assert f"would delete branch {clean['branch']}" in text
    assert "would delete 1 branch" in text
    assert "deleted" not in text and "removed" not in text
    assert git.run(["rev-parse", "--verify", f"refs/heads/{clean['branch']}"], repo,
                   check=False).returncode == 0
    assert all(path.is_dir() for path in worktrees.values())

    # the prune: the clean worktree goes, the others stay
    done = _prune(cli)
    assert (done["dry_run"], _ids(done["removed"]), _ids(done["kept"])) == (
        False, {clean["id"]}, {untracked["id"], changed["id"], failed["id"]})
    assert done["bytes_freed"] == done["removed"][0]["bytes"] > 0
    assert not worktrees[clean["id"]].exists()
    assert all(worktrees[r["id"]].is_dir() for r in (untracked, changed, failed))
    assert (worktrees[untracked["id"]] / "mine.txt").is_file()

    # recorded as pruned: not listed again, shown by run status and the report
    again = _prune(cli)
    assert again["removed"] == [] and len(again["kept"]) == 3
    status = as_json(cli("run", "status", clean["id"], "--json", check=0))["run"]
    assert status["worktree_pruned_at"] is not None and status["branch_deleted_at"] is None
    assert "(pruned " in cli("run", "status", clean["id"], check=0).stdout
    report, markdown = _report(clean)
    assert report["run"]["worktree_pruned_at"] == status["worktree_pruned_at"]
    assert f"| worktree | `{clean['worktree']}` (pruned " in markdown
    assert as_json(cli("run", "status", failed["id"], "--json", check=0))["run"][
        "worktree_pruned_at"] is None

    # --force names the runs whose work may go; the one not named stays
    forced = _prune(cli, "--force", untracked["id"], "--force", failed["id"])
    assert (_ids(forced["removed"]), _ids(forced["kept"])) == (
        {untracked["id"], failed["id"]}, {changed["id"]})
    assert not worktrees[untracked["id"]].exists() and not worktrees[failed["id"]].exists()
    assert worktrees[changed["id"]].is_dir()

    # branches: deleted when asked, shown deleted, not deleted twice; the kept run's stays
    deleted = _prune(cli, "--delete-branches")
    assert [(i["worktree"], i["branch"]) for i in deleted["removed"]
            if i["run_id"] == clean["id"]] == [(None, clean["branch"])]
    assert _ids(deleted["removed"]) == {clean["id"], untracked["id"], failed["id"]}
    assert _ids(deleted["kept"]) == {changed["id"]}
    assert _prune(cli, "--delete-branches")["removed"] == []
    assert git.run(["rev-parse", "--verify", f"refs/heads/{changed['branch']}"], repo,
                   check=False).returncode == 0
    status = as_json(cli("run", "status", clean["id"], "--json", check=0))["run"]
    assert status["branch_deleted_at"] is not None
    assert f"{clean['branch']} (deleted " in cli("run", "status", clean["id"], check=0).stdout
    report, markdown = _report(clean)
    assert report["run"]["branch_deleted_at"] == status["branch_deleted_at"]
    assert f"| branch | `{clean['branch']}` (deleted " in markdown
    assert report["git"]["commits"] == commits  # the report keeps what it said of the branch
    assert cli("report", clean["id"], "--format", "json", check=0).stdout.strip()


def test_prune_of_a_run_aborted_at_a_gate_removes_its_committed_worktree(
        cli: Cli, repo: Path, tmp_path: Path) -> None:
    run = _start(cli, repo, tmp_path, "--scenario", "plan=plan:0", template="development@1")
    assert run["state"] == "awaiting_approval"
    cli("run", "abort", run["id"], "--reason", "changed our minds", check=0)
    done = _prune(cli)
    assert (_ids(done["removed"]), done["kept"]) == ({run["id"]}, [])
    assert not Path(run["worktree"]).exists()


def test_force_naming_no_run_changes_nothing(cli: Cli, repo: Path, tmp_path: Path) -> None:
    run = _start(cli, repo, tmp_path)
    result = cli("worktree", "prune", "--force", "no-such-run", "--json", check=4)
    assert as_json(result)["error"]["code"] == "run_not_found"
    assert Path(run["worktree"]).is_dir()
    assert as_json(cli("run", "status", run["id"], "--json", check=0))["run"][
        "worktree_pruned_at"] is None


def test_salvage_refs_outlive_the_branch_until_the_run_is_forced(cli: Cli, repo: Path,
                                                                 tmp_path: Path) -> None:
    run = _start(cli, repo, tmp_path)
    tip = git.out(["rev-parse", f"refs/heads/{run['branch']}"], repo)
    dropped = git.out(["commit-tree", f"{tip}^{{tree}}", "-p", tip, "-m", "dropped work"], repo)
    ref = f"refs/heads/devflow/{run['id']}/salvage-1"
    git.run(["update-ref", ref, dropped], repo)

    def exists(name: str) -> bool:
        return git.run(["rev-parse", "--verify", "--quiet", name], repo,
                       check=False).returncode == 0

    # the branch goes, the salvage ref stays, saying why and how to delete it
    text = cli("worktree", "prune", "--delete-branches", "--dry-run", check=0).stdout
    assert f"{run['id']}  kept {ref}: work a recovery reset dropped" in text
    assert f"devflow worktree prune --delete-branches --force {run['id']}" in text
    done = _prune(cli, "--delete-branches")
    [removed] = done["removed"]
    assert (removed["branch"], removed["salvage"]) == (run["branch"], [])
    [kept] = done["kept"]
    assert kept["salvage_kept"][0].startswith(f"{ref}: ")
    assert kept["force"] == f"devflow worktree prune --delete-branches --force {run['id']}"
    assert not exists(f"refs/heads/{run['branch']}") and exists(ref)
    assert _prune(cli, "--delete-branches")["removed"] == []  # listed as kept, not acted on
    assert _prune(cli)["kept"] == []  # without --delete-branches refs are not looked at

    # named with --force, it goes too, recorded once
    forced = _prune(cli, "--delete-branches", "--force", run["id"])
    assert [(i["run_id"], i["branch"], i["salvage"]) for i in forced["removed"]] == [
        (run["id"], None, [ref])]
    assert forced["kept"] == [] and not exists(ref)
    events = [json.loads(line) for line in cli("events", run["id"], "--json",
                                                check=0).stdout.splitlines()]
    assert [e["payload"]["refs"] for e in events if e["type"] == "salvage.deleted"] == [[ref]]
    assert _prune(cli, "--delete-branches", "--force", run["id"])["removed"] == []

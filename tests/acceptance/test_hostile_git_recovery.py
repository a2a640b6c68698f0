"""Recovery after a crash resets only the run's own worktree and branch (DESIGN.md §3.3,
§3.6), even when the agent of the interrupted attempt rewrote its worktree's ``.git``
file to name the repository's common git dir.

The real ``devflow`` command drives a run whose agent (``tests/fakes/tamper_agent.py``)
rewrites ``.git`` and exits; the driver is killed with SIGKILL right then
(``DEVFLOW_CRASH_AT=agent_exited``), so no verdict saw the tampering. The user commits
on ``main``; the sweep recovers the run and the next drive resets the worktree to the
last checkpoint: ``.git`` is put back first (event ``worktree.restored``), the reset
moves the run's branch only, and the user's ``main``, index and files are untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from devflow import git, runtree, worktree
from devflow.settings import Settings
from tests.acceptance.crash_support import Devflow
from tests.conftest import make_repo
from tests.fakes import tamper_agent
from tests.fakes.stubs import stub_artifacts, stub_persona
from tests.integration.helpers import requirements_file, subjects

TAMPERER = [sys.executable, "-I", str(Path(tamper_agent.__file__).resolve())]


def test_hostile_dot_git_then_crash_recovery_resets_only_the_runs_worktree(
        settings: Settings, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git.run(["branch", "other"], repo)
    personas, stub_dir = tmp_path / "personas", tmp_path / "stub"
    stub_persona(personas, "tamperer", "implementer", stub_dir, argv=TAMPERER,
                 sandbox="none", env_set={"TAMPER": "dot-git"})
    df = Devflow(settings, tmp_path / "df", env={"DEVFLOW_PERSONAS_DIR": str(personas)})
    try:
        stub_artifacts(df.app, stub_dir)
        df.run("run", "start", "--repo", str(repo), "--base", "main", "--template", "quick@1",
               "--requirements", str(requirements_file(tmp_path)), "--run-id", "tampered",
               "--bind", "implementer=tamperer@1", "--bind", "reviewer=scripted-reviewer@1",
               "--detach", "--json", name="start")
        run = df.run_of("tampered")
        df.crash("agent_exited", tmp_path / "crashed", "run", "drive", "tampered")
        assert (Path(run.worktree) / ".git").read_text(encoding="utf-8").strip() == (
            f"gitdir: {(repo / '.git').resolve()}")  # the agent's doing, not seen yet

        (repo / "USER.md").write_text("mine\n", encoding="utf-8")  # the user works meanwhile
        git.run(["add", "USER.md"], repo)
        git.run(["commit", "--quiet", "--no-verify", "-m", "the user's own work"], repo,
                env=git.AUTHOR)
        user_sha = git.out(["rev-parse", "main"], repo)
        other_sha = git.out(["rev-parse", "other"], repo)
        (repo / "UNSTAGED.md").write_text("not committed yet\n", encoding="utf-8")

        df.wait_lease_gone("tampered")
        assert [a["action"] for a in df.sweep()] == ["recovered"]
        df.run("run", "drive", "tampered", "--json", check=0, name="drive")

        done = df.run_of("tampered")
        assert done.state == "completed", done.failure_reason
        restored = [e.payload for e in df.events("tampered") if e.type == "worktree.restored"]
        assert len(restored) == 1 and ".git file" in restored[0]["found"][0]
        assert restored[0]["sha"] == run.base_sha
        # the user's repository: main where the user left it, their files and index too
        assert git.out(["rev-parse", "main"], repo) == user_sha
        assert git.out(["rev-parse", "other"], repo) == other_sha
        assert git.out(["status", "--porcelain"], repo) == "?? UNSTAGED.md"
        assert (repo / "USER.md").read_text(encoding="utf-8") == "mine\n"
        # the run's branch: the interrupted attempt dropped, the repair committed on the base
        assert subjects(repo, run.base_sha or "", run.branch) == [
            "devflow(implement): attempt 2", "devflow(review): attempt 1"]
        readme = git.out(["show", f"{run.branch}:README.md"], repo)
        assert "attempt 2" in readme and "attempt 1" not in readme
        tree = worktree.of_run(done)
        assert (tree.path / ".git").read_text(encoding="utf-8").strip() == (
            f"gitdir: {tree.admin}")
        assert runtree.branch_tip(tree) == done.checkpoint_sha
    finally:
        df.close()
    (tmp_path / "hostile.json").write_text(json.dumps({
        "escape": "git: dot-git, then a crash",
        "outcome": "recovery put .git back, reset only the run's worktree; run completed",
        "database": "sqlite" if settings.database_url.startswith("sqlite") else "postgresql",
    }), encoding="utf-8")

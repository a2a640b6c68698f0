"""An agent that tries to make devflow's git write outside the run's branch (DESIGN.md §3.6).

A ``command`` persona running ``tests/fakes/tamper_agent.py`` unsandboxed (``sandbox:
none``, a persona's explicit choice: sandboxed, the common git dir and ``.git`` are
read-only and none of this reaches git; here devflow's git alone must catch it)
rewrites its worktree's ``.git`` file to name the repository's common git dir, points
HEAD at the user's ``main``, commits onto the run's branch by itself, or moves the
run's branch to ``main``. Each time its attempt fails with ``agent_tampered`` (the
reason in its next prompt), devflow puts ``.git``, HEAD and the branch back, the repair
attempt completes the run, and the user's branches (``main`` with a commit the user
made meanwhile), the run's branch and another run are as they were.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from devflow import git, runtree, worktree
from devflow.app import App
from devflow.requests import StartRequest
from devflow.settings import Settings
from tests.conftest import make_repo
from tests.fakes import tamper_agent
from tests.fakes.stubs import stub_artifacts, stub_persona
from tests.integration.helpers import quick, subjects

TAMPERER = [sys.executable, "-I", str(Path(tamper_agent.__file__).resolve())]
OUTCOME = "failed attempt agent_tampered; put back, repaired, run completed"


def database_of(settings: Settings) -> str:
    return "sqlite" if settings.database_url.startswith("sqlite") else "postgresql"


def refs(repo: Path, *, but: str = "") -> dict[str, str]:
    """Every ref of the repository and where it points (``but`` left out)."""
    text = git.out(["for-each-ref", "--format=%(refname) %(objectname)"], repo)
    return {name: sha for name, sha in (line.split() for line in text.splitlines())
            if name != but}


def user_commit(repo: Path, text: str) -> str:
    """A commit the user makes on ``main`` in their own worktree while the run goes on."""
    (repo / "USER.md").write_text(text, encoding="utf-8")
    git.run(["add", "USER.md"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", "the user's own work"], repo,
            env=git.AUTHOR)
    return git.out(["rev-parse", "main"], repo)


def tamper_app(settings: Settings, tmp_path: Path, how: str) -> tuple[App, str]:
    personas, stub_dir = tmp_path / "personas", tmp_path / "stub"
    ref = stub_persona(personas, "tamperer", "implementer", stub_dir, argv=TAMPERER,
                       sandbox="none", env_set={"TAMPER": how})
    app = App(settings.replace(personas_dirs=(personas,)))
    stub_artifacts(app, stub_dir)
    return app, ref


def as_dot_git_says(tree: runtree.Tree) -> bool:
    return ((tree.path / ".git").read_text(encoding="utf-8").strip() == f"gitdir: {tree.admin}"
            and (tree.admin / "HEAD").read_text(encoding="utf-8").strip()
            == f"ref: refs/heads/{tree.branch}")


@pytest.mark.parametrize("how", ["dot-git", "head-to-main", "self-commit", "branch-to-main"])
def test_hostile_agent_changing_devflows_git_fails_its_attempt(
        settings: Settings, tmp_path: Path, how: str) -> None:
    repo = make_repo(tmp_path / "repo")
    git.run(["branch", "other"], repo)
    app, tamperer = tamper_app(settings, tmp_path, how)
    try:
        bystander = app.start(quick(repo, base="other", run_id="bystander"))
        assert bystander.run.state == "completed"
        start = StartRequest(repo=repo, base="main", template="quick@1", actor="tester",
                             requirements="Add a farewell.", run_id="tampered",
                             binds={"implementer": tamperer, "reviewer": "scripted-reviewer@1"})
        view = app.start(start, detach=True)
        run = view.run
        user_sha = user_commit(repo, "mine\n")
        before = refs(repo, but=f"refs/heads/{run.branch}")
        bystander_tree = worktree.of_run(bystander.run)
        bystander_state = worktree.head_and_clean(bystander_tree)

        done, _ = app.drive(run.id)

        assert done.run.state == "completed", done.run.failure_reason
        events = app.store.events.after(run.id)
        refused = [e.payload for e in events if e.type == "phase.artifact_invalid"]
        assert [(r["attempt"], r["code"], r["repair"]) for r in refused] == [
            (1, "agent_tampered", True)]
        reasons = " ".join(e["message"] for e in refused[0]["errors"])
        assert {"dot-git": ".git file", "head-to-main": "HEAD", "self-commit": "run's branch",
                "branch-to-main": "run's branch"}[how] in reasons
        prompt = (Path(run.workspace) / "prompts" / "implement.attempt-2.md").read_text(
            encoding="utf-8")
        assert "agent_tampered" in prompt
        # the user's branches and the other run: as they were
        assert refs(repo, but=f"refs/heads/{run.branch}") == before
        assert git.out(["rev-parse", "main"], repo) == user_sha
        assert git.out(["status", "--porcelain"], repo) == ""
        assert worktree.head_and_clean(bystander_tree) == bystander_state
        # the run's branch: devflow's checkpoints only, on the run's base
        assert subjects(repo, run.base_sha or "", run.branch) == [
            "devflow(implement): attempt 2", "devflow(review): attempt 1"]
        assert git.run(["merge-base", "--is-ancestor", run.base_sha or "", run.branch],
                       repo).returncode == 0
        assert git.run(["merge-base", "--is-ancestor", user_sha, run.branch], repo,
                       check=False).returncode == 1
        tree = worktree.of_run(done.run)
        assert as_dot_git_says(tree)
        assert runtree.branch_tip(tree) == done.run.checkpoint_sha
        assert worktree.is_clean(tree)
    finally:
        app.close()
    (tmp_path / "hostile.json").write_text(json.dumps({
        "escape": f"git: {how}", "outcome": OUTCOME, "database": database_of(settings)}),
        encoding="utf-8")


def test_hostile_agent_tampering_on_every_attempt_fails_the_run_with_git_put_back(
        settings: Settings, tmp_path: Path) -> None:
    """An agent that tampers on every attempt fails the run (agent_tampered), and the
    worktree it leaves is devflow's again: the user's git there is the run's."""
    repo = make_repo(tmp_path / "repo")
    personas, stub_dir = tmp_path / "personas", tmp_path / "stub"
    ref = stub_persona(personas, "tamperer", "implementer", stub_dir, argv=TAMPERER,
                       sandbox="none",
                       env_set={"TAMPER": "dot-git", "TAMPER_ON": "1,2,3,4,5,6,7,8,9"})
    app = App(settings.replace(personas_dirs=(personas,)))
    try:
        stub_artifacts(app, stub_dir)
        before = refs(repo)
        view = app.start(StartRequest(repo=repo, base="main", template="quick@1",
                                      actor="tester", requirements="Add a farewell.",
                                      binds={"implementer": ref,
                                             "reviewer": "scripted-reviewer@1"}))
        assert view.run.state == "failed"
        assert view.run.failure_code == "agent_tampered"
        assert refs(repo, but=f"refs/heads/{view.run.branch}") == before
        tree = worktree.of_run(view.run)
        assert as_dot_git_says(tree)
        assert runtree.branch_tip(tree) == view.run.base_sha
    finally:
        app.close()
    (tmp_path / "hostile.json").write_text(json.dumps({
        "escape": "git: dot-git on every attempt",
        "outcome": "every attempt failed agent_tampered; run failed, .git put back",
        "database": database_of(settings)}), encoding="utf-8")


def test_hostile_changes_between_attempts_are_put_back_before_the_next(
        app: App, settings: Settings, tmp_path: Path) -> None:
    """What changes ``.git``, HEAD or the run's branch while no agent of the run works (a
    process an agent left behind, a person) is put back before the next attempt, and
    recorded (``worktree.restored``); no attempt is blamed for it."""
    repo = make_repo(tmp_path / "repo")
    view = app.start(quick(repo, run_id="between"), detach=True)
    run = view.run
    user_sha = user_commit(repo, "mine\n")
    before = refs(repo, but=f"refs/heads/{run.branch}")
    tree = worktree.of_run(run)
    (tree.path / ".git").write_text(f"gitdir: {tree.common}\n", encoding="utf-8")
    git.run(["update-ref", f"refs/heads/{run.branch}", user_sha], repo)

    done, _ = app.drive(run.id)

    assert done.run.state == "completed", done.run.failure_reason
    events = app.store.events.after(run.id)
    assert [e.type for e in events if e.type == "phase.artifact_invalid"] == []
    restored = [e.payload for e in events if e.type == "worktree.restored"]
    assert len(restored) == 1 and restored[0]["sha"] == run.base_sha
    assert [f.split()[0:3] for f in restored[0]["found"]] == [
        ["the", "worktree's", ".git"], ["the", "run's", "branch"]]
    assert refs(repo, but=f"refs/heads/{run.branch}") == before
    assert git.out(["rev-parse", "main"], repo) == user_sha
    assert subjects(repo, run.base_sha or "", run.branch) == [
        "devflow(implement): attempt 1", "devflow(review): attempt 1"]
    assert as_dot_git_says(worktree.of_run(done.run))
    (tmp_path / "hostile.json").write_text(json.dumps({
        "escape": "git: .git and run branch changed between attempts",
        "outcome": "put back before the next attempt (worktree.restored); run completed",
        "database": database_of(settings)}), encoding="utf-8")

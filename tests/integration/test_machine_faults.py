"""Faults of the machine pause a run, they do not fail it (issue 20, deliverable 1).

Each fault is real: a git killed with SIGKILL while it held the worktree's
``index.lock`` (it commits with an editor that waits), a stale ref lock left in
``refs/heads/devflow/<run>/``, a live git holding the lock, a full disk
(``DEVFLOW_DISK_FULL``: devflow's own writes fail with ENOSPC). devflow removes the
stale locks it owns (``git.lock_removed``), pauses the run with a ``blocked`` reason
naming the path and the fix where it cannot, keeps what a reset would drop
(``worktree.salvaged``), and the run completes once the cause is gone: one checkpoint
per phase, the events numbered without a gap, no temporary file left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devflow import git, model, worktree
from devflow.app import App, RunView
from devflow.settings import Settings
from devflow.states import PhaseState, RunState
from tests.acceptance.crash_support import assert_clean, audit_run, figures, publish
from tests.integration.helpers import quick, report_of, subjects

CHECKPOINTS = ["devflow(implement)", "devflow(review)"]


def checkpoints(view: RunView) -> list[str]:
    """The phases of the checkpoint commits on the run's branch, in order: one per phase."""
    run = view.run
    return [s.split(":")[0] for s in subjects(Path(run.repo), run.base_sha or "", run.branch)]


def _events(app: App, run_id: str) -> list[model.Event]:
    return list(app.events(run_id))


def _contiguous(app: App, run_id: str) -> None:
    seqs = [e.seq for e in _events(app, run_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert app.store.runs.get(run_id).last_seq == len(seqs)


def _row(app: App, run_id: str, fault: str, directory: Path) -> None:
    """The run's line in the crash suite's figures table (every figure but the counts 0)."""
    audit = audit_run(app, run_id)
    database = "sqlite" if app.settings.database_url.startswith("sqlite") else "postgresql"
    publish(f"machine fault: {fault} on {database}", figures([audit]), directory)
    assert_clean([audit])


def _temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp")
            and ".git" not in p.parts]


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until ``path`` exists (the git started by the test took its lock)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"git ended ({proc.returncode}) before taking {path}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


class EditingGit:
    """A real ``git commit -a`` in the run's worktree, waiting in its editor: it holds the
    worktree's ``index.lock`` until its editor ends (or it is killed)."""

    def __init__(self, tree: worktree.Tree, tmp: Path) -> None:
        editor = tmp / "editor.sh"
        editor.write_text("#!/bin/sh\nexec sleep 600\n", encoding="utf-8")
        editor.chmod(0o755)
        (tree.path / "README.md").write_text("# sample\n\nchanged by hand\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(git.AUTHOR, GIT_EDITOR=str(editor))
        self.lock = tree.admin / "index.lock"
        self.proc = subprocess.Popen(
            ["git", f"--git-dir={tree.admin}", f"--work-tree={tree.path}", "commit", "-a"],
            cwd=tree.path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        _wait_for(self.lock, self.proc)

    def kill(self) -> None:
        """kill -9 the git and its editor: the lock stays behind, held by nobody."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def finish(self) -> None:
        """The editor ends with an error: git gives up the commit and its lock."""
        editor = [p for p in _children(self.proc.pid)]
        for pid in editor:
            os.kill(pid, signal.SIGTERM)
        self.proc.wait(30)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    return [int(p) for p in text.split()]


@pytest.fixture
def gits() -> Iterator[list[EditingGit]]:
    made: list[EditingGit] = []
    yield made
    for g in made:
        if g.proc.poll() is None:
            os.killpg(g.proc.pid, signal.SIGKILL)
            g.proc.wait(30)


def test_a_lock_left_by_a_killed_git_is_removed_and_the_run_completes(
        app: App, repo: Path, tmp_path: Path, gits: list[EditingGit]) -> None:
    view = app.start(quick(repo, run_id="stale-index"), detach=True)
    editing = EditingGit(worktree.of_run(view.run), tmp_path)
    gits.append(editing)
    editing.kill()
    assert editing.lock.exists()  # a real stale lock, left by a real git killed mid-commit

    view, drove = app.drive("stale-index")
    assert drove and view.run.state is RunState.COMPLETED, view.run
    removed = [e.payload for e in _events(app, "stale-index") if e.type == "git.lock_removed"]
    assert [r["path"] for r in removed] == [str(editing.lock)]
    assert checkpoints(view) == CHECKPOINTS
    _contiguous(app, "stale-index")
    _row(app, "stale-index", "index.lock of a git killed mid-commit, removed", tmp_path)


def test_a_stale_lock_of_the_run_branch_is_removed(app: App, repo: Path,
                                                   tmp_path: Path) -> None:
    view = app.start(quick(repo, run_id="stale-ref"), detach=True)
    tree = worktree.of_run(view.run)
    lock = tree.common / "refs" / "heads" / "devflow" / "stale-ref" / "main.lock"
    lock.write_text("0" * 40 + "\n", encoding="utf-8")

    view, _ = app.drive("stale-ref")
    assert view.run.state is RunState.COMPLETED, view.run
    removed = [e.payload["path"] for e in _events(app, "stale-ref")
               if e.type == "git.lock_removed"]
    assert removed == [str(lock)]
    assert checkpoints(view) == CHECKPOINTS
    _contiguous(app, "stale-ref")
    _row(app, "stale-ref", "stale lock of the run's branch, removed", tmp_path)


def test_a_lock_a_live_git_holds_pauses_the_run_until_it_is_released(
        app: App, repo: Path, tmp_path: Path, gits: list[EditingGit]) -> None:
    view = app.start(quick(repo, run_id="held"), detach=True)
    editing = EditingGit(worktree.of_run(view.run), tmp_path)
    gits.append(editing)

    view, _ = app.drive("held")
    run = view.run
    assert run.state is RunState.PAUSED and run.paused_from is RunState.EXECUTING
    assert run.blocked is not None and run.blocked["kind"] == "git_lock"
    assert run.blocked["path"] == str(editing.lock)
    assert f"pid {editing.proc.pid}" in run.blocked["message"]
    assert "devflow run resume" in run.blocked["fix"]
    assert [p.state for p in view.phases] == [PhaseState.PENDING, PhaseState.PENDING]
    paused = [e for e in _events(app, "held") if e.type == "run.paused"]
    assert paused[-1].payload["blocked"]["path"] == str(editing.lock)
    assert editing.lock.exists()  # a lock a live process holds is never removed
    actions = [(a.kind, a.detail.get("kind")) for a in app.sweep().actions]
    assert actions == [("still_blocked", "git_lock")]  # its holder is still there

    editing.finish()
    assert not editing.lock.exists()
    resumed = app.resume("held", "tester")
    assert resumed.changed and resumed.run.blocked is None
    view, _ = app.drive("held")
    assert view.run.state is RunState.COMPLETED, view.run
    events = _events(app, "held")
    salvaged = [e.payload for e in events if e.type == "worktree.salvaged"]
    assert len(salvaged) == 1 and salvaged[0]["ref"] == "refs/heads/devflow/held/salvage-1"
    assert "README.md" in salvaged[0]["files"]  # the work the reset dropped is kept
    kept = git.out(["show", f"{salvaged[0]['ref']}:README.md"], repo)
    assert "changed by hand" in kept
    report = report_of(view)
    assert [s["ref"] for s in report["git"]["salvaged"]] == [salvaged[0]["ref"]]
    markdown = (Path(view.run.workspace) / "report.md").read_text(encoding="utf-8")
    assert salvaged[0]["ref"] in markdown
    assert checkpoints(view) == CHECKPOINTS
    _contiguous(app, "held")
    _row(app, "held", "git lock held by a live git, paused, released, resumed", tmp_path)


def test_a_full_disk_pauses_the_run_and_the_sweep_resumes_it_once_freed(
        app: App, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = tmp_path / "disk-is-full"
    full.touch()
    monkeypatch.setenv("DEVFLOW_DISK_FULL", str(full))
    view = app.start(quick(repo, run_id="full"), detach=True)
    view, _ = app.drive("full")
    run = view.run
    assert run.state is RunState.PAUSED and run.paused_from is RunState.BOUND
    assert run.blocked is not None and run.blocked["kind"] == "disk_full"
    assert run.blocked["path"].startswith(run.workspace)
    assert _temporaries(Path(run.workspace)) == []

    full.unlink()  # the disk is freed: the next sweep resumes the run, a driver ends it
    actions = [(a.kind, a.detail.get("kind")) for a in app.sweep().actions]
    assert actions == [("unblocked", "disk_full")]
    assert app.store.runs.get("full").state is RunState.BOUND
    view, _ = app.drive("full")
    assert view.run.state is RunState.COMPLETED, view.run
    assert checkpoints(view) == CHECKPOINTS
    _contiguous(app, "full")
    _row(app, "full", "disk full (ENOSPC) at the prompt, freed, sweep", tmp_path)


def test_a_report_the_full_disk_refuses_is_written_by_the_sweep(
        app: App, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = tmp_path / "disk-is-full"
    view = app.start(quick(repo, run_id="report-full"), detach=True)
    full.touch()
    monkeypatch.setenv("DEVFLOW_DISK_FULL", str(full))
    result = app.abort("report-full", "tester", "not needed")
    assert result.run.state is RunState.ABORTED and result.run.report_status is None
    workspace = Path(view.run.workspace)
    assert not (workspace / "report.md").exists() and _temporaries(workspace) == []
    blocked = [e.payload for e in _events(app, "report-full") if e.type == "report.blocked"]
    assert blocked and blocked[0]["kind"] == "disk_full" and "devflow sweep" in blocked[0]["fix"]

    assert [a.kind for a in app.sweep().actions] == ["report_blocked"]  # still full
    assert _temporaries(workspace) == []

    full.unlink()
    actions = [a.kind for a in app.sweep().actions]
    assert actions == ["report_written"]
    run = app.store.runs.get("report-full")
    assert run.report_status == "written" and (workspace / "report.json").is_file()
    _contiguous(app, "report-full")
    _row(app, "report-full", "disk full (ENOSPC) at the report, freed, sweep", tmp_path)


class Clock:
    """A clock the test moves by hand (a database away longer than a lease)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_database_away_longer_than_a_lease_is_not_counted_as_a_driver_that_died(
        settings: Settings, repo: Path, tmp_path: Path) -> None:
    """A worker's drive stops when its database is away and keeps its lease, which runs
    out; the worker itself lives on and heartbeats once the database is back. The sweep
    recovers the run without counting it against max_recoveries (0 here): the run goes
    on and completes, instead of failing with process_restart_unrecovered."""
    clock = Clock()
    app = App(settings.replace(max_recoveries=0), clock=clock)
    try:
        app.start(quick(repo, run_id="outage"), detach=True)
        worker = "worker-w:host:1:abcdef"
        app.store.leases.register_worker(worker, "w", "host", os.getpid(), 1)
        assert app.store.leases.claim("outage", worker, settings.lease_seconds) is not None
        clock.now += timedelta(minutes=10)  # the database was away; the lease ran out
        app.store.leases.worker_heartbeat(worker)  # back: the worker beats again
        actions = app.sweep().actions
        assert [(a.kind, a.detail.get("recoveries")) for a in actions] == [("recovered", 0)]
        assert "database" in actions[0].detail["driver"]
        view, _ = app.drive("outage")
        assert view.run.state is RunState.COMPLETED and view.run.recoveries == 0
        _contiguous(app, "outage")
        _row(app, "outage", "database away longer than a lease, worker alive", tmp_path)
    finally:
        app.close()


def test_a_driver_that_died_is_still_counted(settings: Settings, repo: Path) -> None:
    clock = Clock()
    app = App(settings.replace(max_recoveries=0), clock=clock)
    try:
        app.start(quick(repo, run_id="dead"), detach=True)
        assert app.store.leases.claim("dead", "worker-gone:h:1:x", 30) is not None
        clock.now += timedelta(minutes=10)
        actions = app.sweep().actions
        assert [a.kind for a in actions] == ["failed"]
        run = app.store.runs.get("dead")
        assert run.failure_code == "process_restart_unrecovered" and run.recoveries == 1
    finally:
        app.close()

"""Faults of the machine, through the real ``devflow`` command (issue 20, deliverable 1).

A user fills the disk, sees ``run start`` pause the run (not fail it, no traceback),
frees the disk, runs ``devflow sweep`` and a worker, and sees the run finish. A real
file size limit (``RLIMIT_FSIZE`` on the driver, no root needed) kills the driver's
git with SIGXFSZ while it writes the checkpoint: the run is paused, and ``devflow run
resume`` without the limit removes the lock the killed git left, keeps the agent's
work on a salvage ref and completes the run. Each row goes into the crash suite's
figures table, with 0 runs lost.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devflow import git
from devflow.settings import Settings
from tests.acceptance.crash_support import (
    Devflow,
    assert_clean,
    audit_run,
    figures,
    publish,
)
from tests.conftest import make_repo

pytestmark = pytest.mark.slow

QUICK = ["--template", "quick@1", "--bind", "implementer=scripted-implementer@1",
         "--bind", "reviewer=scripted-reviewer@1"]


@pytest.fixture
def df(settings: Settings, tmp_path: Path) -> Iterator[Devflow]:
    runner = Devflow(settings, tmp_path / "df")
    yield runner
    runner.close()


def _db(settings: Settings) -> str:
    return "sqlite" if settings.database_url.startswith("sqlite") else "postgresql"


def _no_crash_text(*texts: str) -> None:
    for text in texts:
        assert "internal_error" not in text and "Traceback" not in text, text
        assert "this is a bug" not in text, text


def _temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*.tmp") if ".git" not in p.parts]


def _checkpoints(df: Devflow, run_id: str) -> list[str]:
    run = df.run_of(run_id)
    text = git.out(["log", "--reverse", "--format=%s", f"{run.base_sha}..{run.branch}"],
                   Path(run.repo))
    return [s.split(":")[0] for s in text.splitlines()]


def _row(df: Devflow, run_id: str, name: str, directory: Path, started: float,
         **extra: Any) -> None:
    audit = audit_run(df.app, run_id)
    publish(name, {**figures([audit]), **extra,
                   "seconds": round(time.monotonic() - started, 1)}, directory)
    assert_clean([audit])


def test_a_full_disk_pauses_run_start_and_the_run_finishes_once_freed(
        df: Devflow, settings: Settings, tmp_path: Path) -> None:
    started = time.monotonic()
    repo = make_repo(tmp_path / "repo")
    full = tmp_path / "disk-is-full"
    full.touch()
    proc = df.run("run", "start", "--repo", str(repo), "--base", "main", *QUICK,
                  "--objective", "Add a farewell.", "--run-id", "full", "--json",
                  env={"DEVFLOW_DISK_FULL": str(full)}, check=1)
    _no_crash_text(proc.stdout(), proc.stderr())
    body = proc.json()["run"]
    assert body["state"] == "paused" and body["failure"] is None
    assert body["blocked"]["kind"] == "disk_full"
    assert body["blocked"]["path"].startswith(body["workspace"])
    assert "devflow run resume" in body["blocked"]["fix"]
    assert _temporaries(Path(body["workspace"])) == []

    status = df.run("run", "status", "full", name="status").stdout()
    assert "blocked (disk_full): the disk is full at" in status
    assert "run resume full" in status

    full.unlink()  # the user frees the disk
    actions = [a for a in df.sweep() if a["run_id"] == "full"]
    assert [a["action"] for a in actions] == ["unblocked"], actions
    df.worker_once()
    run = df.run_of("full")
    assert str(run.state) == "completed", (run.state, run.failure_code)
    assert _checkpoints(df, "full") == ["devflow(implement)", "devflow(review)"]
    assert _temporaries(Path(run.workspace)) == []
    _row(df, "full", f"machine fault: disk full at run start, freed, sweep on {_db(settings)}",
         tmp_path, started, blocked="disk_full")


def _limited(max_bytes: int) -> Callable[[], None]:
    def limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    return limit


def test_git_killed_by_a_file_size_limit_pauses_the_run_and_resume_completes_it(
        df: Devflow, settings: Settings, tmp_path: Path) -> None:
    started = time.monotonic()
    repo = make_repo(tmp_path / "repo")
    df.run("run", "start", "--repo", str(repo), "--base", "main", *QUICK, "--objective",
           "Add a farewell.", "--run-id", "fsize", "--detach", "--json", name="start")
    run = df.run_of("fsize")
    data = os.urandom(6 * 1024 * 1024)  # incompressible: git's object is as large
    (Path(run.worktree) / "data.bin").write_bytes(data)

    limited = subprocess.run([sys.executable, "-m", "devflow.cli.main", "run", "drive", "fsize",
                              "--json"], env=df.base_env, capture_output=True, text=True,
                             preexec_fn=_limited(3 * 1024 * 1024), timeout=180, check=False)
    assert limited.returncode == 1, limited.stderr
    _no_crash_text(limited.stdout, limited.stderr)
    body = json.loads(limited.stdout)["run"]
    assert body["state"] == "paused" and body["failure"] is None
    assert body["blocked"]["kind"] == "file_too_large"
    admin = next((Path(run.repo) / ".git" / "worktrees").iterdir())
    assert (admin / "index.lock").exists()  # left by the git SIGXFSZ killed mid-write

    resumed = df.run("run", "resume", "fsize", "--json", name="resume")
    _no_crash_text(resumed.stdout(), resumed.stderr())
    assert resumed.json()["run"]["state"] == "completed"
    events = df.events("fsize")
    removed = [e.payload["path"] for e in events if e.type == "git.lock_removed"]
    assert removed == [str(admin / "index.lock")]
    salvaged = [e.payload for e in events if e.type == "worktree.salvaged"]
    assert [s["ref"] for s in salvaged] == ["refs/heads/devflow/fsize/salvage-1"]
    assert "data.bin" in salvaged[0]["files"]
    kept = git.out(["cat-file", "-s", "refs/heads/devflow/fsize/salvage-1:data.bin"], repo)
    assert int(kept) == len(data)  # the work the reset dropped is on the salvage ref
    assert _checkpoints(df, "fsize") == ["devflow(implement)", "devflow(review)"]
    _row(df, "fsize", f"machine fault: git killed by RLIMIT_FSIZE, resume on {_db(settings)}",
         tmp_path, started, blocked="file_too_large", locks_removed=len(removed),
         salvaged=len(salvaged))


def test_the_work_of_an_attempt_a_crash_cut_short_is_salvaged_before_the_reset(
        df: Devflow, settings: Settings, tmp_path: Path) -> None:
    """kill -9 of the worker right after its agent exited: the agent's files are in the
    worktree, uncommitted. The sweep's recovery resets the worktree for the next
    attempt, after committing them to the run's first salvage ref."""
    started = time.monotonic()
    repo = make_repo(tmp_path / "repo")
    df.run("run", "start", "--repo", str(repo), "--base", "main", *QUICK, "--objective",
           "Add a farewell.", "--run-id", "cut", "--detach", "--json", name="start")
    df.crash("agent_exited", tmp_path / "crash.marker", "worker", "--once", "--poll", "0.2",
             name="worker")
    df.wait_lease_gone("cut")
    assert [a["action"] for a in df.sweep() if a["run_id"] == "cut"] == ["recovered"]
    df.worker_once()
    run = df.run_of("cut")
    assert str(run.state) == "completed", (run.state, run.failure_code)
    salvaged = [e.payload for e in df.events("cut") if e.type == "worktree.salvaged"]
    assert [s["ref"] for s in salvaged] == ["refs/heads/devflow/cut/salvage-1"]
    assert ".devflow/implementation.json" in salvaged[0]["files"]
    kept = git.out(["show", "refs/heads/devflow/cut/salvage-1:.devflow/implementation.json"],
                   repo)
    assert json.loads(kept)  # the interrupted attempt's artifact, as the agent wrote it
    report = json.loads((Path(run.workspace) / "report.json").read_text(encoding="utf-8"))
    assert [s["ref"] for s in report["git"]["salvaged"]] == [salvaged[0]["ref"]]
    assert _checkpoints(df, "cut") == ["devflow(implement)", "devflow(review)"]
    _row(df, "cut", f"kill -9 after the agent exited, work salvaged on {_db(settings)}",
         tmp_path, started, salvaged=len(salvaged))


def test_a_check_out_cut_short_at_run_start_pauses_the_run_and_resume_finishes_it(
        df: Devflow, settings: Settings, tmp_path: Path) -> None:
    """The repository tracks a file larger than the driver's file size limit: git is
    killed (SIGXFSZ) while ``run start`` checks the worktree out. The run is paused, not
    failed; ``run resume`` without the limit removes the lock the killed git left,
    finishes the check-out (no file of the repository is committed as deleted) and
    completes the run."""
    started = time.monotonic()
    data = os.urandom(4 * 1024 * 1024)
    repo = make_repo(tmp_path / "repo")
    (repo / "assets.bin").write_bytes(data)
    git.run(["add", "assets.bin"], repo)
    git.run(["commit", "--quiet", "--no-verify", "-m", "assets"], repo, env=git.AUTHOR)
    limited = subprocess.run(
        [sys.executable, "-m", "devflow.cli.main", "run", "start", "--repo", str(repo),
         "--base", "main", *QUICK, "--objective", "Add a farewell.", "--run-id", "checkout",
         "--json"], env=df.base_env, capture_output=True, text=True,
        preexec_fn=_limited(2 * 1024 * 1024), timeout=180, check=False)
    assert limited.returncode == 1, limited.stderr
    _no_crash_text(limited.stdout, limited.stderr)
    body = json.loads(limited.stdout)["run"]
    assert body["state"] == "paused" and body["paused_from"] == "bound"
    assert body["blocked"]["kind"] == "file_too_large"

    resumed = df.run("run", "resume", "checkout", "--json", name="resume")
    _no_crash_text(resumed.stdout(), resumed.stderr())
    assert resumed.json()["run"]["state"] == "completed"
    run = df.run_of("checkout")
    assert (Path(run.worktree) / "assets.bin").read_bytes() == data
    deleted = git.out(["diff", "--name-only", "--diff-filter=D", run.base_sha or "",
                       run.branch], repo)
    assert deleted == ""  # no file of the repository went missing from the checkpoints
    assert _checkpoints(df, "checkout") == ["devflow(implement)", "devflow(review)"]
    _row(df, "checkout", f"machine fault: check-out killed at run start, resume on "
         f"{_db(settings)}", tmp_path, started, blocked="file_too_large")

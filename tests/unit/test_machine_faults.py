"""Telling faults of the machine apart (devflow.machine), finding who holds a git lock
(devflow.gitlocks), and writes that leave nothing half-done (devflow.atomic)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devflow import atomic, git, gitlocks, machine, report, worktree
from devflow.errors import Code, DevflowError
from devflow.runtree import Tree


def _git_error(stderr: str, returncode: int = 128) -> git.GitError:
    return git.GitError(["add", "--all"], Path("/w/main"),
                        subprocess.CompletedProcess(["git"], returncode, "", stderr))


@pytest.mark.parametrize(("number", "kind"), [(errno.ENOSPC, "disk_full"),
                                              (errno.EDQUOT, "disk_full"),
                                              (errno.EFBIG, "file_too_large"),
                                              (errno.EROFS, "read_only")])
def test_an_os_error_of_the_machine_is_blocked_with_its_path_and_fix(number: int,
                                                                      kind: str) -> None:
    found = machine.classify(OSError(number, os.strerror(number), "/ws/run/prompts/x.md"))
    assert found is not None and found.kind == kind
    assert found.path == "/ws/run/prompts/x.md"
    assert "/ws/run/prompts/x.md" in found.message and "devflow run resume" in found.fix


def test_errors_of_the_run_or_of_devflow_are_not_machine_faults() -> None:
    assert machine.classify(OSError(errno.ENOENT, "No such file", "/x")) is None
    assert machine.classify(ValueError("bad")) is None
    assert machine.classify(DevflowError(Code.ARTIFACT_INVALID, "no")) is None
    assert machine.classify(_git_error("fatal: bad revision 'x'")) is None
    # Ctrl-C or SIGTERM reached git: the drive's own handling, not a blocked run
    assert machine.classify(_git_error("", -signal.SIGINT)) is None


def test_a_cause_is_found_through_chains_and_groups() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/ws/a")
        except OSError as inner:
            raise DevflowError(Code.WORKTREE_FAILED, "could not") from inner
    except DevflowError as outer:
        chained = outer
    found = machine.classify(ExceptionGroup("drive", [ValueError("x"), chained]))
    assert found is not None and found.kind == "disk_full" and found.path == "/ws/a"


def test_git_words_and_signals() -> None:
    full = machine.classify(_git_error("error: unable to write: No space left on device"))
    assert full is not None and full.kind == "disk_full" and full.path == "/w/main"
    limit = machine.classify(_git_error("", -signal.SIGXFSZ))
    assert limit is not None and limit.kind == "file_too_large"
    killed = machine.classify(_git_error("", -signal.SIGKILL))
    assert killed is not None and killed.kind == "git_killed"
    lock = machine.classify(_git_error(
        "fatal: Unable to create '/r/.git/index.lock': File exists.\n\nAnother git process"))
    assert lock is not None and lock.kind == "git_lock" and lock.path == "/r/.git/index.lock"
    assert "rm '/r/.git/index.lock'" in lock.fix


def test_a_blocked_reason_round_trips_through_json() -> None:
    blocked = machine.Blocked("disk_full", "/ws", "full", "free it")
    assert machine.Blocked.from_json(blocked.to_json()) == blocked
    assert machine.Blocked.from_json({"nothing": 1}) is None
    fault = machine.MachineFault(blocked)
    assert fault.code is Code.MACHINE_FAULT and fault.hint == "free it"


def test_cleared_looks_at_the_cause(tmp_path: Path) -> None:
    assert machine.cleared(machine.Blocked("disk_full", str(tmp_path / "gone" / "x"), "", ""))
    lock = tmp_path / "index.lock"
    assert machine.cleared(machine.Blocked("git_lock", str(lock), "", ""))
    lock.touch()
    assert machine.cleared(machine.Blocked("git_lock", str(lock), "", ""))  # nobody holds it


# -- git locks ----------------------------------------------------------------------------
def test_the_lock_git_names_is_found_in_its_message() -> None:
    text = ("fatal: cannot lock ref 'HEAD': Unable to create '/r/.git/refs/heads/devflow/x/"
            "main.lock': File exists.")
    assert gitlocks.in_message(text) == Path("/r/.git/refs/heads/devflow/x/main.lock")
    assert gitlocks.in_message("fatal: not a git repository") is None


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A live process with a lock file open, until its standard input closes."""
    lock = tmp_path / "index.lock"
    lock.touch()
    proc = subprocess.Popen([sys.executable, "-c", "import sys\nf = open(sys.argv[1], 'a')\n"
                             "print('open', flush=True)\nsys.stdin.read()", str(lock)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
    yield proc, lock
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def test_a_process_with_the_lock_open_holds_it(
        holder: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, lock = holder
    found = gitlocks.holders(lock, [lock.parent / "elsewhere"])
    assert [h.pid for h in found] == [proc.pid]
    assert f"pid {proc.pid}" in found[0].describe()
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)
    assert gitlocks.holders(lock, [lock.parent / "elsewhere"]) == []
    assert gitlocks.remove(lock) is not None and not lock.exists()
    assert gitlocks.remove(lock) is None  # gone already


# -- atomic writes ------------------------------------------------------------------------
def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_write_past_a_real_file_size_limit_leaves_the_old_file_and_no_temporary(
        tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old\n", encoding="utf-8")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError, match="File too large") as raised:
            atomic.write_text(target, "x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert raised.value.errno == errno.EFBIG
    assert machine.classify(raised.value) is not None
    assert target.read_text(encoding="utf-8") == "old\n"
    assert _leftovers(tmp_path) == []


def test_a_report_on_a_full_disk_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "full"
    flag.touch()
    monkeypatch.setenv("DEVFLOW_DISK_FULL", str(flag))
    workspace = tmp_path / "ws"
    with pytest.raises(OSError, match="No space left") as raised:
        report.write(workspace, report.stub("r1", "failed", "x"))
    assert raised.value.errno == errno.ENOSPC
    assert list(workspace.iterdir()) == []
    flag.unlink()
    report.write(workspace, report.stub("r1", "failed", "x"))
    assert sorted(p.name for p in workspace.iterdir()) == ["report.json", "report.md"]


def test_an_atomic_write_keeps_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "prompt.md"
    atomic.write_text(target, "hello")
    assert target.read_text(encoding="utf-8") == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_devflow_removes_only_locks_of_the_run_s_own(tmp_path: Path) -> None:
    common = tmp_path / "repo" / ".git"
    tree = Tree(tmp_path / "ws" / "r1" / "main", common / "worktrees" / "main", common,
                "devflow/r1/main")
    owns = worktree._owns  # the rule itself, without a repository
    assert owns(tree, common / "worktrees" / "main" / "index.lock")
    assert owns(tree, common / "refs" / "heads" / "devflow" / "r1" / "main.lock")
    assert owns(tree, common / "refs" / "heads" / "devflow" / "r1" / "salvage-2.lock")
    assert not owns(tree, common / "index.lock")  # the user's own worktree
    assert not owns(tree, common / "refs" / "heads" / "main.lock")
    assert not owns(tree, common / "refs" / "heads" / "devflow" / "r10" / "main.lock")
    assert not owns(tree, common / "packed-refs.lock")
    assert not owns(tree, common / "worktrees" / "main1" / "index.lock")  # another run's

"""An agent is known by its pid and start time: ``process.stop`` signals only that process
(and its group), a reused pid is left alone, and a dead leader's group members are
signalled only when they carry the run's marks."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from devflow.backends import process

MARKS = {"DEVFLOW_RUN_ID": "r-identity", "DEVFLOW_ATTEMPT": "1"}


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.start_time(pid) is None or not process.group_alive(pid):
            return True
        time.sleep(0.02)
    return False


def test_the_recorded_process_and_its_group_are_stopped(
        started: list[subprocess.Popen[bytes]]) -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    started.append(leader)
    start = process.start_time(leader.pid)
    assert start is not None and process.alive(leader.pid, start)
    assert process.stop(leader.pid, leader.pid, start) == "signalled"
    assert leader.wait(5) == -signal.SIGKILL
    assert _gone(leader.pid)  # the sleep of its group too


def test_a_pid_with_another_start_time_is_left_alone(
        started: list[subprocess.Popen[bytes]]) -> None:
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started.append(other)
    start = process.start_time(other.pid)
    assert start is not None
    assert process.stop(other.pid, other.pid, start - 1) == "reused"
    assert process.stop(other.pid, other.pid, None) == "unknown"
    assert not process.remains(other.pid, other.pid, start - 1)
    assert other.poll() is None


def test_a_dead_leaders_group_members_die_only_with_the_runs_marks(
        started: list[subprocess.Popen[bytes]]) -> None:
    """The leader exits, leaving two children in its group: one carries the run's marks
    (an unsandboxed agent's child), one dropped them; only the first is killed."""
    script = "sleep 60 >/dev/null & env -u DEVFLOW_RUN_ID sleep 61 >/dev/null & echo $!"
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                              stdout=subprocess.PIPE, env={**os.environ, **MARKS})
    started.append(leader)
    start = process.start_time(leader.pid)
    assert start is not None
    unmarked = int(leader.communicate(timeout=5)[0])
    assert leader.returncode == 0  # reaped: only its group's members are left
    members = process._members(leader.pid)
    assert len(members) == 2 and unmarked in members
    marked = next(p for p in members if p != unmarked)
    assert process.remains(leader.pid, leader.pid, start, MARKS)
    try:
        assert process.stop(leader.pid, leader.pid, start, marks=MARKS) == "signalled"
        assert _gone_pid(marked)
        assert process.start_time(unmarked) is not None  # dropped the marks: left alone
    finally:
        os.kill(unmarked, signal.SIGKILL)


def _gone_pid(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fields = process._stat(pid)
        if fields is None or fields[0] == "Z":
            return True
        time.sleep(0.02)
    return False

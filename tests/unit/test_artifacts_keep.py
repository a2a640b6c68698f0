"""Keeping a validated artifact: the copy is written whole, with its sha256, and fsynced
while the caller's other work (the checkpoint) runs; both are done when it returns."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from devflow import artifacts
from devflow.schemas import SchemaRegistry

DOC = b'{"summary": "kept", "files_changed": [], "tests": {"added": [], "commands_run": []}}'


SCHEMAS = Path(__file__).parents[2] / "schemas"


def _checked() -> artifacts.Checked:
    checked = artifacts.check_bytes(DOC, "dev/implementation@1",
                                    SchemaRegistry.from_dirs([SCHEMAS]))
    assert checked.valid, checked.issues
    return checked


def test_the_copy_is_fsynced_while_the_work_runs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    working = threading.Event()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        # the copy's fsync can only finish once the work has started: if the two ran one
        # after the other, this would time out
        assert working.wait(10), "the copy was fsynced before the work began"
        synced.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    destination = tmp_path / "artifacts" / "implement.attempt-1.json"

    def work() -> str:
        working.set()
        return "checkpoint"

    sha, result = artifacts.store_while(_checked(), destination, work)
    assert result == "checkpoint"
    assert sha == hashlib.sha256(DOC).hexdigest()
    assert destination.read_bytes() == DOC
    assert synced and synced[0] != threading.current_thread().name
    assert not list(destination.parent.glob(".*.tmp"))


def test_an_error_of_the_work_wins_once_the_copy_is_done(tmp_path: Path) -> None:
    destination = tmp_path / "artifacts" / "implement.attempt-1.json"

    def work() -> str:
        raise RuntimeError("git failed")

    with pytest.raises(RuntimeError, match="git failed"):
        artifacts.store_while(_checked(), destination, work)
    assert destination.read_bytes() == DOC  # waited for, not abandoned mid-write


def test_a_copy_that_cannot_be_written_fails_after_the_work(tmp_path: Path) -> None:
    (tmp_path / "artifacts").write_text("a file where the directory should be")
    done: list[bool] = []
    with pytest.raises(FileExistsError):
        artifacts.store_while(_checked(), tmp_path / "artifacts" / "x.json",
                              lambda: done.append(True))
    assert done == [True]

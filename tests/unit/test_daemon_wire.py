"""The daemon's wire: the home a command would use (as ``Settings.load`` finds it), its
run directory's checks, messages and descriptors across a socket."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from devflow.daemon import wire
from devflow.settings import Settings


@pytest.mark.parametrize("value", [None, "", "~/dot-devflow", "rel/home", "linked/home",
                                   "/abs/../abs/home", "~"])
def test_the_home_is_the_one_settings_would_use(value: str | None, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    env = {"HOME": str(tmp_path / "account")}
    if value is not None:
        env["DEVFLOW_HOME"] = value
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", env["HOME"])  # Path.home() reads the process's own
    settings = Settings.load(env=env, database_url="sqlite://", workspace=str(tmp_path))
    assert wire.home_for(env, str(tmp_path)) == str(settings.home)


def test_a_run_directory_others_may_enter_is_not_used(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    with pytest.raises(FileNotFoundError):
        wire.open_run_dir(home)
    os.close(wire.open_run_dir(home, create=True))
    assert (tmp_path / "home" / "run").stat().st_mode & 0o777 == 0o700
    (tmp_path / "home" / "run").chmod(0o755)
    with pytest.raises(wire.Unsafe):
        wire.open_run_dir(home)
    assert wire.connect(home) is None
    (tmp_path / "home" / "run").chmod(0o700)
    os.rename(tmp_path / "home" / "run", tmp_path / "elsewhere")
    (tmp_path / "home" / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotADirectoryError):  # a link is not followed
        wire.open_run_dir(home)


def test_messages_and_descriptors_cross_whole(tmp_path: Path) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    note = tmp_path / "note"
    note.write_text("shared\n")
    with left, right, open(note) as handle:
        odd = "caf\udce9"  # an undecodable byte, as argv and the environment carry it

        def sender() -> None:  # more than the socket holds: sent while read
            wire.send(left, {"argv": [odd], "big": "x" * 300_000}, fds=[handle.fileno()])
            wire.send(left, {"signal": 15})

        thread = threading.Thread(target=sender)
        thread.start()
        channel = wire.Channel(right)
        first = channel.read(max_fds=3)
        assert first is not None and first["argv"] == [odd] and len(first["big"]) == 300_000
        assert len(channel.fds) == 1
        with os.fdopen(channel.fds[0]) as received:
            assert received.read() == "shared\n"
        assert channel.read() == {"signal": 15}
        thread.join()
        left.close()
        assert channel.read() is None

"""The daemon's loop, one step at a time: a real server object on a real socket, a real
forked child."""

from __future__ import annotations

import os
import selectors
import signal
import socket
from pathlib import Path

from devflow.daemon import server, wire


def test_a_child_reaped_before_its_clients_event_in_the_same_batch(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    dirfd = wire.open_run_dir(home, create=True)
    lockfd = os.open(wire.LOCK, os.O_RDWR | os.O_CREAT, 0o600, dir_fd=dirfd)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(wire.address(dirfd))
    served = server.Server(home, 60.0, dirfd, lockfd, listener, ())
    client, conn = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    child = server.Child(pid, conn, wire.Channel(conn), [])
    served.children[pid] = child
    served._selector.register(conn, selectors.EVENT_READ, child)
    wire.send(client, {"signal": float(signal.SIGINT)})  # its event, in the same select()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    served._reap()  # the wake-up came first in the batch
    served._from_client(child)  # then the client's event: nothing left to do
    assert child.conn is None and pid not in served.children
    answer = wire.Channel(client).read()
    assert answer is not None and os.waitstatus_to_exitcode(answer["exit"]) == 3
    client.close()
    served.stop("test")
    os.close(dirfd)


def test_a_real_time_signal_has_a_name_in_the_log() -> None:
    rt = signal.SIGRTMIN + 2
    assert server._ended(rt) == f"killed by signal {int(rt)}"
    assert server._ended(signal.SIGTERM) == "killed by SIGTERM"

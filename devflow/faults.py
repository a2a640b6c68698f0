"""Named points where a test can make this process die, for the crash suite.

``DEVFLOW_CRASH_AT=name`` makes the process SIGKILL itself the first time it reaches
the point ``name`` (after writing ``DEVFLOW_CRASH_MARKER`` if that is set), which is
a real ``kill -9`` at a real moment. Without the variable a point costs one dict
lookup. Points: run_inserted, agent_started, agent_exited, artifact_checked,
artifact_stored, checkpoint_committed, phase_accepted, gate_opened, report_composed,
decision_recorded, tick_decided, delivery_recorded, webhook_sending.

- run_inserted (engine/start.py): the run row is committed, its worktree not made yet;
- gate_opened (approvals.open_first_gate): inside the transaction that opens a gate,
  before its commit;
- report_composed (report.write): report.md is in place, report.json not yet;
- tick_decided (engine/schedule.py): a trigger's due ticks are decided and committed, the
  pending ones' runs not started yet;
- delivery_recorded (engine/deliveries.py): a trigger's webhook delivery is recorded and
  committed (pending, claimed), its run not started yet;
- webhook_sending (engine/notify.py): a webhook message is committed, not sent yet.

``DEVFLOW_PAUSE_AT=name`` makes the process stop itself with SIGSTOP the first time it
reaches the point ``name`` (after writing ``DEVFLOW_PAUSE_MARKER``, as above): the test
that started it learns of it from ``waitpid(pid, WUNTRACED)``, with no sleep and no
polling, acts on the frozen process (SIGKILL, or lets its lease run out) and may SIGCONT
it. A process pauses once; reaching the point again does nothing.

``DEVFLOW_DISK_FULL=FLAG`` makes every file devflow writes itself (``devflow.atomic``)
fail as on a full disk (``OSError(ENOSPC)``) while the file ``FLAG`` exists: a test
fills the disk by creating it and frees it by deleting it, without root. Git and the
database are not affected; a real limit (``RLIMIT_FSIZE``) reaches those.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

_paused: set[str] = set()


def point(name: str) -> None:
    if os.environ.get("DEVFLOW_PAUSE_AT") == name and name not in _paused:
        _paused.add(name)
        _tell(os.environ.get("DEVFLOW_PAUSE_MARKER"), name)
        os.kill(os.getpid(), signal.SIGSTOP)
    if os.environ.get("DEVFLOW_CRASH_AT") != name:
        return
    _tell(os.environ.get("DEVFLOW_CRASH_MARKER"), name)
    os.kill(os.getpid(), signal.SIGKILL)


def _tell(marker: str | None, name: str) -> None:
    if marker:
        Path(marker).write_text(f"{name} {os.getpid()}\n", encoding="utf-8")


def disk_full(name: str, path: Path) -> None:
    """Raise ``OSError(ENOSPC)`` for ``path`` while ``DEVFLOW_DISK_FULL`` names a file
    that exists (see the module docstring); ``name`` says which write it is."""
    flag = os.environ.get("DEVFLOW_DISK_FULL")
    if flag and os.path.exists(flag):
        raise OSError(errno.ENOSPC, f"No space left on device ({name}, DEVFLOW_DISK_FULL)",
                      str(path))

"""Named points where a test can make this process die, for the crash suite.

``DEVFLOW_CRASH_AT=name`` makes the process SIGKILL itself the first time it reaches
the point ``name`` (after writing ``DEVFLOW_CRASH_MARKER`` if that is set), which is
a real ``kill -9`` at a real moment. Without the variable a point costs one dict
lookup. Points: run_inserted, agent_started, agent_exited, artifact_checked,
artifact_stored, checkpoint_committed, phase_accepted, gate_opened, report_composed,
decision_recorded, webhook_sending.

- run_inserted (engine/start.py): the run row is committed, its worktree not made yet;
- gate_opened (approvals.open_first_gate): inside the transaction that opens a gate,
  before its commit;
- report_composed (report.write): report.md is in place, report.json not yet;
- webhook_sending (engine/notify.py): a webhook message is committed, not sent yet.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def point(name: str) -> None:
    if os.environ.get("DEVFLOW_CRASH_AT") != name:
        return
    marker = os.environ.get("DEVFLOW_CRASH_MARKER")
    if marker:
        Path(marker).write_text(f"{name} {os.getpid()}\n", encoding="utf-8")
    os.kill(os.getpid(), signal.SIGKILL)

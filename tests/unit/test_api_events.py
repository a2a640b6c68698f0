"""Whether a stream's cursor is one the event log still reaches (else: resync)."""

from __future__ import annotations

from devflow.api.events import _reaches


def test_a_cursor_is_reached_while_every_event_after_it_is_kept() -> None:
    assert _reaches(0, None)  # nothing yet, nothing missed
    assert not _reaches(3, None)  # a cursor from another log
    assert _reaches(0, (1, 10)) and _reaches(9, (1, 10)) and _reaches(10, (1, 10))
    assert not _reaches(11, (1, 10))  # a seq the log never had
    assert _reaches(4, (5, 10))  # 5 is the next one, kept
    assert not _reaches(3, (5, 10))  # 4 was pruned: resync

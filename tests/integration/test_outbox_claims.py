"""The webhook outbox hands each due message to one sender at a time: several servers (or
their delivery tasks) asking for the same endpoint's messages at once send each once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from devflow import model
from devflow.app import App
from devflow.settings import Settings
from tests.conftest import make_repo
from tests.gates_support import start, write_templates

SENDERS = 8


@pytest.fixture
def gapp(settings: Settings, tmp_path: Path) -> Iterator[App]:
    application = App(settings.replace(templates_dirs=(write_templates(tmp_path / "t"),)))
    yield application
    application.close()


def test_a_due_message_is_claimed_by_one_sender_and_due_again_after_the_claim(
        gapp: App, tmp_path: Path) -> None:
    start(gapp, make_repo(tmp_path / "repo"))  # waits at its gate: approval.requested
    outbox = gapp.store.outbox
    assert outbox.fan_out([("endpoint", ["approval.requested"])]) == 1
    barrier = threading.Barrier(SENDERS)
    taken: list[int] = []

    def sender() -> None:
        barrier.wait()
        taken.extend(d.id for d in outbox.due("endpoint", 1, 30.0))

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(taken) == 1, taken  # one sender has it; the others found nothing due
    assert outbox.due("endpoint", 1, 30.0) == []
    # a sender that died while sending: the message is due again once the claim passed
    later = model.utcnow() + timedelta(seconds=31)
    outbox.clock = lambda: later
    assert [d.id for d in outbox.due("endpoint", 1, 30.0)] == taken

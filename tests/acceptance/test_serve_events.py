"""The live events stream of `devflow serve` (a real process on loopback, both databases):
a client that drops and reconnects with Last-Event-ID gets exactly what it missed."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest

from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.serve_support import Frame, Served, Stream, wait_for
from tests.acceptance.test_serve_decisions import start_body

pytestmark = pytest.mark.slow


@pytest.fixture
def server(settings: Settings, home: Path) -> Iterator[Served]:
    served = Served(settings, home, ("--workers", "1", "--poll", "0.2",
                                     "--heartbeat", "0.3")).start()
    yield served
    assert served.stop() == 0, served.log()


def _until_quiet(stream: Stream) -> list[Frame]:
    """The frames up to the first keep-alive: what the stream had to say."""
    frames = []
    for frame in stream.frames():
        if frame.comment is not None:
            assert frame.id is None  # keep-alives carry no id
            return frames
        frames.append(frame)
    raise AssertionError("the stream ended")


def test_a_stream_dropped_and_resumed_with_last_event_id_gets_exactly_what_it_missed(
        app: App, server: Served, repo: Path) -> None:
    operator = server.client(app.token_create("olga", "operator", "test")[0])
    viewer = server.client(app.token_create("vic", "viewer", "test")[0])
    status, body = operator.call("POST", "/runs", start_body(repo))
    assert status == 201, body
    run_id = body["run"]["id"]
    path = f"/runs/{run_id}/events/stream"

    first_tab, second_tab = viewer.stream(path), viewer.stream(path)
    seen_first: list[Frame] = []
    gate = wait_for(first_tab, "approval.requested", seen_first)
    assert [int(f.id or 0) for f in seen_first] == list(range(1, int(gate.id or 0) + 1))
    seen_second: list[Frame] = []
    assert wait_for(second_tab, "approval.requested", seen_second).id == gate.id
    assert [f.data for f in seen_second] == [f.data for f in seen_first]
    first_tab.close()  # the first tab drops

    for _ in range(25):  # 50 events while it is away
        assert operator.call("POST", f"/runs/{run_id}/pause")[0] == 200
        assert operator.call("POST", f"/runs/{run_id}/resume")[0] == 200
    last = int(gate.id or 0)
    missed = list(range(last + 1, last + 51))

    # the tab that stayed got each as it came
    live = list(islice(second_tab.events(), 50))
    assert [int(f.id or 0) for f in live] == missed

    # the one that drops and comes back gets those 50, each once, and nothing else
    back = viewer.stream(path, last_event_id=gate.id)
    frames = _until_quiet(back)
    assert [int(f.id or 0) for f in frames] == missed
    assert [f.data["type"] for f in frames] == ["run.paused", "run.resumed"] * 25
    assert [f.data["seq"] for f in frames] == missed
    assert all(f.event is None for f in frames)
    assert viewer.call("GET", f"/runs/{run_id}/events?after={last}")[1]["events"] == \
        [f.data for f in frames]

    # ?after= on a first connection does the same; the header wins over it
    after = viewer.stream(f"{path}?after={last + 48}")
    assert [int(f.id or 0) for f in _until_quiet(after)] == missed[-2:]
    after.close()
    both = viewer.stream(f"{path}?after=0", last_event_id=str(last + 49))
    assert [int(f.id or 0) for f in _until_quiet(both)] == missed[-1:]
    both.close()

    # a cursor the log does not reach: resync with a snapshot, then on from the newest
    lost = viewer.stream(path, last_event_id="99999")
    frames = _until_quiet(lost)
    assert [f.event for f in frames] == ["resync"]
    assert frames[0].id == str(missed[-1])
    assert frames[0].data["run"]["id"] == run_id
    assert frames[0].data["gate"]["gate"] == "spec_review"
    assert frames[0].data["last_seq"] == missed[-1]
    lost.close()

    status, answer = viewer.call("GET", "/runs/no-such-run/events/stream")
    assert (status, answer["error"]["code"]) == (404, "run_not_found")
    bad = viewer.stream(path, last_event_id="forty-two")
    assert bad.status == 400
    bad.close()

    # SIGTERM with streams open: they end, and the server exits 0
    assert server.stop() == 0, server.log()
    assert [f for f in second_tab.frames() if f.comment is None] == []
    assert [f for f in back.frames() if f.comment is None] == []
    second_tab.close()
    back.close()


def test_an_open_stream_ends_when_its_token_is_revoked(app: App, server: Served,
                                                       repo: Path) -> None:
    """Who opened a stream is checked again at each keep-alive: a token revoked while its
    stream is open gets ``event: unauthorized`` and the stream ends, within a heartbeat;
    another token's stream goes on."""
    operator = server.client(app.token_create("olga", "operator", "test")[0])
    secret, token = app.token_create("vic", "viewer", "test")
    status, body = operator.call("POST", "/runs", start_body(repo))
    assert status == 201, body
    path = f"/runs/{body['run']['id']}/events/stream"
    revoked, kept = server.client(secret).stream(path), operator.stream(path)
    assert _until_quiet(revoked) and _until_quiet(kept)  # both followed, up to a keep-alive
    app.token_revoke(token.prefix)
    last = [f for f in revoked.frames() if f.comment is None][-1]  # until the stream ends
    assert last.event == "unauthorized" and last.id is None
    revoked.close()
    assert next(f for f in kept.frames() if f.comment is not None)  # still kept alive
    kept.close()

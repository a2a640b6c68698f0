"""A run's events: a page from any sequence number, and a live Server-Sent Events stream.

The stream's ``id:`` is the event's durable sequence number, so a client that
reconnects with ``Last-Event-ID`` (browsers do it by themselves) gets exactly the
events it missed, none twice; keep-alive comments carry no id. A cursor the log no
longer reaches (events pruned before it, or a sequence number the log never had) gets
``event: resync`` with a snapshot of the run, whose id is the newest event's; the
stream goes on from there. ``event: end`` says the run ended and its report is
written. Each stream reads the log for itself: two tabs each get every event. Who
opened it is checked again at each keep-alive (and at that pace while events flow): a
token revoked or expired, a session signed out, gets ``event: unauthorized`` and the
stream ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from devflow.api.auth import AppDep, Viewer, role
from devflow.app import App
from devflow.errors import Code, DevflowError

router = APIRouter(tags=["events"])

#: seconds between looks at the log while a stream is idle
POLL = 0.25


@router.get("/runs/{run_id}/events", openapi_extra=role("viewer"))
def list_events(run_id: str, caller: Viewer, app: AppDep,
                after: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> dict[str, Any]:
    """Events after sequence number `after`, oldest first; `next` is the cursor to pass on."""
    found = []
    for event in app.events(run_id, after):
        found.append(event.to_json())
        if len(found) == limit:
            break
    return {"events": found, "next": found[-1]["seq"] if found else after}


@router.get("/runs/{run_id}/events/stream", openapi_extra=role("viewer"),
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_events(run_id: str, request: Request, caller: Viewer, app: AppDep,
                        after: Annotated[int, Query(ge=0)] = 0,
                        last_event_id: Annotated[str | None, Header()] = None,
                        ) -> StreamingResponse:
    """Server-Sent Events from `after` (or `Last-Event-ID`, which wins): see the module doc."""
    prefix = caller.token.prefix
    return await sse(app, run_id, request, after, last_event_id,
                     still=lambda: app.token_live(prefix))


async def sse(app: App, run_id: str, request: Request, after: int,
              last_event_id: str | None, *, still: Callable[[], bool]) -> StreamingResponse:
    """The run's event stream from ``after`` or ``Last-Event-ID`` (the API's and the web
    page's, each authenticated its own way; ``still``: whether its caller still is)."""
    cursor = after
    if last_event_id is not None and last_event_id.strip():
        try:
            cursor = int(last_event_id)
        except ValueError as exc:
            raise DevflowError(Code.BAD_REQUEST, f"Last-Event-ID {last_event_id[:40]!r} is "
                               "not an event's id", hint="send back an id: the stream "
                               "gave") from exc
    span = await anyio.to_thread.run_sync(app.event_span, run_id)  # run_not_found: a 404
    stream = _stream(app, run_id, cursor, span, request, still)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _frame(data: Any, *, event: str | None = None, seq: int | None = None) -> bytes:
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if seq is not None:
        lines.append(f"id: {seq}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _after(app: App, run_id: str, cursor: int) -> list[Any]:
    return list(app.events(run_id, cursor))


def _reaches(cursor: int, span: tuple[int, int] | None) -> bool:
    """Whether the log holds every event after ``cursor``."""
    if span is None:
        return cursor == 0
    first, last = span
    return first <= cursor + 1 and cursor <= last


async def _stream(app: App, run_id: str, cursor: int, span: tuple[int, int] | None,
                  request: Request, still: Callable[[], bool]) -> AsyncIterator[bytes]:
    heartbeat: float = request.app.state.heartbeat
    stopping = request.app.state.stopping
    yield b"retry: 2000\n\n"
    if not _reaches(cursor, span):
        view = await anyio.to_thread.run_sync(app.view, run_id)
        cursor = span[1] if span else 0
        yield _frame({**view.to_json(), "last_seq": cursor, "first_seq": span[0] if span
                      else None}, event="resync", seq=cursor)
    quiet = 0.0
    checked = anyio.current_time()
    while not stopping():
        if anyio.current_time() - checked >= heartbeat:
            checked = anyio.current_time()
            if not await anyio.to_thread.run_sync(still):
                yield _frame({"run_id": run_id, "reason": "signed out, or the token is "
                              "revoked or expired"}, event="unauthorized")
                return
        batch = await anyio.to_thread.run_sync(_after, app, run_id, cursor)
        for event in batch:
            cursor = event.seq
            yield _frame(event.to_json(), seq=event.seq)
        if batch:
            quiet = 0.0
            continue
        run = (await anyio.to_thread.run_sync(app.view, run_id)).run
        if run.terminal and run.report_status:
            if not await anyio.to_thread.run_sync(_after, app, run_id, cursor):
                yield _frame({"run_id": run.id, "state": str(run.state)}, event="end")
                return
            continue
        await anyio.sleep(POLL)
        quiet += POLL
        if quiet >= heartbeat:
            quiet = 0.0
            yield b": keep-alive\n\n"

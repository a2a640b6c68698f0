"""``devflow serve`` as a real process on loopback, and a small HTTP client for it.

``Served`` starts the server on a free port (``--port 0``; the port is read from its
first line on stderr), keeps reading its stderr, and stops it with SIGTERM, expecting
a graceful exit 0. ``Client.call`` returns (status, JSON); ``Client.stream`` reads
Server-Sent Events frame by frame.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devflow.settings import Settings


@dataclass
class Frame:
    """One SSE frame: its ``event`` (None: a plain message), ``id``, parsed ``data``; or a
    comment (``comment`` set, nothing else)."""

    event: str | None = None
    id: str | None = None
    data: Any = None
    comment: str | None = None


class Stream:
    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self.conn = conn
        self.response = response
        self.status = response.status

    def frames(self) -> Iterator[Frame]:
        frame = Frame()
        lines: list[str] = []
        while True:
            raw = self.response.readline()
            if not raw:
                return
            line = raw.decode("utf-8").rstrip("\n")
            if line:
                lines.append(line)
                continue
            if not lines:
                continue
            frame = Frame()
            for item in lines:
                if item.startswith(":"):
                    frame.comment = item[1:].strip()
                    continue
                name, _, value = item.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    frame.event = value
                elif name == "id":
                    frame.id = value
                elif name == "data":
                    frame.data = json.loads(value)
            lines = []
            if frame.data is None and frame.comment is None and frame.id is None:
                continue  # retry: only
            yield frame

    def events(self) -> Iterator[Frame]:
        """The frames that are events of the run (not comments, not resync or end)."""
        return (f for f in self.frames() if f.comment is None and f.event is None)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Client:
    port: int
    token: str | None = None
    host: str | None = None

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            sent = dict(headers or {})
            chosen = token if token is not None else self.token
            if chosen:
                sent["Authorization"] = f"Bearer {chosen}"
            if self.host:
                sent["Host"] = self.host
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, "/api/v1" + path, body=data, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8")
            kind = response.getheader("Content-Type") or ""
            return response.status, json.loads(text) if "json" in kind else text
        finally:
            conn.close()

    def stream(self, path: str, *, last_event_id: str | None = None,
               token: str | None = None) -> Stream:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {token or self.token}",
                   "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        conn.request("GET", "/api/v1" + path, headers=headers)
        return Stream(conn, conn.getresponse())


@dataclass
class Served:
    settings: Settings
    home: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    stderr: list[str] = field(default_factory=list)
    _drainer: threading.Thread = field(init=False)

    def start(self) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
        env.update({"DEVFLOW_HOME": str(self.home),
                    "DEVFLOW_DATABASE_URL": self.settings.database_url,
                    "DEVFLOW_WORKSPACE": str(self.settings.workspace),
                    "DEVFLOW_LOG_FORMAT": "json", **self.env})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devflow.cli.main", "serve", "--port", "0", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            found = re.search(r"serving http://127\.0\.0\.1:(\d+)/", line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise AssertionError(f"devflow serve did not start: {''.join(self.stderr)}")
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def client(self, token: str | None = None) -> Client:
        return Client(self.port, token)

    def wait(self) -> int:
        """The exit code of a server that ends by itself (a crash point)."""
        assert self.proc is not None
        self.proc.wait(timeout=120)
        return self.stop()

    def stop(self) -> int:
        """SIGTERM; the exit code of a graceful stop."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=90)
        self._drainer.join(timeout=30)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def log(self) -> str:
        return "".join(self.stderr)


def wait_for(stream: Stream, event_type: str, seen: list[Frame] | None = None) -> Frame:
    """Read the stream's events until one of ``event_type``; keep them all in ``seen``."""
    for frame in stream.events():
        if seen is not None:
            seen.append(frame)
        if frame.data.get("type") == event_type:
            return frame
    raise AssertionError(f"the stream ended before a {event_type} event")

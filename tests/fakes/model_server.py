"""A fake model server on 127.0.0.1 for the real agent CLIs, and the proxy that proves they
stay on this machine.

``FakeModel`` listens on a free port of 127.0.0.1 and answers the three streamed APIs
(see ``wire``) with what ``dialogue`` decides. It records every request. Pointed to by
the CLIs' ``HTTPS_PROXY``/``HTTP_PROXY`` (with ``NO_PROXY=127.0.0.1,localhost``), it is
also where any attempt to reach another host ends: a ``CONNECT`` or an absolute-URI
request is refused (403) and recorded in ``outside``, which a test asserts is empty.

    with FakeModel() as fake:
        fake.plan(".devflow/implementation.json", "invalid", "ok")
        ... run a CLI with ANTHROPIC_BASE_URL=fake.url ...
        assert fake.outside == []

Standard library only; one thread per connection; ``close()`` cuts slow streams short.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.fakes import wire
from tests.fakes.dialogue import Dialogue, Reply, Turn

PROXY_ENV_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY",
                   "all_proxy")


@dataclass(frozen=True)
class Seen:
    """One request the fake answered."""

    api: str
    path: str
    model: str
    stream: bool
    reply: str
    mode: str
    after_tool: bool
    tools: frozenset[str]
    body: dict[str, Any]


class FakeModel:
    def __init__(self) -> None:
        self.dialogue = Dialogue()
        self.requests: list[Seen] = []
        self.outside: list[str] = []
        self.unknown: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def plan(self, path: str, *modes: str) -> None:
        """Modes for the next first turns that write ``path`` (see ``dialogue``)."""
        self.dialogue.plan(path, *modes)

    def proxy_env(self) -> dict[str, str]:
        """Variables that send a CLI's traffic to other hosts here, to be refused."""
        env = dict.fromkeys(PROXY_ENV_NAMES, self.url)
        env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        return env

    def agentic(self, api: str | None = None) -> list[Seen]:
        """The requests that could call tools (the agent's own turns)."""
        return [s for s in self.requests if (api is None or s.api == api)
                and (s.tools or s.api == "chat")]

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- called by the handler ------------------------------------------------------------
    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def refuse(self, target: str) -> None:
        with self._lock:
            self.outside.append(target)

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the fake closes first; True when it did."""
        return self._stop.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeModel


_APIS: dict[str, tuple[Callable[[dict[str, Any]], Turn], str]] = {
    "/v1/messages": (wire.read_messages, "messages"),
    "/v1/responses": (wire.read_responses, "responses"),
    "/v1/chat/completions": (wire.read_chat, "chat"),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    @property
    def fake(self) -> FakeModel:
        return self.server.fake

    # -- another host: refused ------------------------------------------------------------
    def do_CONNECT(self) -> None:
        self.fake.refuse(f"CONNECT {self.path}")
        self._send_json(403, {"error": "devflow's fake model server refuses other hosts"},
                        close=True)

    def _foreign(self) -> bool:
        if self.path.startswith(("http://", "https://")):
            host = urlsplit(self.path).hostname or ""
            if host not in ("127.0.0.1", "localhost"):
                self.fake.refuse(f"{self.command} {self.path}")
                self._send_json(403, {"error": "other hosts are refused"}, close=True)
                return True
        return False

    # -- the APIs ---------------------------------------------------------------------
    def do_GET(self) -> None:
        if self._foreign():
            return
        path = urlsplit(self.path).path
        if path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [], "models": []})
            return
        self.fake.unknown.append(f"GET {self.path}")
        self._send_json(404, {"error": {"message": f"no {path} here", "type": "not_found"}})

    def do_HEAD(self) -> None:
        if not self._foreign():
            self._send_json(200, {})

    def do_POST(self) -> None:
        if self._foreign():
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": max(len(raw) // 4, 1)})
            return
        if path not in _APIS:
            self.fake.unknown.append(f"POST {self.path}")
            self._send_json(404, {"error": {"message": f"no {path} here", "type": "not_found"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"message": "not JSON", "type": "invalid_request"}})
            return
        reader, api = _APIS[path]
        turn = reader(body)
        agentic = bool(turn.tools) or api == "chat"
        reply = self.fake.dialogue.answer(turn, agentic=agentic)
        stream = bool(body.get("stream"))
        model = str(body.get("model") or "fake-model")
        self.fake.record(Seen(api, self.path, model, stream, reply.kind, reply.mode,
                              turn.after_tool, turn.tools, body))
        if reply.kind == "error":
            errors = {"messages": wire.messages_error, "responses": wire.responses_error,
                      "chat": wire.chat_error}
            self._send_json(reply.status, errors[api](reply))
            return
        if reply.kind == "command" and api == "chat":  # Aider runs no commands: just hang
            reply = Reply("text", text="still thinking", delay=600, mode=reply.mode)
        if api == "messages":
            events = wire.render_messages(reply, turn, model, stream)
        elif api == "responses":
            events = wire.render_responses(reply, body, model, stream)
        else:
            events = wire.render_chat(reply, body, model, stream)
        if not stream:
            self._send_bytes(200, "application/json", events[0])
        else:
            self._stream(events, reply)

    # -- writing ----------------------------------------------------------------------
    def _send_json(self, status: int, value: Any, close: bool = False) -> None:
        self._send_bytes(status, "application/json", json.dumps(value).encode(), close)

    def _send_bytes(self, status: int, kind: str, data: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _stream(self, events: list[bytes], reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for number, event in enumerate(events):
                if number == 1 and reply.broken:
                    # cut the connection in the middle of the answer, without the last chunk
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if number == 1 and reply.delay and self.fake.wait(reply.delay):
                    self.close_connection = True
                    return
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the CLI gave up on us
            self.close_connection = True

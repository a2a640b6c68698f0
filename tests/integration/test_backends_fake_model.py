"""The fake model server the real-CLI tests rely on: its three APIs, its modes, its proxy trap."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.dialogue import INVALID, marker
from tests.fakes.model_server import FakeModel
from tests.fakes.wire import patch_adding

PATH = ".devflow/implementation.json"
CONTENT = '{"summary": "hello"}'
PROMPT = (f"Requirements\n\n{marker(PATH, CONTENT)}\n\nWrite one JSON document at `{PATH}` "
          f"(relative to the current directory).")


@pytest.fixture
def fake() -> Iterator[FakeModel]:
    with FakeModel() as server:
        yield server


def _post(fake: FakeModel, path: str, body: dict[str, Any]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _data(stream: str) -> list[Any]:
    return [json.loads(line[6:]) for line in stream.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def _messages(*, tool_result: bool = False) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
    if tool_result:
        messages += [{"role": "assistant", "content": [
                         {"type": "tool_use", "id": "t1", "name": "Write", "input": {}}]},
                     {"role": "user", "content": [
                         {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]
    return {"model": "m", "stream": True, "messages": messages,
            "system": "Working directory: /work/tree", "tools": [{"name": "Write"}]}


def test_anthropic_messages_first_turn_writes_then_a_final_text(fake: FakeModel) -> None:
    status, body = _post(fake, "/v1/messages?beta=true", _messages())
    assert status == 200
    events = _data(body)
    assert events[0]["type"] == "message_start"
    start = next(e for e in events if e["type"] == "content_block_start")
    assert start["content_block"]["name"] == "Write"
    partial = "".join(e["delta"]["partial_json"] for e in events
                      if e["type"] == "content_block_delta")
    assert json.loads(partial) == {"file_path": f"/work/tree/{PATH}", "content": CONTENT + "\n"}
    status, body = _post(fake, "/v1/messages", _messages(tool_result=True))
    text = "".join(e["delta"].get("text", "") for e in _data(body)
                   if e["type"] == "content_block_delta")
    assert text == "Done: the artifact is written."
    assert [s.reply for s in fake.requests] == ["write", "text"]


def test_openai_responses_write_through_the_shell_tool(fake: FakeModel) -> None:
    body = {"model": "m", "stream": True, "tools": [{"type": "function", "name": "exec_command"}],
            "input": [{"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": PROMPT}]}]}
    status, stream = _post(fake, "/v1/responses", body)
    assert status == 200
    done = next(e for e in _data(stream) if e["type"] == "response.output_item.done")
    command = json.loads(done["item"]["arguments"])["cmd"]
    assert patch_adding(PATH, CONTENT + "\n") in command
    completed = next(e for e in _data(stream) if e["type"] == "response.completed")
    assert completed["response"]["usage"]["output_tokens"] > 0


def test_chat_completions_answer_with_a_whole_file_edit_and_usage(fake: FakeModel) -> None:
    fake.plan(PATH, "invalid")
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": PROMPT}]}
    status, stream = _post(fake, "/v1/chat/completions", body)
    assert status == 200
    chunks = _data(stream)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == f"{PATH}\n```\n{INVALID.strip()}\n```\n"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_modes_stick_to_a_turn_so_retries_fail_alike(fake: FakeModel) -> None:
    fake.plan(PATH, "error:503", "ok")
    assert _post(fake, "/v1/messages", _messages())[0] == 503
    assert _post(fake, "/v1/messages", _messages())[0] == 503  # a retry of the same turn
    assert [s.mode for s in fake.requests] == ["error:503", "error:503"]
    with pytest.raises(ValueError, match="unknown fake mode"):
        fake.plan(PATH, "explode")


def test_broken_stream_is_cut(fake: FakeModel) -> None:
    fake.plan(PATH, "broken")
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        _post(fake, "/v1/messages", _messages())


def test_side_requests_without_tools_get_a_plain_answer(fake: FakeModel) -> None:
    body = {**_messages(), "tools": []}
    status, stream = _post(fake, "/v1/messages", body)
    text = "".join(e["delta"].get("text", "") for e in _data(stream)
                   if e["type"] == "content_block_delta")
    assert (status, text) == (200, "OK.")
    assert fake.requests[0].mode == ""  # no mode was used up


def test_connect_to_another_host_is_refused_and_recorded(fake: FakeModel) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.set_tunnel("example.com", 443)
    with pytest.raises(OSError, match="403"):
        conn.request("GET", "/")
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("GET", "http://example.com/prices.json")
    assert conn.getresponse().status == 403
    conn.close()
    assert fake.outside == ["CONNECT example.com:443", "GET http://example.com/prices.json"]

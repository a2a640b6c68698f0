"""The three streamed APIs the real CLIs speak, read into a ``Turn`` and written from a ``Reply``.

- Anthropic Messages (Claude Code): ``POST /v1/messages``, server-sent events
  ``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``.
- OpenAI Responses (Codex): ``POST /v1/responses``, events ``response.created``,
  ``response.output_item.added|done``, ``response.completed`` (with usage).
- OpenAI chat completions (Aider, through litellm): ``POST /v1/chat/completions``,
  ``chat.completion.chunk`` data lines, a usage chunk, ``[DONE]``.

Each ``render_*`` returns the events as byte strings (a stream) or one JSON body (when
the request did not ask for a stream); the server decides about pauses and cuts.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from typing import Any

from tests.fakes.dialogue import Reply, Turn

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_fake{next(_ids):06d}"


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {body}\n\n".encode()


def _texts(content: Any) -> list[str]:
    """The text pieces of a message's content, whatever shape it has."""
    if isinstance(content, str):
        return [content]
    found: list[str] = []
    for block in content or ():
        if isinstance(block, str):
            found.append(block)
        elif isinstance(block, dict):
            if isinstance(block.get("text"), str):
                found.append(block["text"])
            elif "content" in block:
                found += _texts(block["content"])
            elif isinstance(block.get("output"), str):
                found.append(block["output"])
    return found


def patch_adding(path: str, content: str) -> str:
    """An ``apply_patch`` envelope that creates ``path`` holding ``content``."""
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


# -- Anthropic Messages -------------------------------------------------------------------
def read_messages(body: dict[str, Any]) -> Turn:
    messages = body.get("messages") or []
    system = "\n".join(_texts(body.get("system") or []))
    everything = "\n".join([system, *("\n".join(_texts(m.get("content"))) for m in messages)])
    prompt, after_tool, output, tool_name = "", False, "", ""
    last = messages[-1] if messages else {}
    blocks = last.get("content")
    blocks = blocks if isinstance(blocks, list) else []
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    if last.get("role") == "user" and results:
        after_tool = True
        output = "\n".join(_texts(results[-1].get("content")))
        wanted = results[-1].get("tool_use_id")
        for message in reversed(messages[:-1]):
            for block in message.get("content") or ():
                if isinstance(block, dict) and block.get("id") == wanted:
                    tool_name = str(block.get("name", ""))
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        pieces = ([content] if isinstance(content, str) else
                  [b["text"] for b in content or () if isinstance(b, dict)
                   and b.get("type") == "text" and isinstance(b.get("text"), str)])
        if pieces:
            prompt = "\n".join(pieces)
            break
    tools = frozenset(str(t.get("name")) for t in body.get("tools") or () if isinstance(t, dict))
    return Turn("messages", prompt, everything, after_tool, output, tool_name, tools,
                len(messages))


def render_messages(reply: Reply, turn: Turn, model: str, stream: bool) -> list[bytes]:
    block: dict[str, Any]
    root = (turn.workdir or "").rstrip("/")
    full = f"{root}/{reply.path}" if root else reply.path
    if reply.kind == "write":
        block = {"type": "tool_use", "id": _id("toolu"), "name": "Write",
                 "input": {"file_path": full, "content": reply.content}}
    elif reply.kind == "read":
        block = {"type": "tool_use", "id": _id("toolu"), "name": "Read",
                 "input": {"file_path": full}}
    elif reply.kind == "command":
        block = {"type": "tool_use", "id": _id("toolu"), "name": "Bash",
                 "input": {"command": reply.command, "description": "Wait for the build"}}
    else:
        block = {"type": "text", "text": reply.text}
    stop = "tool_use" if block["type"] == "tool_use" else "end_turn"
    usage = {"input_tokens": reply.tokens_in, "output_tokens": reply.tokens_out,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = {"id": _id("msg"), "type": "message", "role": "assistant", "model": model,
               "content": [block], "stop_reason": stop, "stop_sequence": None, "usage": usage}
    if not stream:
        return [json.dumps(message).encode()]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**usage, "output_tokens": 1}}
    events = [_sse("message_start", {"type": "message_start", "message": start})]
    if block["type"] == "tool_use":
        events.append(_sse("content_block_start", {
            "type": "content_block_start", "index": 0,
            "content_block": {**block, "input": {}}}))
        text = json.dumps(block["input"])
        for piece in _pieces(text, 3):
            events.append(_sse("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": piece}}))
    else:
        events.append(_sse("content_block_start", {
            "type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                         "text": ""}}))
        for piece in _pieces(reply.text, 2):
            events.append(_sse("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}}))
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": reply.tokens_out}}),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def messages_error(reply: Reply) -> dict[str, Any]:
    kind = "api_error" if reply.status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": kind, "message": reply.text}}


# -- OpenAI Responses ---------------------------------------------------------------------
def read_responses(body: dict[str, Any]) -> Turn:
    items = [i for i in body.get("input") or () if isinstance(i, dict)]
    everything = "\n".join([str(body.get("instructions") or ""),
                            *("\n".join(_texts(i.get("content") or i.get("output") or ""))
                              for i in items)])
    last = items[-1] if items else {}
    after_tool = str(last.get("type", "")).endswith("_output")
    output = "\n".join(_texts(last.get("output") or "")) if after_tool else ""
    tool_name = ""
    if after_tool:
        tool_name = next((str(i.get("name", "")) for i in items
                          if i.get("call_id") == last.get("call_id") and "name" in i), "")
    users = ["\n".join(_texts(i.get("content"))) for i in items
             if i.get("type", "message") == "message" and i.get("role") == "user"]
    prompt = next((u for u in reversed(users) if "Write one JSON document" in u),
                  users[-1] if users else "")
    tools = frozenset(str(t.get("name")) for t in body.get("tools") or () if isinstance(t, dict))
    return Turn("responses", prompt, everything, after_tool, output, tool_name, tools,
                len(items))


def _responses_tool_call(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    tools = {str(t.get("name")): t for t in body.get("tools") or () if isinstance(t, dict)}
    call_id = _id("call")
    if reply.kind == "write" and "apply_patch" in tools:
        patch = patch_adding(reply.path, reply.content)
        if tools["apply_patch"].get("type") == "custom":
            return {"type": "custom_tool_call", "id": _id("ctc"), "call_id": call_id,
                    "name": "apply_patch", "input": patch, "status": "completed"}
        return {"type": "function_call", "id": _id("fc"), "call_id": call_id,
                "name": "apply_patch", "arguments": json.dumps({"input": patch}),
                "status": "completed"}
    patch = patch_adding(reply.path, reply.content) if reply.kind == "write" else ""
    script = f"apply_patch <<'PATCH'\n{patch}PATCH\n" if patch else reply.command
    for name, arguments in (("exec_command", {"cmd": script}),
                            ("shell_command", {"command": script}),
                            ("shell", {"command": ["bash", "-lc", script]})):
        if name in tools:
            return {"type": "function_call", "id": _id("fc"), "call_id": call_id, "name": name,
                    "arguments": json.dumps(arguments), "status": "completed"}
    raise ValueError(f"the request offers no tool to write a file with: {sorted(tools)}")


def render_responses(reply: Reply, body: dict[str, Any], model: str,
                     stream: bool) -> list[bytes]:
    if reply.kind in ("write", "command"):
        item = _responses_tool_call(reply, body)
    else:
        item = {"type": "message", "id": _id("msg"), "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": reply.text, "annotations": []}]}
    usage = {"input_tokens": reply.tokens_in, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": reply.tokens_out,
             "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": reply.tokens_in + reply.tokens_out}
    response = {"id": _id("resp"), "object": "response", "created_at": int(time.time()),
                "status": "completed", "model": model, "output": [item], "usage": usage}
    if not stream:
        return [json.dumps(response).encode()]
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [_sse("response.created", {"type": "response.created", "response": pending}),
              _sse("response.output_item.added", {"type": "response.output_item.added",
                                                  "output_index": 0, "item": item})]
    if item["type"] == "message":
        for piece in _pieces(reply.text, 2):
            events.append(_sse("response.output_text.delta", {
                "type": "response.output_text.delta", "item_id": item["id"],
                "output_index": 0, "content_index": 0, "delta": piece}))
    events += [_sse("response.output_item.done", {"type": "response.output_item.done",
                                                  "output_index": 0, "item": item}),
               _sse("response.completed", {"type": "response.completed",
                                           "response": response})]
    return events


def responses_error(reply: Reply) -> dict[str, Any]:
    return {"error": {"message": reply.text, "type": "server_error", "code": "server_error",
                      "param": None}}


# -- OpenAI chat completions --------------------------------------------------------------
def read_chat(body: dict[str, Any]) -> Turn:
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    everything = "\n".join("\n".join(_texts(m.get("content"))) for m in messages)
    last = messages[-1] if messages else {}
    users = ["\n".join(_texts(m.get("content"))) for m in messages if m.get("role") == "user"]
    tools = frozenset(str((t.get("function") or {}).get("name"))
                      for t in body.get("tools") or () if isinstance(t, dict))
    return Turn("chat", users[-1] if users else "", everything, last.get("role") == "tool",
                "\n".join(_texts(last.get("content"))), "", tools, len(messages))


def whole_file_edit(path: str, content: str) -> str:
    """Aider's ``whole`` edit format: the file's path on a line, then its content fenced."""
    return f"{path}\n```\n{content.rstrip(chr(10))}\n```\n"


def render_chat(reply: Reply, body: dict[str, Any], model: str, stream: bool) -> list[bytes]:
    text = (whole_file_edit(reply.path, reply.content) if reply.kind == "write"
            else reply.text or "OK.")
    usage = {"prompt_tokens": reply.tokens_in, "completion_tokens": reply.tokens_out,
             "total_tokens": reply.tokens_in + reply.tokens_out}
    ident, created = _id("chatcmpl"), int(time.time())
    if not stream:
        return [json.dumps({
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": usage}).encode()]

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        return _sse(None, {"id": ident, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [{"index": 0, "delta": delta,
                                                        "finish_reason": finish}]})

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": piece}, None) for piece in _pieces(text, 4)]
    events.append(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage", True):
        events.append(_sse(None, {"id": ident, "object": "chat.completion.chunk",
                                  "created": created, "model": model, "choices": [],
                                  "usage": usage}))
    events.append(_sse(None, "[DONE]"))
    return events


def chat_error(reply: Reply) -> dict[str, Any]:
    return {"error": {"message": reply.text, "type": "server_error", "code": reply.status}}


def _pieces(text: str, count: int) -> Iterable[str]:
    size = max(len(text) // count, 1)
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]

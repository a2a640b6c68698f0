"""What the fake model answers, whatever API it is asked through.

A test puts the artifact's path and content in the run's requirements between markers::

    <<<DEVFLOW-ARTIFACT path=.devflow/implementation.json>>>
    {"summary": "..."}
    <<<END>>>

and devflow copies the requirements into every prompt. The phase's prompt says which
artifact it wants ("Write one JSON document at `PATH`"); the fake answers the first
turn with the tool call that writes that marker's content there, and the turn after a
tool result with a short final text. How the first turn goes is a *mode*, taken per
artifact path from a queue the test fills (``ok`` when it is empty):

| mode | first turn |
|---|---|
| ok | writes the marker's content |
| invalid | writes a JSON document no devflow schema accepts |
| nothing | a final text, no tool call |
| error[:STATUS] | an HTTP error (500 unless given) |
| slow:SECONDS | waits that long inside the stream, then as ok |
| broken | starts the stream and cuts the connection |
| hang | asks to run ``sleep 600`` with the CLI's shell tool (a child process that hangs) |

A mode sticks to one conversation turn: a CLI retrying the same request gets the same
answer, so ``error`` and ``broken`` make the CLI give up rather than succeed on a retry.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final

MARKER: Final = re.compile(
    r"<<<DEVFLOW-ARTIFACT path=(?P<path>[^\s>]+)>>>\n?(?P<content>.*?)\n?<<<END>>>", re.S)
ASKED: Final = re.compile(r"Write one JSON document at `([^`]+)`")
WORKDIR: Final = re.compile(r"(?:Working directory|Primary working directory|cwd):\s*(/\S+)")
INVALID: Final = '{"devflow_fake": "an artifact no schema accepts"}\n'
MODE: Final = re.compile(r"^(ok|invalid|nothing|broken|hang|error(:\d{3})?|slow:\d+(\.\d+)?)$")


def marker(path: str, content: str) -> str:
    """The marker block a test puts in the requirements."""
    return f"<<<DEVFLOW-ARTIFACT path={path}>>>\n{content.strip()}\n<<<END>>>"


@dataclass(frozen=True)
class Turn:
    """What the fake understood of one request."""

    api: str
    prompt: str              # the latest user text (not a tool result)
    everything: str          # all text of the request, system prompt included
    after_tool: bool         # the request ends with a tool's result
    tool_output: str = ""    # that result's text
    tool_name: str = ""      # the tool whose result it is, where the API says
    tools: frozenset[str] = frozenset()
    messages: int = 0

    @property
    def workdir(self) -> str | None:
        found = WORKDIR.search(self.everything)
        return found.group(1) if found else None

    def key(self) -> str:
        """The same prompt again is a retry (each devflow attempt's prompt differs)."""
        return f"{self.api}:{hashlib.sha256(self.prompt.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Reply:
    """The answer, before a wire format renders it."""

    kind: str                    # write | text | command | read | error
    text: str = ""
    path: str = ""
    content: str = ""
    command: str = ""
    status: int = 200
    delay: float = 0.0           # seconds inside the stream before the answer
    broken: bool = False
    mode: str = ""
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass
class Dialogue:
    """The fake's memory: queued modes per artifact path, the mode of each turn seen."""

    queues: dict[str, deque[str]] = field(default_factory=dict)
    default: str = "ok"
    _turns: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, path: str, *modes: str) -> None:
        for mode in modes:
            if not MODE.match(mode):
                raise ValueError(f"unknown fake mode {mode!r}")
        with self._lock:
            self.queues.setdefault(path, deque()).extend(modes)

    def answer(self, turn: Turn, *, agentic: bool) -> Reply:
        """``agentic``: the request can call tools (a CLI's side requests cannot)."""
        usage_in = max(len(turn.everything) // 4, 1)
        asked = ASKED.search(turn.prompt)
        if turn.after_tool:
            return self._after_tool(turn, usage_in)
        if not asked or not agentic:
            return Reply("text", text="OK.", tokens_in=usage_in, tokens_out=2)
        path = asked.group(1)
        mode = self._mode(turn, path)
        content = _content(turn, path)
        if content is None:
            return Reply("text", text=f"No marker gives the content of {path}.",
                         tokens_in=usage_in, tokens_out=10, mode=mode)
        return _first_turn(Reply("write", path=path, mode=mode, tokens_in=usage_in), content)

    def _after_tool(self, turn: Turn, usage_in: int) -> Reply:
        asked = ASKED.search(turn.prompt)
        if asked and "read it first" in turn.tool_output.lower():
            # Claude Code refuses to overwrite a file this session has not read.
            return Reply("read", path=asked.group(1), tokens_in=usage_in, tokens_out=10)
        if asked and turn.tool_name == "Read":
            # the file was read at last: write it now, as this turn's mode says
            mode = self._turns.get(turn.key(), self.default)
            body = INVALID if mode == "invalid" else _content(turn, asked.group(1)) or ""
            return Reply("write", path=asked.group(1), content=body, mode=mode,
                         tokens_in=usage_in, tokens_out=max(len(body) // 4, 1) + 20)
        return Reply("text", text="Done: the artifact is written.", tokens_in=usage_in,
                     tokens_out=9)

    def _mode(self, turn: Turn, path: str) -> str:
        with self._lock:
            key = turn.key()
            if key not in self._turns:
                queue = self.queues.get(path)
                self._turns[key] = queue.popleft() if queue else self.default
            return self._turns[key]


def _content(turn: Turn, path: str) -> str | None:
    return next((m.group("content") + "\n" for m in MARKER.finditer(turn.everything)
                 if m.group("path") == path), None)


def _first_turn(base: Reply, content: str) -> Reply:
    """The first turn's answer as ``base.mode`` says."""
    kind, _, arg = base.mode.partition(":")
    if kind == "error":
        return replace(base, kind="error", status=int(arg or 500),
                       text="the fake model failed on purpose (devflow test)")
    if kind == "nothing":
        return replace(base, kind="text", text="I will not write anything.", tokens_out=8)
    if kind == "hang":
        return replace(base, kind="command", command="sleep 600", tokens_out=12)
    body = INVALID if kind == "invalid" else content
    return replace(base, content=body, tokens_out=max(len(body) // 4, 1) + 20,
                   delay=float(arg) if kind == "slow" else 0.0, broken=kind == "broken")

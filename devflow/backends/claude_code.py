"""The ``claude-code`` preset: Claude Code in print mode, its stream of JSON lines read live.

argv (the prompt goes on standard input)::

    claude -p [--allowedTools T...] [--disallowedTools T...] --output-format stream-json
           --verbose --permission-mode MODE [--model MODEL] [--resume SESSION] [ARGS...]

Environment: ``HOME`` and ``CLAUDE_CONFIG_DIR`` in the run's own directory (sessions
stay there, so a repair attempt can ``--resume``), and the variables that keep it from
calling its vendor's other hosts (a persona's ``env.set`` may override those).

Inside devflow's sandbox, ``IS_SANDBOX=1`` says so to Claude Code (which then accepts
``bypassPermissions`` when run as root). Its permission mode stays what the persona
says: it decides which tools Claude Code may use; devflow's sandbox decides what they
can reach. Claude Code's own bash sandbox is off unless its settings turn it on (it
cannot be nested in devflow's).

The last ``result`` line gives the session, ``total_cost_usd`` and token usage; an
``is_error`` result or a non-empty ``permission_denials`` is a failed attempt: with too
narrow a permission mode Claude Code exits 0 having written nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from devflow.backends import command
from devflow.backends import options as opts
from devflow.backends.base import Outcome, Task, json_object
from devflow.backends.process import Exit

PERMISSION_MODES: Final = ("acceptEdits", "default", "plan", "bypassPermissions", "dontAsk",
                           "auto")
QUIET: Final = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
}


class ClaudeCode(command.Preset):
    name = "claude-code"
    program = "claude"
    options_schema = command.preset_schema({
        "permission_mode": {"enum": list(PERMISSION_MODES),
                            "description": "which tools it may use without asking "
                                           "(default acceptEdits)"},
        "allowed_tools": {**opts.STRINGS, "description": "tools allowed without asking"},
        "disallowed_tools": {**opts.STRINGS, "description": "tools refused"},
    })
    VERSION_ENV = {"CLAUDE_CONFIG_DIR": "{home}/.claude", **QUIET}

    def arguments(self, task: Task, home: Path, extra: list[str]) -> list[str]:
        options = task.persona.options
        argv = ["-p"]
        # variadic options first, each followed by an option, so no value is taken for a tool
        if options.get("allowed_tools"):
            argv += ["--allowedTools", *options["allowed_tools"]]
        if options.get("disallowed_tools"):
            argv += ["--disallowedTools", *options["disallowed_tools"]]
        argv += ["--output-format", "stream-json", "--verbose",
                 "--permission-mode", str(options.get("permission_mode", "acceptEdits"))]
        if task.persona.model:
            argv += ["--model", task.persona.model]
        if task.resume_session:
            argv += ["--resume", task.resume_session]
        return argv + extra

    def defaults(self, task: Task, home: Path) -> dict[str, str]:
        return {**QUIET, "IS_SANDBOX": "1"} if task.sandboxed else dict(QUIET)

    def forced(self, task: Task, home: Path) -> dict[str, str]:
        return {"HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude")}

    def progress(self, line: str) -> str | None:
        event = json_object(line)
        if event is None:
            return None
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            return f"claude {event.get('claude_code_version', '')} started, model " \
                   f"{event.get('model', '?')}, session {event.get('session_id', '?')}"
        if kind == "assistant":
            notes = [_tool_note(block) for block in (event.get("message") or {}).get("content")
                     or () if isinstance(block, dict) and block.get("type") == "tool_use"]
            return "; ".join(notes) or None
        if kind == "result":
            cost = event.get("total_cost_usd")
            return (f"finished: {event.get('subtype', '?')}, {event.get('num_turns', '?')} "
                    f"turn(s)" + (f", ${cost:.4f}" if isinstance(cost, int | float) else ""))
        return None

    def outcome(self, task: Task, exit: Exit, stdout_log: Path, stderr_log: Path) -> Outcome:
        session, result = None, None
        for line in command.read_lines(stdout_log):
            event = json_object(line)
            if event is None:
                continue
            session = event.get("session_id") or session
            if event.get("type") == "result":
                result = event
        if result is None:
            failure = (None if exit.exit_code != 0 or exit.timed_out else
                       "Claude Code printed no result line (see its stdout and stderr logs)")
            return Outcome(failure=failure, session_id=session)
        tokens_in, tokens_out = _tokens(result)
        cost = result.get("total_cost_usd")
        return Outcome(failure=_failure(task, result), tokens_in=tokens_in,
                       tokens_out=tokens_out,
                       cost_usd=float(cost) if isinstance(cost, int | float) else None,
                       session_id=str(result.get("session_id") or session or "") or None)


def _tool_note(block: Mapping[str, Any]) -> str:
    given = block.get("input") or {}
    what = (given.get("file_path") or given.get("path") or given.get("notebook_path")
            or given.get("command") or given.get("pattern") or given.get("url") or "")
    return f"{block.get('name', 'tool')} {str(what)[:160]}".strip()


def _tokens(result: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Input tokens count cache reads and writes; ``modelUsage`` (every model the session
    used) is what the cost was computed from, so it wins over ``usage``."""
    by_model = result.get("modelUsage")
    if isinstance(by_model, Mapping) and by_model:
        rows = [r for r in by_model.values() if isinstance(r, Mapping)]
        return (sum(int(r.get("inputTokens", 0)) + int(r.get("cacheReadInputTokens", 0))
                    + int(r.get("cacheCreationInputTokens", 0)) for r in rows),
                sum(int(r.get("outputTokens", 0)) for r in rows))
    usage = result.get("usage")
    if not isinstance(usage, Mapping):
        return None, None
    return (int(usage.get("input_tokens", 0)) + int(usage.get("cache_read_input_tokens", 0))
            + int(usage.get("cache_creation_input_tokens", 0)),
            int(usage.get("output_tokens", 0)))


def _failure(task: Task, result: Mapping[str, Any]) -> str | None:
    if result.get("is_error"):
        text = str(result.get("result") or result.get("subtype") or "unknown error")
        return f"Claude Code reported an error: {text[:500]}"
    denials = [d for d in result.get("permission_denials") or () if isinstance(d, Mapping)]
    if denials:
        mode = task.persona.options.get("permission_mode", "acceptEdits")
        shown = ", ".join(_tool_note({"name": d.get("tool_name"), "input": d.get("tool_input")})
                          for d in denials[:5])
        return (f"Claude Code was denied {len(denials)} tool call(s) in permission mode {mode}: "
                f"{shown}; allow them with the persona's options.permission_mode or "
                f"options.allowed_tools")
    if result.get("subtype") not in (None, "success"):
        return f"Claude Code stopped: {result.get('subtype')}"
    return None

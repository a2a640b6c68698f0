"""The ``codex`` preset: ``codex exec --json``, with a ``CODEX_HOME`` of the run's own.

argv (the prompt goes on standard input, named by the final ``-``)::

    codex exec --json [ARGS...] -                    # a new session
    codex exec resume --json [ARGS...] SESSION -     # a repair: the phase's last session

devflow writes ``$CODEX_HOME/config.toml`` before each attempt: the model, the provider
(``base_url``/``env_key``/``wire_api`` from the persona's options, else Codex's
built-in ``openai``; ``base_url_env`` names a variable whose value, when set, replaces
``base_url``, so a gateway or a local model server needs no copy of a persona),
``approval_policy = "never"``, ``sandbox_mode`` (below), and update checks, analytics,
feedback and plugins off, so it talks to its model server and to nothing else.

``sandbox_mode``: inside devflow's sandbox, ``danger-full-access``: devflow's sandbox is
the boundary, and Codex's own (bubblewrap, seccomp and Landlock on Linux) cannot be
nested in it (its ``apply_patch`` then fails to write any file). Run unsandboxed by
devflow (``sandbox: none``), ``workspace-write``, Codex's own. A persona's ``sandbox``
option wins over both.

Its JSON lines give ``thread_id`` (the session), ``turn.completed`` usage and the final
``agent_message``; a ``turn.failed`` or top-level ``error`` is a failed attempt. Codex
prints no cost: it is computed from ``prices`` (USD per million tokens) in the persona's
options or devflow's configuration.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from devflow.backends import command
from devflow.backends import options as opts
from devflow.backends.base import Outcome, Task, json_object
from devflow.backends.process import Exit

SANDBOXES: Final = ("read-only", "workspace-write", "danger-full-access")
_NAME: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_VARIABLE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Codex(command.Preset):
    name = "codex"
    program = "codex"
    options_schema = command.preset_schema({
        "base_url": {"type": "string", "description": "the provider's URL; without it, "
                                                      "Codex's built-in openai provider"},
        # a variable whose value, when set, is the URL instead of base_url
        "base_url_env": {"type": "string", "pattern": _VARIABLE.pattern,
                         "description": "the name of an environment variable"},
        # the variable holding the provider's key
        "env_key": {"type": "string", "pattern": _VARIABLE.pattern,
                    "description": "the name of an environment variable"},
        # the provider's name in the config (default devflow)
        "provider": {"type": "string", "pattern": _NAME.pattern,
                     "description": "a name of letters, digits, - and _"},
        "wire_api": {"type": "string", "description": "what the provider speaks "
                                                      "(default responses)"},
        "sandbox": {"enum": list(SANDBOXES), "description": "Codex's own sandbox"},
        "prices": opts.PRICES,
        "request_max_retries": {**opts.COUNT, "description": "the provider's retries"},
        "stream_max_retries": {**opts.COUNT, "description": "the provider's retries"},
    })
    VERSION_ENV = {"CODEX_HOME": "{home}/.codex"}

    def arguments(self, task: Task, home: Path, extra: list[str]) -> list[str]:
        codex_home = home / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True, mode=0o700)
        (codex_home / "config.toml").write_text(config_toml(task), encoding="utf-8")
        if task.resume_session:
            return ["exec", "resume", "--json", *extra, task.resume_session, "-"]
        return ["exec", "--json", *extra, "-"]

    def forced(self, task: Task, home: Path) -> dict[str, str]:
        return {"HOME": str(home), "CODEX_HOME": str(home / ".codex")}

    def progress(self, line: str) -> str | None:
        event = json_object(line) or {}
        kind = event.get("type")
        if kind == "thread.started":
            return f"codex session {event.get('thread_id', '?')} started"
        if kind in ("turn.failed", "error"):
            return f"error: {_message(event)[:200]}"
        item = event.get("item")
        return _item_note(str(kind), item) if isinstance(item, dict) else None

    def outcome(self, task: Task, exit: Exit, stdout_log: Path, stderr_log: Path) -> Outcome:
        session, failure = None, None
        tokens_in = tokens_out = cached = 0
        turns = 0
        for line in command.read_lines(stdout_log):
            event = json_object(line)
            if event is None:
                continue
            kind = event.get("type")
            if kind == "thread.started":
                session = str(event.get("thread_id") or "") or session
            elif kind == "turn.completed":
                usage = event.get("usage") or {}
                turns += 1
                tokens_in += int(usage.get("input_tokens", 0))
                cached += int(usage.get("cached_input_tokens", 0))
                tokens_out += int(usage.get("output_tokens", 0))
            elif kind in ("turn.failed", "error"):
                failure = failure or f"Codex reported an error: {_message(event)[:500]}"
        if not turns:
            return Outcome(failure=failure, session_id=session)
        prices = command.prices_for(task.persona.model, task.persona.options)
        return Outcome(failure=failure, tokens_in=tokens_in, tokens_out=tokens_out,
                       cost_usd=command.cost(prices, tokens_in, tokens_out, cached),
                       session_id=session)


def _item_note(kind: str, item: Mapping[str, Any]) -> str | None:
    what = item.get("type")
    if kind == "item.started" and what == "command_execution":
        return f"run {str(item.get('command', ''))[:160]}"
    if kind == "item.completed" and what == "file_change":
        changes = [f"{c.get('kind', 'edit')} {c.get('path', '?')}"
                   for c in item.get("changes") or () if isinstance(c, dict)]
        return "; ".join(changes) or None
    if kind == "item.completed" and what == "agent_message":
        return f"says: {str(item.get('text', ''))[:160]}"
    return None


def config_toml(task: Task) -> str:
    """Codex's configuration for this attempt: one provider, no approvals, no other hosts."""
    options = task.persona.options
    top: dict[str, Any] = {}
    if task.persona.model:
        top["model"] = task.persona.model
    provider = str(options.get("provider", "devflow"))
    url = base_url(options)
    if url:
        top["model_provider"] = provider
    own = "danger-full-access" if task.sandboxed else "workspace-write"
    top.update({"approval_policy": "never",
                "sandbox_mode": str(options.get("sandbox", own)),
                "check_for_update_on_startup": False})
    tables: dict[str, dict[str, Any]] = {
        "analytics": {"enabled": False},
        "feedback": {"enabled": False},
        "features": {"plugins": False, "remote_plugin": False, "apps": False},
    }
    if url:
        tables[f"model_providers.{provider}"] = {
            "name": provider, "base_url": url,
            "env_key": str(options.get("env_key", "OPENAI_API_KEY")),
            "wire_api": str(options.get("wire_api", "responses")),
            **{k: int(options[k]) for k in ("request_max_retries", "stream_max_retries")
               if k in options}}
    lines = ["# written by devflow for each attempt; changes here are overwritten"]
    lines += [f"{key} = {_toml(value)}" for key, value in top.items()]
    for table, entries in tables.items():
        lines += ["", f"[{table}]", *(f"{key} = {_toml(value)}" for key, value in entries.items())]
    return "\n".join(lines) + "\n"


def base_url(options: Mapping[str, Any]) -> str | None:
    """The provider's URL: the variable ``base_url_env`` names when it is set, else
    ``base_url``; None for Codex's built-in provider."""
    variable = options.get("base_url_env")
    found = os.environ.get(str(variable), "").strip() if variable else ""
    return found or (str(options["base_url"]) if options.get("base_url") else None)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def _message(event: Mapping[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error)
    return str(event.get("message") or error or "unknown error")

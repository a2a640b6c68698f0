"""What every backend is: a way to turn (persona, phase, prompt) into one agent process.

A backend declares a persona's options (a JSON Schema) and checks them, says whether
it is available on this machine (and its version), builds the process (argv list,
environment, stdin), turns stdout lines into progress notes, and reads the usage and
failure reasons it can find in the process's output once it exited.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from devflow import jsontext
from devflow.backends.process import Exit
from devflow.definitions import Persona, Problem
from devflow.schemas import SchemaRegistry

#: Variables every agent gets from devflow's environment; anything else only by allowlist.
BASE_ENV: Final = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ",
                   "TMPDIR", "TERM", "SHELL")


def attempt_name(phase: str, attempt: int) -> str:
    """What an attempt's files are named after, in every directory of the workspace:
    ``<phase>.attempt-<n>`` (its prompt, its kept artifact, its logs)."""
    return f"{phase}.attempt-{attempt}"


@dataclass(frozen=True, slots=True)
class Task:
    """One attempt of one phase, as the agent is asked to do it."""

    run_id: str
    phase: str
    attempt: int
    role: str
    worktree: Path
    prompt: str
    prompt_file: Path
    #: the run's log directory; this attempt's files are ``log_file(...)``
    log_dir: Path
    timeout: float
    persona: Persona
    artifact_path: str | None = None
    artifact_schema: str | None = None
    scenario: str | None = None
    resume_session: str | None = None
    port_base: int | None = None
    roles: Sequence[str] = ()
    #: the agent's HOME: a directory of the run's own (``<run workspace>/home``)
    home: Path | None = None
    #: whether the agent runs in devflow's sandbox (a CLI with a sandbox of its own is
    #: told how to run inside it)
    sandboxed: bool = False

    def log_file(self, suffix: str) -> Path:
        """This attempt's log file ending in ``suffix``: ``<phase>.attempt-<n>.<suffix>``."""
        return self.log_dir / f"{attempt_name(self.phase, self.attempt)}.{suffix}"


@dataclass(frozen=True, slots=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    stdin_file: Path | None = None
    #: seconds; a persona's own ``timeout`` option, which wins over the phase's ``Task.timeout``
    timeout: float | None = None
    #: the programs and files the process runs or reads outside the worktree and its HOME:
    #: the sandbox shows these read-only, each program with what it runs on
    reads: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the process's output says beyond its exit code."""

    failure: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    available: bool
    version: str | None = None
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    @property
    def options_schema(self) -> Mapping[str, Any]:
        """What a persona's ``options`` may hold: a JSON Schema (``backends.options``)."""

    def check_options(self, options: Mapping[str, Any]) -> list[Problem]:
        """Problems with a persona's ``options`` for this backend (empty when fine): those
        of ``options_schema``, then what a schema cannot say. Each is at its place in the
        persona (``options``, ...)."""

    def availability(self, persona: Persona) -> Availability:
        """Whether this persona can run here, and the version of what runs it."""

    def command(self, task: Task, schemas: SchemaRegistry) -> Command:
        """The process for ``task``: argv list, environment, stdin."""

    def progress(self, line: str) -> str | None:
        """A short note for the progress display from one stdout line, or None."""

    def outcome(self, task: Task, exit: Exit, stdout_log: Path, stderr_log: Path) -> Outcome:
        """Usage, session and failure reasons found in the output."""


def base_env() -> dict[str, str]:
    """What every process devflow starts for a run inherits from devflow's environment:
    ``BASE_ENV``'s variables, nothing else (no database URL, no token)."""
    return {k: os.environ[k] for k in BASE_ENV if k in os.environ}


def agent_env(task: Task, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The agent's whole environment: the base (with the run's HOME), the persona's allowlist
    and values, the task."""
    persona = task.persona
    env = base_env()
    if task.home is not None:  # the agent's own HOME, never the account's
        env["HOME"] = str(task.home)
    for pattern in persona.env_allow:
        if pattern.endswith("*"):
            env.update({k: v for k, v in os.environ.items() if k.startswith(pattern[:-1])})
        elif pattern in os.environ:
            env[pattern] = os.environ[pattern]
    env.update(persona.env_set)
    env.update({
        "DEVFLOW_RUN_ID": task.run_id, "DEVFLOW_PHASE": task.phase,
        "DEVFLOW_ATTEMPT": str(task.attempt), "DEVFLOW_WORKTREE": str(task.worktree),
        "DEVFLOW_PROMPT_FILE": str(task.prompt_file),
    })
    if task.artifact_path:
        env["DEVFLOW_ARTIFACT"] = task.artifact_path
    if task.port_base is not None:
        env["DEVFLOW_PORT_BASE"] = str(task.port_base)
    if extra:
        env.update(extra)
    return env


def json_object(line: str) -> dict[str, Any] | None:
    """The JSON object on one line of an agent's stream output, or None for anything else."""
    if not line.startswith("{"):
        return None
    try:
        value = jsontext.loads(line)  # an agent's line: nesting checked before parsing
    except jsontext.BadJSON:
        return None
    return value if isinstance(value, dict) else None

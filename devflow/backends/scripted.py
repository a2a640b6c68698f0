"""The scripted backend: a deterministic agent for tests and the demo.

It runs a real process (``scripted_agent.py``) like any other backend, so timeouts,
process groups, logs and crashes behave as with a real agent. What the process does
is a *scenario*, chosen per phase by ``--scenario PHASE=NAME``, the persona's
``options.scenarios`` (phase -> name) or ``options.scenario`` (default ``ok``):

| scenario | what the agent does |
|---|---|
| ok | writes a valid artifact |
| invalid-then-ok | an invalid artifact on its first attempt, a valid one after |
| invalid | always an invalid artifact |
| no-artifact | exits 0 having written nothing |
| exit-1 | exits 1 having written nothing |
| slow:SECONDS | works that long, then writes a valid artifact |
| plan:N | a valid phase plan adding N phases (for a dev/phase-plan@1 phase) |
| edit | changes a file of the worktree, then writes a valid artifact |
| hang | never ends, with a child process (for timeouts) |
| crash-worker | has the devflow process that started it killed (for crash tests) |

``crash-worker``: an agent in its sandbox cannot see devflow's process, let alone
signal it, so the agent asks and the backend does it: the devflow process that reads
the agent's ``crash`` line (and only the one that started it) kills itself with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from devflow.backends import options as opts
from devflow.backends import samples
from devflow.backends.base import Availability, Command, Outcome, Task, agent_env, json_object
from devflow.backends.process import Exit
from devflow.definitions import PHASE_PLAN_SCHEMA, Persona, Problem
from devflow.schemas import SchemaRegistry

SCENARIO: Final = re.compile(
    r"^(ok|invalid-then-ok|invalid|no-artifact|exit-1|edit|hang|crash-worker"
    r"|slow:\d+(\.\d+)?|plan:\d+)$")
_AGENT: Final = Path(__file__).resolve().parent / "scripted_agent.py"
#: a script up to this size goes in the agent's environment, a larger one in a file
#: (Linux caps one environment string at 128 KiB)
_SCRIPT_IN_ENV: Final = 64 * 1024


_SCENARIO: Final = {
    "type": "string", "pattern": SCENARIO.pattern,
    "description": "a scenario: ok, invalid-then-ok, invalid, no-artifact, exit-1, "
                   "slow:SECONDS, plan:N, edit, hang or crash-worker"}


def check_scenario(name: str) -> str | None:
    if SCENARIO.match(name):
        return None
    return (f"unknown scenario {name!r}: use ok, invalid-then-ok, invalid, no-artifact, exit-1, "
            f"slow:SECONDS, plan:N, edit, hang or crash-worker")


class Scripted:
    name = "scripted"

    options_schema: Final = opts.schema({
        "scenario": _SCENARIO,
        "scenarios": {"type": "object", "additionalProperties": _SCENARIO,
                      "description": "a scenario by phase key (wins over scenario)"},
    })

    def check_options(self, options: Mapping[str, Any]) -> list[Problem]:
        return opts.problems(self.options_schema, options)

    def availability(self, persona: Persona) -> Availability:
        return Availability(True, version=f"python {sys.version.split()[0]}")

    def scenario(self, task: Task) -> str:
        options = task.persona.options
        return (task.scenario or dict(options.get("scenarios", {})).get(task.phase)
                or options.get("scenario") or "ok")

    def command(self, task: Task, schemas: SchemaRegistry) -> Command:
        script = json.dumps(self._script(task, self.scenario(task), schemas))
        reads = (Path(sys.executable), _AGENT)
        if len(script) <= _SCRIPT_IN_ENV:  # the common case: no file to write
            return Command(argv=[sys.executable, "-I", "-S", str(_AGENT)],
                           env=agent_env(task, {"DEVFLOW_SCRIPT": script}), reads=reads)
        path = task.log_file("script.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script, encoding="utf-8")
        return Command(argv=[sys.executable, "-I", "-S", str(_AGENT), str(path)],
                       env=agent_env(task), reads=(*reads, path))

    def _script(self, task: Task, scenario: str, schemas: SchemaRegistry) -> dict[str, Any]:
        script: dict[str, Any] = {"note": f"scenario {scenario}, attempt {task.attempt}"}
        kind, _, arg = scenario.partition(":")
        good = kind in ("ok", "edit", "slow", "plan") or (
            kind == "invalid-then-ok" and task.attempt > 1)
        if kind == "exit-1":
            script["exit"] = 1
        elif kind == "hang":
            script["hang"] = True
        elif kind == "crash-worker":
            script["kill_parent"] = os.getpid()
        elif kind == "slow":
            script["sleep"] = float(arg)
        elif kind == "edit":
            script["edit"] = {"path": "NOTES.md" if not (task.worktree / "README.md").exists()
                              else "README.md",
                              "append": f"\n<!-- {task.phase}, attempt {task.attempt} -->\n"}
        if task.artifact_path and task.artifact_schema and kind not in (
                "no-artifact", "exit-1", "hang", "crash-worker"):
            if not good:
                content = _text(samples.invalid(task.artifact_schema, schemas))
            elif kind == "plan" and task.artifact_schema == PHASE_PLAN_SCHEMA:
                role = "implementer" if "implementer" in task.roles else task.role
                content = _text(samples.phase_plan(int(arg), role, task.phase))
            else:
                content = samples.valid_text(task.artifact_schema, schemas)
            script["write"] = {"path": task.artifact_path, "content": content}
        return script

    def progress(self, line: str) -> str | None:
        value = json_object(line)
        if value is None:
            return None
        if value.get("type") == "crash" and value.get("pid") == os.getpid():
            os.kill(os.getpid(), signal.SIGKILL)  # crash-worker: see the module's text
            return None
        return str(value.get("text")) or None

    def outcome(self, task: Task, exit: Exit, stdout_log: Path, stderr_log: Path) -> Outcome:
        return Outcome()


def _text(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"

"""The command backend, and what the presets for real CLIs are built on.

A persona names an argv list; an argument that is exactly one placeholder is replaced
by the task's value, as one argument, and nothing else is ever expanded: text from a
template or from requirements can become neither an extra argument nor a shell command.

| placeholder | value |
|---|---|
| ``{prompt_file}`` | the prompt of this attempt, a Markdown file |
| ``{artifact_path}`` | the artifact's path, relative to the worktree ("" when none) |
| ``{worktree}`` | the run's worktree (also the process's working directory) |
| ``{phase}``, ``{run_id}``, ``{attempt}`` | the phase key, the run id, the attempt number |
| ``{model}`` | the persona's ``model`` |

Options of a ``command`` persona: ``argv`` (required), ``stdin`` (``prompt`` feeds the
prompt file on standard input, ``none`` the default gives /dev/null), ``timeout`` (a
duration that wins over the phase's), ``version_argv`` (run to learn the version shown
with the binding). The environment is the persona's ``env`` (``allow`` and ``set``) over
devflow's base variables, and nothing else.

``Preset`` is the same machinery for a known CLI: the preset builds the argv, the
persona adds ``args`` (placeholders allowed) and ``env``; ``bin`` or
``DEVFLOW_<NAME>_BIN`` names another executable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from devflow import durations
from devflow import memo as memos
from devflow.backends import options as opts
from devflow.backends.base import Availability, Command, Outcome, Task, agent_env
from devflow.backends.process import Exit
from devflow.definitions import Persona, Problem
from devflow.errors import Code, DevflowError
from devflow.schemas import SchemaRegistry

PLACEHOLDERS: Final = ("prompt_file", "artifact_path", "worktree", "phase", "run_id", "attempt",
                       "model")
_WHOLE: Final = re.compile(r"^\{([a-z_]+)\}$")
_ANY: Final = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_VERSION_TIMEOUT: Final = 30.0

_versions: dict[tuple[str, tuple[str, ...]], str | None] = {}
_versions_lock = threading.Lock()
#: where versions are remembered between processes (``configure``); none: this process only
_memo: list[memos.Memo] = []

#: USD per million tokens by model, from devflow's configuration (``prices`` in config.yaml)
_configured_prices: dict[str, Mapping[str, float]] = {}


def configure(*, prices: Mapping[str, Mapping[str, float]] | None = None,
              memo: memos.Memo | None = None) -> None:
    """Settings the backends need from devflow's configuration (called by the app)."""
    _configured_prices.clear()
    _configured_prices.update(prices or {})
    _memo[:] = [memo] if memo is not None else []


# -- placeholders -----------------------------------------------------------------------
def values(task: Task) -> dict[str, str]:
    return {"prompt_file": str(task.prompt_file), "artifact_path": task.artifact_path or "",
            "worktree": str(task.worktree), "phase": task.phase, "run_id": task.run_id,
            "attempt": str(task.attempt), "model": task.persona.model or ""}


def expand(argv: Sequence[str], task: Task) -> list[str]:
    """``argv`` with each whole-argument placeholder replaced; other text stays as written."""
    known = values(task)
    out = []
    for arg in argv:
        found = _WHOLE.match(arg)
        out.append(known[found.group(1)] if found and found.group(1) in known else arg)
    return out


def check_argv(value: Any, field: str) -> list[Problem]:
    """An argv's placeholders (its shape is the options schema's): each a known one, and a
    whole argument."""
    if not isinstance(value, list):
        return []
    problems = []
    for index, arg in enumerate(value):
        if not isinstance(arg, str):
            continue
        whole = _WHOLE.match(arg)
        if whole and whole.group(1) not in PLACEHOLDERS:
            problems.append(_problem((field, index), f"unknown placeholder {arg!r} "
                                     f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"))
        elif not whole and _ANY.search(arg):
            problems.append(_problem((field, index), f"{arg!r}: a placeholder must be a whole "
                                     f"argument (write it as an argument of its own)"))
    return problems


def check_timeout(options: Mapping[str, Any]) -> list[Problem]:
    """The ``timeout`` option (a string or a number, says the schema) as a duration."""
    value = options.get("timeout")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return []
    try:
        seconds = durations.parse_duration(value, field="timeout")
        if not 0 < seconds < float("inf"):  # NaN fails this too
            return [_problem(("timeout",), "timeout must be a positive, finite duration")]
    except DevflowError as exc:
        return [_problem(("timeout",), exc.message if "timeout" in exc.message
                         else f"timeout: {exc.message}")]
    return []


def _problem(at: tuple[str | int, ...], message: str) -> Problem:
    return Problem(Code.BACKEND_OPTION_INVALID, ("options", *at), message)


def timeout_of(options: Mapping[str, Any]) -> float | None:
    return durations.parse_duration(options["timeout"]) if "timeout" in options else None


# -- programs and versions --------------------------------------------------------------
def resolve(program: str) -> str | None:
    """An executable's absolute path: ``program`` itself when absolute, else found on PATH."""
    if os.path.isabs(program):
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    return shutil.which(program, path=os.environ.get("PATH", os.defpath))


def version(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str | None:
    """The first line ``argv`` prints, run with a throwaway HOME; asked once per version of
    the executable (its real path, size, modification time and inode), and remembered
    on disk between processes (``configure``): ``claude --version`` alone takes a tenth
    of a second, at every run start."""
    stamp = memos.file_stamp(argv[0])
    if stamp is None:
        return None
    key = (stamp, tuple(argv[1:]))
    with _versions_lock:
        if key in _versions:
            return _versions[key]
    remembered = memos.key("version", stamp, *argv[1:], "\0", *sorted(
        f"{k}={v}" for k, v in (env or {}).items()))
    seen = _memo[0].get(remembered) if _memo else None
    if seen is not None:
        with _versions_lock:
            _versions[key] = str(seen["version"])
        return str(seen["version"])
    found = _ask_version(argv, env)
    with _versions_lock:
        _versions[key] = found
    if found is not None and _memo:  # a failure may pass (a timeout): asked again next time
        _memo[0].put(remembered, {"version": found})
        _memo[0].save()
    return found


def _ask_version(argv: Sequence[str], env: Mapping[str, str] | None) -> str | None:
    with tempfile.TemporaryDirectory(prefix="devflow-version-") as home:
        full = {"PATH": os.environ.get("PATH", os.defpath), "HOME": home, "LANG": "C.UTF-8"}
        full.update({k: v.replace("{home}", home) for k, v in (env or {}).items()})
        for value in full.values():
            if value.startswith(home):
                Path(value).mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, env=full, cwd=home,
                                  stdin=subprocess.DEVNULL, timeout=_VERSION_TIMEOUT,
                                  check=False)
            lines = [ln.strip() for ln in (done.stdout or done.stderr).splitlines() if ln.strip()]
            found = lines[0][:120] if done.returncode == 0 and lines else None
        except (OSError, subprocess.SubprocessError):
            found = None
    return found


# -- the command backend ----------------------------------------------------------------
class CommandBackend:
    name = "command"
    options_schema: Final = opts.schema({
        "argv": {**opts.ARGV, "minItems": 1, "prefixItems": [{"type": "string", "minLength": 1}],
                 "description": "the program (on PATH, or absolute) and its arguments; "
                                "placeholders such as {prompt_file} are whole arguments"},
        "stdin": {"enum": ["prompt", "none"],
                  "description": "prompt: the prompt file on standard input; none (the "
                                 "default): /dev/null"},
        "timeout": opts.DURATION,
        "version_argv": {**opts.ARGV, "minItems": 1,
                         "description": "an argv that prints the program's version"},
    }, required=("argv",))

    def check_options(self, options: Mapping[str, Any]) -> list[Problem]:
        return (opts.problems(self.options_schema, options)
                + check_argv(options.get("argv"), "argv")
                + check_argv(options.get("version_argv"), "version_argv")
                + check_timeout(options))

    def availability(self, persona: Persona) -> Availability:
        argv = list(persona.options.get("argv") or [])
        if not argv:
            return Availability(False, reason=f"persona {persona.ref} gives no argv")
        if "{model}" in argv and not persona.model:
            return Availability(False, reason=f"persona {persona.ref} uses {{model}} but names "
                                              f"no model")
        path = resolve(argv[0])
        if path is None:
            return Availability(False, reason=f"{argv[0]!r} (argv[0] of persona "
                                              f"{persona.ref}) is not an executable on PATH")
        version_argv = persona.options.get("version_argv")
        seen = None
        if version_argv:
            program = resolve(version_argv[0]) or version_argv[0]
            seen = version([program, *version_argv[1:]])
        return Availability(True, version=seen, details={"path": path})

    def command(self, task: Task, schemas: SchemaRegistry) -> Command:
        options = task.persona.options
        argv = expand(options["argv"], task)
        argv[0] = resolve(argv[0]) or argv[0]
        return Command(argv=argv, env=agent_env(task),
                       stdin_file=task.prompt_file if options.get("stdin") == "prompt" else None,
                       timeout=timeout_of(options), reads=(Path(argv[0]),))

    def progress(self, line: str) -> str | None:
        return None

    def outcome(self, task: Task, exit: Exit, stdout_log: Path, stderr_log: Path) -> Outcome:
        return Outcome()


# -- presets ----------------------------------------------------------------------------
#: the options every preset takes, beside its own
COMMON: Final[Mapping[str, Mapping[str, Any]]] = {
    "args": {**opts.ARGV, "description": "more arguments, where the preset's argv says ARGS "
                                         "(placeholders allowed)"},
    "bin": {"type": "string", "minLength": 1,
            "description": "the program to run instead of the one on PATH"},
    "timeout": opts.DURATION,
}


def preset_schema(own: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A preset's options schema: ``COMMON`` and its ``own`` options."""
    return opts.schema({**COMMON, **own})


class Preset:
    """A real CLI run through the command machinery; subclasses say how to drive it."""

    name: str = ""
    program: str = ""
    #: its options: ``COMMON`` and its own (``preset_schema``)
    options_schema: Mapping[str, Any] = {}
    #: variables for ``--version`` beside PATH and a throwaway HOME (``{home}`` is that HOME)
    VERSION_ENV: Mapping[str, str] = {}

    @property
    def bin_variable(self) -> str:
        return f"DEVFLOW_{self.program.upper()}_BIN"

    def check_options(self, options: Mapping[str, Any]) -> list[Problem]:
        return (opts.problems(self.options_schema, options)
                + check_argv(options.get("args"), "args") + check_timeout(options))

    def executable(self, persona: Persona) -> str:
        return str(persona.options.get("bin") or os.environ.get(self.bin_variable)
                   or self.program)

    def availability(self, persona: Persona) -> Availability:
        wanted = self.executable(persona)
        path = resolve(wanted)
        if path is None:
            return Availability(False, reason=(
                f"{wanted!r} (needed by persona {persona.ref}) is not on PATH; install it or "
                f"name it with options.bin or {self.bin_variable}"))
        return Availability(True, version=version([path, "--version"], self.VERSION_ENV),
                            details={"path": path})

    def command(self, task: Task, schemas: SchemaRegistry) -> Command:
        wanted = self.executable(task.persona)
        path = resolve(wanted)
        if path is None:
            raise DevflowError(Code.BACKEND_UNAVAILABLE,
                               f"{wanted!r} (needed by persona {task.persona.ref}) is not on "
                               f"PATH", hint=f"install it or set {self.bin_variable}")
        home = self.home(task)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        extra = expand(task.persona.options.get("args") or [], task)
        argv = [path, *self.arguments(task, home, extra)]
        env = agent_env(task)
        env.update({k: v for k, v in self.defaults(task, home).items()
                    if k not in task.persona.env_set})
        env.update(self.forced(task, home))
        return Command(argv=argv, env=env, stdin_file=self.stdin(task),
                       timeout=timeout_of(task.persona.options),
                       reads=(Path(path), *self.reads(task)))

    def home(self, task: Task) -> Path:
        """The CLI's own HOME, one per run and preset, kept across attempts (for resuming)."""
        base = task.home if task.home is not None else task.log_dir.parent / "home"
        return base / self.name

    def arguments(self, task: Task, home: Path, extra: list[str]) -> list[str]:
        raise NotImplementedError

    def defaults(self, task: Task, home: Path) -> dict[str, str]:
        """Variables a persona's ``env.set`` may override."""
        return {}

    def forced(self, task: Task, home: Path) -> dict[str, str]:
        """Variables devflow always sets (HOME and the CLI's state directories)."""
        return {"HOME": str(home)}

    def stdin(self, task: Task) -> Path | None:
        return task.prompt_file

    def reads(self, task: Task) -> tuple[Path, ...]:
        """Files outside the worktree the CLI reads, beside its program (for the sandbox)."""
        return ()

    def progress(self, line: str) -> str | None:
        return None

    def outcome(self, task: Task, exit: Exit, stdout_log: Path, stderr_log: Path) -> Outcome:
        return Outcome()


def prices_for(model: str | None, options: Mapping[str, Any]) -> Mapping[str, float] | None:
    """USD per million tokens (``input``, ``output``, ``cached_input``) for ``model``: the
    persona's ``prices`` option first, then devflow's configured ``prices``."""
    own = options.get("prices")
    if isinstance(own, Mapping) and own:
        return own
    return _configured_prices.get(model or "")


def cost(prices: Mapping[str, float] | None, tokens_in: int, tokens_out: int,
         cached_in: int = 0) -> float | None:
    if not prices:
        return None
    cached_price = float(prices.get("cached_input", prices.get("input", 0.0)))
    fresh = max(tokens_in - cached_in, 0)
    return round((fresh * float(prices.get("input", 0.0)) + cached_in * cached_price
                  + tokens_out * float(prices.get("output", 0.0))) / 1_000_000, 6)


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []

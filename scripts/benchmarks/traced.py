"""Run the ``devflow`` command with its time split by what it was doing (the gated section).

    python scripts/benchmarks/traced.py ARGS...      (DEVFLOW_BENCH_TRACE=FILE, and
                                                      DEVFLOW_BENCH_SPAWNED=monotonic ms)

The same as ``devflow ARGS...``, with wrappers that count wall time, each by the innermost
wrapped call it is spent in (per thread): imports, loading definitions, binding roles,
deciding, git, the engine's transactions, validation, prompts and report, the agent's
process. Modules are wrapped when something first imports them, so the command imports
what it would without the tracer. At the end it writes one JSON object to the trace
file: milliseconds per part, what was spent before the first agent started, when the
command's last call of the app returned (the rest, until the process has exited, is
output and exit), the process's own CPU time and each git process it ran.
"""

from __future__ import annotations

import builtins
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

BEGUN = time.monotonic() * 1000
_spent: dict[str, float] = {}
_local = threading.local()
_lock = threading.Lock()
_marks: dict[str, Any] = {}


def _stack() -> list[list[Any]]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _enter(part: str) -> None:
    _stack().append([part, time.monotonic() * 1000, 0.0])


def _leave() -> None:
    stack = _stack()
    part, started, inner = stack.pop()
    took = time.monotonic() * 1000 - started
    with _lock:
        _spent[part] = _spent.get(part, 0.0) + took - inner
    if stack:
        stack[-1][2] += took


def _wrap(fn: Callable[..., Any], part: str) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _enter(part)
        try:
            return fn(*args, **kwargs)
        finally:
            _leave()
    wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapped


def _wrap_async(fn: Callable[..., Any], part: str) -> Callable[..., Any]:
    """An awaited call's wall time; kept off the thread's stack (the event loop runs other
    tasks meanwhile), so it is only taken out of the rest."""
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic() * 1000
        if "agent_started" not in _marks:  # what was spent before the first agent started
            with _lock:
                _marks["agent_started"] = started
                _marks["spent_before_agent"] = dict(_spent)  # type: ignore[assignment]
        try:
            return await fn(*args, **kwargs)
        finally:
            with _lock:
                _spent[part] = _spent.get(part, 0.0) + time.monotonic() * 1000 - started
    return wrapped


def _wrap_app(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            _marks["app_returned"] = time.monotonic() * 1000
    return wrapped


#: module -> (attribute path, part); attributes missing in this version are skipped
WRAPS: dict[str, list[tuple[str, str]]] = {
    "devflow.catalog": [("_shelve", "definitions"), ("Catalog.load_persona_definition",
                                                     "definitions")],
    "devflow.engine.binding": [("bind", "binding")],
    "devflow.engine.control": [("decide", "decision")],
    "devflow.settings": [("Settings.load", "start-up")],
    "devflow.app": [("App.__init__", "start-up")],
    "devflow.backends.process": [("run", "agent")],
    # finer parts of the engine's share, shown under it
    "devflow.store.database": [("Database._run", "database")],
    "devflow.schemas": [("SchemaRegistry.from_dirs", "definitions"),
                        ("SchemaRegistry.validate", "validation")],
    "devflow.engine.prompt": [("compose", "prompt")],
    "devflow.report": [("compose", "report"), ("write", "report"),
                       ("markdown", "report")],
}
APP_VERBS = ("start", "drive", "view", "decide", "runs", "approvals", "approval")
_pending = dict(WRAPS)


def _patch(module_name: str) -> None:
    module = sys.modules[module_name]
    for path, part in _pending.pop(module_name):
        owner: Any = module
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        fn = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if fn is None:
            continue
        if isinstance(fn, classmethod):
            setattr(owner, name, classmethod(_wrap(fn.__func__, part)))
        elif part == "agent":
            setattr(owner, name, _wrap_async(fn, part))
        else:
            setattr(owner, name, _wrap(fn, part))
    if module_name == "devflow.app":
        for verb in APP_VERBS:
            setattr(module.App, verb, _wrap_app(getattr(module.App, verb)))


_real_import = builtins.__import__


def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
            level: int = 0) -> Any:
    _enter("start-up")
    try:
        return _real_import(name, globals, locals, fromlist, level)
    finally:
        _leave()
        if _pending:
            for module_name in [m for m in _pending if _loaded(m)]:
                _patch(module_name)


def _loaded(name: str) -> bool:
    """Whether module ``name`` is imported and done executing (not half-way in a cycle)."""
    module = sys.modules.get(name)
    return module is not None and not getattr(module.__spec__, "_initializing", False)


_real_run = subprocess.run
_git_calls: list[tuple[str, float]] = []


def _run(args: Any, *more: Any, **kwargs: Any) -> Any:
    """git's processes (devflow starts them all through subprocess.run)."""
    if isinstance(args, list | tuple) and args and args[0] == "git":
        _enter("git")
        started = time.monotonic() * 1000
        try:
            return _real_run(args, *more, **kwargs)
        finally:
            _leave()
            verb = next((a for a in args[1:] if not str(a).startswith("-")
                         and "=" not in str(a)), "?")
            _git_calls.append((str(verb), round(time.monotonic() * 1000 - started, 1)))
    return _real_run(args, *more, **kwargs)


def _write() -> None:
    spawned = float(os.environ.get("DEVFLOW_BENCH_SPAWNED", BEGUN))
    with _lock:
        spent = dict(_spent)
    spent["start-up"] = spent.get("start-up", 0.0) + BEGUN - spawned  # the interpreter
    usage = resource.getrusage(resource.RUSAGE_SELF)
    body = {"spent": spent, "spawned": spawned, "begun": BEGUN,
            "cpu": (usage.ru_utime + usage.ru_stime) * 1000, "git_calls": _git_calls,
            **_marks}
    with open(os.environ["DEVFLOW_BENCH_TRACE"], "w", encoding="utf-8") as out:
        json.dump(body, out)


def main() -> None:
    builtins.__import__ = _import
    subprocess.run = _run
    real_exit = os._exit

    def exit_now(code: int) -> None:  # a command that ends with os._exit still reports
        _write()
        real_exit(code)
    os._exit = exit_now
    try:
        from devflow.cli.main import main as devflow_main  # noqa: PLC0415 - traced from here
        devflow_main(sys.argv[1:])
    finally:
        _write()


if __name__ == "__main__":
    sys.path.pop(0)  # this directory: the command sees the modules it would see
    main()

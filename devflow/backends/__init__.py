"""Agent backends by name. ``get`` returns the backend a persona names.

A backend's module is imported when the backend is first asked for: a command that
runs no agent (reading runs, listing definitions) imports none of them, and a run
imports the ones its personas use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from devflow.errors import Code, DevflowError

if TYPE_CHECKING:
    from devflow.backends.base import Backend
    from devflow.definitions import Problem
    from devflow.memo import Memo

#: the backends devflow ships, by name
SHIPPED: Final = ("aider", "claude-code", "codex", "command", "scripted")
_BACKENDS: dict[str, Backend] = {}


def configure(*, prices: Mapping[str, Mapping[str, float]] | None = None,
              memo: Memo | None = None) -> None:
    """Settings the backends need from devflow's configuration (called by the app)."""
    from devflow.backends import command, process, sandbox  # noqa: PLC0415 - see the module doc
    command.configure(prices=prices, memo=memo)
    process.configure(memo=memo)
    sandbox.configure(memo=memo)


def register(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def names() -> list[str]:
    return sorted({*SHIPPED, *_BACKENDS})


def get(name: str) -> Backend:
    backend = _BACKENDS.get(name)
    if backend is None:
        backend = _shipped(name)
        if backend is None:
            raise DevflowError(Code.BACKEND_UNAVAILABLE, f"no backend {name!r} in this devflow",
                               hint=f"backends: {', '.join(names())}")
        _BACKENDS[name] = backend
    return backend


def _shipped(name: str) -> Backend | None:
    # one import per backend, where it is first needed (see the module doc)
    if name == "scripted":
        from devflow.backends.scripted import Scripted  # noqa: PLC0415
        return Scripted()
    if name == "command":
        from devflow.backends.command import CommandBackend  # noqa: PLC0415
        return CommandBackend()
    if name == "claude-code":
        from devflow.backends.claude_code import ClaudeCode  # noqa: PLC0415
        return ClaudeCode()
    if name == "codex":
        from devflow.backends.codex import Codex  # noqa: PLC0415
        return Codex()
    if name == "aider":
        from devflow.backends.aider import Aider  # noqa: PLC0415
        return Aider()
    return None


def check_options(name: str, options: Mapping[str, Any]) -> list[Problem]:
    """A persona's ``options`` checked by its backend: each problem at its place in the
    persona (``("options", "argv", 2)``); none for a backend devflow does not know (the
    persona's meta-schema names the backends)."""
    if name not in SHIPPED and name not in _BACKENDS:
        return []
    return get(name).check_options(options)


def check_scenario(name: str) -> str | None:
    """Why ``name`` is no scenario of the scripted backend, or None when it is one."""
    from devflow.backends import scripted  # noqa: PLC0415 - see the module doc
    return scripted.check_scenario(name)


def preload() -> None:
    """Import every shipped backend's module, making none (``devflow daemon``: one import
    for many commands; ``get`` still makes each backend where it is first needed)."""
    from devflow.backends import aider, claude_code, codex, command, scripted  # noqa: F401, PLC0415

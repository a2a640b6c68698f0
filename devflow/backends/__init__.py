"""Agent backends by name. ``get`` returns the backend a persona names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devflow.backends.aider import Aider
from devflow.backends.base import Backend
from devflow.backends.claude_code import ClaudeCode
from devflow.backends.codex import Codex
from devflow.backends.command import CommandBackend
from devflow.backends.command import configure as configure
from devflow.backends.scripted import Scripted
from devflow.errors import Code, DevflowError

_BACKENDS: dict[str, Backend] = {"scripted": Scripted()}


def register(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def names() -> list[str]:
    return sorted(_BACKENDS)


def get(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise DevflowError(Code.BACKEND_UNAVAILABLE, f"no backend {name!r} in this devflow",
                           hint=f"backends: {', '.join(names())}") from None


for _backend in (CommandBackend(), ClaudeCode(), Codex(), Aider()):
    register(_backend)


def check_options(name: str, options: Mapping[str, Any]) -> list[str]:
    backend = _BACKENDS.get(name)
    return backend.check_options(options) if backend else []

"""Agent backends by name. ``get`` returns the backend a persona names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devflow.backends.base import Backend
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


def check_options(name: str, options: Mapping[str, Any]) -> list[str]:
    backend = _BACKENDS.get(name)
    return backend.check_options(options) if backend else []

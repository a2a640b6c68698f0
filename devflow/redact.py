"""Secrets out of devflow's own records: events, stored argv, reports and logs.

A secret is the value of one of devflow's environment variables whose name looks
secret (``*TOKEN*``, ``*KEY*``, ``*SECRET*``, ``*PASSWORD*``, ``*CREDENTIAL*``), or
of a variable a persona hands its agent (``env.allow`` beyond the base variables,
and ``env.set``). Each occurrence is replaced by ``[redacted]``. Values shorter than
six characters are left alone: they would match everywhere and hide nothing. The
agents' own log files are kept as written (mode 0600).

The personas are those the runs use, as their bindings stored them when they started
(not the files as they are now, which may have changed since): the engine adds them
when it starts, drives or reports a run (``Redactor.add``), so a process redacts the
secrets of every run it writes about without loading the whole catalog.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

MASK: Final = "[redacted]"
SECRET_NAME: Final = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_MIN: Final = 6


class Redactor:
    """Replaces known secret values in strings and in nested JSON-like values."""

    def __init__(self, values: Callable[[], Iterable[str]]) -> None:
        self._source = values
        self._added: set[str] = set()

    def add(self, values: Iterable[str]) -> None:
        """More secrets, from now on (a run's personas)."""
        new = {v for v in values if len(v) >= _MIN} - self._added
        if new:
            self._added |= new
            self.__dict__.pop("_pattern", None)

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        values = sorted({v for v in self._source() if len(v) >= _MIN} | self._added, key=len,
                        reverse=True)
        return re.compile("|".join(re.escape(v) for v in values)) if values else None

    def text(self, value: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, value) if pattern is not None else value

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


def env_secrets(environ: Mapping[str, str]) -> list[str]:
    """The values of devflow's own secret-looking variables."""
    return [v for k, v in environ.items() if SECRET_NAME.search(k)]


def handed_on(environ: Mapping[str, str], allow: Iterable[str], values: Mapping[str, str],
              base: Iterable[str]) -> list[str]:
    """What a persona hands its agent beyond the ``base`` variables: the values of the
    variables ``allow`` names (``NAME`` or ``PREFIX*``) and the ``values`` it sets."""
    found: list[str] = []
    skip = set(base)
    for name in allow:
        if name.endswith("*"):
            found += [v for k, v in environ.items() if k.startswith(name[:-1]) and k not in skip]
        elif name in environ and name not in skip:
            found.append(environ[name])
    return found + list(values.values())


def persona_secrets(environ: Mapping[str, str], definition: Mapping[str, Any],
                    base: Iterable[str]) -> list[str]:
    """``handed_on`` for a persona's definition as a binding stored it (``env.allow``,
    ``env.set``); whatever is not shaped as a valid definition is passed over."""
    env = definition.get("env")
    if not isinstance(env, Mapping):
        return []
    allow = env.get("allow")
    values = env.get("set")
    return handed_on(environ, [str(a) for a in allow] if isinstance(allow, list) else [],
                     {str(k): str(v) for k, v in values.items()}
                     if isinstance(values, Mapping) else {}, base)

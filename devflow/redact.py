"""Secrets out of devflow's own records: events, stored argv, reports and logs.

A secret is the value of one of devflow's environment variables whose name looks
secret (``*TOKEN*``, ``*KEY*``, ``*SECRET*``, ``*PASSWORD*``, ``*CREDENTIAL*``), or
of a variable a persona hands its agent (``env.allow`` beyond the base variables,
and ``env.set``). Each occurrence is replaced by ``[redacted]``. Values shorter than
six characters are left alone: they would match everywhere and hide nothing. The
agents' own log files are kept as written (mode 0600).
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

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        values = sorted({v for v in self._source() if len(v) >= _MIN}, key=len, reverse=True)
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


def secret_values(environ: Mapping[str, str], persona_env: Iterable[tuple[Iterable[str],
                  Mapping[str, str]]], base: Iterable[str]) -> list[str]:
    """The secret values: devflow's own secret-looking variables, and what personas hand on."""
    found = [v for k, v in environ.items() if SECRET_NAME.search(k)]
    skip = set(base)
    for allow, values in persona_env:
        for name in allow:
            if name.endswith("*"):
                found += [v for k, v in environ.items()
                          if k.startswith(name[:-1]) and k not in skip]
            elif name in environ and name not in skip:
                found.append(environ[name])
        found += list(values.values())
    return found

"""Durations as people write them in templates and on the command line: ``90s``, ``30m``,
``24h``, ``1h30m``, ``2d``, ``500ms``. A bare number means seconds."""

from __future__ import annotations

import math
import re
from typing import Final

from devflow.errors import Code, DevflowError

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE: Final = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")


def parse_duration(text: str | float, *, field: str = "duration") -> float:
    """Seconds in ``text``; ``bad_duration`` when it is not a duration."""
    if isinstance(text, bool):
        raise _bad(str(text), field)
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise _bad(str(text), field)
        return float(text)
    spec = text.strip().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", spec):
        return float(spec)
    if not _WHOLE.match(spec):
        raise _bad(text, field)
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(spec))


def format_duration(seconds: float) -> str:
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f}ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _bad(text: str, field: str) -> DevflowError:
    return DevflowError(
        Code.BAD_DURATION, f"{field}: {text!r} is not a duration",
        hint="write a number with a unit: 500ms, 90s, 30m, 24h, 2d, or combined like 1h30m")

"""Cron expressions in a time zone: checked, and the times they name between two instants.

The evaluation is cronsim's (a small, typed, dependency-free library that walks the
calendar in local time and applies the zone's rules through ``zoneinfo``): a daily
``30 2 * * *`` in Europe/Berlin stays at 02:30 local time on both sides of a change
of the clocks; on the night the clocks go forward, when 02:30 does not exist, it
fires at 03:00, the first minute after the gap (as cron does); on the night they go
back it fires once, at the first 02:30. Times go out as UTC.

cronsim and zoneinfo's data are imported when a schedule is checked or evaluated,
not with this module: read commands never load them.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Final

#: how many times one call returns at most (a schedule evaluated after a long outage
#: is caught up in steps of this many ticks)
MAX_TICKS: Final = 500


def check(expression: str) -> str | None:
    """Why ``expression`` is not a five-field cron expression, or None."""
    from cronsim import CronSim, CronSimError  # noqa: PLC0415 - see the module doc
    fields = expression.split()
    if len(fields) != 5:
        return (f"{expression!r} has {len(fields)} fields; write five: minute hour "
                "day-of-month month day-of-week, e.g. '30 2 * * *'")
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        return f"{expression!r}: {exc}"
    return None


def zone(name: str) -> tzinfo | None:
    """The time zone ``name`` (an IANA name such as ``Europe/Berlin``, or ``UTC``), or None."""
    import zoneinfo  # noqa: PLC0415 - see the module doc
    if not name or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def between(expression: str, zone_name: str, after: datetime, until: datetime,
            limit: int = MAX_TICKS) -> list[datetime]:
    """The times the expression names in ``(after, until]``, oldest first, in UTC, at most
    ``limit`` of them."""
    from cronsim import CronSim  # noqa: PLC0415 - see the module doc
    local = zone(zone_name)
    if local is None:
        raise ValueError(f"unknown time zone {zone_name!r}")
    found: list[datetime] = []
    for moment in CronSim(expression, after.astimezone(local)):
        at = moment.astimezone(UTC)
        if at > until or len(found) >= limit:
            break
        if at > after:  # cronsim starts at the next minute; a second's rounding aside
            found.append(at)
    return found


def next_after(expression: str, zone_name: str, after: datetime) -> datetime | None:
    """The first time the expression names after ``after``, in UTC (None: none in 50 years)."""
    from cronsim import CronSim  # noqa: PLC0415 - see the module doc
    local = zone(zone_name)
    if local is None:
        raise ValueError(f"unknown time zone {zone_name!r}")
    for moment in CronSim(expression, after.astimezone(local)):
        at = moment.astimezone(UTC)
        if at > after:
            return at
    return None

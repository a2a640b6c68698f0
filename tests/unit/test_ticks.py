"""Ticks decided without a database: catchup and overlap policies, jitter, daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from devflow import cron, ticks
from devflow.triggerdefs import Schedule, Trigger

T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)


def trigger(cron_expr: str = "0 * * * *", **schedule: Any) -> Trigger:
    return Trigger(name="hourly", description="", template="quick@1", repo="/srv/repo",
                   base="main", requirements="r {scheduled_at}", bindings=MappingProxyType({}),
                   schedule=Schedule(cron=cron_expr, **schedule), webhook=None, definition={},
                   hash="h")


def state(checked_until: datetime = T0, *, paused: bool = False) -> ticks.TriggerState:
    return ticks.TriggerState(name="hourly", paused=paused, checked_until=checked_until)


def tick(at: datetime, tick_state: str, *, claimed_until: datetime | None = None,
         kind: str = "schedule", created_at: datetime | None = None) -> ticks.Tick:
    return ticks.Tick(trigger="hourly", scheduled_at=at, kind=kind, state=tick_state,
                      run_id=None, reason=None, claimed_until=claimed_until,
                      created_at=created_at or at, updated_at=created_at or at)


def states_of(plan: ticks.Plan) -> list[tuple[int, str]]:
    """(hour of the tick, its new state), in the plan's order."""
    return [(d.scheduled_at.hour, d.state) for d in plan.decided]


# -- three ticks missed (evaluated 3h30 late): 0, 1 or 3 started, by catchup ---------------
@pytest.mark.parametrize(("catchup", "started"), [("skip", []), ("latest", [12]),
                                                  ("all", [10, 11, 12])])
def test_three_missed_ticks_start_none_the_latest_or_all(catchup: str,
                                                         started: list[int]) -> None:
    now = T0 + timedelta(hours=3, minutes=30)
    plan = ticks.plan(trigger(catchup=catchup, overlap="allow"), state(), [], [], now)
    assert [h for h, s in states_of(plan) if s == ticks.PENDING] == started
    assert sorted(h for h, s in states_of(plan) if s == ticks.MISSED) == \
        sorted({10, 11, 12} - set(started))
    assert plan.checked_until == T0 + timedelta(hours=3)


def test_a_tick_within_grace_is_on_time_and_supersedes_the_missed_ones() -> None:
    now = T0 + timedelta(hours=3, minutes=2)  # 12:00 is 2 minutes old: on time
    plan = ticks.plan(trigger(catchup="latest"), state(), [], [], now)
    assert states_of(plan) == [(10, ticks.MISSED), (11, ticks.MISSED), (12, ticks.PENDING)]


def test_nothing_is_due_before_its_time_and_a_paused_trigger_decides_nothing() -> None:
    assert ticks.plan(trigger(), state(), [], [], T0 + timedelta(minutes=59)).decided == []
    paused = ticks.plan(trigger(), state(paused=True), [], [], T0 + timedelta(hours=5))
    assert paused.decided == [] and paused.checked_until == T0


# -- overlap with the trigger's active run -------------------------------------------------
def test_overlap_skip_drops_a_tick_while_the_run_is_active() -> None:
    plan = ticks.plan(trigger(overlap="skip"), state(), [], ["run-1"], T0 + timedelta(hours=1))
    assert states_of(plan) == [(10, ticks.SKIPPED)]


def test_overlap_buffer_one_keeps_one_tick_and_starts_it_when_the_run_ended() -> None:
    t = trigger(overlap="buffer_one", catchup="all")
    plan = ticks.plan(t, state(), [], ["run-1"], T0 + timedelta(hours=2, minutes=1))
    assert states_of(plan) == [(10, ticks.BUFFERED), (11, ticks.SKIPPED)]
    buffered = tick(T0 + timedelta(hours=1), ticks.BUFFERED)
    later = ticks.plan(t, state(T0 + timedelta(hours=2)), [buffered], [],
                       T0 + timedelta(hours=2, minutes=5))
    assert [(d.scheduled_at.hour, d.state, d.new) for d in later.decided] == \
        [(10, ticks.PENDING, False)]


def test_overlap_allow_starts_beside_the_active_run() -> None:
    plan = ticks.plan(trigger(overlap="allow"), state(), [], ["run-1"], T0 + timedelta(hours=1))
    assert states_of(plan) == [(10, ticks.PENDING)]


def test_a_pending_tick_claimed_by_another_counts_as_active_and_is_retried_once_free() -> None:
    now = T0 + timedelta(hours=1)
    pending = tick(T0, ticks.PENDING, claimed_until=now + timedelta(minutes=1), created_at=now)
    plan = ticks.plan(trigger(overlap="skip"), state(), [pending], [], now)
    assert states_of(plan) == [(10, ticks.SKIPPED)]  # 09:00 is being started by someone
    freed = tick(T0, ticks.PENDING, claimed_until=None, created_at=now)
    retry = ticks.plan(trigger(), state(now), [freed], [], now + timedelta(minutes=1))
    assert [(d.state, d.new) for d in retry.decided] == [(ticks.PENDING, False)]
    gone = ticks.plan(trigger(), state(now), [freed], [], now + timedelta(minutes=6))
    assert [d.state for d in gone.decided] == [ticks.FAILED]  # past its grace


# -- jitter --------------------------------------------------------------------------------
def test_jitter_is_the_same_everywhere_below_its_bound_and_delays_the_tick() -> None:
    t = trigger(jitter=600.0, grace=900.0)
    offsets = {ticks.offset(t, T0 + timedelta(hours=h)) for h in range(24)}
    assert all(timedelta(0) <= o < timedelta(minutes=10) for o in offsets)
    assert len(offsets) > 1
    first = T0 + timedelta(hours=1)
    assert ticks.offset(t, first) == ticks.offset(t, first)
    due = ticks.due_at(t, first)
    assert ticks.plan(t, state(), [], [], due - timedelta(seconds=1)).decided == []
    assert states_of(ticks.plan(t, state(), [], [], due)) == [(10, ticks.PENDING)]


# -- time zones ----------------------------------------------------------------------------
def test_a_daily_local_time_is_kept_across_the_march_change_in_berlin() -> None:
    start = datetime(2027, 3, 25, 12, 0, tzinfo=UTC)
    found = cron.between("30 2 * * *", "Europe/Berlin", start, start + timedelta(days=5))
    berlin = cron.zone("Europe/Berlin")
    local = [f.astimezone(berlin).strftime("%m-%d %H:%M %Z") for f in found]
    # 02:30 does not exist on 28 March 2027: that night's tick is at 03:00, the first
    # minute after the gap; every other night it is 02:30, in winter and in summer time
    assert local == ["03-26 02:30 CET", "03-27 02:30 CET", "03-28 03:00 CEST",
                     "03-29 02:30 CEST", "03-30 02:30 CEST"]
    assert [f.strftime("%H:%M") for f in found] == ["01:30", "01:30", "01:00", "00:30", "00:30"]


def test_the_october_change_fires_the_repeated_local_time_once() -> None:
    start = datetime(2027, 10, 30, 12, 0, tzinfo=UTC)
    found = cron.between("30 2 * * *", "Europe/Berlin", start, start + timedelta(days=2))
    assert [f.isoformat() for f in found] == ["2027-10-31T00:30:00+00:00",
                                              "2027-11-01T01:30:00+00:00"]


def test_fields_give_the_local_time_of_the_tick() -> None:
    t = trigger("30 2 * * *", timezone="Europe/Berlin")
    fields = ticks.fields(t, datetime(2027, 3, 29, 0, 30, tzinfo=UTC), "schedule", None)
    assert fields["scheduled_at"] == "2027-03-29T02:30:00+02:00"
    assert fields["date"] == "2027-03-29" and fields["trigger"] == "hourly"


def test_cron_checks_say_what_is_wrong() -> None:
    assert cron.check("30 2 * * *") is None
    assert "five" in (cron.check("30 2 * *") or "")
    assert "minute" in (cron.check("61 2 * * *") or "")
    assert cron.zone("Europe/Berlin") is not None
    assert cron.zone("Mars/Olympus") is None and cron.zone("../etc/passwd") is None


def test_the_lock_is_taken_only_when_something_may_be_decided() -> None:
    t, now = trigger(), T0 + timedelta(minutes=30)
    assert ticks.anything_due(t, None, [], now)  # first sight: its state is made
    assert not ticks.anything_due(t, state(), [], now)
    assert ticks.anything_due(t, state(), [], T0 + timedelta(hours=1))
    assert not ticks.anything_due(t, state(paused=True), [], T0 + timedelta(hours=5))
    starting = tick(T0, ticks.PENDING, claimed_until=now + timedelta(minutes=1))
    assert not ticks.anything_due(t, state(), [starting], now)  # another is starting it
    assert ticks.anything_due(t, state(), [starting], now + timedelta(minutes=2))
    assert ticks.anything_due(t, state(), [tick(T0, ticks.BUFFERED)], now)

"""Durations as people write them: parsed to seconds, formatted back, bad ones refused."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devflow.durations import format_duration, parse_duration
from devflow.errors import Code, DevflowError


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5),
    ("90s", 90.0),
    ("30m", 1800.0),
    ("24h", 86400.0),
    ("2d", 172800.0),
    ("1h30m", 5400.0),
    ("1d2h3m4s", 86400 + 7200 + 180 + 4),
    ("1.5h", 5400.0),
    ("0.25s", 0.25),
    ("45", 45.0),          # a bare number means seconds
    ("2.5", 2.5),
    (" 30m ", 1800.0),     # surrounding blanks
    ("1h 30m", 5400.0),    # blanks between parts
    (120, 120.0),          # YAML gives numbers as numbers
    (1.5, 1.5),
    (0, 0.0),
])
def test_parse(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "", " ", "soon", "m", "30 minutes", "30M", "1h30", "h1", "-5m", "-5",
    "1e3", ".5s", "5.", "30x", "1w", "30m!", "1,5h", "P1D",
])
def test_bad_text_is_bad_duration(text: str) -> None:
    with pytest.raises(DevflowError) as caught:
        parse_duration(text, field="timeout")
    error = caught.value
    assert error.code is Code.BAD_DURATION
    assert error.exit_code == 2
    assert error.message.startswith("timeout: ")
    assert repr(text) in error.message
    assert "30m" in error.hint


@pytest.mark.parametrize("value", [-1, -0.5, True, False])
def test_bad_numbers_are_bad_duration(value: float) -> None:
    with pytest.raises(DevflowError) as caught:
        parse_duration(value)
    assert caught.value.code is Code.BAD_DURATION


def test_nan_is_not_a_duration() -> None:
    with pytest.raises(DevflowError) as caught:
        parse_duration(math.nan)
    assert caught.value.code is Code.BAD_DURATION


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0ms"),
    (0.25, "250ms"),
    (1, "1.0s"),
    (12.34, "12.3s"),
    (60, "1m00s"),
    (90, "1m30s"),
    (3599, "59m59s"),
    (3600, "1h00m"),
    (5400, "1h30m"),
    (90061, "25h01m"),
])
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_never_shows_a_unit_overflow() -> None:
    assert format_duration(59.99) in ("1m00s", "59.9s")
    assert format_duration(0.9996) in ("1.0s", "999ms")


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=10 * 86400))
def test_format_reads_back_to_the_same_seconds(seconds: int) -> None:
    text = format_duration(seconds)
    assert re.fullmatch(r"\d+(ms|\.\ds|m\d\ds|h\d\dm)", text), text
    back = parse_duration(text)
    # hours-and-minutes output drops the seconds; everything shorter is exact
    expected = seconds - seconds % 60 if seconds >= 3600 else seconds
    assert back == pytest.approx(expected)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from(["ms", "s", "m", "h", "d"])),
                min_size=1, max_size=4))
def test_parts_add_up(parts: list[tuple[int, str]]) -> None:
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * unit[u] for n, u in parts))

"""The suite hands its longest tests out first (tests/scheduling.py, see scripts/test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tests_given_a_long_timeout_then_slow_ones_come_first() -> None:
    # Named fast file first: the order pytest would run them in without the hook.
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/unit/test_jsontext.py", "tests/acceptance/test_crashes.py"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300).stdout
    ids = [line for line in listed.splitlines() if "::" in line]
    crashes = [i for i, name in enumerate(ids) if "test_crashes.py" in name]
    fast = [i for i, name in enumerate(ids) if "test_jsontext.py" in name]
    assert crashes and fast, listed
    assert "test_chaos_fifty_runs" in ids[0] and "eight_processes" in ids[1], ids[:2]
    assert max(crashes) < min(fast), "a slow test is handed out after a fast one"

"""How the suite's tests are shared between pytest-xdist's workers (hooks of tests/conftest.py):
the order they are handed out in, the longest first, and how busy each worker was.

``scripts/test`` runs pytest-xdist with ``--dist worksteal``: each worker starts with half
of the list, in this order, and a worker that runs out takes the not yet started half of
the other's rest, from its end. Long tests first leave short ones for the end, where one
worker must not still be at a two-minute test while the other has nothing left to take.
What is long is read from the markers the tests already carry: a ``timeout`` above the
default (the chaos and many-process tests), then ``slow``. The sort is stable, so within
each group the tests keep the order pytest collected them in.
"""

from __future__ import annotations

from typing import Any

import pytest


def _rank(item: pytest.Item) -> int:
    """0 for a test given a longer timeout than the default, 1 for a slow one, 2 else."""
    timeout = item.get_closest_marker("timeout")
    default = float(item.config.getini("timeout") or 0)
    if timeout is not None and timeout.args and float(timeout.args[0]) > default:
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def longest_first(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)


def worker_summary(terminalreporter: Any) -> None:
    """Under xdist, each worker's tests, the seconds they took (setup, call and teardown),
    and how long before the last test ended its own last one did: a worker that
    finished early waited for the other (what the order and worksteal are for)."""
    busy: dict[str, list[float]] = {}  # worker -> [tests, seconds, last end]
    for reports in terminalreporter.stats.values():
        for r in reports:
            node = getattr(r, "node", None)
            if node is None or not hasattr(r, "duration") or not hasattr(r, "stop"):
                continue
            seen = busy.setdefault(node.gateway.id, [0, 0.0, 0.0])
            seen[0] += r.when == "call"
            seen[1] += r.duration
            seen[2] = max(seen[2], r.stop)
    if not busy:
        return
    end = max(seen[2] for seen in busy.values())
    terminalreporter.section("workers")
    for worker, (tests, seconds, last) in sorted(busy.items()):
        terminalreporter.write_line(f"{worker}: {tests:.0f} tests, {seconds:.0f} s of tests, "
                                    f"done {end - last:.0f} s before the last")

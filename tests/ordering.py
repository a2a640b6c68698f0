"""The order tests are handed out in: the longest first (a hook of tests/conftest.py).

``scripts/test`` runs pytest-xdist with ``--dist worksteal``: each worker starts with half
of the list, in this order, and a worker that runs out takes the not yet started half of
the other's rest, from its end. Long tests first leave short ones for the end, where one
worker must not still be at a two-minute test while the other has nothing left to take.
What is long is read from the markers the tests already carry: a ``timeout`` above the
default (the chaos and many-process tests), then ``slow``. The sort is stable, so within
each group the tests keep the order pytest collected them in.
"""

from __future__ import annotations

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

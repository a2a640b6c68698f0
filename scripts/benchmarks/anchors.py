"""The anchors: what a plain database commit and a plain ``git worktree add`` cost here."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from common import Figure, Report, Stat, repeat, timed
from sqlmodel import Field, Session, SQLModel

from devflow.store import Database


class BenchAnchor(SQLModel, table=True):
    __tablename__ = "bench_anchor"
    id: int | None = Field(default=None, primary_key=True)
    note: str


class SessionCommit:
    """One small insert and commit through a SQLModel session, on devflow's own engine
    set-up: the anchor of the engine and decision ratios.

    A section takes its samples between its own (A B A B), so that the anchor and the
    figure it divides share the machine's minutes: an fsync's cost drifts by half within
    minutes here, and an anchor taken before the sections would not.
    """

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        BenchAnchor.__table__.create(self.db.engine, checkfirst=True)  # type: ignore[attr-defined]
        self.once()

    def once(self) -> None:
        with Session(self.db.engine) as session:
            session.add(BenchAnchor(note="x"))
            session.commit()

    def sample(self, n: int) -> list[float]:
        return repeat(self.once, n)

    def close(self) -> None:
        self.db.dispose()


def cpu(report: Report, when: str) -> None:
    """The speed of the machine's CPU at the moment, for reading the ratios.

    The anchors (a commit, a worktree) wait on the disk; devflow's own cost per phase
    is mostly Python on the CPU. On a shared virtual machine the two drift apart, so a
    table says how fast the CPU was while it was measured: one million iterations of
    a pure-Python loop (35 to 38 ms on the Xeon host docs/performance.md describes, 42
    to 77 ms on the EPYC one), and which CPU it was.
    """
    def spin() -> int:
        total = 0
        for i in range(1_000_000):
            total += i * i
        return total
    report.add(Figure("machine", f"pure-Python loop, 10^6 iterations ({when})", "ms",
                      Stat.of([timed(spin) for _ in range(7)]),
                      note=f"CPU speed during this run ({cpu_name()}, {os.cpu_count()} "
                           f"cores); engine figures scale with it"))


def cpu_name() -> str:
    """The CPU's model name as the machine reports it (a virtual machine's host varies)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

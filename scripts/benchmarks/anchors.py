"""The anchors: what a plain database commit and a plain ``git worktree add`` cost here."""

from __future__ import annotations

from common import Stat, repeat
from sqlmodel import Field, Session, SQLModel

from devflow.store import Database


class BenchAnchor(SQLModel, table=True):
    __tablename__ = "bench_anchor"
    id: int | None = Field(default=None, primary_key=True)
    note: str


def session_commit(url: str, n: int = 300) -> Stat:
    """One small insert and commit through a SQLModel session, on devflow's own engine set-up."""
    db = Database(url)
    try:
        BenchAnchor.__table__.create(db.engine, checkfirst=True)  # type: ignore[attr-defined]

        def once() -> None:
            with Session(db.engine) as session:
                session.add(BenchAnchor(note="x"))
                session.commit()
        once()
        return Stat.of(repeat(once, n))
    finally:
        db.dispose()

"""Database set-up and transactions, the only place that knows the two dialects apart.

SQLite (the embedded default): WAL, ``synchronous=FULL``, foreign keys on, a long
``busy_timeout``, and every write transaction opened with ``BEGIN IMMEDIATE`` so
that writers queue at the start instead of failing at their first write.
PostgreSQL: a run is locked with ``SELECT … FOR UPDATE``; reads run without a
transaction (autocommit: under READ COMMITTED each statement has its own snapshot
anyway), which saves the BEGIN and COMMIT round trips. The pool does not ping a
connection before lending it: one that died while pooled fails its first statement,
which invalidates the pool, and the transaction runs again (below).

``write(fn)`` runs ``fn(connection)`` in one transaction and commits. A transient
failure before the COMMIT is sent (in ``fn``: SQLite busy past its timeout, a
PostgreSQL connection that died) runs ``fn`` again on a fresh connection; a failure
during the COMMIT itself is not retried, because it may have landed. The store works
with SQLAlchemy Core connections only: no ORM session, nothing of ``sqlalchemy.orm``
imported (a read command's start-up is mostly imports; docs/performance.md).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError

from devflow import logs
from devflow.errors import Code, DevflowError

T = TypeVar("T")
log = logs.get_logger("devflow.store")

_SQLITE_BUSY: Final = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_RETRIES: Final = 8


class Database:
    """An engine, its dialect's quirks, and transactions with retries."""

    def __init__(self, url: str, *, pool_size: int = 8, busy_timeout_ms: int = 60_000) -> None:
        self.url = url
        self.dialect = sa.engine.make_url(url).get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise DevflowError(Code.CONFIG_INVALID, f"unsupported database URL {url!r}",
                               hint="use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        if self.dialect == "sqlite":
            self.engine = sa.create_engine(url, poolclass=sa.pool.QueuePool,
                                           pool_size=pool_size, max_overflow=pool_size,
                                           connect_args={"check_same_thread": False,
                                                         "timeout": busy_timeout_ms / 1000})
            _configure_sqlite(self.engine, busy_timeout_ms)
        else:
            self.engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                           pool_timeout=60)
        self.pool_size = pool_size
        self._local = threading.local()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def connection(self, *, write: bool = False) -> Iterator[sa.Connection]:
        """A connection in a transaction begun as ``write`` says (no retries, no commit:
        for tests and tools that look at the transaction itself)."""
        with self.engine.connect() as conn:
            self._begin(conn, write)
            yield conn

    def _begin(self, conn: sa.Connection, write: bool) -> None:
        """Begin the transaction (so that a failure to connect or begin happens here)."""
        if self.is_sqlite:
            conn.execution_options(devflow_immediate=write)
        elif not write:
            # Under READ COMMITTED each statement sees its own snapshot anyway, so a
            # read needs no transaction: no BEGIN and COMMIT round trips.
            conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.begin()

    def read(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` in a read transaction (retried on transient errors)."""
        return self._run(fn, write=False)

    def write(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` in one write transaction and commit it."""
        return self._run(fn, write=True)

    def _run(self, fn: Callable[[sa.Connection], T], *, write: bool) -> T:
        delay = 0.05
        for attempt in range(_RETRIES):
            failed, result = self._attempt(fn, write, last=attempt + 1 == _RETRIES)
            if failed is None:
                return result  # type: ignore[return-value]  # set whenever nothing failed
            log.warning("database_retry", attempt=attempt + 1, error=type(failed.orig).__name__)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, fn: Callable[[sa.Connection], T], write: bool,
                 last: bool) -> tuple[DBAPIError | None, T | None]:
        """One try of a transaction: (None, its result), or (the error, None) when it
        failed in a way worth another try."""
        conn: sa.Connection | None = None
        try:
            try:
                # connecting is inside: a server that refuses is retried like the rest
                conn = self.engine.connect()
                self._begin(conn, write)
                result = fn(conn)
            except DBAPIError as exc:
                _rollback(conn)
                if not last and self._transient(exc):
                    return exc, None
                raise self.translate(exc) from exc
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.commit()
            except DBAPIError as exc:
                # A read changed nothing: run it again. A write may or may not have
                # landed: never run it twice.
                if not write and not last and self._transient(exc):
                    return exc, None
                raise self.translate(exc) from exc
            return None, result
        finally:
            if conn is not None:
                conn.close()

    def _transient(self, exc: DBAPIError) -> bool:
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        if isinstance(orig, sqlite3.OperationalError):
            return getattr(orig, "sqlite_errorcode", None) in _SQLITE_BUSY
        sqlstate = getattr(orig, "sqlstate", None) or ""
        # serialization failure, deadlock, and the connection-exception class (08…)
        return isinstance(exc, OperationalError) and (
            sqlstate in ("40001", "40P01") or sqlstate.startswith("08") or not sqlstate)

    def translate(self, exc: DBAPIError) -> DevflowError:
        return DevflowError(Code.DATABASE_ERROR, f"the database failed: {type(exc.orig).__name__}: "
                            f"{str(exc.orig).strip().splitlines()[0] if str(exc.orig) else ''}",
                            hint="check that the database is reachable (DEVFLOW_DATABASE_URL) "
                                 "and run the command again")

    def lock_run_query(self, stmt: Any, of: Any = None) -> Any:
        """Row-lock a ``select`` of a run (the rows of ``of``, when it joins others: only
        locked rows are read again at their latest version after waiting for the lock);
        SQLite's immediate transaction already serializes."""
        return stmt if self.is_sqlite else stmt.with_for_update(of=of)

    def insert(self, table: sa.Table) -> Any:
        """The dialect's own ``insert`` of ``table`` (it has ``on_conflict_do_nothing``);
        the dialect's module imported here, so a process on SQLite never loads
        PostgreSQL's."""
        if self.is_sqlite:
            from sqlalchemy.dialects import sqlite  # noqa: PLC0415 - see the docstring
            return sqlite.insert(table)
        from sqlalchemy.dialects import postgresql  # noqa: PLC0415 - as above
        return postgresql.insert(table)

    def serialize(self, conn: sa.Connection, name: str) -> None:
        """Serialize transactions that use ``name`` (e.g. run starts) until the commit."""
        if not self.is_sqlite:
            key = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "big", signed=True)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite database URL (any driver: ``sqlite://``, ``sqlite+pysqlite://``);
    None for another database or one in memory."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def _configure_sqlite(engine: sa.Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("devflow_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _rollback(conn: sa.Connection | None) -> None:
    """Roll back what the transaction did; a connection that died is simply let go."""
    if conn is None:
        return
    try:
        conn.rollback()
    except DBAPIError:
        conn.invalidate()

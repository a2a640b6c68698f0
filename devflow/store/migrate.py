"""Schema migrations: upgrade, current revision, and the embedded database's self-upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from devflow.errors import Code, DevflowError
from devflow.store.database import Database
from devflow.store.migrations import HEAD

HEAD_REVISION: Final = HEAD

if TYPE_CHECKING:
    import filelock
    from alembic.config import Config

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
# Alembic (with mako and pygments) is imported only to migrate: reading the current
# revision is one query, and every devflow command starts by doing it.


def _config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config  # noqa: PLC0415 - see the note on MIGRATIONS
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - see the note on MIGRATIONS
    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def current(db: Database) -> str | None:
    """The database's revision (None when it was never migrated), in one query."""
    try:
        with db.engine.connect() as conn:
            return conn.execute(_CURRENT).scalar()
    except DBAPIError as exc:
        if _no_table(exc):
            return None
        raise db.translate(exc) from exc


_CURRENT: Final = sa.text("SELECT version_num FROM alembic_version")


def _no_table(exc: DBAPIError) -> bool:
    """Whether reading ``alembic_version`` failed because the table is not there: on
    PostgreSQL its SQLSTATE says so (42P01, undefined_table); SQLite gives the generic
    SQLITE_ERROR, which on this fixed, valid statement can only mean the same."""
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR
    return getattr(orig, "sqlstate", None) == "42P01"


def upgrade(db: Database, revision: str = "head") -> str | None:
    if db.is_sqlite:
        with _sqlite_lock(db):
            return _upgrade(db, revision)
    return _upgrade(db, revision)


def downgrade(db: Database, revision: str) -> str | None:
    from alembic import command  # noqa: PLC0415 - see the note on MIGRATIONS
    with db.engine.connect().execution_options(devflow_immediate=True) as conn, conn.begin():
        command.downgrade(_config(conn), revision)
    return current(db)


def _upgrade(db: Database, revision: str) -> str | None:
    from alembic import command  # noqa: PLC0415 - see the note on MIGRATIONS
    # On SQLite the "begin" listener makes this BEGIN IMMEDIATE: one migrator at a time.
    with db.engine.connect().execution_options(devflow_immediate=True) as conn, conn.begin():
        command.upgrade(_config(conn), revision)
    return current(db)


def _sqlite_lock(db: Database) -> filelock.FileLock:
    import filelock  # noqa: PLC0415 - only to migrate
    path = sa.engine.make_url(db.url).database
    if not path or path == ":memory:":
        return filelock.FileLock("/tmp/devflow-memory-db.lock")  # noqa: S108 - tests only
    return filelock.FileLock(f"{path}.migrate.lock", timeout=120)


def ensure_current(db: Database) -> None:
    """Bring the embedded SQLite database up to date; refuse an out-of-date PostgreSQL."""
    revision = current(db)
    if revision == HEAD:
        return
    if db.is_sqlite:
        upgrade(db)
        return
    raise DevflowError(
        Code.DATABASE_NOT_MIGRATED,
        f"the database is at revision {revision or 'none'}, devflow needs {HEAD}",
        hint="run `devflow db upgrade` once against this database")

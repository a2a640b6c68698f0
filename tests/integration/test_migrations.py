"""Migrations on both databases: one head, models and migrations agree, upgrade from empty,
downgrade and upgrade again over data, and the embedded database's self-upgrade."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from devflow import model
from devflow.catalog import Catalog, Dirs
from devflow.errors import Code, DevflowError
from devflow.store import Database, Limits, Store, migrate
from devflow.store.migrations import HEAD
from devflow.store.tables import METADATA, PHASE
from tests.conftest import _pg_admin, pg_url_for
from tests.integration.test_store_properties import new_run

#: Every table of the models; DESIGN.md §1's concepts are among them.
TABLES = set(METADATA.tables)
assert {"definition", "run", "run_binding", "run_phase", "artifact", "approval_request",
        "approval_decision", "run_event", "agent_invocation", "worker"} <= TABLES


def _empty_pg(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    request.getfixturevalue("pg_template")  # skips (or fails in CI) without a server
    name = f"devflow_empty_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name, pg_url_for(name)
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    for _name, url in _empty_pg(request):
        yield url


@pytest.fixture
def empty_pg(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """An empty PostgreSQL database: (name, url)."""
    yield from _empty_pg(request)


def _pg_connections(name: str) -> int:
    with _pg_admin() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           (name,)).fetchone()
    assert row is not None
    return int(row[0])


def _dispose_engines_in(exc: BaseException) -> None:
    """Close an engine a failed Store.open might have left behind, so that a regression shows
    as the failing assertion of the test below, not as a ResourceWarning at exit."""
    tb = exc.__traceback__
    while tb is not None:
        db = tb.tb_frame.f_locals.get("db")
        if isinstance(db, Database):
            db.dispose()
        tb = tb.tb_next


def _diffs(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, METADATA))


def _tables_of(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names()) - {"alembic_version"}


def _store_a_run(url: str, run_id: str) -> None:
    store = Store.open(url, migrate_now=False)
    try:
        catalog = Catalog(Dirs.with_builtins())
        store.runs.create(new_run(catalog.template("development@1"), catalog, run_id), Limits())
        store.registry.register([("template", "development", "1", "h" * 64, {"x": 1})],
                                store.clock())
    finally:
        store.close()


def test_there_is_one_head_and_head_names_it() -> None:
    script = ScriptDirectory.from_config(migrate._config())
    heads = script.get_heads()
    assert heads == [HEAD]
    assert migrate.head() == HEAD == migrate.HEAD_REVISION
    # every revision chains back to the base, without branches
    revisions = list(script.walk_revisions())
    assert revisions[-1].down_revision is None
    assert all(not r.is_merge_point for r in revisions)


def test_models_and_migrations_agree(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert migrate.current(db) == HEAD
        assert _diffs(db) == []
        assert _tables_of(db) == TABLES
    finally:
        db.dispose()


def test_the_hot_queries_have_their_indexes(db_url: str) -> None:
    db = Database(db_url)
    try:
        inspector = sa.inspect(db.engine)

        def indexed(table: str) -> set[tuple[str, ...]]:
            found = {tuple(i["column_names"]) for i in inspector.get_indexes(table)}
            found |= {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
            return found

        assert ("state",) in indexed("run")
        assert ("lease_expires_at",) in indexed("run")
        assert ("run_id", "seq") in indexed("run_event")
        assert ("idem_key",) in indexed("run_event")
        assert any(cols[0] == "state" for cols in indexed("approval_request"))
        assert ("approval_id", "client_token") in indexed("approval_decision")
        assert ("heartbeat_at",) in indexed("worker")
    finally:
        db.dispose()


def test_upgrade_from_empty(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        assert migrate.current(db) is None
        assert _tables_of(db) == set()
        assert migrate.upgrade(db) == HEAD
        assert migrate.current(db) == HEAD
        assert _tables_of(db) == TABLES
        assert _diffs(db) == []
        assert migrate.upgrade(db) == HEAD  # again: nothing to do, no error
    finally:
        db.dispose()


def test_downgrade_to_base_and_upgrade_again_over_a_run(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        migrate.upgrade(db)
        _store_a_run(empty_url, "mig-1")
        with db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM run_event")).scalar_one() == 2
        assert migrate.downgrade(db, "base") is None
        assert _tables_of(db) == set()
        assert migrate.upgrade(db) == HEAD
        assert _diffs(db) == []
        _store_a_run(empty_url, "mig-2")  # the schema works again
    finally:
        db.dispose()


def test_the_embedded_database_upgrades_itself_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "home" / "devflow.db"
    path.parent.mkdir()
    store = Store.open(f"sqlite:///{path}")
    try:
        assert migrate.current(store.db) == HEAD
        assert store.runs.find() == []
    finally:
        store.close()


@pytest.mark.postgresql
def test_an_unmigrated_postgresql_database_is_refused(empty_pg: tuple[str, str]) -> None:
    _name, url = empty_pg
    with pytest.raises(DevflowError) as caught:
        Store.open(url)
    _dispose_engines_in(caught.value)
    error = caught.value
    assert error.code is Code.DATABASE_NOT_MIGRATED and error.exit_code == 3
    assert "devflow db upgrade" in error.hint
    db = Database(url)
    try:
        assert _tables_of(db) == set()  # refusing touched nothing
    finally:
        db.dispose()


@pytest.mark.postgresql
def test_a_refused_open_leaves_no_connection_behind(empty_pg: tuple[str, str]) -> None:
    name, url = empty_pg
    with pytest.raises(DevflowError) as caught:
        Store.open(url)
    try:
        assert _pg_connections(name) == 0
    finally:
        _dispose_engines_in(caught.value)


def test_sqlite_connections_are_set_up_for_safe_concurrent_use(sqlite_url: str) -> None:
    db = Database(sqlite_url, busy_timeout_ms=12_345)
    try:
        with db.engine.connect() as conn:
            def pragma(name: str) -> object:
                return conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()
            assert str(pragma("journal_mode")).lower() == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 12_345
            assert pragma("synchronous") == 2  # FULL
    finally:
        db.dispose()


def test_sqlite_writes_begin_immediate(sqlite_url: str) -> None:
    """A write transaction holds the write lock from its start: a second writer waits."""
    db = Database(sqlite_url)
    path = sa.engine.make_url(sqlite_url).database
    assert path
    try:
        with db.connection(write=True):  # the transaction has begun (BEGIN IMMEDIATE)
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
        with db.connection(write=False):  # a read transaction (BEGIN) leaves writers free
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
            finally:
                other.close()
    finally:
        db.dispose()


def test_an_unsupported_database_url_is_config_invalid() -> None:
    with pytest.raises(DevflowError) as caught:
        Database("mysql://u@h/db")
    assert caught.value.code is Code.CONFIG_INVALID


#: phases' ``feedback`` as devflow wrote it before 0009 (phase control), and the control
#: value each becomes
_OLD_FEEDBACK: list[tuple[dict[str, Any], model.PhaseControl]] = [
    ({"interrupted": True, "reset_to": "a" * 40, "note": "never read: dropped"},
     model.PhaseControl(interrupted=True, reset_to="a" * 40)),
    ({"repair": {"code": "artifact_invalid",
                 "errors": [{"pointer": "/title", "message": "is required"}]},
      "interrupted": True, "reset_to": None},
     model.PhaseControl(interrupted=True, repair=model.Repair(
         "artifact_invalid", (model.Refusal("/title", "is required"),)))),
    ({"changes": {"actor": "ann", "comment": "shorter",
                  "rejected_sections": [{"key": "scope", "comment": None}]},
      "reset_to": "b" * 40},
     model.PhaseControl(reset_to="b" * 40, changes=model.Changes(
         "ann", "shorter", (model.RejectedSection("scope"),)))),
    ({"sections": {"one": "approve", "two": "reject"}, "plan_applied": True},
     model.PhaseControl(sections={"one": "approve", "two": "reject"}, plan_applied=True)),
]


def test_phase_feedback_becomes_typed_control(empty_url: str) -> None:
    """0009 converts each phase's old ``feedback`` into its control value,
    and back on downgrade (the keys that were set)."""
    db = Database(empty_url)
    try:
        migrate.upgrade(db)
        _store_a_run(empty_url, "ctl-1")
        _store_a_run(empty_url, "ctl-2")  # its phases' feedback stays {}
        assert migrate.downgrade(db, "0008") == "0008"
        with db.engine.begin() as conn:
            ids = list(conn.execute(sa.text(
                "SELECT id FROM run_phase WHERE run_id = 'ctl-1' ORDER BY position")).scalars())
            assert len(ids) >= len(_OLD_FEEDBACK)
            for phase_id, (old, _) in zip(ids, _OLD_FEEDBACK, strict=False):
                conn.execute(sa.text("UPDATE run_phase SET feedback = :f WHERE id = :id")
                             .bindparams(sa.bindparam("f", type_=sa.JSON())),
                             {"f": old, "id": phase_id})
        assert migrate.upgrade(db) == HEAD
        assert _diffs(db) == []
        with db.engine.connect() as conn:
            stored = dict(conn.execute(sa.select(PHASE.c.id, PHASE.c.control)).all())
        assert all(set(value) == set(model.CONTROL_KEYS) for value in stored.values())
        store = Store.open(empty_url, migrate_now=False)
        try:
            phases = store.runs.phases("ctl-1")
            untouched = store.runs.phases("ctl-2")
        finally:
            store.close()
        for phase, (_, control) in zip(phases, _OLD_FEEDBACK, strict=False):
            assert phase.control == control
        assert untouched and all(p.control == model.NO_CONTROL for p in untouched)
        # and back: the old shape of each, the keys devflow never read gone
        assert migrate.downgrade(db, "0003") == "0003"
        with db.engine.connect() as conn:
            old = [json.loads(v) if isinstance(v, str) else v for v in conn.execute(sa.text(
                "SELECT feedback FROM run_phase WHERE run_id = 'ctl-1' ORDER BY position"))
                .scalars()]
        assert old[0] == {"interrupted": True, "reset_to": "a" * 40}
        assert old[3] == {"sections": {"one": "approve", "two": "reject"}, "plan_applied": True}
    finally:
        db.dispose()


def test_a_control_value_of_another_shape_is_refused() -> None:
    good = model.PhaseControl(interrupted=True, changes=model.Changes("ann")).to_json()
    assert model.PhaseControl.from_json(good) == model.PhaseControl(
        interrupted=True, changes=model.Changes("ann"))
    for bad in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "repair"},
                {**good, "interrupted": "yes"}, {**good, "changes": {"actor": "ann"}},
                {**good, "sections": {"a": 1}}, {}, []):
        with pytest.raises(ValueError, match="phase control"):
            model.PhaseControl.from_json(bad)

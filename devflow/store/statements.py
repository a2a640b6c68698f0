"""The store's statements, built once with SQLAlchemy Core, and the writes of a transaction.

Statements are built once here and executed with parameters, so SQLAlchemy compiles
each shape once per process. A row changes by an explicit ``UPDATE`` of the columns
that changed (``update``; ``devflow.store.rows`` says which differ between the value
read and the value written), a row is added by an ``INSERT`` of its columns. A
transaction of a run (``RunTx``) collects its changes and writes them before its next
query and at its end; on PostgreSQL its last writes go as one statement
(``write_together``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam

from devflow.states import ApprovalState
from devflow.store.tables import (
    APPROVAL,
    ARTIFACT,
    BINDING,
    DECISION,
    EVENT,
    INVOCATION,
    PHASE,
    RUN,
    WEBHOOK_OUTBOX,
)

__all__ = ["APPROVAL", "ARTIFACT", "BINDING", "DECISION", "EVENT", "INVOCATION", "PHASE", "RUN",
           "Insert", "Update", "update", "write", "write_together"]

#: a change to one row: its table, its id, the columns to set
Update = tuple[sa.Table, Any, Mapping[str, Any]]
#: a row to add: its table and every column given
Insert = tuple[sa.Table, Mapping[str, Any]]


def update(conn: sa.Connection, table: sa.Table, row_id: Any, columns: Mapping[str, Any]) -> None:
    """UPDATE the ``columns`` of the row ``row_id`` of ``table`` (nothing when none)."""
    if columns:
        conn.execute(_UPDATES[table.name], {"key_": row_id, **columns})


def write(conn: sa.Connection, updates: Sequence[Update], inserts: Sequence[Insert]) -> None:
    """The updates, then the inserts, one statement each."""
    for table, row_id, columns in updates:
        update(conn, table, row_id, columns)
    for table, values in inserts:
        conn.execute(plain_insert(table), values)


def write_together(conn: sa.Connection, updates: Sequence[Update], inserts: Sequence[Insert],
                   events: list[dict[str, Any]]) -> None:
    """The updates, the inserts and the new events as one statement (PostgreSQL).

    All but the last statement become data-modifying CTEs, which PostgreSQL runs once
    each, to completion, whether or not the outer statement reads them: one round trip
    instead of one per row. Each row is updated once (one ``Update`` a row), as the CTEs
    share one snapshot. The events travel as one array per column, so that every count
    of events is the same statement. Statements are built once per shape (which tables,
    which columns) and take their values as parameters.
    """
    shape = (tuple((t.name, tuple(columns)) for t, _, columns in updates),
             tuple((t.name, tuple(values)) for t, values in inserts), bool(events))
    statement = _TOGETHER.get(shape)
    if statement is None:
        statement = _TOGETHER[shape] = _together(updates, inserts, bool(events))
    params: dict[str, Any] = {}
    for i, (_, row_id, columns) in enumerate(updates):
        params[f"w{i}__id"] = row_id
        params.update((f"w{i}_{c}", v) for c, v in columns.items())
    for j, (_, values) in enumerate(inserts):
        params.update((f"i{j}_{c}", v) for c, v in values.items())
    if events:
        params.update((f"ev_{c}", [e[c] for e in events]) for c in _event_columns())
    if statement is not None:
        conn.execute(statement, params)


def _together(updates: Sequence[Update], inserts: Sequence[Insert],
              events: bool) -> sa.Executable | None:
    parts: list[sa.UpdateBase] = [
        sa.update(table).where(table.c.id == bindparam(f"w{i}__id"))
        .values({c: bindparam(f"w{i}_{c}") for c in columns})
        for i, (table, _, columns) in enumerate(updates)]
    parts += [sa.insert(table).values({c: bindparam(f"i{j}_{c}") for c in values})
              for j, (table, values) in enumerate(inserts)]
    if events:
        return _insert_event_arrays().add_cte(*(u.cte(f"w{i}") for i, u in enumerate(parts)))
    if not parts:
        return None
    *first, last = parts
    return last.add_cte(*(u.cte(f"w{i}") for i, u in enumerate(first)))


_TOGETHER: dict[tuple[Any, ...], sa.Executable | None] = {}


def _unbounded(type_: Any) -> Any:
    """A string column's values cast as text: a cast to VARCHAR(n) would cut a value too
    long silently, where the column's own assignment refuses it."""
    text = isinstance(type_, sa.String) or isinstance(getattr(type_, "impl", None), sa.String)
    return sa.Text() if text else type_


def _event_columns() -> tuple[str, ...]:
    return tuple(c.key for c in EVENT.c if c.key != "id")


@functools.cache
def _insert_event_arrays() -> sa.Insert:
    """The new events as one array per column, unnested (PostgreSQL; built on first use,
    so that a process on SQLite does not load the PostgreSQL dialect)."""
    from sqlalchemy.dialects import postgresql  # noqa: PLC0415 - see the docstring
    columns = _event_columns()
    return sa.insert(EVENT).from_select(columns, sa.select(*(
        sa.func.unnest(bindparam(f"ev_{c}", type_=postgresql.ARRAY(_unbounded(EVENT.c[c].type))))
        for c in columns)))


# The SET clause comes from the parameters' keys, so one statement serves every shape.
_UPDATES: dict[str, sa.Update] = {
    t.name: sa.update(t).where(t.c.id == bindparam("key_"))
    for t in (RUN, PHASE, INVOCATION, APPROVAL, DECISION)}


def by_id(table: sa.Table) -> sa.Select[Any]:
    return _BY_ID[table.name]


_BY_ID: dict[str, sa.Select[Any]] = {
    t.name: sa.select(t).where(t.c.id == bindparam("id"))
    for t in (RUN, INVOCATION, APPROVAL, DECISION)}


def insert_returning(table: sa.Table) -> sa.Insert:
    """INSERT one row and read it back whole (defaults and id), in one statement."""
    return _INSERTS[table.name]


_INSERTS: dict[str, sa.Insert] = {
    t.name: sa.insert(t).returning(*t.c) for t in (RUN, INVOCATION, APPROVAL, DECISION)}
#: a run's new phases, read back in the order given
INSERT_PHASES = sa.insert(PHASE).returning(*PHASE.c, sort_by_parameter_order=True)

INSERT_EVENTS = sa.insert(EVENT)


def plain_insert(table: sa.Table) -> sa.Insert:
    """An INSERT whose row nothing reads back."""
    return _PLAIN_INSERTS[table.name]


_PLAIN_INSERTS = {t.name: sa.insert(t) for t in (ARTIFACT, BINDING, DECISION, WEBHOOK_OUTBOX)}
RUN_PHASES = sa.select(PHASE).where(PHASE.c.run_id == bindparam("run_id")) \
    .order_by(PHASE.c.position)
RUN_PHASE = sa.select(PHASE).where(PHASE.c.run_id == bindparam("run_id"),
                                   PHASE.c.key == bindparam("key"))
EVENT_BY_KEY = sa.select(EVENT).where(EVENT.c.idem_key == bindparam("key"))
#: approval requests that are pending or that a decision token was used on (the
#: decision's columns prefixed ``d_``): what a decision chooses its request among
_GATE = sa.select(APPROVAL, *(c.label(f"d_{c.key}") for c in DECISION.c)).outerjoin(
    DECISION, sa.and_(DECISION.c.approval_id == APPROVAL.c.id,
                      DECISION.c.client_token == bindparam("token"))).where(
    sa.or_(APPROVAL.c.state == str(ApprovalState.PENDING), DECISION.c.id.is_not(None)))
#: those of one run
GATE = _GATE.where(APPROVAL.c.run_id == bindparam("run_id")).order_by(APPROVAL.c.id)
#: the same as a subquery, its run's id in its own WHERE: SQLite materializes a subquery
#: before the join, and without it would read every request in the database
_gate = _GATE.where(APPROVAL.c.run_id == bindparam("id")).subquery("gate")
#: a run and those of its requests (their columns prefixed ``a_``), in one statement
RUN_GATE = sa.select(RUN, *(c.label(f"a_{c.key}") for c in _gate.c)).outerjoin(
    _gate, _gate.c.run_id == RUN.c.id).where(RUN.c.id == bindparam("id")) \
    .order_by(_gate.c.id)
#: a run and one of its phases (columns prefixed ``p_``), read with the run's lock
#: (both rows are locked: on PostgreSQL, a statement that waited for the run's lock sees
#: the latest version of the rows it locks only, and its snapshot's of the others)
RUN_WITH_PHASE = sa.select(RUN, *(c.label(f"p_{c.key}") for c in PHASE.c)).join(
    PHASE, sa.and_(PHASE.c.run_id == RUN.c.id, PHASE.c.key == bindparam("key"))).where(
    RUN.c.id == bindparam("id"))
#: an id for a new decision, taken from its sequence with the run's lock (PostgreSQL): the
#: decision is then inserted with the transaction's other writes, not on its own to learn
#: its id (one round trip less)
NEXT_DECISION_ID = sa.func.nextval(
    sa.func.pg_get_serial_sequence(DECISION.name, "id")).label("next_decision_id")

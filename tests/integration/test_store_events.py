"""The store's event log and transitions on both databases: numbering, idempotency keys,
constraints, and one transaction per change."""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from devflow import model
from devflow.catalog import Catalog, Dirs
from devflow.errors import Code, DevflowError
from devflow.states import PhaseState, RunState
from devflow.store import Limits, RunTx, Store, statements
from devflow.store.tables import EVENT, PHASE, RUN
from tests.conftest import pg_url_for
from tests.integration.test_store_properties import new_run


@pytest.fixture(scope="module", params=[
    "sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Store]:
    """One migrated database per engine for the module: every test uses its own run ids."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("events") / "devflow.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        opened = Store.open(f"sqlite:///{path}")
        yield opened
        opened.close()
        return
    pool = request.getfixturevalue("pg_pool")
    name = pool.take()
    opened = Store.open(pg_url_for(name))
    yield opened
    opened.close()
    pool.give_back(name)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(Dirs.with_builtins())


def _run(store: Store, catalog: Catalog, run_id: str) -> model.Run:
    return store.runs.create(new_run(catalog.template("development@1"), catalog, run_id),
                             Limits(max_active_per_branch=100, max_concurrent_runs=100))


def _count(store: Store, table: sa.Table, **where: object) -> int:
    def tx(conn: sa.Connection) -> int:
        query = sa.select(sa.func.count()).select_from(table)
        for name, value in where.items():
            query = query.where(table.c[name] == value)
        return int(conn.execute(query).scalar_one())
    return store.db.read(tx)


def test_a_new_run_is_bound_with_its_first_events(store: Store, catalog: Catalog) -> None:
    run = _run(store, catalog, "ev-1")
    assert run.state is RunState.BOUND and run.last_seq == 2
    events = store.events.after("ev-1")
    assert [(e.seq, e.type) for e in events] == [(1, "run.created"), (2, "run.bound")]
    assert events[0].payload["template"] == "development@1"
    assert {b.role: b.persona_ref for b in store.runs.bindings("ev-1")} == {
        "implementer": "scripted-implementer@1", "planner": "scripted-planner@1",
        "reviewer": "scripted-reviewer@1"}
    assert [p.key for p in store.runs.phases("ev-1")] == ["spec", "plan", "implement", "review"]
    assert all(p.state is PhaseState.PENDING for p in store.runs.phases("ev-1"))
    assert events[0].ts.tzinfo is not None  # times come back aware


def test_seq_is_per_run_and_gapless_when_runs_interleave(store: Store, catalog: Catalog) -> None:
    for run_id in ("ev-a", "ev-b"):
        _run(store, catalog, run_id)
    for i in range(5):
        for run_id in ("ev-a", "ev-b"):
            event = store.runs.change(run_id, lambda tx, i=i: tx.event(
                model.NewEvent("note.added", payload={"i": i})))
            assert event.seq == 3 + i
    for run_id in ("ev-a", "ev-b"):
        assert [e.seq for e in store.events.after(run_id)] == list(range(1, 8))
        assert [e.seq for e in store.events.after(run_id, 4)] == [5, 6, 7]
        assert [e.seq for e in store.events.tail(run_id, 2)] == [6, 7]


def test_an_existing_idempotency_key_returns_the_existing_event(store: Store,
                                                                catalog: Catalog) -> None:
    _run(store, catalog, "ev-k")
    first = store.runs.change("ev-k", lambda tx: tx.event(
        model.NewEvent("approval.requested", "spec", {"round": 1}, key="ev-k:gate:1")))
    assert first.seq == 3
    rows_before = _count(store, EVENT)
    again = store.runs.change("ev-k", lambda tx: tx.event(
        model.NewEvent("approval.requested", "spec", {"round": 99}, key="ev-k:gate:1")))
    assert (again.seq, dict(again.payload)) == (3, {"round": 1})
    assert _count(store, EVENT) == rows_before
    assert store.runs.get("ev-k").last_seq == 3
    # within one transaction, too
    pair = store.runs.change("ev-k", lambda tx: (
        tx.event(model.NewEvent("x.once", key="ev-k:once")),
        tx.event(model.NewEvent("x.once", key="ev-k:once"))))
    assert pair[0].seq == pair[1].seq == 4
    assert [e.type for e in store.events.after("ev-k", 2)] == ["approval.requested", "x.once"]


def test_the_database_refuses_a_second_event_with_the_same_seq(store: Store,
                                                               catalog: Catalog) -> None:
    run = _run(store, catalog, "ev-dup")

    def duplicate(conn: sa.Connection) -> None:
        conn.execute(sa.insert(EVENT).values(run_id="ev-dup", seq=2, type="x.dup", payload={},
                                             ts=run.created_at, idem_key="ev-dup:other"))

    with pytest.raises(DevflowError) as caught:
        store.db.write(duplicate)
    assert caught.value.code is Code.DATABASE_ERROR
    assert _count(store, EVENT, run_id="ev-dup") == 2


def test_the_database_refuses_a_second_event_with_the_same_key(store: Store,
                                                               catalog: Catalog) -> None:
    run = _run(store, catalog, "ev-dupkey")

    def duplicate(conn: sa.Connection) -> None:
        conn.execute(sa.insert(EVENT).values(  # run.created's key
            run_id="ev-dupkey", seq=3, type="x.dup", payload={}, ts=run.created_at,
            idem_key="ev-dupkey:1"))

    with pytest.raises(DevflowError) as caught:
        store.db.write(duplicate)
    assert caught.value.code is Code.DATABASE_ERROR
    assert _count(store, EVENT, run_id="ev-dupkey") == 2


def test_foreign_keys_are_enforced(store: Store) -> None:
    def orphan(conn: sa.Connection) -> None:
        conn.execute(sa.insert(PHASE).values(run_id="no-such-run", position=1, key="k",
                                             origin="template", definition={}, state="pending"))

    with pytest.raises(DevflowError) as caught:
        store.db.write(orphan)
    assert caught.value.code is Code.DATABASE_ERROR
    assert _count(store, PHASE, run_id="no-such-run") == 0


_KEPT = model.PhaseControl(changes=model.Changes("kept"))
_HOLDER = model.PhaseControl(reset_to="holder")


def test_one_change_writes_every_row_it_changed_and_its_events_in_order(
        store: Store, catalog: Catalog) -> None:
    """The run, two phases, an approval and a decision changed, five events appended: on
    PostgreSQL all of it goes as one statement at the end, on SQLite one by one."""
    _run(store, catalog, "ev-all")

    def many(tx: RunTx) -> int:
        tx.move_run(RunState.EXECUTING, model.NewEvent("run.executing"))
        tx.move_phase("spec", PhaseState.RUNNING, model.NewEvent("phase.started", "spec"))
        tx.set_phase("plan", control=_KEPT)
        approval = tx.open_approval(phase_key="spec", gate="spec_review", round=1,
                                    message="Review.", options=["approve"])
        decision = tx.add_decision(approval_id=approval.id, client_token="t-all",
                                   action="approve", actor="tester", sections={}, evidence={})
        tx.set_approval(approval.id, warned_at=tx.now)
        tx.set_decision_outcome(decision.id, {"action": "approve"})
        for i in range(3):
            tx.event(model.NewEvent("note.added", payload={"i": i}))
        return approval.id

    approval_id = store.runs.change("ev-all", many)
    run = store.runs.get("ev-all")
    phases = {p.key: p for p in store.runs.phases("ev-all")}
    assert run.state is RunState.EXECUTING and run.last_seq == 7
    assert phases["spec"].state is PhaseState.RUNNING and phases["spec"].started_at
    assert phases["plan"].control == _KEPT
    assert store.approvals.get(approval_id).warned_at is not None
    [decision] = store.approvals.decisions(approval_id=approval_id)
    assert store.runs.change("ev-all", lambda tx: tx.decision_outcome(decision.id)) \
        == {"action": "approve"}
    events = store.events.after("ev-all", 2)
    assert [(e.seq, e.type) for e in events] == [
        (3, "run.executing"), (4, "phase.started"), (5, "note.added"), (6, "note.added"),
        (7, "note.added")]
    assert [e.payload.get("i") for e in events[2:]] == [0, 1, 2]


def test_an_unseen_key_that_was_used_is_refused_by_the_database(
        store: Store, catalog: Catalog) -> None:
    """``unseen`` skips the look-up, not the guarantee: the unique index still holds."""
    _run(store, catalog, "ev-unseen")
    store.runs.change("ev-unseen", lambda tx: tx.event(
        model.NewEvent("x.once", key="ev-unseen:once")))
    with pytest.raises(DevflowError) as caught:
        store.runs.change("ev-unseen", lambda tx: tx.event(
            model.NewEvent("x.once", key="ev-unseen:once"), unseen=True))
    assert caught.value.code is Code.DATABASE_ERROR
    assert [e.type for e in store.events.after("ev-unseen", 2)] == ["x.once"]
    assert store.runs.get("ev-unseen").last_seq == 3


def test_a_change_that_waited_for_the_lock_reads_its_phase_as_the_holder_left_it(
        store: Store, catalog: Catalog) -> None:
    """The phase read with the run's lock (phase=) is the holder's, not the version from
    before the wait (PostgreSQL reads a joined row at its latest only if it locks it)."""
    _run(store, catalog, "ev-wait")
    holding, release = threading.Event(), threading.Event()

    def holder(tx: RunTx) -> None:
        tx.set_phase("spec", control=_HOLDER)
        holding.set()
        assert release.wait(30)

    first = threading.Thread(target=store.runs.change, args=("ev-wait", holder))
    first.start()
    assert holding.wait(30)
    seen: list[object] = []
    second = threading.Thread(target=lambda: seen.append(store.runs.change(
        "ev-wait", lambda tx: tx.phase("spec").control, phase="spec")))
    second.start()
    time.sleep(0.5)  # the second waits for the lock
    assert seen == []
    release.set()
    first.join(30)
    second.join(30)
    assert seen == [_HOLDER]


def test_an_unseen_key_used_twice_in_one_change_is_one_event(store: Store,
                                                               catalog: Catalog) -> None:
    _run(store, catalog, "ev-twice")
    pair = store.runs.change("ev-twice", lambda tx: (
        tx.event(model.NewEvent("x.once", key="ev-twice:once"), unseen=True),
        tx.event(model.NewEvent("x.once", key="ev-twice:once"), unseen=True)))
    assert pair[0].seq == pair[1].seq == 3
    assert [e.seq for e in store.events.after("ev-twice")] == [1, 2, 3]
    assert store.runs.get("ev-twice").last_seq == 3


def test_a_value_too_long_for_its_column_is_refused_or_kept_whole_never_cut(
        store: Store, catalog: Catalog) -> None:
    """On PostgreSQL the events go as arrays cast to text, so the column's own length
    check refuses a type longer than 64; SQLite does not check lengths and keeps it."""
    _run(store, catalog, "ev-long")
    change = functools.partial(store.runs.change, "ev-long",
                               lambda tx: tx.event(model.NewEvent("x" * 80)))
    if store.db.is_sqlite:
        change()
        assert [e.type for e in store.events.after("ev-long", 2)] == ["x" * 80]
        return
    with pytest.raises(DevflowError) as caught:
        change()
    assert caught.value.code is Code.DATABASE_ERROR
    assert [e.seq for e in store.events.after("ev-long")] == [1, 2]


def test_concurrent_appends_get_distinct_gapless_numbers(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "ev-c")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(8):
                store.runs.change("ev-c", lambda tx, i=i: tx.event(
                    model.NewEvent("note.added", payload={"writer": n, "i": i})))
                # every writer also tries one shared idempotency key
                store.runs.change("ev-c", lambda tx: tx.event(
                    model.NewEvent("note.shared", key="ev-c:shared")))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    events = store.events.after("ev-c")
    assert [e.seq for e in events] == list(range(1, 2 + 4 * 8 + 1 + 1))
    assert [e.type for e in events].count("note.shared") == 1
    assert store.runs.get("ev-c").last_seq == len(events)


def test_a_failed_change_writes_nothing(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "ev-tx")
    before = store.runs.get("ev-tx")

    def half(tx: RunTx) -> None:
        tx.move_run(RunState.EXECUTING, model.NewEvent("run.executing"))
        tx.move_phase("spec", PhaseState.RUNNING, model.NewEvent("phase.started", "spec"))
        tx.move_phase("spec", PhaseState.COMPLETED)  # illegal

    with pytest.raises(DevflowError) as caught:
        store.runs.change("ev-tx", half)
    assert caught.value.code is Code.ILLEGAL_TRANSITION
    assert store.runs.get("ev-tx") == before
    assert store.runs.phases("ev-tx")[0].state is PhaseState.PENDING
    assert len(store.events.after("ev-tx")) == 2


def test_state_fields_change_only_through_moves(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "ev-f")
    with pytest.raises(ValueError, match="move_run"):
        store.runs.change("ev-f", lambda tx: tx.set_run(state="completed"))
    with pytest.raises(ValueError, match="move_phase"):
        store.runs.change("ev-f", lambda tx: tx.set_phase("spec", state="completed"))
    assert store.runs.get("ev-f").state is RunState.BOUND


def test_pause_remembers_where_resume_goes(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "ev-p")
    store.runs.change("ev-p", lambda tx: tx.move_run(RunState.EXECUTING))
    paused = store.runs.change("ev-p", lambda tx: tx.move_run(
        RunState.PAUSED, model.NewEvent("run.paused")))
    assert (paused.state, paused.paused_from) == (RunState.PAUSED, RunState.EXECUTING)
    # a paused run that "settles" at a gate resumes there
    settled = store.runs.change("ev-p", lambda tx: tx.settle(RunState.AWAITING_APPROVAL))
    assert (settled.state, settled.paused_from) == (RunState.PAUSED,
                                                    RunState.AWAITING_APPROVAL)
    resumed = store.runs.change("ev-p", lambda tx: tx.move_run(
        RunState.AWAITING_APPROVAL, model.NewEvent("run.resumed")))
    assert (resumed.state, resumed.paused_from) == (RunState.AWAITING_APPROVAL, None)


def test_an_unknown_run_is_not_found(store: Store) -> None:
    for call in (lambda: store.runs.get("nope"),
                 lambda: store.runs.change("nope", lambda tx: tx.run)):
        with pytest.raises(DevflowError) as caught:
            call()
        assert caught.value.code is Code.RUN_NOT_FOUND and caught.value.exit_code == 4


def test_a_run_is_found_by_a_unique_prefix(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "prefix-alpha")
    _run(store, catalog, "prefix-beta")
    assert store.runs.get("prefix-a").id == "prefix-alpha"
    with pytest.raises(DevflowError):
        store.runs.get("prefix-")  # two match


def test_the_run_id_is_unique(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "twice")
    with pytest.raises(DevflowError) as caught:
        _run(store, catalog, "twice")
    assert caught.value.code is Code.RUN_ID_EXISTS
    assert _count(store, RUN, id="twice") == 1


def test_runs_are_found_by_state(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "st-1")
    _run(store, catalog, "st-2")
    store.runs.change("st-2", lambda tx: tx.move_run(RunState.ABORTED))
    aborted = {r.id for r in store.runs.find(states_in=[RunState.ABORTED])}
    assert "st-2" in aborted and "st-1" not in aborted
    assert "st-2" in store.runs.missing_reports() and "st-1" not in store.runs.missing_reports()
    bound = {r.id for r in store.runs.find(states_in=[RunState.BOUND, RunState.EXECUTING])}
    assert "st-1" in bound and "st-2" not in bound
    ids = set(store.db.read(lambda conn: conn.execute(sa.select(RUN.c.id)).scalars().all()))
    assert {"st-1", "st-2"} <= ids


def test_the_phases_of_a_terminal_run_do_not_move(store: Store, catalog: Catalog) -> None:
    _run(store, catalog, "ev-term")
    store.runs.change("ev-term", lambda tx: tx.move_run(RunState.ABORTED))
    with pytest.raises(DevflowError) as caught:
        store.runs.change("ev-term", lambda tx: tx.move_phase("spec", PhaseState.RUNNING))
    assert caught.value.code is Code.ILLEGAL_TRANSITION
    assert caught.value.hint
    assert store.runs.phases("ev-term")[0].state is PhaseState.PENDING
    assert store.runs.get("ev-term").state is RunState.ABORTED


def test_an_invocation_is_changed_as_its_run_returned_it_and_only_for_that_run(
        store: Store, catalog: Catalog) -> None:
    """Closing an agent's invocation does not read it again: the changed columns are
    written with the transaction's other writes, the rest stay as they were; the
    invocation of another run is refused and nothing of the change is written."""
    _run(store, catalog, "ev-inv")
    _run(store, catalog, "ev-inv2")
    started = store.runs.change("ev-inv", lambda tx: tx.start_invocation(
        phase_key="spec", attempt=1, kind="agent", backend="scripted", argv=["agent", "-x"],
        host="here", pid=1234, pgid=1234))

    def close(tx: RunTx) -> model.Invocation:
        tx.event(model.NewEvent("agent.exited", "spec"))
        return tx.update_invocation(started, ended_at=tx.now, exit_code=0, outcome="ok")

    returned = store.runs.change("ev-inv", close)
    [stored] = store.runs.invocations("ev-inv")
    assert stored == returned
    assert (stored.exit_code, stored.outcome, stored.argv, stored.pid) == (0, "ok",
                                                                          ("agent", "-x"), 1234)
    assert stored.ended_at is not None
    before = store.runs.get("ev-inv2")
    with pytest.raises(DevflowError) as caught:
        store.runs.change("ev-inv2", close)
    assert caught.value.code is Code.INTERNAL
    assert store.runs.get("ev-inv2") == before
    assert store.runs.invocations("ev-inv2") == []


def test_a_decisions_reads_find_requests_through_the_run_index(tmp_path: Path) -> None:
    """SQLite materializes a subquery before joining it: the requests' subquery of a
    decision's reads names its run itself, or every request in the database is read."""
    store = Store.open(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        with store.db.engine.connect() as conn:
            for query in (statements.RUN_GATE, statements.GATE):
                sql = str(query.compile(dialect=conn.dialect))
                plan = [str(r[-1]) for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?"))]
                assert not [p for p in plan if p.startswith("SCAN approval_request")], plan
                assert any("ix_approval_request_run_id" in p for p in plan), plan
    finally:
        store.close()

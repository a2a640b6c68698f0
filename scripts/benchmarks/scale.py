"""Scale: with 10,000 runs and 1,000,000 events in the database, the time of the reading
commands and of one sweep, and whether their query plans use indexes."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import Figure, Report, Stat, make_app, repeat

from devflow.app import App
from devflow.model import NO_CONTROL
from devflow.states import RunState

_NO_CONTROL = json.dumps(NO_CONTROL.to_json())
_STATES = ["completed"] * 95 + ["failed"] * 2 + ["executing"] + ["awaiting_approval"] * 2


def fill(url: str, runs: int, events_per_run: int) -> None:
    """Bulk rows, as many runs of the past would leave them (not through the engine)."""
    engine = sa.create_engine(url)
    now = datetime.now(UTC)
    rng = random.Random(7)  # noqa: S311 - sample data, not secrets
    template = json.dumps({"name": "bench5", "version": 1, "roles": {"implementer": {}},
                           "phases": []})
    run_rows, phase_rows, approval_rows, event_rows = [], [], [], []
    for i in range(runs):
        rid = f"s{i:06d}"
        state = rng.choice(_STATES)
        created = now - timedelta(minutes=runs - i)
        terminal = state in ("completed", "failed")
        run_rows.append((rid, "bench5", "1", "h" * 64, template, f"/repo/{i % 50}", "main",
                         "a" * 40, "a" * 40, f"devflow/{rid}/main", f"/ws/{rid}",
                         f"/ws/{rid}/main", "bench", state, "r", "{}", "bench", created,
                         created, created if terminal else None, events_per_run,
                         "written" if terminal else None))
        for p in range(5):
            phase_state = "completed" if terminal or p < 2 else (
                "awaiting_approval" if state == "awaiting_approval" and p == 2 else "pending")
            phase_rows.append((rid, p + 1, f"p{p}", "template", json.dumps(
                {"key": f"p{p}", "title": f"p{p}", "roles": ["implementer"], "gates": []}),
                phase_state, 1))
        if state == "awaiting_approval":
            approval_rows.append((rid, "p2", "ok", 1, "pending", "Approve.", "[]", "[]",
                                  created, None))
        for seq in range(1, events_per_run + 1):
            event_rows.append((rid, seq, "phase.started", f"p{seq % 5}",
                               '{"attempt": 1}', created, f"{rid}:{seq}"))
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        _insert(raw, url, "run", "id, template_name, template_version, template_hash, "
                "template_def, repo, base, base_sha, checkpoint_sha, branch, workspace, "
                "worktree, host, state, requirements, options, created_by, created_at, "
                "updated_at, ended_at, last_seq, report_status, lease_fence, recoveries, "
                "tokens_in, tokens_out, cost_usd", [(*r, 0, 0, 0, 0, 0.0) for r in run_rows])
        _insert(raw, url, "run_phase", "run_id, position, key, origin, definition, state, "
                "attempt, repairs, round, control, tokens_in, tokens_out, cost_usd",
                [(*r, 0, 1, _NO_CONTROL, 0, 0, 0.0) for r in phase_rows])
        _insert(raw, url, "approval_request", "run_id, phase_key, gate, round, state, message, "
                "options, approvers, opened_at, next_due_at, escalation_applied",
                [(*r, 0) for r in approval_rows])
        _insert(raw, url, "run_event", "run_id, seq, type, phase, payload, ts, idem_key",
                event_rows)
    engine.dispose()


def _insert(raw: Any, url: str, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    if url.startswith("sqlite"):
        marks = ", ".join("?" for _ in columns.split(","))
        raw.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608
                        [tuple(v.replace(tzinfo=None) if isinstance(v, datetime) else v
                               for v in r) for r in rows])
        return
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def measure(report: Report, url: str, root: Path, label: str, runs: int) -> None:
    app = make_app(url, root / f"scale-{label}")
    rng = random.Random(3)  # noqa: S311 - sample data, not secrets
    some = [f"s{rng.randrange(runs):06d}" for _ in range(40)]
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("run status", lambda: app.view(rng.choice(some))),
        ("run list --state executing", lambda: app.runs([RunState.EXECUTING], limit=50)),
        ("events --after 50", lambda: app.store.events.after(rng.choice(some), 50)),
        ("approvals list --pending", lambda: app.approvals(pending=True)),
        ("decide's read of the run and its requests",
         lambda: app.store.runs.deciding(rng.choice(some), None, "bench-token")),
        ("sweep (nothing due)", app.sweep),
    ]
    for name, fn in cases:
        fn()
        stat = Stat.of(repeat(fn, 30))
        plans = _plans(app, fn)
        unindexed = [p for p in plans if not p[1]]
        report.add(Figure("scale", f"{name} ({label})", "ms", stat, target="< 50",
                          ok=stat.median < 50 and not unindexed,
                          note="indexes: " + ("all queries" if not unindexed else
                                              "NOT USED by " + "; ".join(q[:60] for q, _ in
                                                                         unindexed))))
    app.close()


def _plans(app: App, fn: Callable[[], Any]) -> list[tuple[str, bool]]:
    """Each query ``fn`` runs, and whether its plan reads the big tables through an index."""
    engine = app.store.db.engine
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
                many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        fn()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    out = []
    with engine.connect() as conn:
        for statement, params in seen:
            prefix = "EXPLAIN QUERY PLAN " if app.store.db.is_sqlite else "EXPLAIN (FORMAT JSON) "
            rows = conn.exec_driver_sql(prefix + statement, params).fetchall()
            out.append((" ".join(statement.split()), _indexed(rows, app.store.db.is_sqlite)))
    return out


_BIG = ("run ", "run_event", "run_phase", "approval_request", "agent_invocation", "run_binding")


def _indexed(rows: list[Any], sqlite: bool) -> bool:
    if sqlite:
        details = [str(r[-1]) for r in rows]
        return not any(d.startswith("SCAN ") and "USING" not in d
                       and any(d[5:].startswith(t.strip()) for t in _BIG) for d in details)
    plan = rows[0][0]
    plan = json.loads(plan) if isinstance(plan, str) else plan

    def walk(node: dict[str, Any]) -> bool:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in \
                {t.strip() for t in _BIG} and node.get("Plan Rows", 0) > 100:
            return False
        return all(walk(child) for child in node.get("Plans", []))
    return walk(plan[0]["Plan"])

"""The generic mapper between the tables and the frozen values of devflow.model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from devflow import model
from devflow.states import ApprovalState
from devflow.store import rows

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def _approval() -> model.Approval:
    return model.Approval(
        id=7, run_id="r-1", phase_key="spec", gate="spec_review", round=1,
        state=ApprovalState.PENDING, message="Review.", options=("approve", "reject"),
        approvers=("ann",), sections=None,
        evidence=model.Evidence("spec.json", "a" * 64, "b" * 40, "c" * 40), opened_at=NOW)


def test_a_value_and_its_columns_go_both_ways() -> None:
    approval = _approval()
    columns = rows.APPROVALS.columns(approval)
    # each column by its own name: the state as its string, tuples as JSON lists, the
    # evidence as its four columns
    assert set(columns) == set(rows.APPROVALS.table.c.keys())
    assert columns["state"] == "pending" and type(columns["state"]) is str
    assert columns["options"] == ["approve", "reject"]
    assert (columns["artifact_path"], columns["tree_sha"]) == ("spec.json", "c" * 40)
    assert rows.APPROVALS.load(columns) == approval
    assert rows.APPROVALS.load({f"a_{k}": v for k, v in columns.items()}, "a_") == approval


def test_changes_are_the_columns_that_differ() -> None:
    approval = _approval()
    assert rows.APPROVALS.changes(approval, approval) == {}
    resolved = replace(approval, state=ApprovalState.APPROVED, resolved_by="ann",
                       approvers=("ann", "bob"))
    assert rows.APPROVALS.changes(approval, resolved) == {
        "state": "approved", "resolved_by": "ann", "approvers": ["ann", "bob"]}
    moved = replace(approval, evidence=replace(approval.evidence, head_sha="d" * 40))
    assert rows.APPROVALS.changes(approval, moved) == {
        "artifact_path": "spec.json", "artifact_sha": "a" * 64, "head_sha": "d" * 40,
        "tree_sha": "c" * 40}


def test_a_phase_control_is_stored_as_its_json() -> None:
    control = model.PhaseControl(repair=model.Repair("artifact_invalid",
                                                     (model.Refusal("/x", "bad"),)))
    columns = rows.PHASES.columns(control=control)
    assert columns == {"control": control.to_json()}
    assert model.PhaseControl.from_json(columns["control"]) == control


def test_a_field_name_that_is_no_column_is_refused() -> None:
    with pytest.raises(ValueError, match="no field"):
        rows.APPROVALS.replace(_approval(), stat="approved")


def test_a_table_and_its_value_that_disagree_fail_when_mapped() -> None:
    table = sa.Table("thing", sa.MetaData(), sa.Column("id", sa.Integer(), primary_key=True),
                     sa.Column("name", sa.String()), sa.Column("added", sa.String()))

    @dataclass(frozen=True)
    class Thing:
        id: int
        name: str

    with pytest.raises(TypeError, match=r"columns \['added'\]"):
        rows.Mapper(Thing, table)
    assert rows.Mapper(Thing, table, unread=frozenset({"added"})).load(
        {"id": 1, "name": "x", "added": "y"}) == Thing(1, "x")

    @dataclass(frozen=True)
    class Wider:
        id: int
        name: str
        added: str
        extra: str

    with pytest.raises(TypeError, match="extra is no column"):
        rows.Mapper(Wider, table)

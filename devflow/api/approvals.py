"""Approval requests and decisions: list, show, and ``POST .../decisions`` with the CLI's
semantics (``App.decide``): a replay 200 ``replayed: true``, another action with the
token or a request no longer pending 409 ``approval_conflict``, a stale round or
evidence 409 ``approval_stale``, changes requested without saying which 422
``invalid_input``. The decider is the token's actor; the workers continue the run."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from devflow import approvals
from devflow.api.auth import AppDep, Approver, Viewer, role

router = APIRouter(tags=["approvals"])


class SectionVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["approve", "reject"]
    comment: str | None = None


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["approve", "request_changes", "reject", "abort"]
    token: str = Field(min_length=1, max_length=128,
                       description="Idempotency token: the same token and action again "
                                   "returns the first outcome.")
    round: int | None = Field(None, description="The round you were shown.")
    evidence: str | None = Field(None, description="The artifact sha256 you were shown.")
    comment: str | None = None
    sections: dict[str, Literal["approve", "reject"] | SectionVerdict] = Field(
        default_factory=dict, description="Per-section verdicts of a sectioned artifact.")
    rewind: bool = False


@router.get("/approvals", openapi_extra=role("viewer"))
def list_approvals(caller: Viewer, app: AppDep, pending: bool = False,
                   run: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    """Approval requests, with their gates and states."""
    return {"approvals": [a.to_json() for a in app.approvals(pending=pending, run_id=run)]}


@router.get("/approvals/{approval_id}", openapi_extra=role("viewer"))
def show_approval(approval_id: int, caller: Viewer, app: AppDep) -> dict[str, Any]:
    """A request: its gate block, evidence, the artifact and the decisions."""
    approval, decisions, artifact = app.approval(approval_id)
    return {"approval": approval.to_json(), "gate": approval.gate_block(),
            "decisions": [d.to_json() for d in decisions], "artifact": artifact}


@router.post("/approvals/{approval_id}/decisions", status_code=201,
             openapi_extra=role("approver"),
             responses={200: {"description": "A replay: this token decided already."}})
def decide(approval_id: int, body: DecisionBody, caller: Approver, app: AppDep,
           response: Response) -> dict[str, Any]:
    """Decide the request as the token's actor."""
    approval = app.approval_request(approval_id)
    verdicts = {k: v if isinstance(v, str) else v.verdict for k, v in body.sections.items()}
    comments = {k: v.comment for k, v in body.sections.items()
                if isinstance(v, SectionVerdict) and v.comment}
    result = app.decide(approvals.DecisionRequest(
        run_id=approval.run_id, approval_id=approval_id, action=body.action,
        actor=caller.actor, token=body.token, comment=body.comment, sections=verdicts,
        section_comments=comments, rewind=body.rewind, expect_artifact_sha=body.evidence,
        expect_round=body.round, principal=caller.principal))
    if result.replayed:
        response.status_code = 200
    return {**app.view(result.run.id).to_json(), **result.to_json()}

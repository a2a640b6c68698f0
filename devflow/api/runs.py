"""Runs: start (with Idempotency-Key), list with a cursor, status, pause/resume/abort,
report, artifacts. Each route is one ``App`` verb; the actor is the token's."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from devflow.api.auth import AppDep, Operator, Viewer, role
from devflow.errors import Code, DevflowError
from devflow.states import RunState

router = APIRouter(tags=["runs"])


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(description="The git repository on the server's machine.")
    base: str = Field(description="The branch (or ref) to start from.")
    template: str = Field(description="NAME or NAME@VERSION, e.g. development@1.")
    requirements: str = Field(description="The requirements, as text.")
    objective: str | None = None
    binds: dict[str, str] = Field(default_factory=dict, description="role -> persona")
    scenarios: dict[str, str] = Field(default_factory=dict,
                                      description="scripted agents: phase -> scenario")
    max_cost: float | None = None
    run_id: str | None = Field(None, description="Not with an Idempotency-Key (it names the run).")


class SteerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = None


@router.post("/runs", status_code=201, openapi_extra=role("operator"),
             responses={200: {"description": "The run this Idempotency-Key started before."}})
def start_run(body: StartBody, caller: Operator, app: AppDep, response: Response,
              idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
              ) -> dict[str, Any]:
    """Start a run and leave it to the workers; with `Idempotency-Key`, once per key."""
    request = app.start_request(
        repo=Path(body.repo), base=body.base, template=body.template,
        requirements=body.requirements, objective=body.objective, binds=body.binds,
        scenarios=body.scenarios, max_cost=body.max_cost, run_id=body.run_id,
        actor=caller.actor, requirements_source="request body")
    if idempotency_key is None:
        return {**app.start(request, detach=True).to_json(), "replayed": False}
    if not idempotency_key.strip():
        raise DevflowError(Code.BAD_REQUEST, "Idempotency-Key is empty",
                           hint="a unique string per start, e.g. a UUID")
    view, replayed = app.start_once(request, idempotency_key)
    if replayed:
        response.status_code = 200
    return {**view.to_json(), "replayed": replayed}


@router.get("/runs", openapi_extra=role("viewer"))
def list_runs(caller: Viewer, app: AppDep,
              state: Annotated[list[RunState] | None, Query()] = None,
              repo: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
              cursor: str | None = None) -> dict[str, Any]:
    """Runs, newest first; `next_cursor` continues the list (null at its end)."""
    found = app.runs(states=state, repo=Path(repo) if repo else None, limit=limit + 1,
                     before=_cursor(cursor))
    page = found[:limit]
    more = len(found) > limit
    return {"runs": [r.to_json() for r in page],
            "next_cursor": _make_cursor(page[-1].created_at, page[-1].id) if more else None}


def _make_cursor(created_at: datetime, run_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), run_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(text: str | None) -> tuple[datetime, str] | None:
    if text is None:
        return None
    try:
        when, run_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return datetime.fromisoformat(when), str(run_id)
    except (ValueError, TypeError) as exc:
        raise DevflowError(Code.BAD_REQUEST, "cursor is not one this server gave",
                           hint="pass next_cursor as it came") from exc


@router.get("/runs/{run_id}", openapi_extra=role("viewer"))
def run_status(run_id: str, caller: Viewer, app: AppDep) -> dict[str, Any]:
    """The run, its phases and, at a gate, the gate block (as `devflow run status --json`)."""
    return app.view(run_id).to_json()


@router.post("/runs/{run_id}/pause", openapi_extra=role("operator"))
def pause_run(run_id: str, caller: Operator, app: AppDep,
              body: SteerBody | None = None) -> dict[str, Any]:
    """Pause the run (a repeat changes nothing: `changed: false`)."""
    done = app.pause(run_id, caller.actor, (body or SteerBody()).reason, caller.principal)
    return {**app.view(done.run.id).to_json(), "changed": done.changed}


@router.post("/runs/{run_id}/resume", openapi_extra=role("operator"))
def resume_run(run_id: str, caller: Operator, app: AppDep,
               body: SteerBody | None = None) -> dict[str, Any]:
    """Resume a paused run; the workers drive it on."""
    done = app.resume(run_id, caller.actor, (body or SteerBody()).reason, caller.principal)
    return {**app.view(done.run.id).to_json(), "changed": done.changed}


@router.post("/runs/{run_id}/abort", openapi_extra=role("operator"))
def abort_run(run_id: str, caller: Operator, app: AppDep,
              body: SteerBody | None = None) -> dict[str, Any]:
    """Abort the run; its report is written."""
    done = app.abort(run_id, caller.actor, (body or SteerBody()).reason, caller.principal)
    return {**app.view(done.run.id).to_json(), "changed": done.changed}


@router.get("/runs/{run_id}/report", openapi_extra=role("viewer"),
            responses={200: {"content": {"text/markdown": {}}}})
def run_report(run_id: str, caller: Viewer, app: AppDep,
               format: Literal["json", "md"] = "json") -> Any:
    """The final report (409 `illegal_transition` until the run ended)."""
    path = app.report_path(run_id, format)
    text = path.read_text(encoding="utf-8")
    if format == "md":
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
    return json.loads(text)


@router.get("/runs/{run_id}/artifacts", openapi_extra=role("viewer"))
def run_artifacts(run_id: str, caller: Viewer, app: AppDep) -> dict[str, Any]:
    """The artifacts the run kept, each phase's attempts."""
    return {"artifacts": [{"phase": a.phase_key, "attempt": a.attempt, "path": a.path,
                           "schema": a.schema_id, "sha256": a.sha256, "size": a.size,
                           "created_at": a.created_at.isoformat()}
                          for a in app.artifacts(run_id)]}


@router.get("/runs/{run_id}/artifacts/{sha256}", openapi_extra=role("viewer"))
def run_artifact(run_id: str, sha256: str, caller: Viewer, app: AppDep) -> Any:
    """One kept artifact's document, found by its sha256."""
    return app.artifact(run_id, sha256)

"""The web page's routes under ``/ui``: sign in and out, runs, a run, approvals, a request.

Every page is read from the stored state through ``App``; the one page that changes
anything, a decision, goes through ``App.decide`` with the round and the evidence the
page showed, as the token's actor (the session's). GETs change nothing; every POST
passes ``guard`` first. A form's outcome is told on the next page (``flash``): a
double click (the same decision token again) and a click on a request decided
meanwhile both say "already decided".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from devflow import approvals, model, tokens
from devflow.api import auth, events
from devflow.api.ui import guard, render
from devflow.api.ui.sessions import COOKIE, LOGIN_COOKIE, TTL, Flashes
from devflow.app import App
from devflow.errors import Code, DevflowError

router = APIRouter(prefix="/ui", include_in_schema=False)

#: events the run page lists when it opens (the newest); the live stream adds the rest
SHOWN_EVENTS = 200


@dataclass(frozen=True)
class SignedIn:
    session_id: str
    session: model.WebSession
    token: model.ApiToken
    flashes: Flashes

    @property
    def caller(self) -> auth.Caller:
        return auth.Caller(self.token)

    @property
    def may_decide(self) -> bool:
        return tokens.reaches(self.token.role, "approver")

    def tell(self, message: str) -> None:
        """Say ``message`` on the session's next page."""
        self.flashes.add(self.session.key, message)

    def base(self, **context: Any) -> dict[str, Any]:
        return {"me": self.token, "csrf": self.session.csrf,
                "flash": self.flashes.take(self.session.key), **context}


def flashes_of(request: Request) -> Flashes:
    found: Flashes = request.app.state.flashes
    return found


def signed_in(request: Request) -> SignedIn:
    """The request's live session and its token; else ``unauthenticated`` (a page answers
    it with the sign-in page)."""
    session_id = request.cookies.get(COOKIE, "")
    session, token = auth.app_of(request).session(session_id)
    return SignedIn(session_id, session, token, flashes_of(request))


Signed = Annotated[SignedIn, Depends(signed_in)]


# -- sign in and out ---------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request,
               next_page: Annotated[str, Query(alias="next")] = "/ui/") -> Response:
    """The sign-in form (signed in or not: signing in again opens a new session);
    ``next``: the page to go to once signed in."""
    return _login_form(request, _next(next_page))


def _next(path: str) -> str:
    """A page of this site to go to after sign-in (anything else: the runs)."""
    if path.startswith("/ui/") and "\\" not in path:
        return path
    return "/ui/"


def _login_form(request: Request, next_page: str, error: str | None = None,
                status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render.page("login.html", status, me=None, csrf=nonce, flash=[],
                           error=error, next_page=next_page)
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=1800, path="/ui/login", httponly=True,
                        samesite="strict", secure=guard.scheme(request) == "https")
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    fields = await guard.form(request)
    guard.check_csrf(fields, request.cookies.get(LOGIN_COOKIE))
    app = auth.app_of(request)
    try:
        token = await anyio.to_thread.run_sync(app.authenticate, fields.get("token", "").strip())
    except DevflowError as exc:
        if exc.code is not Code.UNAUTHENTICATED:
            raise
        return _login_form(request, _next(fields.get("next", "")),
                           f"{exc.message}. {exc.hint}", 401)
    session_id, session = await anyio.to_thread.run_sync(
        app.session_open, token, TTL, request.cookies.get(COOKIE) or None)
    response = RedirectResponse(_next(fields.get("next", "")), status_code=303)
    max_age = int((session.expires_at - session.created_at).total_seconds())
    response.set_cookie(COOKIE, session_id, max_age=max_age, path="/", httponly=True,
                        samesite="lax", secure=guard.scheme(request) == "https")
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/logout")
async def logout(request: Request, me: Signed) -> Response:
    guard.check_csrf(await guard.form(request), me.session.csrf)
    await anyio.to_thread.run_sync(auth.app_of(request).session_close, me.session_id)
    flashes_of(request).take(me.session.key)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -- runs --------------------------------------------------------------------------------
@router.get("/")
def runs_page(me: Signed, app: auth.AppDep) -> Response:
    runs = app.runs(limit=200)
    now = app.now()
    return render.page("runs.html", **me.base(
        runs=[(r, render.owner_lost(r, now)) for r in runs]))


@router.get("/runs/{run_id}")
def run_page(run_id: str, me: Signed, app: auth.AppDep) -> Response:
    view = app.view(run_id)
    run = view.run
    span = app.event_span(run.id)
    after = max(0, span[1] - SHOWN_EVENTS) if span else 0
    shown = list(app.events(run.id, after))
    invocations = app.invocations(run.id)
    return render.page("run.html", **me.base(
        view=view, run=run, owner_lost=render.owner_lost(run, app.now()),
        events=list(reversed(shown)), last_seq=shown[-1].seq if shown else after,
        bindings=app.bindings(run.id), invocations=invocations,
        invocations_cost=sum(i.cost_usd or 0.0 for i in invocations),
        approvals=app.approvals(run_id=run.id), diff=app.diff(run.id),
        report=app.report_text(run.id)))


@router.get("/runs/{run_id}/live")
def run_live(run_id: str, me: Signed, app: auth.AppDep) -> Response:
    """The run's state and phases as stored now (the run page swaps them in live)."""
    view = app.view(run_id)
    return render.page("_live.html", view=view, run=view.run,
                       owner_lost=render.owner_lost(view.run, app.now()),
                       approvals=app.approvals(run_id=view.run.id))


@router.get("/runs/{run_id}/events/stream")
async def run_stream(run_id: str, request: Request, me: Signed, app: auth.AppDep,
                     after: Annotated[int, Query(ge=0)] = 0,
                     last_event_id: Annotated[str | None, Header()] = None,
                     ) -> StreamingResponse:
    """The API's event stream (ids: the durable seq; Last-Event-ID), the session's."""
    return await events.sse(app, run_id, request, after, last_event_id,
                            still=lambda: app.session_live(me.session_id))


# -- approvals ---------------------------------------------------------------------------
@router.get("/approvals")
def approvals_page(me: Signed, app: auth.AppDep,
                   every: Annotated[bool, Query(alias="all")] = False) -> Response:
    found = app.approvals(pending=not every)
    return render.page("approvals.html", **me.base(approvals=found, every=every,
                                                   now=app.now()))


@router.get("/approvals/{approval_id}")
def request_page(approval_id: int, me: Signed, app: auth.AppDep) -> Response:
    return _request_page(app, me, approval_id)


def _request_page(app: App, me: SignedIn, approval_id: int, status: int = 200) -> Response:
    approval, decisions, document = app.approval(approval_id)
    run = app.view(approval.run_id).run
    now = app.now()
    why_not = render.not_decidable(approval, now, me.token.role if not me.may_decide
                                   else None)
    return render.page("request.html", status, **me.base(
        approval=approval, decisions=decisions, run=run, view=render.artifact_view(document),
        sections=render.section_keys(document, approval.sections),
        decidable=why_not is None, why_not=why_not, expired=render.expired(approval, now),
        decision_token="web-" + secrets.token_urlsafe(16)))


@router.post("/approvals/{approval_id}/decide")
async def decide(approval_id: int, request: Request, me: Signed,
                 app: auth.AppDep) -> Response:
    fields = await guard.form(request)
    guard.check_csrf(fields, me.session.csrf)
    if not me.may_decide:
        raise DevflowError(Code.ROLE_FORBIDDEN, f"API token {me.token.prefix} "
                           f"({me.token.actor}) is {me.token.role}; deciding needs approver",
                           hint="sign in with an approver's token")
    try:
        flash = await anyio.to_thread.run_sync(_decide, app, me, approval_id, fields)
    except DevflowError as exc:
        if exc.code in (Code.UNAUTHENTICATED, Code.ROLE_FORBIDDEN, Code.APPROVAL_NOT_FOUND):
            raise
        said = "already decided" if exc.code is Code.APPROVAL_CONFLICT else "not decided"
        me.tell(f"{said}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        return await anyio.to_thread.run_sync(_request_page, app, me, approval_id,
                                              exc.http_status)
    me.tell(flash)
    return RedirectResponse(f"/ui/approvals/{approval_id}", status_code=303)


def _decide(app: App, me: SignedIn, approval_id: int, fields: dict[str, str]) -> str:
    approval = app.approval_request(approval_id)
    action = fields.get("action", "")
    if action not in ("approve", "request_changes", "reject"):
        raise DevflowError(Code.INVALID_INPUT, f"{action!r} is not a decision of this page",
                           hint="approve, request changes or reject")
    try:
        shown_round = int(fields.get("round", ""))
    except ValueError as exc:
        raise DevflowError(Code.BAD_REQUEST, "the form names no round",
                           hint="reload the request's page") from exc
    sections = {key.removeprefix("section:"): verdict for key, verdict in fields.items()
                if key.startswith("section:") and verdict in ("approve", "reject")}
    result = app.decide(approvals.DecisionRequest(
        run_id=approval.run_id, approval_id=approval_id, action=action, actor=me.token.actor,
        token=fields.get("token") or "web-" + secrets.token_urlsafe(16),
        comment=fields.get("comment", "").strip() or None, sections=sections,
        expect_artifact_sha=fields.get("evidence") or None, expect_round=shown_round,
        principal=me.caller.principal))
    done = result.decision
    if result.replayed:
        return (f"already decided: your {done.action} of round {approval.round} was recorded "
                f"before (decision {done.id}); nothing was decided again")
    return (f"{done.action.replace('_', ' ')} recorded for {approval.gate}, round "
            f"{approval.round} (decision {done.id}); the run goes on")


def error_page(request: Request, exc: DevflowError) -> Response:
    """A DevflowError met on a page: the sign-in page when signed out, else its page."""
    if exc.code is Code.UNAUTHENTICATED and request.method == "GET" \
            and not request.url.path.endswith("/stream"):
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?{urlencode({'next': here})}", status_code=303)
    return render.page("error.html", exc.http_status, me=None, csrf="", flash=[],
                       error=exc)

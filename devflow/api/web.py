"""The ASGI application: the Host allowlist, errors as ``{"error": ...}``, the routers.

Every failure a client meets is ``{"error": {"code", "message", "hint"}}`` with the
HTTP status of its code (``errors.http_status``): a ``DevflowError`` of the library
as it is; a request that cannot be read (not JSON, a field of the wrong type or
unknown) ``bad_request``; an unknown route or method ``route_not_found`` or
``method_not_allowed``; anything else ``internal_error``, its traceback in the
server's log only. Under ``/ui`` (the web page, ``ui``) the same error is a page with
the same status, and a signed-out browser asking for a page is sent to sign in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from devflow import logs
from devflow.api import admin, approvals, auth, events, hooks, runs
from devflow.api.ui import pages
from devflow.api.ui.sessions import Flashes
from devflow.app import App
from devflow.errors import Code, DevflowError

log = logs.get_logger("devflow.api")

PREFIX = "/api/v1"
#: Host names always allowed: loopback's
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def error_response(exc: DevflowError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.code is Code.UNAUTHENTICATED else None
    return JSONResponse({"error": {"code": str(exc.code), "message": exc.message,
                                   "hint": exc.hint}}, status_code=exc.http_status,
                        headers=headers)


class HostAllowlist:
    """Refuses a request whose Host is not an allowed name (DNS rebinding), before routing."""

    def __init__(self, app: ASGIApp, names: Iterable[str]) -> None:
        self.app = app
        self.names = frozenset(n.lower() for n in names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if _hostname(host) in self.names:
            await self.app(scope, receive, send)
            return
        response = error_response(DevflowError(
            Code.HOST_NOT_ALLOWED, f"Host {host[:100]!r} is not one this server answers to",
            hint="use the server's name as configured (devflow serve --allow-host NAME)"))
        await response(scope, receive, send)


def _hostname(host: str) -> str:
    """The name of a Host header, without its port: ``[::1]:8765`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def build(app: App, *, allow_hosts: Iterable[str] = (), heartbeat: float = 15.0,
          stopping: Callable[[], bool] = lambda: False) -> ASGIApp:
    """The ASGI application serving ``app`` (FastAPI inside the Host allowlist)."""
    api = FastAPI(title="devflow", version="1", openapi_url=f"{PREFIX}/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="Runs, approvals and live events of devflow. Every route but "
                              "/health and /openapi.json needs `Authorization: Bearer TOKEN`; "
                              f"`{auth.ROLE_KEY}` names the least role of each. See docs/api.md.")
    api.state.devflow = app
    api.state.heartbeat = heartbeat
    api.state.stopping = stopping
    api.state.flashes = Flashes()
    api.add_exception_handler(DevflowError, _devflow_error)
    api.add_exception_handler(RequestValidationError, _unreadable)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(Exception, _crash)

    @api.get(f"{PREFIX}/health", openapi_extra=auth.role("public"), tags=["server"])
    def health() -> dict[str, Any]:
        """Whether the server answers (nothing about its runs)."""
        return {"ok": True}

    for router in (runs.router, approvals.router, events.router, admin.router, hooks.router):
        api.include_router(router, prefix=PREFIX)

    @api.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=303)

    api.include_router(pages.router)
    api.mount("/ui/static", StaticFiles(packages=[("devflow.api.ui", "static")]),
              name="ui-static")
    return HostAllowlist(api, [*LOOPBACK_NAMES, *allow_hosts])




def _page(request: Request) -> bool:
    return request.url.path == "/ui" or request.url.path.startswith("/ui/")


def _respond(request: Request, exc: DevflowError) -> Response:
    return pages.error_page(request, exc) if _page(request) else error_response(exc)


async def _devflow_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DevflowError)
    return _respond(request, exc)


async def _unreadable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for item in exc.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()))
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return _respond(request, DevflowError(Code.BAD_REQUEST, "the request cannot be read: "
                                          + "; ".join(problems),
                                          hint="see the route in /api/v1/openapi.json"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _respond(request, DevflowError(
            Code.METHOD_NOT_ALLOWED, f"{request.method} is not a method of {request.url.path}",
            hint="see /api/v1/openapi.json"))
    if exc.status_code == 404:
        return _respond(request, DevflowError(Code.ROUTE_NOT_FOUND,
                                              f"no route {request.url.path}",
                                              hint="the routes are in /api/v1/openapi.json"))
    return _respond(request, DevflowError(Code.BAD_REQUEST, str(exc.detail), hint=""))


async def _crash(request: Request, exc: Exception) -> Response:
    log.error("request_failed", method=request.method, path=request.url.path,
              error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return _respond(request, DevflowError(Code.INTERNAL, "the server failed on this request",
                                          hint="its log says why; retry, or report it"))

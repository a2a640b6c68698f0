"""The HTTP API of ``devflow serve``: routes, tokens and roles, live events; it calls ``App``.

Every route goes through the same ``App`` verbs as the CLI (decide, start, pause,
resume, abort, status, report), so the guarantees hold the same: idempotent decisions,
stale evidence refused, one writer per run, a report for every terminal state. This
package drives nothing itself: the server's embedded workers (``server``) drive runs
as ``devflow worker`` does. A contract in pyproject.toml keeps it off the engine and
the store.

- ``server``: options, the bind rule, uvicorn and the workers in one event loop, SIGTERM
- ``web``: the ASGI application: Host allowlist, errors as ``{"error": ...}``, routers
- ``auth``: the bearer token, its role per route, its actor as the principal
- ``runs``, ``approvals``, ``events``, ``admin``: the routes under ``/api/v1``
- ``ui``: the approvers' web page under ``/ui`` (sessions, forms checked, pages)
"""

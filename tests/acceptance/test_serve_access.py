"""Who may call `devflow serve`: tokens and their roles on every route, the Host allowlist,
the bind rule, and `devflow tokens` (a real server process on loopback, both databases)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devflow import tokens
from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.cli_fork import run_devflow
from tests.acceptance.serve_support import Client, Served

pytestmark = pytest.mark.slow

#: the least role of each route, as the API must declare and enforce it
EXPECTED_ROLES = {
    ("GET", "/api/v1/health"): "public",
    ("GET", "/api/v1/me"): "viewer",
    ("GET", "/api/v1/runs"): "viewer",
    ("POST", "/api/v1/runs"): "operator",
    ("GET", "/api/v1/runs/{run_id}"): "viewer",
    ("POST", "/api/v1/runs/{run_id}/pause"): "operator",
    ("POST", "/api/v1/runs/{run_id}/resume"): "operator",
    ("POST", "/api/v1/runs/{run_id}/abort"): "operator",
    ("GET", "/api/v1/runs/{run_id}/report"): "viewer",
    ("GET", "/api/v1/runs/{run_id}/artifacts"): "viewer",
    ("GET", "/api/v1/runs/{run_id}/artifacts/{sha256}"): "viewer",
    ("GET", "/api/v1/runs/{run_id}/events"): "viewer",
    ("GET", "/api/v1/runs/{run_id}/events/stream"): "viewer",
    ("GET", "/api/v1/approvals"): "viewer",
    ("GET", "/api/v1/approvals/{approval_id}"): "viewer",
    ("POST", "/api/v1/approvals/{approval_id}/decisions"): "approver",
    ("GET", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{token_id}"): "admin",
    ("GET", "/api/v1/webhooks"): "admin",
    # no token: signed with the trigger's secret (test_serve_hooks.py)
    ("POST", "/api/v1/hooks/{trigger}"): "signed",
}


@pytest.fixture
def server(settings: Settings, home: Path) -> Iterator[Served]:
    served = Served(settings, home, ("--workers", "0")).start()
    yield served
    assert served.stop() == 0, served.log()


@pytest.fixture
def by_role(app: App) -> dict[str, str]:
    return {role: app.token_create(f"{role}-person", role, "test")[0] for role in tokens.ROLES}


def _operations(client: Client) -> list[tuple[str, str, str]]:
    status, spec = client.call("GET", "/openapi.json")
    assert status == 200
    return [(method.upper(), path, operation.get("x-devflow-role"))
            for path, item in spec["paths"].items() for method, operation in item.items()]


def _fill(path: str) -> str:
    """Path parameters naming nothing that exists: an allowed caller meets a 404."""
    return (path.removeprefix("/api/v1").replace("{run_id}", "no-such-run")
            .replace("{approval_id}", "999999").replace("{sha256}", "0" * 64)
            .replace("{token_id}", "nosuchtokn").replace("{trigger}", "no-such-trigger"))


def test_every_route_checks_the_role_of_the_token_it_is_called_with(
        app: App, server: Served, by_role: dict[str, str]) -> None:
    anonymous = server.client()
    operations = _operations(anonymous)
    assert {(m, p): r for m, p, r in operations} == EXPECTED_ROLES
    before = [(t.prefix, t.revoked_at) for t in app.tokens(include_dead=True)]
    for method, path, needed in operations:
        # a body that is not one: a caller the role lets through meets bad_request, so
        # nothing changes whoever calls
        body = {"not_a_field": True} if method == "POST" else None
        status, answer = anonymous.call(method, _fill(path), body)
        if needed == "public":
            assert status == 200, (method, path, answer)
            continue
        if needed == "signed":  # no such trigger: nothing to sign for
            assert (status, answer["error"]["code"]) == (404, "trigger_not_found")
            continue
        assert (status, answer["error"]["code"]) == (401, "unauthenticated"), (method, path)
        for role, token in by_role.items():
            status, answer = anonymous.call(method, _fill(path), body, token=token)
            code = answer["error"]["code"] if isinstance(answer, dict) and "error" in answer \
                else None
            if tokens.reaches(role, needed):
                assert status in (200, 400, 404), (method, path, role, status, answer)
                assert code not in ("unauthenticated", "role_forbidden")
            else:
                assert (status, code) == (403, "role_forbidden"), (method, path, role, answer)
                assert needed in answer["error"]["message"]
    assert [(t.prefix, t.revoked_at) for t in app.tokens(include_dead=True)] == before


def test_no_token_mints_tokens_and_a_revoked_or_expired_token_is_refused(
        app: App, server: Served, by_role: dict[str, str]) -> None:
    admin = server.client(by_role["admin"])
    count = len(app.tokens(include_dead=True))
    status, answer = admin.call("POST", "/tokens", {"actor": "eve", "role": "admin"})
    assert (status, answer["error"]["code"]) == (405, "method_not_allowed")
    assert len(app.tokens(include_dead=True)) == count
    status, me = server.client(by_role["viewer"]).call("GET", "/me")
    assert (status, me["token"]["actor"], me["token"]["role"]) == (200, "viewer-person", "viewer")
    viewer_id = me["token"]["id"]
    assert app.store.tokens.get(viewer_id).last_used_at is not None
    status, revoked = admin.call("DELETE", f"/tokens/{viewer_id}")
    assert (status, revoked["changed"]) == (200, True)
    status, answer = server.client(by_role["viewer"]).call("GET", "/runs")
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")
    assert "revoked" in answer["error"]["message"]
    short, _ = app.token_create("brief", "viewer", "test", expires_in=0.001)
    status, answer = server.client(short).call("GET", "/runs")
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")
    forged = by_role["admin"][:-4] + "AAAA"
    status, answer = server.client(forged).call("GET", "/runs")
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")
    listed = admin.call("GET", "/tokens?all=true")[1]["tokens"]
    assert all("digest" not in t and "token" not in t for t in listed)


def test_a_foreign_host_is_refused_before_anything_else(
        server: Served, by_role: dict[str, str]) -> None:
    for host in ("evil.example", "127.0.0.1.nip.io:8765", "localhost.evil.example"):
        client = Client(server.port, by_role["admin"], host=host)
        for method, path in (("GET", "/health"), ("GET", "/runs"),
                             ("POST", "/approvals/1/decisions")):
            status, answer = client.call(method, path, {} if method == "POST" else None)
            assert (status, answer["error"]["code"]) == (403, "host_not_allowed"), host
    for host in ("localhost:1", "127.0.0.1", "[::1]:8765"):
        assert Client(server.port, by_role["viewer"], host=host).call("GET", "/runs")[0] == 200


def test_unreadable_requests_are_bad_requests_without_a_stack_trace(
        server: Served, by_role: dict[str, str]) -> None:
    client = server.client(by_role["operator"])
    status, answer = client.call("POST", "/runs", raw=b"{not json",
                                 headers={"Content-Type": "application/json"})
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    status, answer = client.call("GET", "/runs?limit=0")
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    status, answer = client.call("GET", "/runs?cursor=garbage")
    assert (status, answer["error"]["code"]) == (400, "bad_request")
    status, answer = client.call("GET", "/runs/no-such-run")
    assert (status, answer["error"]["code"]) == (404, "run_not_found")
    assert set(answer["error"]) == {"code", "message", "hint"}
    assert "Traceback" not in server.log()


def _cli(settings: Settings, home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVFLOW_")}
        env.update({"DEVFLOW_HOME": str(home), "DEVFLOW_DATABASE_URL": settings.database_url,
                    "DEVFLOW_WORKSPACE": str(settings.workspace)})
        return run_devflow(args, env)
    return run


def test_tokens_are_created_shown_once_listed_and_revoked_from_the_cli(
        app: App, settings: Settings, home: Path) -> None:
    cli = _cli(settings, home)
    made = cli("tokens", "create", "--actor", "alice", "--role", "approver", "--expires", "7d",
               "--json")
    assert made.returncode == 0, made.stderr
    created: dict[str, Any] = json.loads(made.stdout)
    assert tokens.prefix_of(created["token"]) == created["id"]
    assert created["role"] == "approver" and created["expires_at"]
    listed = cli("tokens", "list")
    assert created["id"] in listed.stdout and created["token"] not in listed.stdout
    kept = app.store.tokens.find(created["id"])
    assert kept is not None and created["token"] not in kept[1]
    assert app.authenticate(created["token"]).actor == "alice"
    bad = cli("tokens", "create", "--actor", "bob", "--role", "root")
    assert bad.returncode == 2
    revoked = cli("tokens", "revoke", created["id"], "--json")
    assert json.loads(revoked.stdout)["changed"] is True
    assert cli("tokens", "revoke", created["id"]).stdout.strip().endswith("revoked already")
    assert cli("tokens", "revoke", "nosuchtokn").returncode == 4
    assert created["id"] not in cli("tokens", "list").stdout
    assert created["id"] in cli("tokens", "list", "--all").stdout


def test_serving_beyond_loopback_needs_a_live_token(app: App, settings: Settings,
                                                     home: Path) -> None:
    cli = _cli(settings, home)
    refused = cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2, refused.stderr
    assert "bind_refused" in refused.stderr
    _, kept = app.token_create("root", "admin", "test", expires_in=3600)
    app.token_revoke(kept.prefix)
    refused = cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert (refused.returncode, "bind_refused" in refused.stderr) == (2, True)

"""The approvers' web page of `devflow serve` (a real process on loopback), on SQLite and
PostgreSQL: sessions, request forgery refused, pages that change nothing, decisions
through the page with the CLI's semantics, and a run whose owner is lost."""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devflow import tokens
from devflow.app import App
from devflow.settings import Settings
from tests.acceptance.serve_support import Client, Served, Stream, wait_for
from tests.acceptance.test_who_decides_cli import TEMPLATES
from tests.acceptance.web_support import Browser, Page
from tests.conftest import SCRIPTED

pytestmark = pytest.mark.slow


@pytest.fixture
def idle(settings: Settings, home: Path) -> Iterator[Served]:
    """A server without workers: its runs stay where they are put."""
    served = Served(settings, home, ("--workers", "0")).start()
    yield served
    assert served.stop() == 0, served.log()


@pytest.fixture
def driving(settings: Settings, home: Path) -> Iterator[Served]:
    served = Served(settings, home, ("--workers", "1", "--poll", "0.2")).start()
    yield served
    assert served.stop() == 0, served.log()


def start_body(repo: Path) -> dict[str, Any]:
    return {"repo": str(repo), "base": "main", "template": "development@1",
            "requirements": "Add a farewell function.", "binds": SCRIPTED,
            "scenarios": {"plan": "plan:0"}}


#: where a signed-out browser asking for /ui/ is sent
SIGN_IN = "/ui/login?next=%2Fui%2F"


def cookie_line(page: Page, name: str) -> str:
    (line,) = [c for c in page.set_cookies() if c.startswith(f"{name}=")]
    return line


def test_sign_in_opens_a_fresh_http_only_session_and_sign_out_or_revocation_ends_it(
        app: App, idle: Served) -> None:
    token, kept = app.token_create("alice", "approver", "test")
    browser = Browser(idle.port)
    assert browser.get("/").header("location") == "/ui/"
    assert browser.get("/ui/").header("location") == "/ui/login?next=%2Fui%2F"
    form = browser.get("/ui/login")
    assert form.status == 200
    assert form.testids("token") and form.testids("sign-in")
    assert "HttpOnly" in cookie_line(form, "devflow_login")

    refused = browser.post("/ui/login", {"token": token + "x", "csrf": form.csrf()})
    assert refused.status == 401
    assert "devflow_session" not in browser.cookies
    assert any("not known" in f for f in refused.flashes())

    signed = browser.sign_in(token)
    assert (signed.status, signed.header("location")) == (303, "/ui/")
    line = cookie_line(signed, "devflow_session")
    for flag in ("HttpOnly", "Path=/", "SameSite=lax", "Max-Age="):
        assert flag in line, line
    assert "Secure" not in line  # served over plain http on loopback
    first = browser.cookies["devflow_session"]
    runs = browser.get("/ui/")
    assert runs.status == 200
    assert "alice" in runs.text and runs.testids("nav-runs") and runs.testids("sign-out")

    # signing in again (as a planted id would be) gives a new id; the old one is dead
    browser.sign_in(token)
    second = browser.cookies["devflow_session"]
    assert second != first
    stale = Browser(idle.port, cookies={"devflow_session": first})
    assert stale.get("/ui/").header("location") == SIGN_IN
    # only the id's hash is kept
    assert app.store.sessions.find(second) is None
    assert app.store.sessions.find(tokens.digest(second)) is not None

    # sessions are kept in the database: a restarted server knows them
    assert idle.stop() == 0
    idle.start()
    browser.port = idle.port
    assert browser.get("/ui/").status == 200

    # sign out: the session ends, the cookie is cleared
    page = browser.get("/ui/")
    out = browser.post("/ui/logout", {"csrf": page.csrf()})
    assert (out.status, out.header("location")) == (303, "/ui/login")
    assert "devflow_session" not in browser.cookies
    replayed = Browser(idle.port, cookies={"devflow_session": second})
    assert replayed.get("/ui/").header("location") == SIGN_IN

    # behind a TLS proxy (X-Forwarded-Proto: https) the cookies are Secure
    proxied = Browser(idle.port)
    proxy = {"X-Forwarded-Proto": "https"}
    form = proxied.request("GET", "/ui/login", headers=proxy)
    assert "Secure" in cookie_line(form, "devflow_login")
    signed = proxied.post("/ui/login", {"token": token, "csrf": form.csrf()},
                          origin=f"https://127.0.0.1:{idle.port}", headers=proxy)
    assert signed.status == 303, signed.text
    assert "Secure" in cookie_line(signed, "devflow_session")

    # a deep link (a webhook's) leads through sign-in to its page; only to a page of /ui/
    deep = Browser(idle.port)
    sent = deep.get("/ui/approvals?all=1").header("location")
    assert sent == "/ui/login?next=%2Fui%2Fapprovals%3Fall%3D1"
    form = deep.get(sent)
    assert form.hidden("next") == "/ui/approvals?all=1"
    signed = deep.post("/ui/login", {"token": token, "csrf": form.csrf(),
                                     "next": form.hidden("next")})
    assert signed.header("location") == "/ui/approvals?all=1"
    for elsewhere in ("https://evil.example/", "//evil.example/ui/", "/api/v1/tokens"):
        form = deep.get("/ui/login")
        signed = deep.post("/ui/login", {"token": token, "csrf": form.csrf(),
                                         "next": elsewhere})
        assert signed.header("location") == "/ui/", elsewhere

    # revoking the token ends its sessions
    again = Browser(idle.port)
    again.sign_in(token)
    assert again.get("/ui/approvals").status == 200
    app.token_revoke(kept.prefix)
    assert again.get("/ui/approvals").header("location") == "/ui/login?next=%2Fui%2Fapprovals"
    assert again.sign_in(token).status == 401


def test_forged_posts_are_refused_before_anything_is_read(app: App, idle: Served) -> None:
    token = app.token_create("alice", "approver", "test")[0]
    browser = Browser(idle.port)
    browser.sign_in(token)
    csrf = browser.get("/ui/").csrf()

    def refused(page: Page, status: int, code: str) -> None:
        assert page.status == status, (page.status, page.text[:1000])
        assert code in page.text

    # CSRF token missing, wrong, or another session's
    refused(browser.post("/ui/logout", {}), 403, "csrf_failed")
    refused(browser.post("/ui/logout", {"csrf": "x" + csrf}), 403, "csrf_failed")
    other = Browser(idle.port)
    other.sign_in(token)
    refused(other.post("/ui/logout", {"csrf": csrf}), 403, "csrf_failed")
    # a form from another origin, or one that says not where it comes from
    refused(browser.post("/ui/logout", {"csrf": csrf}, origin="http://evil.example"),
            403, "csrf_failed")
    refused(browser.post("/ui/logout", {"csrf": csrf},
                         origin=f"https://127.0.0.1:{idle.port}"), 403, "csrf_failed")
    refused(browser.post("/ui/logout", {"csrf": csrf}, origin=None), 403, "csrf_failed")
    refused(browser.post("/ui/logout", {"csrf": csrf}, origin=None,
                         headers={"Referer": "http://evil.example/page"}), 403, "csrf_failed")
    # text/plain (what a cross-site form may send without asking) and JSON: not a form
    refused(browser.post("/ui/logout", {"csrf": csrf}, content_type="text/plain"),
            415, "unsupported_media_type")
    refused(browser.post("/ui/logout", {"csrf": csrf}, content_type="application/json"),
            415, "unsupported_media_type")
    # the sign-in form: its own CSRF cookie, and the same origin rule
    stranger = Browser(idle.port)
    form = stranger.get("/ui/login")
    refused(stranger.post("/ui/login", {"token": token, "csrf": "guess"}), 403, "csrf_failed")
    refused(stranger.post("/ui/login", {"token": token, "csrf": form.csrf()},
                          origin="http://evil.example"), 403, "csrf_failed")
    assert "devflow_session" not in stranger.cookies
    # a Host the server does not answer to (DNS rebinding): the API's allowlist
    for method in ("GET", "POST"):
        page = browser.request(method, "/ui/logout" if method == "POST" else "/ui/",
                               headers={"Host": "evil.example",
                                        "Content-Type": "application/x-www-form-urlencoded"},
                               body=f"csrf={csrf}".encode())
        refused(page, 403, "host_not_allowed")

    # none of it did anything: the session is live; a same-origin form (Referer only) works
    assert browser.get("/ui/").status == 200
    out = browser.post("/ui/logout", {"csrf": csrf}, origin=None,
                       headers={"Referer": f"{browser.origin}/ui/"})
    assert out.status == 303
    assert browser.get("/ui/").header("location") == SIGN_IN


def session_stream(port: int, cookie: str | None, path: str,
                   last_event_id: str | None = None) -> Stream:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Accept": "text/event-stream"}
    if cookie:
        headers["Cookie"] = f"devflow_session={cookie}"
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    conn.request("GET", path, headers=headers)
    return Stream(conn, conn.getresponse())


def snapshot(client: Client, run_id: str, approval_id: int) -> Any:
    run = client.call("GET", f"/runs/{run_id}")[1]
    approval = client.call("GET", f"/approvals/{approval_id}")[1]
    events = client.call("GET", f"/runs/{run_id}/events")[1]
    return run, approval["approval"], approval["decisions"], events["next"]


def test_an_approver_decides_once_through_the_page_and_a_viewer_only_looks(
        app: App, driving: Served, repo: Path) -> None:
    operator = driving.client(app.token_create("olga", "operator", "test")[0])
    status, body = operator.call("POST", "/runs", start_body(repo))
    assert status == 201, body
    run_id = body["run"]["id"]
    alice, vera = Browser(driving.port), Browser(driving.port)
    alice.sign_in(app.token_create("alice", "approver", "test")[0])
    vera.sign_in(app.token_create("vera", "viewer", "test")[0])

    # the page's own event stream: the session's, ids the durable seq
    anonymous = session_stream(driving.port, None, f"/ui/runs/{run_id}/events/stream")
    anonymous.close()
    assert anonymous.status == 401
    stream = session_stream(driving.port, alice.cookies["devflow_session"],
                            f"/ui/runs/{run_id}/events/stream")
    assert stream.status == 200
    requested = wait_for(stream, "approval.requested")
    stream.close()
    assert requested.id == str(requested.data["seq"])
    gate = requested.data["payload"]
    approval_id = gate["approval_id"]
    again = session_stream(driving.port, alice.cookies["devflow_session"],
                           f"/ui/runs/{run_id}/events/stream",
                           last_event_id=str(requested.data["seq"] - 1))
    assert next(again.events()).id == requested.id
    again.close()

    # GETs change nothing, whoever looks and whatever they look at
    before = snapshot(operator, run_id, approval_id)
    for browser in (vera, alice):
        runs = browser.get("/ui/")
        (row,) = [r for r in runs.text.split("<tr") if 'data-testid="run-row"' in r]
        assert f'href="/ui/runs/{run_id}"' in row
        run = browser.get(f"/ui/runs/{run_id}")
        assert run.status == 200
        assert '<span class="state state-awaiting_approval" data-testid="run-state">' \
               'awaiting_approval</span>' in run.text
        phases = run.testids("phase")
        assert phases and any('data-phase="spec"' in p and 'data-state=' in p for p in phases)
        assert f"/ui/approvals/{approval_id}" in run.text
        assert browser.get(f"/ui/runs/{run_id}/live").testids("run-state")
        inbox = browser.get("/ui/approvals")
        (row,) = [r for r in inbox.text.split("<tr") if 'data-testid="approval-row"' in r]
        assert f'href="/ui/approvals/{approval_id}"' in row
        assert browser.get("/ui/approvals?all=1").status == 200
        shown = browser.get(f"/ui/approvals/{approval_id}")
        assert gate["artifact"]["sha256"] in shown.text
        assert shown.testids("comment")
        for path in ("/ui/logout", f"/ui/approvals/{approval_id}/decide"):
            assert browser.get(path).status == 405
    assert snapshot(operator, run_id, approval_id) == before

    # a viewer sees buttons that cannot be clicked, and a forged click is refused
    shown = vera.get(f"/ui/approvals/{approval_id}")
    for button in ("approve", "request-changes", "reject"):
        (tag,) = shown.testids(button)
        assert "disabled" in tag, tag
    refused = vera.post(f"/ui/approvals/{approval_id}/decide", {
        "csrf": shown.csrf(), "action": "approve", "token": shown.hidden("token"),
        "round": shown.hidden("round"), "evidence": shown.hidden("evidence")})
    assert refused.status == 403 and "role_forbidden" in refused.text
    assert snapshot(operator, run_id, approval_id) == before

    # the approver: changes without saying which are refused, as on the CLI
    late = alice.get(f"/ui/approvals/{approval_id}")  # a tab left open, decided later
    shown = alice.get(f"/ui/approvals/{approval_id}")
    for button in ("approve", "request-changes", "reject"):
        (tag,) = shown.testids(button)
        assert "disabled" not in tag, tag
    form = {"csrf": shown.csrf(), "token": shown.hidden("token"),
            "round": shown.hidden("round"), "evidence": shown.hidden("evidence"),
            "comment": ""}
    unsaid = alice.post(f"/ui/approvals/{approval_id}/decide",
                        {**form, "action": "request_changes"})
    assert unsaid.status == 422
    assert any(f.startswith("not decided") for f in unsaid.flashes())

    # a double click: two posts of one form, one decision, the second "already decided"
    first = alice.post(f"/ui/approvals/{approval_id}/decide", {**form, "action": "approve"})
    second = alice.post(f"/ui/approvals/{approval_id}/decide", {**form, "action": "approve"})
    assert (first.status, second.status) == (303, 303)
    decided = alice.follow(second)
    assert any("already decided" in f for f in decided.flashes()), decided.flashes()
    for button in ("approve", "request-changes", "reject"):
        (tag,) = decided.testids(button)
        assert "disabled" in tag, tag
    (decision,) = operator.call("GET", f"/approvals/{approval_id}")[1]["decisions"]
    assert (decision["actor"], decision["action"]) == ("alice", "approve")
    assert decision["authentication"]["method"] == "token"

    # a late click from the tab opened before: refused, "already decided"
    clicked = alice.post(f"/ui/approvals/{approval_id}/decide", {
        "csrf": late.csrf(), "action": "reject", "token": late.hidden("token"),
        "round": late.hidden("round"), "evidence": late.hidden("evidence")})
    assert clicked.status == 409
    assert any("already decided" in f for f in clicked.flashes()), clicked.flashes()
    assert len(operator.call("GET", f"/approvals/{approval_id}")[1]["decisions"]) == 1

    # the run goes on in the worker, to its next gate
    stream = session_stream(driving.port, alice.cookies["devflow_session"],
                            f"/ui/runs/{run_id}/events/stream", last_event_id=requested.id)
    review = wait_for(stream, "approval.requested").data["payload"]
    stream.close()
    assert review["gate"] == "final_review"

    # a gate with sections: a rejected section says which changes, without a comment
    shown = alice.get(f"/ui/approvals/{review['approval_id']}")
    sections = re.findall(r'name="section:([^"]+)" value="reject"', shown.text)
    assert sections == ["truncate-off-by-one", "cli-help-text"]  # the review's findings
    assert 'data-severity="minor"' in shown.text and 'data-severity="info"' in shown.text
    # ... posted by 8 clicks at once: one decision, the others told it was decided
    form = {"csrf": shown.csrf(), "action": "request_changes", "token": shown.hidden("token"),
            "round": shown.hidden("round"), "evidence": shown.hidden("evidence"),
            "comment": "", "section:truncate-off-by-one": "reject",
            "section:cli-help-text": "approve"}
    barrier = threading.Barrier(8)
    answers: list[Page] = []

    def click() -> None:
        barrier.wait()
        answers.append(alice.post(f"/ui/approvals/{review['approval_id']}/decide", form))
    clicks = [threading.Thread(target=click) for _ in range(8)]
    for thread in clicks:
        thread.start()
    for thread in clicks:
        thread.join()
    assert [a.status for a in answers] == [303] * 8, [a.text[:500] for a in answers]
    told = alice.get(f"/ui/approvals/{review['approval_id']}").flashes()
    assert sum("request changes recorded" in f for f in told) == 1, told
    assert sum(f.startswith("already decided") for f in told) == 7, told
    (decision,) = operator.call("GET", f"/approvals/{review['approval_id']}")[1]["decisions"]
    assert (decision["action"], decision["sections"]) == (
        "request_changes", {"truncate-off-by-one": "reject", "cli-help-text": "approve"})

    # the run page: the diff against the base (App.diff), invocations; once ended, the report
    run = alice.get(f"/ui/runs/{run_id}")
    assert len(run.testids("diff")) == 1
    assert "diff --git" in run.text
    assert "scripted" in run.text  # the invocations' backend
    assert run.testids("report") == []
    status, body = operator.call("POST", f"/runs/{run_id}/abort", {"reason": "enough"})
    assert status == 200, body
    ended = alice.get(f"/ui/runs/{run_id}")
    assert '<span class="state state-aborted" data-testid="run-state">aborted</span>' \
        in ended.text
    assert ended.testids("report") and run_id in ended.text


def test_a_run_whose_worker_stopped_renewing_its_lease_shows_owner_lost(
        app: App, idle: Served, repo: Path) -> None:
    operator = idle.client(app.token_create("olga", "operator", "test")[0])
    status, body = operator.call("POST", "/runs", start_body(repo))
    assert status == 201, body
    run_id = body["run"]["id"]
    browser = Browser(idle.port)
    browser.sign_in(app.token_create("vera", "viewer", "test")[0])
    fresh = browser.get(f"/ui/runs/{run_id}")
    assert not fresh.testids("owner-lost")
    assert "No change yet." in fresh.text  # its branch is at the base: an empty diff

    # a worker took the run and stopped renewing its lease (as a killed one does): the
    # lease as stored ran out a second ago
    assert app.store.leases.claim(run_id, "worker-gone", seconds=-1) is not None
    page = browser.get(f"/ui/runs/{run_id}")
    assert len(page.testids("owner-lost")) == 1
    assert "owner lost" in page.text and "worker-gone" in page.text
    assert browser.get("/ui/").testids("owner-lost")
    assert browser.get(f"/ui/runs/{run_id}/live").testids("owner-lost")


@pytest.fixture
def restricted(settings: Settings, home: Path, tmp_path: Path) -> Iterator[Served]:
    """A server whose restricted@1 gate names the group leads (alice) as approvers."""
    templates = tmp_path / "templates"
    templates.mkdir()
    for name, text in TEMPLATES.items():
        (templates / name).write_text(text, encoding="utf-8")
    (home / "config.yaml").write_text(yaml.safe_dump(
        {"groups": {"leads": ["alice"], "operators": ["olga"]}}), encoding="utf-8")
    served = Served(settings, home, ("--workers", "1", "--poll", "0.2"),
                    env={"DEVFLOW_TEMPLATES_DIR": str(templates)}).start()
    yield served
    assert served.stop() == 0, served.log()


def test_a_restricted_gate_is_decided_on_the_page_by_its_approvers_only(
        app: App, restricted: Served, repo: Path) -> None:
    operator = restricted.client(app.token_create("olga", "operator", "test")[0])
    status, body = operator.call("POST", "/runs", {
        "repo": str(repo), "base": "main", "template": "restricted@1",
        "requirements": "Do the steps.", "binds": {"implementer": "scripted-implementer"}})
    assert status == 201, body
    run_id = body["run"]["id"]
    stream = operator.stream(f"/runs/{run_id}/events/stream")
    approval_id = wait_for(stream, "approval.requested").data["payload"]["approval_id"]
    stream.close()
    path = f"/ui/approvals/{approval_id}"

    def click(browser: Browser) -> Page:
        shown = browser.get(path)
        return browser.post(f"{path}/decide", {
            "csrf": shown.csrf(), "action": "approve", "token": shown.hidden("token"),
            "round": shown.hidden("round"), "evidence": shown.hidden("evidence")})

    # an admin's token reaches the route, but its actor is not among the gate's approvers
    mallory = Browser(restricted.port)
    mallory.sign_in(app.token_create("mallory", "admin", "test")[0])
    refused = click(mallory)
    assert refused.status == 403
    assert any(f.startswith("not decided") and "leads (alice)" in f
               for f in refused.flashes()), refused.flashes()
    assert operator.call("GET", f"/approvals/{approval_id}")[1]["decisions"] == []

    alice = Browser(restricted.port)
    alice.sign_in(app.token_create("alice", "approver", "test")[0])
    done = click(alice)
    assert done.status == 303, done.text[:2000]
    (decision,) = operator.call("GET", f"/approvals/{approval_id}")[1]["decisions"]
    assert decision["actor"] == "alice"

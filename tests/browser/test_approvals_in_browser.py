"""A person approves a run's gates in Chromium, on SQLite and PostgreSQL.

``devflow serve`` runs as a real process on loopback with one embedded worker; a run
of development@1 (scripted agents) is started through the API; Playwright drives
Debian's Chromium through the web pages by their ``data-testid`` hooks. What the
pages did is checked in the store too (the decisions recorded), not only on screen.
With ``DEVFLOW_SCREENSHOTS=docs/screenshots`` the SQLite half writes the README's
screenshots.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from devflow.app import App
from devflow.settings import Settings
from tests.browser import support
from tests.browser.conftest import GatedRun, People
from tests.browser.support import expect

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def sign_in(page: Any, token: str) -> None:
    page.goto("/")
    expect(page.get_by_test_id("token")).to_be_visible()  # / leads to the sign-in page
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("nav-approvals")).to_be_visible()


def open_request(page: Any, approval_id: int) -> None:
    """From the inbox, the request page of ``approval_id``."""
    page.get_by_test_id("nav-approvals").click()
    rows = page.get_by_test_id("approval-row")
    expect(rows).to_have_count(1)
    support.open_row(rows.first)
    page.wait_for_url(f"**/{approval_id}")


def decisions(app: App, approval_id: int) -> list[tuple[str, str]]:
    return [(d.action, d.actor) for d in app.approval(approval_id)[1]]


def test_the_browser_is_debian_s_chromium(chromium: Any) -> None:
    path = support.chromium_path()
    assert path is not None
    shown = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    assert chromium.version in shown.stdout


def test_a_person_asks_for_changes_approves_and_watches_the_run_complete_live(
        app: App, settings: Settings, browser: Any, people: People, gated_run: GatedRun,
        shots: support.Shots) -> None:
    if not settings.database_url.startswith("sqlite"):
        shots = support.Shots(None)  # one set of screenshots: the SQLite half's
    page = browser.new_page()
    page.goto("/")
    expect(page.get_by_test_id("sign-in")).to_be_visible()
    assert "/ui/login" in page.url
    shots.take(page, "login")
    sign_in(page, people.approver)

    # round 1 of the spec's review: changes asked for, with a comment
    spec = gated_run.next_gate()
    assert (spec["gate"], spec["round"]) == ("spec_review", 1)
    page.get_by_test_id("nav-approvals").click()
    expect(page.get_by_test_id("approval-row")).to_have_count(1)
    shots.take(page, "inbox")
    open_request(page, spec["approval_id"])
    expect(page.get_by_test_id("approve")).to_be_enabled()
    comment = "Say what farewell() returns for an empty name."
    page.get_by_test_id("comment").fill(comment)
    shots.take(page, "request", full_page=True)
    page.get_by_test_id("request-changes").click()
    expect(page.get_by_test_id("flash")).to_contain_text("request changes recorded")
    assert decisions(app, spec["approval_id"]) == [("request_changes", "alice")]
    (recorded,) = app.approval(spec["approval_id"])[1]
    assert recorded.comment == comment

    # round 2: approved
    again = gated_run.next_gate()
    assert (again["gate"], again["round"]) == ("spec_review", 2)
    open_request(page, again["approval_id"])
    page.get_by_test_id("approve").click()
    expect(page.get_by_test_id("flash")).to_contain_text("approve recorded")
    assert decisions(app, again["approval_id"]) == [("approve", "alice")]

    # the run page, watched while the final review is decided in another tab
    final = gated_run.next_gate()
    assert final["gate"] == "final_review"
    page.get_by_test_id("nav-runs").click()
    support.open_row(page.get_by_test_id("run-row").first)
    page.wait_for_url(f"**/{gated_run.id}")
    state = page.get_by_test_id("run-state")
    expect(state).to_have_text("awaiting_approval")
    review = page.locator("[data-testid=phase][data-phase=review]")
    expect(review).to_have_attribute("data-state", "awaiting_approval")
    page.evaluate(support.WATCH_LIVE)
    shots.take(page, "run-live")

    other = browser.new_page()
    other.goto("/")
    open_request(other, final["approval_id"])
    other.get_by_test_id("approve").click()
    expect(other.get_by_test_id("flash")).to_contain_text("approve recorded")
    other.close()

    # the page followed the run as it went on, from its event stream, never reloaded
    expect(state).to_have_text("completed")
    expect(review).to_have_attribute("data-state", "completed")
    expect(page.locator("#live tr", has_text="final_review")).to_contain_text("approved")
    phases = page.get_by_test_id("phase")
    for n in range(phases.count()):
        expect(phases.nth(n)).to_have_attribute("data-state", "completed")
    completed = next(e.seq for e in app.events(gated_run.id) if e.type == "run.completed")
    support.wait_until(page, lambda: completed in support.seen_live(page)["seqs"])
    live = support.seen_live(page)
    assert {"run:awaiting_approval", "run:completed", "review:awaiting_approval",
            "review:completed"} <= set(live["seen"]), live
    # each event of the log once, none missed, in the events table as they came
    stored = [e.seq for e in app.events(gated_run.id)]
    assert sorted(live["seqs"]) == stored[:len(live["seqs"])], live
    assert app.view(gated_run.id).run.state == "completed"
    expect(page.get_by_test_id("live-status")).to_have_text("ended")
    assert page.evaluate("() => window.devflowMark") == "not reloaded"
    shots.take(page, "completed")

    page.get_by_test_id("sign-out").click()
    page.goto("/ui/approvals")
    expect(page.get_by_test_id("sign-in")).to_be_visible()


def test_a_double_click_decides_once_and_the_second_click_says_already_decided(
        app: App, browser: Any, people: People, gated_run: GatedRun) -> None:
    spec = gated_run.next_gate()
    page = browser.new_page()
    sign_in(page, people.approver)
    open_request(page, spec["approval_id"])
    late = browser.new_page()  # the same request, opened before the decision
    late.goto(page.url)
    expect(late.get_by_test_id("approve")).to_be_enabled()

    # the second click comes while the first one's answer is still on its way: both
    # posts reach the server (the test holds the answers until the second was sent)
    posts: list[Any] = []
    page.route("**/decide", lambda route: posts.append(route))  # noqa: PLW0108 - playwright
    # marks its handlers with an attribute, which a bound method of a list cannot take
    button = page.get_by_test_id("approve")
    button.scroll_into_view_if_needed()
    box = button.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(x, y)
    support.wait_until(page, lambda: len(posts) == 1)
    first = posts[0].fetch(max_redirects=0)  # the server has it: decided
    assert first.status == 303
    assert decisions(app, spec["approval_id"]) == [("approve", "alice")]
    page.mouse.click(x, y)  # the page still shows the form
    support.wait_until(page, lambda: len(posts) == 2)
    assert posts[1].request.post_data == posts[0].request.post_data  # the same form again
    second = posts[1].fetch(max_redirects=0)
    assert second.status == 303
    posts[1].fulfill(response=second)
    page.wait_for_url(f"**/approvals/{spec['approval_id']}")
    expect(page.get_by_test_id("flash").filter(has_text="already decided")).to_be_visible()
    assert decisions(app, spec["approval_id"]) == [("approve", "alice")]
    for name in ("approve", "request-changes", "reject"):
        expect(page.get_by_test_id(name)).to_be_disabled()
    page.unroute("**/decide")

    # a click in the tab opened before the decision (another decision token): refused
    late.get_by_test_id("approve").click()
    expect(late.get_by_test_id("flash")).to_contain_text("already decided")
    assert decisions(app, spec["approval_id"]) == [("approve", "alice")]

    # Chromium's own double click on the next gate: one post, one decision
    final = gated_run.next_gate()
    assert final["gate"] == "final_review"
    open_request(page, final["approval_id"])
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method == "POST" else None)
    page.get_by_test_id("approve").dblclick()
    expect(page.get_by_test_id("flash").first).to_be_visible()
    assert decisions(app, final["approval_id"]) == [("approve", "alice")]
    assert 1 <= len(sent) <= 2, sent


def test_a_viewer_sees_the_request_and_cannot_decide_it(
        app: App, browser: Any, people: People, gated_run: GatedRun) -> None:
    spec = gated_run.next_gate()
    page = browser.new_page()
    sign_in(page, people.viewer)
    open_request(page, spec["approval_id"])
    for button in ("approve", "request-changes", "reject"):
        expect(page.get_by_test_id(button)).to_be_disabled()

    # the button forced back on: the server refuses what the page would not offer
    page.get_by_test_id("approve").evaluate("b => b.removeAttribute('disabled')")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_test_id("approve").click()
    assert answer.value.status == 403
    assert decisions(app, spec["approval_id"]) == []
    assert app.view(gated_run.id).run.state == "awaiting_approval"

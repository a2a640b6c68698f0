"""Debian's Chromium driven by Playwright, and the screenshots the docs show.

Playwright never downloads a browser here: ``launch`` starts the system's Chromium
(``/usr/bin/chromium``, which scripts/_browser.sh installs; ``DEVFLOW_CHROMIUM`` names
another). When Chromium or the playwright package is missing, a browser test skips
saying so, and fails under ``CI=true`` (CI never skips them).

``Shots`` writes a page's screenshot as ``<dir>/<name>.png`` when
``DEVFLOW_SCREENSHOTS=<dir>`` is set (``DEVFLOW_SCREENSHOTS=docs/screenshots`` makes the
README's), and nothing otherwise, so that an ordinary test run leaves the tree alone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
#: the viewport of every page (and so the screenshots' size)
VIEWPORT = {"width": 1200, "height": 820}


def chromium_path() -> str | None:
    named = os.environ.get("DEVFLOW_CHROMIUM")
    if named:
        return shutil.which(named)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing(message: str) -> None:
    """Skip locally, fail in CI, saying what is missing and what installs it."""
    if IN_CI:
        pytest.fail(f"{message} (CI never skips the browser tests)")
    pytest.skip(message)


def sync_playwright() -> Any:
    """playwright's ``sync_playwright``, or a skip (a failure in CI) saying it is missing."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError as exc:
        missing(f"the playwright package is not installed ({exc}): it is a dev dependency "
                "(pyproject.toml); scripts/test installs it")
        raise  # not reached: missing() skips or fails
    return start()


def launch(playwright: Any) -> Any:
    """The system's Chromium, headless, launched by Playwright (never a downloaded one)."""
    path = chromium_path()
    if path is None:
        missing("Chromium is not installed (looked for DEVFLOW_CHROMIUM, chromium, "
                "chromium-browser): scripts/test installs Debian's package chromium "
                "(scripts/_browser.sh)")
    return playwright.chromium.launch(executable_path=path, headless=True)


@dataclass
class Shots:
    """Screenshots for the docs, taken only when ``DEVFLOW_SCREENSHOTS`` names a folder."""

    folder: Path | None
    taken: list[Path] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> Shots:
        named = os.environ.get("DEVFLOW_SCREENSHOTS")
        return cls(Path(named) if named else None)

    def take(self, page: Any, name: str, *, full_page: bool = False) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        self.taken.append(path)


def expect(target: Any) -> Any:
    """playwright's ``expect``, waiting up to a minute (a loaded 2-core machine runs the
    scripted agents of a phase in seconds)."""
    from playwright.sync_api import expect as playwright_expect
    playwright_expect.set_options(timeout=60_000)
    return playwright_expect(target)


def open_row(row: Any) -> None:
    """Follow the link of a list row (the row itself, or the first link inside it)."""
    row.locator("xpath=self::a | .//a").first.click()


#: records, in the tab's sessionStorage (it outlives a reload), what the page showed as
#: it changed in place: each state of the run and of its phases, and the events table's
#: seqs (a MutationObserver of this document only: a reloaded page records nothing); and
#: leaves a mark on ``window`` that only a reload would clear
WATCH_LIVE = """() => {
  window.devflowMark = 'not reloaded';
  const seen = [];
  const note = () => {
    const run = document.querySelector('[data-testid=run-state]');
    const found = run ? ['run:' + run.textContent.trim()] : [];
    for (const p of document.querySelectorAll('[data-testid=phase]')) {
      found.push(p.dataset.phase + ':' + p.dataset.state);
    }
    for (const item of found) { if (!seen.includes(item)) seen.push(item); }
    const seqs = [...document.querySelectorAll('#events tr[data-seq]')]
      .map(r => Number(r.dataset.seq));
    sessionStorage.setItem('devflowLive', JSON.stringify({seen: seen, seqs: seqs}));
  };
  new MutationObserver(note).observe(document.body, {subtree: true, childList: true,
                                                     attributes: true, characterData: true});
  note();
}"""
SEEN_LIVE = "() => JSON.parse(sessionStorage.getItem('devflowLive'))"


def seen_live(page: Any) -> dict[str, Any]:
    """What ``WATCH_LIVE`` recorded (read again when the page was reloading meanwhile)."""
    from playwright.sync_api import Error
    for _ in range(100):
        try:
            seen = page.evaluate(SEEN_LIVE)
        except Error:  # the page reloaded itself while it was read
            page.wait_for_load_state()
            continue
        assert isinstance(seen, dict)
        return seen
    raise AssertionError("the page never stopped reloading")


def wait_until(page: Any, condition: Any, tries: int = 3000) -> None:
    """Let the page's events run until ``condition()`` holds (a minute at most)."""
    for _ in range(tries):
        if condition():
            return
        page.wait_for_timeout(20)
    raise AssertionError("the browser never got there")

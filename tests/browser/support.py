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

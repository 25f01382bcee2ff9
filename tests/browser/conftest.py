"""Fixtures of the browser tests: a real Courier server per test and Debian's Chromium driven
by Playwright. Without Playwright or Chromium the tests are skipped, with the reason."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.procs import free_port
from web_harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    CourierServer,
    chromium_problem,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext
    from web_harness import NewContext

_chromium_checked: list[str | None] = []


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (installed with apt-get when missing, as root)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright is not installed: {exc}")

    if not _chromium_checked:
        _chromium_checked.append(chromium_problem())
    problem = _chromium_checked[0]
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {problem}")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(autouse=True)
def _browser_first(browser: Browser) -> None:
    """Skip before starting any server when there is no browser to drive."""


@pytest.fixture
def courier_server(tmp_path: Path) -> Iterator[CourierServer]:
    """A server of the test's own, on a fixed port and data dir so it can be restarted."""
    courier = CourierServer(tmp_path / "data", free_port(), tmp_path / "server.log")
    courier.start()
    try:
        yield courier
    finally:
        courier.stop()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[NewContext]:
    """Makes browser contexts (separate storage: one per person); closes them at the end.
    An uncaught JavaScript error in any page fails the test."""
    made: list[BrowserContext] = []
    errors: list[str] = []

    def make(*, phone: bool = False) -> BrowserContext:
        if phone:
            context = browser.new_context(viewport={"width": 390, "height": 760})
        else:
            context = browser.new_context(viewport={"width": 1000, "height": 680})
        context.set_default_timeout(TIMEOUT_MS)
        context.on("weberror", lambda error: errors.append(str(error.error)))
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"

"""A headless browser for tests: Debian's chromium driven by Playwright, offline.

``browser_page`` is a fresh page (in a fresh context) per test. Every request
other than ``file:`` and ``data:`` is refused and recorded, so a page that
reaches for the network fails like a page with a script error:
``page.js_errors`` lists console errors, uncaught exceptions and refused
requests. Playwright never downloads a browser here (no ``playwright install``):
it drives ``/usr/bin/chromium``, which ``.ci/run`` installs with apt.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator["object"]:
    """One headless chromium per test session (per xdist worker)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"browser tests need Debian's chromium at {CHROMIUM}: "
                    "apt-get install chromium (.ci/run does this); never `playwright install`", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("browser tests need the playwright package: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def browser_page(chromium_browser) -> Iterator["object"]:
    """A fresh page in a fresh context; ``page.js_errors`` collects console errors, page errors, network use."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.js_errors = errors

    def offline(route) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            errors.append(f"network request refused: {url}")
            route.abort()

    context.route("**/*", offline)
    page.on("console", lambda message: errors.append(f"console.{message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    yield page
    context.close()

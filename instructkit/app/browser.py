"""Headless Chromium for the chat app's screenshot and the browser tests: Debian's binary driven by
Playwright (Playwright's own browser download needs the internet)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from instructkit.errors import UserError


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not path:
        raise UserError("Chromium is not installed: `make chromium` installs Debian's package")
    return path


@contextmanager
def open_page(url: str, width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A Playwright page at `url` in headless Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            yield page
        finally:
            browser.close()

"""A real headless Chromium for tests of what a person looks at (Debian's ``chromium``, driven by Playwright).

Playwright's own browser download cannot work on these machines, so it drives the system
browser. :class:`Page` wraps a Playwright page and records every console error, page error
and failed request: a test opens a page, acts on it, and ends with ``page.assert_clean()``.

Screenshots go to ``$TERMIGEN_SCREENSHOTS`` when it is set (the closing note's pictures),
otherwise into the test's own directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str | None:
    """The system Chromium, or None."""
    explicit = os.environ.get("TERMIGEN_CHROMIUM")
    if explicit:
        return explicit
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


class Page:
    """A Playwright page that keeps what went wrong on it."""

    def __init__(self, page: Any, shots_dir: Path) -> None:
        self.page = page
        self.shots_dir = shots_dir
        self.errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("requestfailed", lambda req: self.errors.append(f"request failed: {req.url} {req.failure}"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    def open(self, path_or_url: str | Path) -> None:
        url = str(path_or_url)
        if not url.startswith(("http://", "https://", "file://")):
            url = Path(url).resolve().as_uri()
        self.page.goto(url, wait_until="load")

    def screenshot_to(self, name: str, *, full_page: bool = True) -> Path:
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        target = self.shots_dir / f"{name}.png"
        self.page.screenshot(path=str(target), full_page=full_page)
        return target

    def assert_clean(self) -> None:
        assert not self.errors, "the page reported errors:\n" + "\n".join(self.errors)


@contextmanager
def chromium(shots_dir: Path) -> Iterator[Any]:
    """A headless system Chromium (a Playwright ``Browser``)."""
    required = os.environ.get("TERMIGEN_REQUIRE_BROWSER") == "1"  # scripts/test.sh: CI runs these tests
    try:
        from playwright import sync_api
    except ImportError:
        (pytest.fail if required else pytest.skip)("playwright is not installed (pip install -e '.[test]')")
    exe = chromium_path()
    if exe is None:
        (pytest.fail if required else pytest.skip)("no Chromium found (scripts/setup-browser.sh installs Debian's chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"], headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium per test module."""
    with chromium(tmp_path_factory.mktemp("shots")) as b:
        yield b


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Page]:
    """A fresh page (own context: no state shared between tests) that records its errors."""
    shots = Path(os.environ["TERMIGEN_SCREENSHOTS"]) if os.environ.get("TERMIGEN_SCREENSHOTS") else tmp_path / "shots"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield Page(context.new_page(), shots)
    finally:
        context.close()

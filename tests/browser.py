"""Debian's Chromium driven over the DevTools protocol by Playwright: one launch for every test.

No browser is downloaded (``.ci/run`` installs Debian's ``chromium``); under ``CI=1`` a
missing Chromium or Playwright fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def need(what: str, missing: bool) -> None:
    """Skip when ``what`` is missing, but fail under CI=1 (CI installs everything)."""
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {what} is missing")
        pytest.skip(f"{what} is missing")


@contextmanager
def chromium(profile: Path, *, width: int = 1280, height: int = 1100) -> Iterator[Any]:
    """A headless Chromium with a fresh profile under ``profile``: a Playwright context."""
    need("chromium (Debian package 'chromium')", CHROMIUM is None)
    try:
        from playwright import sync_api
    except ImportError:
        need("playwright (pip install playwright; no browser download needed)", True)
        raise
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context
        finally:
            context.close()

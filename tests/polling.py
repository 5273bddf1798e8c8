"""Waiting on a real process from a test: poll a condition, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def wait_until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """In a trio test: poll ``check`` (on the real clock) until it is truthy, or fail."""
    import trio

    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)

"""A redis-server for the bus tests (skipped without one, except under CI)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .redisserver import RedisServer, RedisUnavailable


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer().start()
    except RedisUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but redis-server cannot be started: {exc}")
        pytest.skip(f"no redis-server: {exc}")
    try:
        yield server
    finally:
        server.destroy()

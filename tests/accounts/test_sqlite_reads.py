"""SQLite lookups that arrive together share one thread call, each with its own answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from trioserver.accounts.sqlite import SQLiteStore
from trioserver.accounts.store import Account, StoreUnavailable

T = TypeVar("T")


class CountingStore(SQLiteStore):
    """Counts the thread calls (the seam every store call goes through)."""

    calls = 0

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        self.calls += 1
        return await super()._run(call, *args)


async def test_concurrent_lookups_share_a_thread_call(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "a.sqlite3")
    try:
        for i in range(50):
            assert await store.create(Account(f"user{i}", f"User{i}", "h"))
        store.calls = 0
        results: dict[str, Account | None] = {}
        limits: dict[str, dict[str, float]] = {}

        async def get(i: int) -> None:
            results[f"user{i}"] = await store.get(f"user{i}")

        async def get_with_limits(i: int) -> None:
            _, limits[f"user{i}"] = await store.get_with_limits(f"user{i}", [f"x{i}"])

        async with trio.open_nursery() as nursery:
            for i in range(100):  # the first in line lets the others queue behind it
                nursery.start_soon(get, i)
        assert store.calls == 1
        assert {k for k, v in results.items() if v is not None} == {f"user{i}" for i in range(50)}
        assert all(results[f"user{i}"].name == f"User{i}" for i in range(50))  # type: ignore[union-attr]
        assert all(results[f"user{i}"] is None for i in range(50, 100))
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(get_with_limits, i)
        assert limits == {f"user{i}": {} for i in range(10)}
        assert store.calls == 2
    finally:
        await store.aclose()


async def test_a_failed_grouped_read_fails_every_lookup_in_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SQLiteStore(tmp_path / "file" / "a.sqlite3")
    errors: list[Any] = []

    async def get(i: int) -> None:
        with pytest.raises(StoreUnavailable) as info:
            await store.get(f"user{i}")
        errors.append(info.value)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(get, i)
    assert len(errors) == 5
    await store.aclose()

"""The store a URL names: ``sqlite:///path``, ``postgresql://...`` or ``memory:``.

Apart from the interface (:mod:`.store`) so that the backends, which import the
interface, are not imported by it in turn.
"""

from __future__ import annotations

from pathlib import Path

from .postgres import PostgresStore
from .sqlite import SQLiteStore
from .store import AccountStore, MemoryStore, redact_url

__all__ = ["open_store", "sqlite_path"]


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///relative`` or ``sqlite:////absolute`` URL names."""
    path = url.removeprefix("sqlite://")
    if not path.startswith("/") or path == "/":
        raise ValueError(f"{url!r}: expected 'sqlite:///relative/path' or 'sqlite:////absolute'")
    return Path(path[1:])


def open_store(url: str, *, pool_size: int = 4, connect_timeout: float = 5.0) -> AccountStore:
    """The store ``url`` names (not yet connected); ``ValueError`` for a URL it cannot serve."""
    if url in ("memory:", "memory://"):
        return MemoryStore()
    if url.startswith("sqlite:"):
        return SQLiteStore(sqlite_path(url), pool_size=pool_size, busy_timeout=connect_timeout)
    if url.startswith(("postgresql:", "postgres:")):
        return PostgresStore(url, pool_size=pool_size, connect_timeout=connect_timeout)
    raise ValueError(
        f"account store URL {redact_url(url)!r}: "
        "expected sqlite:///..., postgresql://... or memory:"
    )

"""The account-store interface, its records and errors, and the in-memory store.

A store keeps one row per account, keyed by the case-folded name key
(``names.name_key``). It knows nothing about passwords beyond the opaque hash
string. Every backend method is async and must not block the event loop (the
SQLite and PostgreSQL backends run their calls in threads behind a capacity
limiter). Any failure of the store itself (database down, disk full, timeout)
is raised as :class:`StoreUnavailable`; callers answer "server unavailable".

Backends: ``sqlite:///path`` (:mod:`.sqlite`), ``postgresql://...``
(:mod:`.postgres`), ``memory:`` (:class:`MemoryStore`, for tests); the URL that
picks one is read by :mod:`.backends`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from typing import Final

import attrs
import trio

from .shared_limits import LimitUpdate, MemoryLimits

__all__ = [
    "SCHEMA_VERSION",
    "Account",
    "AccountStore",
    "MemoryStore",
    "StoreUnavailable",
    "pending_migrations",
    "redact_url",
]

#: The schema version this code writes; backends migrate older databases up to it at start.
#: 2 added the shared login limits (``trioserver_limits``).
SCHEMA_VERSION: Final = 2


class StoreUnavailable(Exception):
    """The account store could not do its job (down, full, timed out); retry later."""


def pending_migrations(current: int) -> range:
    """The schema versions a database at version ``current`` still needs, in order.

    A database newer than this trioserver is refused rather than used: its rows
    may mean something this code does not know.
    """
    if current > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the database has schema version {current}, newer than this trioserver's "
            f"{SCHEMA_VERSION}: upgrade trioserver"
        )
    return range(current + 1, SCHEMA_VERSION + 1)


@attrs.frozen
class Account:
    """One stored account."""

    key: str  #: the comparison key (case-folded name); unique
    name: str  #: the name as registered
    password_hash: str = attrs.field(repr=False)
    itype: int = 0  #: the register request's iType, kept for applications
    created_at: float = attrs.Factory(time.time)


class AccountStore(abc.ABC):
    """Where accounts live. One instance per worker; safe for concurrent use by its tasks."""

    #: A short description for logs (no credentials).
    description: str = ""

    @abc.abstractmethod
    async def create(self, account: Account) -> bool:
        """Insert ``account`` durably; False if its key is taken. Returns only once durable."""

    @abc.abstractmethod
    async def get(self, key: str) -> Account | None:
        """The account with this key, or None."""

    @abc.abstractmethod
    async def set_password_hash(self, key: str, old: str, new: str) -> bool:
        """Replace the hash if it is still ``old`` (re-hashing on login); False otherwise."""

    async def create_many(self, accounts: Sequence[Account]) -> list[bool]:
        """Insert each of ``accounts`` durably, in order; for each, False if its key was taken
        (also by an earlier one of them). Returns once all are durable.

        The batched register path calls this once per batch; backends override it to
        do it in one transaction (one commit, one fsync). This default is one
        ``create`` after the other.
        """
        return [await self.create(account) for account in accounts]

    async def get_many(self, keys: Sequence[str]) -> dict[str, Account]:
        """The accounts with these keys (keys without one are absent from the result).

        The batched login path calls this once per batch; backends override it with
        one query. This default is one ``get`` after the other.
        """
        found: dict[str, Account] = {}
        for key in keys:
            account = await self.get(key)
            if account is not None:
                found[key] = account
        return found

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Start connecting in the background (never fails: the store may come up later)."""

    @property
    def keeps_limits(self) -> bool:
        """True if the store keeps login limits shared by its users (:mod:`.shared_limits`)."""
        return False

    async def get_with_limits(
        self, key: str, limit_keys: Sequence[str]
    ) -> tuple[Account | None, dict[str, float]]:
        """The account and the ``until`` of each limit key that has one, in one store call."""
        return await self.get(key), {}

    async def update_limits(self, update: LimitUpdate, now: float) -> None:
        """Apply ``update`` to the shared limits at ``now`` (wall-clock seconds)."""
        await trio.lowlevel.checkpoint()

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections and threads."""


@attrs.define(eq=False)
class MemoryStore(AccountStore):
    """A store in a dict: nothing survives the process. For tests and embedding.

    With ``limits``, the services that share this store also share login limits,
    as workers sharing a database do; without (the default), each service counts
    its own, as one worker does.
    """

    description: str = "memory"
    accounts: dict[str, Account] = attrs.Factory(dict)
    limits: MemoryLimits | None = None

    @property
    def keeps_limits(self) -> bool:
        return self.limits is not None

    async def get_with_limits(
        self, key: str, limit_keys: Sequence[str]
    ) -> tuple[Account | None, dict[str, float]]:
        await trio.lowlevel.checkpoint()
        untils = self.limits.read(limit_keys) if self.limits is not None else {}
        return self.accounts.get(key), untils

    async def update_limits(self, update: LimitUpdate, now: float) -> None:
        await trio.lowlevel.checkpoint()
        if self.limits is not None:
            self.limits.apply(update, now)

    async def create(self, account: Account) -> bool:
        await trio.lowlevel.checkpoint()
        if account.key in self.accounts:
            return False
        self.accounts[account.key] = account
        return True

    async def get(self, key: str) -> Account | None:
        await trio.lowlevel.checkpoint()
        return self.accounts.get(key)

    async def create_many(self, accounts: Sequence[Account]) -> list[bool]:
        await trio.lowlevel.checkpoint()  # one scheduler pass for the whole batch
        stored = self.accounts
        created = []
        for account in accounts:
            new = account.key not in stored
            if new:
                stored[account.key] = account
            created.append(new)
        return created

    async def get_many(self, keys: Sequence[str]) -> dict[str, Account]:
        await trio.lowlevel.checkpoint()
        stored = self.accounts
        return {key: stored[key] for key in keys if key in stored}

    async def set_password_hash(self, key: str, old: str, new: str) -> bool:
        await trio.lowlevel.checkpoint()
        account = self.accounts.get(key)
        if account is None or account.password_hash != old:
            return False
        self.accounts[key] = attrs.evolve(account, password_hash=new)
        return True

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"

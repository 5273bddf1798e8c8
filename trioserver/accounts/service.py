"""Register and login as policy: input rules, brute-force limits, hashing, the store.

``AccountService`` is what ``ctx.services.accounts`` holds and what the register
and login handlers call. It never blocks the event loop: scrypt runs in threads
behind a capacity limiter of ``hash_threads``, store calls in the store's own
threads. Its answers are :class:`~trioserver.messages.ResultCode` values:

login: invalid input → rate limited (a token per name and per address is taken
*before* the hash, so refused attempts cost nothing and concurrent guesses cannot
overshoot) → store lookup → verify (an unknown name is verified against a dummy
hash, so timing does not tell whether a name exists) → ok (tokens given back) or
rejected (tokens stay spent).

register: invalid input → rate limited (per address) → hash → durable insert →
ok or rejected (name taken).

When the store fails, the failure is logged once (and its recovery once), and for
``retry_interval`` seconds requests get "server unavailable" at once; then one
request probes the store again. Passwords are never logged: only names, rules
broken and store errors are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio

from ..config import AccountsSettings
from ..messages import ResultCode
from .backends import open_store
from .limiter import TokenBuckets
from .names import InvalidInput, ValidCredentials, validate
from .passwords import Hasher, hasher_for, is_cheap, verify
from .store import Account, AccountStore, StoreUnavailable

__all__ = [
    "AccountService",
    "AccountStatistics",
    "LoginResult",
    "open_accounts",
    "peer_host",
]

log = logging.getLogger("trioserver.accounts")

T = TypeVar("T")


def peer_host(peer: str) -> str:
    """The address part of ``host:port`` / ``[v6]:port`` (the key of per-address limits)."""
    host, sep, _ = peer.rpartition(":")
    return host if sep and host else peer


@attrs.frozen
class LoginResult:
    """A login's result code and, when it is OK, the account's name as registered."""

    code: ResultCode
    user: str | None = None


@attrs.frozen
class AccountStatistics:
    registered: int
    register_rejected: int
    logins: int
    login_rejected: int
    invalid_input: int
    rate_limited: int
    unavailable: int
    hashes: int
    store_up: bool


@attrs.define(eq=False)
class AccountService:
    """The accounts policy over one store (see the module docstring)."""

    store: AccountStore
    hasher: Hasher
    hash_limiter: trio.CapacityLimiter
    name_failures: TokenBuckets
    address_failures: TokenBuckets
    registrations: TokenBuckets
    retry_interval: float = 1.0
    clock: Callable[[], float] = trio.current_time
    _dummy_hash: str | None = attrs.field(init=False, default=None)
    _down: bool = attrs.field(init=False, default=False)
    _retry_at: float = attrs.field(init=False, default=float("-inf"))
    _failed_while_down: int = attrs.field(init=False, default=0)
    _counts: dict[str, int] = attrs.field(init=False, factory=dict)

    @classmethod
    def from_settings(
        cls, settings: AccountsSettings, store: AccountStore | None = None
    ) -> AccountService:
        """A service for ``[accounts]`` settings, over ``store`` or the one its url names."""
        if store is None:
            store = open_store(
                settings.url,
                pool_size=settings.pool_size,
                connect_timeout=settings.connect_timeout,
            )
        window, keys = settings.failure_window, settings.limiter_max_keys
        return cls(
            store=store,
            hasher=hasher_for(
                settings.hash, n=settings.scrypt_n, r=settings.scrypt_r, p=settings.scrypt_p
            ),
            hash_limiter=trio.CapacityLimiter(settings.hash_threads),
            name_failures=TokenBuckets(settings.max_failures_per_name, window, keys),
            address_failures=TokenBuckets(settings.max_failures_per_address, window, keys),
            registrations=TokenBuckets(settings.max_registrations_per_address, window, keys),
            retry_interval=settings.retry_interval,
        )

    # -- life ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()

    async def aclose(self) -> None:
        await self.store.aclose()

    def statistics(self) -> AccountStatistics:
        c = self._counts.get
        return AccountStatistics(
            registered=c("registered", 0),
            register_rejected=c("register_rejected", 0),
            logins=c("logins", 0),
            login_rejected=c("login_rejected", 0),
            invalid_input=c("invalid_input", 0),
            rate_limited=c("rate_limited", 0),
            unavailable=c("unavailable", 0),
            hashes=c("hashes", 0),
            store_up=not self._down,
        )

    def _count(self, what: str) -> None:
        self._counts[what] = self._counts.get(what, 0) + 1

    # -- requests --------------------------------------------------------------------------

    async def register(self, username: bytes, password: bytes, itype: int, peer: str) -> ResultCode:
        """Create an account; OK only once it is durable in the store."""
        creds = self._validate(username, password, "register", peer)
        if creds is None:
            return ResultCode.INVALID_INPUT
        if self._store_resting():
            return ResultCode.SERVER_UNAVAILABLE
        if not self.registrations.try_take([peer_host(peer)], self.clock()):
            self._count("rate_limited")
            log.info("register %r from %s: rate limited", creds.name, peer)
            return ResultCode.RATE_LIMITED
        stored = await self._hash(creds.password)
        account = Account(creds.key, creds.name, stored, itype)
        try:
            created = await self._store(self.store.create, account)
        except StoreUnavailable:
            return ResultCode.SERVER_UNAVAILABLE
        if not created:
            self._count("register_rejected")
            return ResultCode.REJECTED
        self._count("registered")
        return ResultCode.OK

    async def login(self, username: bytes, password: bytes, peer: str) -> LoginResult:
        """Check a name and password; a LoginResult with the account's name when OK."""
        creds = self._validate(username, password, "login", peer)
        if creds is None:
            return LoginResult(ResultCode.INVALID_INPUT)
        if self._store_resting():
            return LoginResult(ResultCode.SERVER_UNAVAILABLE)
        host = peer_host(peer)
        now = self.clock()
        if not self._take_login_tokens(creds.key, host, now):
            self._count("rate_limited")
            log.info("login %r from %s: rate limited", creds.name, peer)
            return LoginResult(ResultCode.RATE_LIMITED)
        try:
            account = await self._store(self.store.get, creds.key)
        except StoreUnavailable:
            self._give_back(creds.key, host, reset_name=False)
            return LoginResult(ResultCode.SERVER_UNAVAILABLE)
        stored = account.password_hash if account is not None else await self._dummy()
        matches = await self._verify(creds.password, stored)
        if account is None or not matches:
            self._count("login_rejected")
            log.info("login %r from %s: wrong name or password", creds.name, peer)
            return LoginResult(ResultCode.REJECTED)
        self._give_back(creds.key, host, reset_name=True)
        self._count("logins")
        if not self.hasher.is_current(stored):
            await self._rehash(account, creds)
        return LoginResult(ResultCode.OK, account.name)

    # -- steps -----------------------------------------------------------------------------

    def _validate(
        self, username: bytes, password: bytes, what: str, peer: str
    ) -> ValidCredentials | None:
        try:
            return validate(username, password)
        except InvalidInput as exc:
            self._count("invalid_input")
            log.debug("%s from %s: invalid input: %s", what, peer, exc)
            return None

    def _take_login_tokens(self, key: str, host: str, now: float) -> bool:
        # Both or neither: check both buckets, then take from both (no await in between).
        names, addresses = self.name_failures, self.address_failures
        if names.enabled and names.tokens(key, now) < 1.0:
            return False
        if addresses.enabled and addresses.tokens(host, now) < 1.0:
            return False
        return names.try_take([key], now) and addresses.try_take([host], now)

    def _give_back(self, key: str, host: str, *, reset_name: bool) -> None:
        now = self.clock()
        if reset_name:
            self.name_failures.reset(key)  # the owner got in: earlier typos are forgiven
        else:
            self.name_failures.give_back([key], now)
        self.address_failures.give_back([host], now)

    async def _hashing(self, call: Callable[..., T], *args: Any, inline: bool) -> T:
        """Run a hash or a verification: in a thread behind the limiter unless it is cheap."""
        self._count("hashes")
        if inline:
            return call(*args)
        return await trio.to_thread.run_sync(call, *args, limiter=self.hash_limiter)

    async def _hash(self, password: bytes) -> str:
        return await self._hashing(self.hasher.hash, password, inline=self.hasher.inline)

    async def _verify(self, password: bytes, stored: str) -> bool:
        return await self._hashing(verify, password, stored, inline=is_cheap(stored))

    async def _dummy(self) -> str:
        """A hash in the current scheme to verify unknown names against (made once)."""
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(b"never anybody's password")
        return self._dummy_hash

    async def _rehash(self, account: Account, creds: ValidCredentials) -> None:
        """Store the password again with the current settings (best effort)."""
        new = await self._hash(creds.password)
        with contextlib.suppress(StoreUnavailable):  # the next login tries again
            await self._store(self.store.set_password_hash, account.key, account.password_hash, new)

    # -- store health ----------------------------------------------------------------------

    def _store_resting(self) -> bool:
        """True while a recent failure says not to try the store yet (counted and answered)."""
        if self._down and self.clock() < self._retry_at:
            self._count("unavailable")
            self._failed_while_down += 1
            return True
        return False

    async def _store(self, call: Callable[..., Any], *args: Any) -> Any:
        if self._down:
            # This request is the probe; others rest until it answers.
            self._retry_at = self.clock() + self.retry_interval
        try:
            result = await call(*args)
        except StoreUnavailable as exc:
            self._count("unavailable")
            self._retry_at = self.clock() + self.retry_interval
            if not self._down:
                self._down = True
                self._failed_while_down = 1
                log.error(
                    "account store %s failed: %s; answering 'server unavailable' and "
                    "retrying every %.1f s",
                    self.store.description,
                    exc,
                    self.retry_interval,
                )
            else:
                self._failed_while_down += 1
                log.debug("account store %s still failing: %s", self.store.description, exc)
            raise
        if self._down:
            self._down = False
            log.warning(
                "account store %s is back (%d requests got 'server unavailable')",
                self.store.description,
                self._failed_while_down,
            )
        return result


async def open_accounts(settings: AccountsSettings) -> AccountService:
    """Open the account service for ``[accounts]``: the worker's, unless the embedder gave one.

    The store connects lazily or in the background, so a database that is down at
    start does not stop the worker. The caller closes it.
    """
    service = AccountService.from_settings(settings)
    await service.open()
    log.info("account store: %s", service.store.description)
    return service

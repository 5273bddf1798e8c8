"""Register, login and resume as policy: input rules, brute-force limits, hashing, the store.

``AccountService`` is what ``ctx.services.accounts`` holds and what the register,
login and resume handlers call. It never blocks the event loop: scrypt runs in the
:class:`~.hashqueue.HashPool` (a few threads behind a bounded, fair line), store
calls in the store's own threads. Its answers are
:class:`~trioserver.messages.ResultCode` values.

Every limit is keyed by the client's *network* (``Peer.network``: IPv4 /32 and
IPv6 /64 by default, ``ipv4_prefix``/``ipv6_prefix``). Failed logins are counted
per (name, network), per network, and per name over the networks that failed
recently and never logged in to it (OWASP: a guesser slows down its own pair, it
cannot lock the owner out). Each worker counts in its own buckets; a store that
is shared (SQLite, PostgreSQL) also counts the failures of every worker and
instance using it (:mod:`.shared_limits`, ``shared_limits``), read with the
account and written only on failure.

login: invalid input → rate limited (tokens are taken *before* the hash, so
refused attempts cost nothing and concurrent guesses cannot overshoot) → store
lookup → verify in the hash pool (an unknown name is verified against a dummy hash
made at start, so timing does not tell whether a name exists; a full pool answers
"busy") → ok with a session token (tokens given back) or rejected (tokens stay
spent).

resume: a session token instead of a password (:mod:`.sessions`): checked with
one HMAC, no hash; a bad or expired token is a failure for the limits.

register: invalid input → rate limited (per network) → look-alike check
(:mod:`.confusables`) → hash → durable insert → ok or rejected (name taken).

In batches (``register_many``, ``login_many``, ``resume_many``: the default router's
path while the hash is cheap): the same steps per request, in request order, with one
store call for the whole batch; see "batches" below.

When the store fails, the failure is logged once (and its recovery once), and for
``retry_interval`` seconds requests get "server unavailable" at once; then one
request probes the store again. Passwords and tokens are never logged: only
names, rules broken and store errors are.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio

from ..config import AccountsSettings
from ..messages import ResultCode
from ..peer import Peer
from .backends import open_store
from .confusables import skeleton
from .hashqueue import CLEAN, SUSPECT, Busy, HashPool
from .limiter import TokenBuckets
from .names import InvalidInput, ValidCredentials, name_key, normalised, validate
from .passwords import Hasher, hasher_for, is_cheap, verify
from .sessions import load_key, make_token, token_valid
from .shared_limits import Limit, SharedLoginLimits, Verdict
from .store import Account, AccountStore, StoreUnavailable

__all__ = [
    "AccountService",
    "AccountStatistics",
    "LoginFields",
    "LoginResult",
    "RegisterFields",
    "default_hash_threads",
    "open_accounts",
    "peer_host",
]

log = logging.getLogger("trioserver.accounts")

T = TypeVar("T")

#: The stored hash of a row that only reserves a look-alike skeleton: it never verifies.
RESERVED_HASH: Final = "!reserved look-alike"
#: Hashes a network may ask for in ``_HASH_WINDOW`` seconds and still count as clean.
_CLEAN_HASHES: Final = 30
_HASH_WINDOW: Final = 60.0
_DUMMY_PASSWORD: Final = b"never anybody's password"


#: One register request of a batch: username, password, iType, peer (fields as received).
RegisterFields = tuple[bytes, bytes, int, "Peer | str"]
#: One login (password) or resume (token) request of a batch: username, secret, peer.
LoginFields = tuple[bytes, bytes, "Peer | str"]


#: A batch's registration that passed the checks: request index, name, key, password,
#: iType, network, hash lane.
_Registration = tuple[int, str, str, bytes, int, str, int]


def peer_host(peer: str) -> str:
    """The address part of ``host:port`` / ``[v6]:port``."""
    host, sep, _ = peer.rpartition(":")
    return host if sep and host else peer


def _shared_limits(settings: AccountsSettings) -> SharedLoginLimits | None:
    """The login limits to count in the store too; None if off, or if every one is off."""
    window = settings.failure_window
    shared = SharedLoginLimits(
        Limit(settings.max_failures_per_name, window),
        Limit(settings.max_failures_per_address, window),
        Limit(settings.max_failures_per_name_untrusted, window),
    )
    enabled = shared.name.enabled or shared.network.enabled or shared.untrusted.enabled
    return shared if settings.shared_limits and enabled else None


def default_hash_threads(workers: int) -> int:
    """The worker's share of the cores this process may run on (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


@attrs.frozen
class LoginResult:
    """A login's result code and, when it is OK, the account's name and a session token."""

    code: ResultCode
    user: str | None = None
    token: bytes = attrs.field(default=b"", repr=False)


@attrs.frozen
class AccountStatistics:
    registered: int
    register_rejected: int
    logins: int
    login_rejected: int
    resumed: int
    resume_rejected: int
    invalid_input: int
    rate_limited: int
    busy: int
    unavailable: int
    hashes: int
    store_up: bool


@attrs.define(eq=False)
class AccountService:
    """The accounts policy over one store (see the module docstring)."""

    store: AccountStore
    hasher: Hasher
    hash_pool: HashPool
    name_failures: TokenBuckets  #: per (name, network)
    address_failures: TokenBuckets  #: per network
    registrations: TokenBuckets  #: per network
    untrusted_name_failures: TokenBuckets = attrs.Factory(lambda: TokenBuckets(0, 300.0))
    #: The login limits counted in the store too (when the store keeps them); None: off.
    shared_limits: SharedLoginLimits | None = None
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    retry_interval: float = 1.0
    confusables: bool = False
    #: The key that signs session tokens; None: sessions are off.
    session_key: bytes | None = None
    session_lifetime: float = 86400.0
    session_secret_path: Path | None = None
    clock: Callable[[], float] = trio.current_time
    #: Wall-clock time for token expiry (shared across machines, unlike ``clock``).
    wall_clock: Callable[[], float] = time.time
    max_known: int = 100_000
    _dummy_hash: str | None = attrs.field(init=False, default=None)
    _key_read: trio.Event | None = attrs.field(init=False, default=None)
    _down: bool = attrs.field(init=False, default=False)
    _retry_at: float = attrs.field(init=False, default=float("-inf"))
    _failed_while_down: int = attrs.field(init=False, default=0)
    _counts: dict[str, int] = attrs.field(init=False, factory=dict)
    _known: OrderedDict[str, None] = attrs.field(init=False, factory=OrderedDict)
    #: Hashes each network asked for recently (served or refused 'busy'): a network
    #: that keeps the pool busy is not clean, whether or not it has failed yet.
    _hash_use: TokenBuckets = attrs.field(
        init=False, factory=lambda: TokenBuckets(_CLEAN_HASHES, _HASH_WINDOW)
    )
    _nonces: Iterator[int] = attrs.field(
        init=False, factory=lambda: itertools.count(int.from_bytes(os.urandom(4), "big"))
    )

    @classmethod
    def from_settings(
        cls,
        settings: AccountsSettings,
        store: AccountStore | None = None,
        *,
        workers: int = 1,
        handler_tasks: int = 8,
    ) -> AccountService:
        """A service for ``[accounts]`` settings, over ``store`` or the one its url names.

        ``workers`` and ``handler_tasks`` size the hash pool when its settings are 0.
        """
        memory = settings.url in ("memory:", "memory://")
        if store is None:
            store = open_store(
                settings.url,
                pool_size=settings.pool_size,
                connect_timeout=settings.connect_timeout,
            )
        threads = settings.hash_threads or default_hash_threads(workers)
        waiting = settings.hash_queue or max(1, handler_tasks // 2 - threads)
        window, keys = settings.failure_window, settings.limiter_max_keys
        secret = settings.session_secret
        return cls(
            store=store,
            hasher=hasher_for(
                settings.hash, n=settings.scrypt_n, r=settings.scrypt_r, p=settings.scrypt_p
            ),
            hash_pool=HashPool(threads, waiting),
            name_failures=TokenBuckets(settings.max_failures_per_name, window, keys),
            address_failures=TokenBuckets(settings.max_failures_per_address, window, keys),
            registrations=TokenBuckets(settings.max_registrations_per_address, window, keys),
            untrusted_name_failures=TokenBuckets(
                settings.max_failures_per_name_untrusted, window, keys
            ),
            shared_limits=_shared_limits(settings),
            ipv4_prefix=settings.ipv4_prefix,
            ipv6_prefix=settings.ipv6_prefix,
            retry_interval=settings.retry_interval,
            confusables=settings.confusables,
            session_key=os.urandom(32) if secret and memory else None,
            session_secret_path=Path(secret) if secret and not memory else None,
            session_lifetime=settings.session_lifetime,
            max_known=keys,
        )

    # -- life ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Make the dummy hash and start the store (the session key is read when needed)."""
        if self._dummy_hash is None:
            # Now rather than on the first unknown name, which would take twice as long
            # as any later one and tell that the name does not exist.
            if self.hasher.inline:
                self._dummy_hash = self.hasher.hash(_DUMMY_PASSWORD)
            else:
                self._dummy_hash = await trio.to_thread.run_sync(self.hasher.hash, _DUMMY_PASSWORD)
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
            resumed=c("resumed", 0),
            resume_rejected=c("resume_rejected", 0),
            invalid_input=c("invalid_input", 0),
            rate_limited=c("rate_limited", 0),
            busy=c("busy", 0),
            unavailable=c("unavailable", 0),
            hashes=c("hashes", 0),
            store_up=not self._down,
        )

    def _count(self, what: str, n: int = 1) -> None:
        self._counts[what] = self._counts.get(what, 0) + n

    def network(self, peer: Peer | str) -> str:
        """The client network ``peer`` counts as for the limits."""
        if isinstance(peer, str):
            peer = Peer.parse(peer)
        return peer.network(self.ipv4_prefix, self.ipv6_prefix)  # remembered per host

    # -- requests --------------------------------------------------------------------------

    async def register(
        self, username: bytes, password: bytes, itype: int, peer: Peer | str
    ) -> ResultCode:
        """Create an account; OK only once it is durable in the store."""
        creds = self._validate(username, password, "register", peer)
        if creds is None:
            return ResultCode.INVALID_INPUT
        if self._store_resting():
            return ResultCode.SERVER_UNAVAILABLE
        network = self.network(peer)
        lane = self._lane(network)
        if self._busy_now(lane):
            return ResultCode.BUSY
        now = self.clock()
        if not self.registrations.try_take([network], now):
            self._count("rate_limited")
            log.info("register %r from %s: rate limited", creds.name, peer)
            return ResultCode.RATE_LIMITED
        return await self._register_checked(creds, itype, network, lane)

    async def _register_checked(
        self, creds: ValidCredentials, itype: int, network: str, lane: int
    ) -> ResultCode:
        """The rest of a register whose input and limits passed: look-alikes, hash, insert."""
        try:
            if self.confusables and not await self._reserve_skeleton(creds):
                self._count("register_rejected")
                return ResultCode.REJECTED
            stored = await self._hash(creds.password, network, lane)
        except Busy:
            self.registrations.give_back([network], self.clock())
            self._count("busy")
            return ResultCode.BUSY
        except StoreUnavailable:
            return ResultCode.SERVER_UNAVAILABLE
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

    async def login(self, username: bytes, password: bytes, peer: Peer | str) -> LoginResult:
        """Check a name and password; a LoginResult with the account's name when OK."""
        creds = self._validate(username, password, "login", peer)
        if creds is None:
            return LoginResult(ResultCode.INVALID_INPUT)
        if self._store_resting():
            return LoginResult(ResultCode.SERVER_UNAVAILABLE)
        network = self.network(peer)
        lane = self._lane(network)
        if self._busy_now(lane):
            return LoginResult(ResultCode.BUSY)
        keys = self._take_login_tokens(creds.key, network, self.clock())
        if keys is None:
            self._count("rate_limited")
            log.info("login %r from %s: rate limited", creds.name, peer)
            return LoginResult(ResultCode.RATE_LIMITED)
        try:
            account, verdict = await self._lookup(creds.key, network, keys)
            if verdict is not None and not verdict.allowed:
                return self._shared_limited("login", creds.name, peer, keys)
            stored = account.password_hash if account is not None else await self._dummy()
            matches = await self._verify(creds.password, stored, network, lane)
        except StoreUnavailable:
            self._give_back(keys, success=False)
            return LoginResult(ResultCode.SERVER_UNAVAILABLE)
        except Busy:
            self._give_back(keys, success=False)
            self._count("busy")
            return LoginResult(ResultCode.BUSY)
        if account is None or not matches:
            self._count("login_rejected")
            log.info("login %r from %s: wrong name or password", creds.name, peer)
            await self._record_shared(verdict, creds.key, network, success=False)
            return LoginResult(ResultCode.REJECTED)
        self._give_back(keys, success=True)
        await self._record_shared(verdict, creds.key, network, success=True)
        self._count("logins")
        if not self.hasher.is_current(stored):
            account = await self._rehash(account, creds, network, lane)
        return LoginResult(ResultCode.OK, account.name, await self._token(account))

    async def resume(self, username: bytes, token: bytes, peer: Peer | str) -> LoginResult:
        """Log in with a session token from an earlier login or resume; a fresh token."""
        try:
            name = validate(username, b"-").name
        except InvalidInput as exc:
            self._count("invalid_input")
            log.debug("resume from %s: invalid input: %s", peer, exc)
            return LoginResult(ResultCode.INVALID_INPUT)
        session_key = await self._session_key()
        if session_key is None or self._store_resting():
            return LoginResult(ResultCode.SERVER_UNAVAILABLE)
        key = name_key(name)
        network = self.network(peer)
        keys = self._take_login_tokens(key, network, self.clock())
        if keys is None:
            self._count("rate_limited")
            log.info("resume %r from %s: rate limited", name, peer)
            return LoginResult(ResultCode.RATE_LIMITED)
        try:
            account, verdict = await self._lookup(key, network, keys)
        except StoreUnavailable:
            self._give_back(keys, success=False)
            return LoginResult(ResultCode.SERVER_UNAVAILABLE)
        if verdict is not None and not verdict.allowed:
            return self._shared_limited("resume", name, peer, keys)
        now = self.wall_clock()
        if account is None or not token_valid(session_key, token, key, account.password_hash, now):
            self._count("resume_rejected")
            log.info("resume %r from %s: bad or expired token", name, peer)
            await self._record_shared(verdict, key, network, success=False)
            return LoginResult(ResultCode.REJECTED)
        self._give_back(keys, success=True)
        await self._record_shared(verdict, key, network, success=True)
        self._count("resumed")
        return LoginResult(ResultCode.OK, account.name, await self._token(account))

    # -- batches ---------------------------------------------------------------------------
    #
    # The batched path (the default router's, while hashes are cheap): the same steps,
    # limits and results per request as the methods above, in request order, but one
    # store call for the whole batch (one commit and fsync for every registration,
    # one query for every lookup) and no scheduler pass per request.

    @property
    def batches(self) -> bool:
        """True if requests may take the batched path: the hash is cheap (no thread).

        With scrypt each request goes through the hash pool on its own (its fair line
        and 'busy' answers are per request).
        """
        return self.hasher.inline

    @property
    def batches_logins(self) -> bool:
        """True if logins and resumes may take the batched path too: ``batches``, and no
        login limits shared through the store (each attempt reads and writes those on
        its own, as ``login`` and ``resume`` do)."""
        return self.hasher.inline and not self._shares_limits

    @property
    def _shares_limits(self) -> bool:
        return self.shared_limits is not None and self.store.keeps_limits

    async def register_many(self, requests: Sequence[RegisterFields]) -> list[ResultCode]:
        """``register`` for each request, in order, with one store call for all of them.

        Two requests for one name: the first one's result, the later ones REJECTED
        (exactly one OK). Every OK is durable before this returns.
        """
        results: list[ResultCode] = [ResultCode.OK] * len(requests)
        todo: list[_Registration] = []
        now = self.clock()  # one instant for the batch: it is answered within it
        limited = self.registrations.enabled
        last_peer: Peer | str | None = None
        network = ""
        for i, (username, password, itype, peer) in enumerate(requests):
            try:
                name, key, secret = normalised(username, password)
            except InvalidInput as exc:
                self._count("invalid_input")
                log.debug("register from %s: invalid input: %s", peer, exc)
                results[i] = ResultCode.INVALID_INPUT
                continue
            if self._store_resting():
                results[i] = ResultCode.SERVER_UNAVAILABLE
                continue
            if peer is not last_peer:  # a connection's requests come one after the other
                last_peer, network = peer, self.network(peer)
            lane = CLEAN if self.hasher.inline else self._lane(network)
            if self._busy_now(lane):
                results[i] = ResultCode.BUSY
                continue
            if limited and not self.registrations.try_take([network], now):
                self._count("rate_limited")
                log.info("register %r from %s: rate limited", name, peer)
                results[i] = ResultCode.RATE_LIMITED
                continue
            todo.append((i, name, key, secret, itype, network, lane))
        if not todo:
            return results
        if not self.hasher.inline:
            # Each hash goes through the pool on its own (its line, its 'busy').
            for i, name, key, secret, itype, network, lane in todo:
                creds = ValidCredentials(name, key, secret)
                results[i] = await self._register_checked(creds, itype, network, lane)
            return results
        try:
            todo = await self._claim_names(todo, results)
        except StoreUnavailable:
            for i, *_ in todo:
                results[i] = ResultCode.SERVER_UNAVAILABLE
            return results
        hash_password = self.hasher.hash
        created_at = time.time()
        accounts = [
            Account(key, name, hash_password(secret), itype, created_at)
            for _, name, key, secret, itype, _, _ in todo
        ]
        self._count("hashes", len(accounts))
        try:
            created = await self._store(self.store.create_many, accounts)
        except StoreUnavailable:
            for i, *_ in todo:
                results[i] = ResultCode.SERVER_UNAVAILABLE
            return results
        rejected = 0
        for (i, *_), ok in zip(todo, created, strict=True):
            if not ok:
                rejected += 1
                results[i] = ResultCode.REJECTED
        self._count("registered", len(todo) - rejected)
        self._count("register_rejected", rejected)
        return results

    async def _claim_names(
        self, todo: list[_Registration], results: list[ResultCode]
    ) -> list[_Registration]:
        """The registrations of a batch that may go on to the insert; the others REJECTED.

        Decided in request order, as one registration after the other would be: a
        name (or, with look-alike checks, its skeleton) that an earlier request of
        the batch claimed is taken; a look-alike of a stored name is refused, and
        the skeletons of the others are reserved first (one store call for the
        lookup, one for the reservations; none when every name is its own skeleton).
        """
        skeletons = [skeleton(t[2]) if self.confusables else t[2] for t in todo]
        wanted = [sk for sk, t in zip(skeletons, todo, strict=True) if sk != t[2]]
        existing = await self._store(self.store.get_many, wanted) if wanted else {}
        claimed: set[str] = set()
        going: list[tuple[_Registration, Account | None]] = []
        for t, sk in zip(todo, skeletons, strict=True):
            i, name, key = t[0], t[1], t[2]
            reservation = None
            refused = key in claimed or sk in claimed
            if not refused and sk != key:
                row = existing.get(sk)
                if row is None:
                    reservation = Account(sk, name, RESERVED_HASH)
                else:  # only our own earlier, unfinished reservation may be reused
                    refused = not (row.password_hash == RESERVED_HASH and name_key(row.name) == key)
            if refused:
                self._count("register_rejected")
                results[i] = ResultCode.REJECTED
                continue
            claimed.update((key, sk))
            going.append((t, reservation))
        reservations = [r for _, r in going if r is not None]
        if not reservations:
            return [t for t, _ in going]
        reserved = iter(await self._store(self.store.create_many, reservations))
        kept = []
        for t, reservation in going:
            if reservation is not None and not next(reserved):
                self._count("register_rejected")  # a look-alike registered meanwhile
                results[t[0]] = ResultCode.REJECTED
            else:
                kept.append(t)
        return kept

    async def login_many(self, requests: Sequence[LoginFields]) -> list[LoginResult]:
        """``login`` for each (username, password, peer), in order, with one store lookup.

        The lookup of every valid name comes first; then each request in turn is
        checked, takes its tokens, is verified and gives them back, as ``login`` does.
        While verifying is cheap (no thread) nothing waits between taking and giving
        back, so the limits see the requests one after the other, exactly as if each
        had been answered before the next arrived. With login limits shared through the
        store, each request is ``login`` on its own.
        """
        if self._shares_limits:
            return [await self.login(u, p, peer) for u, p, peer in requests]
        valid: list[tuple[str, str, bytes] | None] = []
        keys: dict[str, None] = {}
        for username, password, peer in requests:
            try:
                fields = normalised(username, password)
            except InvalidInput as exc:
                self._count("invalid_input")
                log.debug("login from %s: invalid input: %s", peer, exc)
                valid.append(None)
                continue
            keys[fields[1]] = None
            valid.append(fields)
        found, failed = await self._lookup_many(list(keys))
        session_key = await self._session_key() if found else None
        results: list[LoginResult] = []
        now = self.clock()  # one instant for the batch: it is answered within it
        last_peer: Peer | str | None = None
        network = ""
        hashes = logins = 0
        # With the per-name and per-network limits off there are no tokens to take or
        # give back (the untrusted-name limit applies only with the per-network one).
        limited = self.name_failures.enabled or self.address_failures.enabled
        unlimited: tuple[str, str, str | None] = ("", "", None)
        for (_, _, peer), creds in zip(requests, valid, strict=True):
            if creds is None:
                results.append(LoginResult(ResultCode.INVALID_INPUT))
                continue
            if not failed and self._store_resting():
                results.append(LoginResult(ResultCode.SERVER_UNAVAILABLE))
                continue
            name, key, secret = creds
            if peer is not last_peer:
                last_peer, network = peer, self.network(peer)
            lane = CLEAN
            if not self.hasher.inline:
                lane = self._lane(network)
                if self._busy_now(lane):
                    results.append(LoginResult(ResultCode.BUSY))
                    continue
            taken = self._take_login_tokens(key, network, now) if limited else unlimited
            if taken is None:
                self._count("rate_limited")
                log.info("login %r from %s: rate limited", name, peer)
                results.append(LoginResult(ResultCode.RATE_LIMITED))
                continue
            if found is None:  # this request meets the failure the lookup counted
                failed = False
                self._give_back(taken, success=False)
                results.append(LoginResult(ResultCode.SERVER_UNAVAILABLE))
                continue
            account = found.get(key)
            stored = account.password_hash if account is not None else await self._dummy()
            if is_cheap(stored):
                hashes += 1
                matches = verify(secret, stored)
            else:
                lane = self._lane(network) if self.hasher.inline else lane
                try:
                    matches = await self._verify(secret, stored, network, lane)
                except Busy:
                    self._give_back(taken, success=False)
                    self._count("busy")
                    results.append(LoginResult(ResultCode.BUSY))
                    continue
            if account is None or not matches:
                self._count("login_rejected")
                log.info("login %r from %s: wrong name or password", name, peer)
                results.append(LoginResult(ResultCode.REJECTED))
                continue
            if limited:
                self._give_back(taken, success=True)
            logins += 1
            if not self.hasher.is_current(stored):
                creds_record = ValidCredentials(name, key, secret)
                account = found[key] = await self._rehash(account, creds_record, network, lane)
            if session_key is None:
                session_key = await self._session_key()
            results.append(
                LoginResult(ResultCode.OK, account.name, self._make_token(session_key, account))
            )
        self._count("hashes", hashes)
        self._count("logins", logins)
        return results

    async def resume_many(self, requests: Sequence[LoginFields]) -> list[LoginResult]:
        """``resume`` for each (username, token, peer), in order, with one store lookup
        (each on its own with login limits shared through the store)."""
        if self._shares_limits:
            return [await self.resume(u, t, peer) for u, t, peer in requests]
        keys: list[str | None] = []
        for username, _, peer in requests:
            try:
                name = validate(username, b"-").name
            except InvalidInput as exc:
                self._count("invalid_input")
                log.debug("resume from %s: invalid input: %s", peer, exc)
                keys.append(None)
                continue
            keys.append(name_key(name))
        session_key = await self._session_key()
        wanted = list(dict.fromkeys(k for k in keys if k is not None))
        found, failed = await self._lookup_many(wanted if session_key is not None else [])
        now = self.wall_clock()
        results: list[LoginResult] = []
        for (_, token, peer), key in zip(requests, keys, strict=True):
            if key is None:
                results.append(LoginResult(ResultCode.INVALID_INPUT))
                continue
            if session_key is None or (not failed and self._store_resting()):
                results.append(LoginResult(ResultCode.SERVER_UNAVAILABLE))
                continue
            network = self.network(peer)
            taken = self._take_login_tokens(key, network, self.clock())
            if taken is None:
                self._count("rate_limited")
                log.info("resume %r from %s: rate limited", key, peer)
                results.append(LoginResult(ResultCode.RATE_LIMITED))
                continue
            if found is None:
                failed = False
                self._give_back(taken, success=False)
                results.append(LoginResult(ResultCode.SERVER_UNAVAILABLE))
                continue
            account = found.get(key)
            if account is None or not token_valid(
                session_key, token, key, account.password_hash, now
            ):
                self._count("resume_rejected")
                log.info("resume %r from %s: bad or expired token", key, peer)
                results.append(LoginResult(ResultCode.REJECTED))
                continue
            self._give_back(taken, success=True)
            self._count("resumed")
            results.append(
                LoginResult(ResultCode.OK, account.name, self._make_token(session_key, account))
            )
        return results

    async def _lookup_many(self, keys: list[str]) -> tuple[dict[str, Account] | None, bool]:
        """The accounts with ``keys`` in one store call: (found, failed now).

        ``found`` is None when the store rests or failed; ``failed`` is True when it
        failed in this call (counted once, here: the first request that reaches the
        store step answers for it, as the request that called it would have).
        """
        if not keys:
            await trio.lowlevel.checkpoint()
            return {}, False
        if self._down and self.clock() < self._retry_at:
            await trio.lowlevel.checkpoint()
            return None, False
        try:
            found: dict[str, Account] = await self._store(self.store.get_many, keys)
        except StoreUnavailable:
            return None, True
        return found, False

    def _make_token(self, key: bytes | None, account: Account) -> bytes:
        if key is None:
            return b""
        expiry = self.wall_clock() + self.session_lifetime
        return make_token(key, account.key, account.password_hash, expiry, next(self._nonces))

    # -- steps -----------------------------------------------------------------------------

    def _validate(
        self, username: bytes, password: bytes, what: str, peer: Peer | str
    ) -> ValidCredentials | None:
        try:
            return validate(username, password)
        except InvalidInput as exc:
            self._count("invalid_input")
            log.debug("%s from %s: invalid input: %s", what, peer, exc)
            return None

    def _lane(self, network: str) -> int:
        """CLEAN for a network with no recent failures and few recent hashes, else SUSPECT.

        Asking for a hash takes one of the network's hash-use tokens (30, refilled in
        a minute), and a network with under half of them left is not clean: a user
        logging in needs one or two, a flood keeps its bucket near empty, and is then
        served after every clean network even while its own logins are answered
        'busy' and so never fail.
        """
        now = self.clock()
        failures, use = self.address_failures, self._hash_use
        use.try_take([network], now)
        if use.tokens(network, now) < use.burst / 2:
            return SUSPECT
        if failures.enabled and failures.tokens(network, now) < failures.burst:
            return SUSPECT
        return CLEAN

    def _busy_now(self, lane: int) -> bool:
        """True if the pool would refuse this request's hash: answer before any lookup."""
        if self.hasher.inline or not self.hash_pool.would_refuse(lane):
            return False
        self._count("busy")
        return True

    def _take_login_tokens(
        self, key: str, network: str, now: float
    ) -> tuple[str, str, str | None] | None:
        """Take a token from each bucket the attempt involves (all or none).

        Returns what to give back later, or None when a bucket is empty.
        """
        pair = f"{key}\0{network}"
        names, networks, untrusted = (
            self.name_failures,
            self.address_failures,
            self.untrusted_name_failures,
        )
        trusted = (
            not networks.enabled or networks.tokens(network, now) >= networks.burst
        ) or pair in self._known
        name_key_taken = key if untrusted.enabled and not trusted else None
        if names.enabled and names.tokens(pair, now) < 1.0:
            return None
        if networks.enabled and networks.tokens(network, now) < 1.0:
            return None
        if name_key_taken is not None and untrusted.tokens(key, now) < 1.0:
            return None
        names.try_take([pair], now)
        networks.try_take([network], now)
        if name_key_taken is not None:
            untrusted.try_take([name_key_taken], now)
        return (pair, network, name_key_taken)

    def _give_back(self, keys: tuple[str, str, str | None], *, success: bool) -> None:
        pair, network, name = keys
        now = self.clock()
        if success:
            self.name_failures.reset(pair)  # the owner got in: earlier typos are forgiven
            self._known[pair] = None  # and this network is known for this name
            self._known.move_to_end(pair)
            while len(self._known) > self.max_known:
                self._known.popitem(last=False)
        else:
            self.name_failures.give_back([pair], now)
        self.address_failures.give_back([network], now)
        if name is not None:
            self.untrusted_name_failures.give_back([name], now)

    async def _lookup(
        self, key: str, network: str, keys: tuple[str, str, str | None]
    ) -> tuple[Account | None, Verdict | None]:
        """The account, and the shared limits' verdict when the store keeps them.

        One store call either way: the limits come with the account.
        """
        shared = self.shared_limits
        if shared is None or not self.store.keeps_limits:
            return await self._store(self.store.get, key), None
        account, untils = await self._store(
            self.store.get_with_limits, key, shared.keys(key, network)
        )
        known_here = keys[0] in self._known
        verdict = shared.judge(untils, key, network, self.wall_clock(), known_here=known_here)
        return account, verdict

    def _shared_limited(
        self, what: str, name: str, peer: Peer | str, keys: tuple[str, str, str | None]
    ) -> LoginResult:
        """Refused by the failures other workers recorded: nothing was tried here."""
        self._give_back(keys, success=False)
        self._count("rate_limited")
        log.info("%s %r from %s: rate limited (shared)", what, name, peer)
        return LoginResult(ResultCode.RATE_LIMITED)

    async def _record_shared(
        self, verdict: Verdict | None, key: str, network: str, *, success: bool
    ) -> None:
        """Write a failure (or what a success forgets) to the shared limits, before the reply.

        Before it, so that the client's next attempt, on any worker, sees it. A
        write that fails leaves the worker's own buckets counting (logged with the
        store's health, never raised).
        """
        shared = self.shared_limits
        if verdict is None or shared is None:
            return
        now = self.wall_clock()
        if success:
            update = shared.succeeded(verdict, key, network, now)
        else:
            update = shared.failed(verdict, key, network)
        if update:
            with contextlib.suppress(StoreUnavailable):
                await self._store(self.store.update_limits, update, now)

    async def _hashing(
        self, call: Callable[..., T], *args: Any, inline: bool, network: str, lane: int
    ) -> T:
        """Run a hash or a verification: in the hash pool unless it is cheap."""
        if inline:
            self._count("hashes")
            return call(*args)
        result = await self.hash_pool.run(network, lane, call, *args)
        self._count("hashes")
        return result

    async def _hash(self, password: bytes, network: str = "", lane: int = CLEAN) -> str:
        return await self._hashing(
            self.hasher.hash, password, inline=self.hasher.inline, network=network, lane=lane
        )

    async def _verify(self, password: bytes, stored: str, network: str, lane: int) -> bool:
        return await self._hashing(
            verify, password, stored, inline=is_cheap(stored), network=network, lane=lane
        )

    async def _dummy(self) -> str:
        """The hash unknown names are verified against (made at open; here if not opened)."""
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(_DUMMY_PASSWORD)
        return self._dummy_hash

    async def _rehash(
        self, account: Account, creds: ValidCredentials, network: str, lane: int
    ) -> Account:
        """Store the password again with the current settings (best effort)."""
        try:
            new = await self._hash(creds.password, network, lane)
            if await self._store(
                self.store.set_password_hash, account.key, account.password_hash, new
            ):
                return attrs.evolve(account, password_hash=new)
        except (StoreUnavailable, Busy):  # the next login tries again
            pass
        return account

    async def _session_key(self) -> bytes | None:
        """The key that signs tokens: read (or created) on first use, like the store.

        Requests that come while it is being read wait for it (a reconnect storm
        right after a start must not be told 'unavailable'). A key file that
        cannot be read or made turns sessions off (logged once).
        """
        if self.session_key is None and self.session_secret_path is not None:
            if self._key_read is not None:
                await self._key_read.wait()
                return self.session_key
            self._key_read = trio.Event()
            path = self.session_secret_path
            try:
                self.session_key = await trio.to_thread.run_sync(load_key, path)
            except (OSError, ValueError) as exc:
                log.error("session secret %s: %s; resume answers 'server unavailable'", path, exc)
            finally:
                self.session_secret_path = None
                self._key_read.set()
        return self.session_key

    async def _token(self, account: Account) -> bytes:
        """A session token for ``account`` (zeros when sessions are off)."""
        key = await self._session_key()
        if key is None:
            return b""
        expiry = self.wall_clock() + self.session_lifetime
        return make_token(key, account.key, account.password_hash, expiry, next(self._nonces))

    async def _reserve_skeleton(self, creds: ValidCredentials) -> bool:
        """False if the name looks like a taken one; else reserve its look-alike skeleton.

        A name whose skeleton differs from its key also claims the skeleton's key
        with a row that never verifies, so the plain spelling cannot register after
        it; a plain name finds such a row as a taken key.
        """
        skeleton_key = skeleton(creds.key)
        if skeleton_key == creds.key:
            return True
        existing = await self._store(self.store.get, skeleton_key)
        if existing is not None:
            # Only our own earlier, unfinished reservation may be reused.
            return existing.password_hash == RESERVED_HASH and name_key(existing.name) == creds.key
        reservation = Account(skeleton_key, creds.name, RESERVED_HASH)
        created: bool = await self._store(self.store.create, reservation)
        return created

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


async def open_accounts(
    settings: AccountsSettings, *, workers: int = 1, handler_tasks: int = 8
) -> AccountService:
    """Open the account service for ``[accounts]``: the worker's, unless the embedder gave one.

    The store connects lazily or in the background, so a database that is down at
    start does not stop the worker. The caller closes it.
    """
    service = AccountService.from_settings(settings, workers=workers, handler_tasks=handler_tasks)
    await service.open()
    log.info("account store: %s", service.store.description)
    return service

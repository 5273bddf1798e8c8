"""Accounts: the store behind register (5), login (6) and resume (1), and the policy around it.

- :mod:`.names`: which names and passwords are valid, and which names are equal
  (case-insensitive, NFC); :mod:`.confusables`: look-alike names.
- :mod:`.passwords`: scrypt hashes that carry their parameters.
- :mod:`.hashqueue`: the hash threads and their bounded, fair line.
- :mod:`.sessions`: signed session tokens for resume.
- :mod:`.limiter`: token buckets against guessing, clock passed in.
- :mod:`.store`: the store interface; :mod:`.sqlite` (default) and
  :mod:`.postgres` (to share accounts across machines) implement it.
- :mod:`.service`: ``AccountService``, what ``ctx.services.accounts`` holds.
"""

from __future__ import annotations

from .backends import open_store
from .limiter import TokenBuckets
from .names import InvalidInput, ValidCredentials, name_key, validate
from .passwords import Hasher, InsecureFastHasher, ScryptHasher, hasher_for, verify
from .service import (
    AccountService,
    AccountStatistics,
    LoginResult,
    open_accounts,
    peer_host,
)
from .store import (
    SCHEMA_VERSION,
    Account,
    AccountStore,
    MemoryStore,
    StoreUnavailable,
    redact_url,
)

__all__ = [
    "SCHEMA_VERSION",
    "Account",
    "AccountService",
    "AccountStatistics",
    "AccountStore",
    "Hasher",
    "InsecureFastHasher",
    "InvalidInput",
    "LoginResult",
    "MemoryStore",
    "ScryptHasher",
    "StoreUnavailable",
    "TokenBuckets",
    "ValidCredentials",
    "hasher_for",
    "name_key",
    "open_accounts",
    "open_store",
    "peer_host",
    "redact_url",
    "validate",
    "verify",
]

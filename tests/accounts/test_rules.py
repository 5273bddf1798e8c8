"""Pure parts: input rules and name equality, password hashes, the token-bucket limiter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserver.accounts import (
    InsecureFastHasher,
    InvalidInput,
    ScryptHasher,
    TokenBuckets,
    hasher_for,
    validate,
    verify,
)
from trioserver.accounts.service import peer_host

# -- names and passwords ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "password", "rule"),
    [
        (b"", b"pw", "name is empty"),
        (b"alice", b"", "password is empty"),
        (b"a" * 56, b"pw", "name is over 55 bytes"),
        (b"alice", b"p" * 40, "password is over 39 bytes"),
        (b"al\xffice", b"pw", "name is not valid UTF-8"),
        (b"alice", b"p\xc3", "password is not valid UTF-8"),
        (b"ali\x01ce", b"pw", "control"),
        (b"ali\tce", b"pw", "control"),
        (b"ali\x7fce", b"pw", "control"),
        ("ali\u200bce".encode(), b"pw", "format"),  # zero-width space
        ("ali\u202ece".encode(), b"pw", "format"),  # right-to-left override
        (b" alice", b"pw", "white space"),
        (b"alice ", b"pw", "white space"),
        (b"alice", b"p\nw", "password contains a control character"),
    ],
)
def test_invalid_input_names_the_rule(name: bytes, password: bytes, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rule):
        validate(name, password)


def test_limits_are_the_wire_limits() -> None:
    assert validate(b"a" * 55, b"p" * 39).name == "a" * 55
    # multi-byte characters count in bytes: 27 x 2 bytes = 54 ok, 28 x 2 = 56 not
    assert validate("é".encode() * 27, b"pw")
    with pytest.raises(InvalidInput):
        validate("é".encode() * 28, b"pw")


def test_names_are_case_insensitive_and_normalised() -> None:
    """Documented choice: NFC, then full case folding; the display name is kept."""
    keys = {
        validate(spelling.encode(), b"pw").key for spelling in ("Alice", "ALICE", "alice", "aLiCe")
    }
    assert keys == {"alice"}
    assert validate("Straße".encode(), b"pw").key == validate(b"STRASSE", b"pw").key
    nfd, nfc = "Zoe\u0301", "Zo\u00e9"  # same text, decomposed and composed
    assert validate(nfd.encode(), b"pw").key == validate(nfc.encode(), b"pw").key
    assert validate(nfd.encode(), b"pw").name == nfc
    assert validate(b"Alice", b"pw").name == "Alice"
    assert validate(b"alice", b"PW").password == b"PW"  # passwords keep their case


@given(st.binary(max_size=60), st.binary(max_size=45))
def test_validate_raises_only_invalid_input(name: bytes, password: bytes) -> None:
    try:
        creds = validate(name, password)
    except InvalidInput:
        return
    assert 0 < len(name) <= 55 and 0 < len(password) <= 39
    assert validate(creds.name.encode(), password).key == creds.key  # normalising is stable


def test_peer_host() -> None:
    assert peer_host("10.0.0.7:5000") == "10.0.0.7"
    assert peer_host("[::1]:5000") == "[::1]"
    assert peer_host("memory:3") == "memory"
    assert peer_host("unknown") == "unknown"


# -- password hashes ----------------------------------------------------------------------


def test_scrypt_hash_carries_its_parameters_and_a_fresh_salt() -> None:
    hasher = ScryptHasher(n=1024, r=8, p=1)
    first, second = hasher.hash(b"secret"), hasher.hash(b"secret")
    assert first.startswith("$scrypt$ln=10,r=8,p=1$")
    assert first != second  # per-password salt
    assert b"secret" not in first.encode()
    assert verify(b"secret", first) and verify(b"secret", second)
    assert not verify(b"Secret", first)
    assert hasher.is_current(first)
    assert not ScryptHasher(n=2048).is_current(first)
    assert verify(b"secret", first)  # changed settings still verify old hashes


def test_insecure_fast_hash_is_labelled_and_verifies() -> None:
    stored = InsecureFastHasher().hash(b"secret")
    assert stored.startswith("$sha256-insecure$")
    assert verify(b"secret", stored) and not verify(b"other", stored)
    assert not ScryptHasher().is_current(stored)
    assert hasher_for("insecure-fast").inline and not hasher_for("scrypt").inline


def test_insecure_fast_salts_are_unique_and_older_base64_hashes_still_verify() -> None:
    hasher = InsecureFastHasher()
    assert len({hasher.hash(b"secret").split("$")[2] for _ in range(1000)}) == 1000
    old = "$sha256-insecure$aHKXZlZrSjICrLeIDYg9ZQ$"  # salt and key in base64, as made before
    import base64
    import hashlib

    salt = base64.b64decode("aHKXZlZrSjICrLeIDYg9ZQ==")
    key = base64.b64encode(hashlib.sha256(salt + b"secret").digest()).decode().rstrip("=")
    assert verify(b"secret", old + key) and not verify(b"other", old + key)


@pytest.mark.parametrize(
    "stored", ["", "plain", "$scrypt$ln=10$x$y", "$scrypt$ln=10,r=8,p=1$!!$!!", "$md5$a$b"]
)
def test_malformed_hashes_never_verify(stored: str) -> None:
    assert not verify(b"secret", stored)


def test_scrypt_rejects_a_cost_that_is_not_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ScryptHasher(n=1000)


# -- the limiter (time is a plain number) --------------------------------------------------


def test_bucket_allows_a_burst_then_refills_evenly() -> None:
    buckets = TokenBuckets(burst=3, window=30.0)  # one token back every 10 s
    assert [buckets.try_take(["k"], 0.0) for _ in range(4)] == [True, True, True, False]
    assert not buckets.try_take(["k"], 9.9)
    assert buckets.try_take(["k"], 10.0)
    assert not buckets.try_take(["k"], 10.0)
    assert buckets.tokens("k", 1000.0) == 3.0  # never more than the burst
    assert buckets.tokens("other", 0.0) == 3.0


def test_take_is_all_or_nothing_across_keys() -> None:
    buckets = TokenBuckets(burst=1, window=10.0)
    assert buckets.try_take(["a"], 0.0)
    assert not buckets.try_take(["b", "a"], 0.0)
    assert buckets.tokens("b", 0.0) == 1.0  # b was not charged


def test_give_back_and_reset() -> None:
    buckets = TokenBuckets(burst=2, window=10.0)
    assert buckets.try_take(["k"], 0.0) and buckets.try_take(["k"], 0.0)
    buckets.give_back(["k"], 0.0)
    assert buckets.tokens("k", 0.0) == 1.0
    buckets.give_back(["k", "never-seen"], 0.0)
    buckets.give_back(["k"], 0.0)
    assert buckets.tokens("k", 0.0) == 2.0
    assert buckets.try_take(["k"], 0.0)
    buckets.reset("k")
    assert buckets.tokens("k", 0.0) == 2.0


def test_zero_burst_is_off() -> None:
    buckets = TokenBuckets(burst=0, window=10.0)
    assert all(buckets.try_take(["k"], 0.0) for _ in range(100))
    assert len(buckets) == 0


def test_memory_is_bounded_and_forgets_the_least_recent() -> None:
    buckets = TokenBuckets(burst=1, window=100.0, max_keys=3)
    for key in "abcd":
        assert buckets.try_take([key], 0.0)
    assert len(buckets) == 3
    assert buckets.tokens("a", 0.0) == 1.0  # forgotten: full again
    assert buckets.tokens("d", 0.0) == 0.0


@given(st.lists(st.tuples(st.floats(0, 50), st.booleans()), max_size=60))
def test_never_more_than_burst_plus_refill(events: list[tuple[float, bool]]) -> None:
    """Over any run, successful takes <= burst + elapsed * rate (the bucket's promise)."""
    buckets = TokenBuckets(burst=5, window=100.0)
    now, taken = 0.0, 0
    for step, _ in events:
        now += step
        taken += buckets.try_take(["k"], now)
    assert taken <= 5 + now * 5 / 100.0 + 1e-9


def test_bad_limiter_settings_raise() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(burst=1, window=0.0)

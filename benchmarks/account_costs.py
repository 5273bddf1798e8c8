"""The fixed CPU cost of the insecure-fast hash per request: before (os.urandom + base64)
and now (a counter salt, hex), interleaved in one run, CPU time per call.

    python benchmarks/account_costs.py            # 5 rounds of 100,000 calls each

Also the whole in-process register + login path over an in-memory server
(memory store, insecure-fast hash, limits off), CPU per request: run it on an older
checkout (``PYTHONPATH=old-tree``) to compare the whole path.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable

import trio

from trioserver.accounts.passwords import InsecureFastHasher, verify
from trioserver.config import Config
from trioserver.testing import serve_in_memory


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def old_hash(password: bytes) -> str:
    """The hash as it was made before: a random salt and base64 per call."""
    salt = os.urandom(16)
    key = hashlib.sha256(salt + password).digest()
    return f"$sha256-insecure${_b64(salt)}${_b64(key)}"


def per_call(call: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - start) / n


async def account_path(requests: int) -> float:
    """CPU seconds per register-then-login pair of requests, in process."""
    config = Config().replace(
        accounts__url="memory:",
        accounts__hash="insecure-fast",
        accounts__max_failures_per_name=0,
        accounts__max_failures_per_address=0,
        accounts__max_registrations_per_address=0,
        connection__flood_check=False,
    )
    if hasattr(config.accounts, "session_secret"):  # absent before sessions existed
        config = config.replace(accounts__session_secret="")
    async with serve_in_memory(config) as server:
        client = await server.connect()
        start = time.process_time()
        for i in range(requests):
            await client.register(f"user{i}", "secret")
            await client.login(f"user{i}", "secret")
        return (time.process_time() - start) / (2 * requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    new = InsecureFastHasher()
    pw = b"secret-password"
    old_stored, new_stored = old_hash(pw), new.hash(pw)
    rows: dict[str, list[float]] = {
        k: [] for k in ("old hash", "new hash", "old verify", "new verify")
    }
    for _ in range(args.rounds):  # interleaved, so machine noise falls on both alike
        rows["old hash"].append(per_call(lambda: old_hash(pw), args.calls))
        rows["new hash"].append(per_call(lambda: new.hash(pw), args.calls))
        rows["old verify"].append(per_call(lambda: verify(pw, old_stored), args.calls))
        rows["new verify"].append(per_call(lambda: verify(pw, new_stored), args.calls))
    for name, values in rows.items():
        median = statistics.median(values) * 1e6
        print(f"{name:>11}: {median:6.2f} us CPU per call (median of {args.rounds})")
    path = trio.run(account_path, 2000)
    print(f"register+login in process (memory store): {path * 1e6:6.1f} us CPU per request")


if __name__ == "__main__":
    main()

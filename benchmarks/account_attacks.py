"""Re-run the two account attacks against a real worker process and print their figures.

::

    python benchmarks/account_attacks.py              # both attacks, scrypt defaults
    python benchmarks/account_attacks.py flood        # a real user's login under a hash flood
    python benchmarks/account_attacks.py lockout      # the owner's login under 40 guesses
    python benchmarks/account_attacks.py --tree DIR   # serve another checkout (before/after)

- flood: 200 client networks (source addresses 127.1.N.1, each its own /32), one
  connection each, send 10 pipelined logins for unknown names (2,000 in all); those
  answered BUSY are sent again 100 ms later, until the flood ends (``--flood-seconds``). The
  real user (127.0.0.1) logs in with the right password once a second meanwhile;
  the figure is each of those logins' latency (target <= 1 s).
- lockout: 40 wrong guesses for the owner's name from one network (127.2.0.1),
  then the owner's right password, 6 times, from 127.0.0.1 (target: all OK).

The server is ``python -m trioserver`` with one worker, SQLite in a temporary
directory, scrypt at its defaults, on 127.0.0.1 only; it is stopped by its pid
(SIGTERM, then SIGKILL). Every phase is bounded in time. Not a test: it prints
figures and the machine, it asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from trioserver.client import BlockingClient, Client
from trioserver.messages import ResultCode, decode_login_reply, encode_login

REPO = Path(__file__).resolve().parent.parent


def server_cpu(master: int) -> float:
    """CPU seconds the master and its children (the worker) have used so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid, ppid = int(stat.parent.name), int(fields[1])
            if pid == master or ppid == master:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


SERVER_PID = 0
#: Pin the server to CPU 0 and this process (the attackers) to CPU 1, as run.py does.
PIN = False


@contextlib.contextmanager
def server(tmp: Path, tree: Path, *settings: str) -> Iterator[int]:
    """A running master with one worker; yields its binary port."""
    global SERVER_PID
    log = tmp / "server.log"
    pin = ["taskset", "-c", "0"] if PIN and shutil.which("taskset") else []
    args = [
        *pin, sys.executable, "-m", "trioserver", "serve",
        "--listen", "127.0.0.1:0", "--workers", "1",
        "--set", f'logging.file="{log}"',
        "--set", "http.listen=[]", "--set", f'accounts.url="sqlite:///{tmp}/accounts.sqlite3"',
    ]  # fmt: skip
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        args, cwd=tmp, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    SERVER_PID = proc.pid
    try:
        deadline = time.monotonic() + 20
        found = None
        while found is None:
            text = log.read_text(errors="replace") if log.exists() else ""
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            ready = re.search(r"serving: \d+ workers? ready", text) is not None
            if found and not ready:
                found = None
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the server did not start:\n{text}")
            time.sleep(0.05)
        yield int(found.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def connect(port: int, source: str = "127.0.0.1") -> Client:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return Client(trio.SocketStream(sock))


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"machine: {platform.node()}, {model}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}"
    )


async def flood(port: int, seconds: float, networks: int, pipeline: int) -> None:
    setup = await connect(port)
    assert (await setup.register("realuser", "right password")).result in (0, 1)
    await setup.aclose()
    results: collections.Counter[str] = collections.Counter()
    latencies: list[tuple[float, str]] = []
    end = trio.current_time() + seconds
    sent = 0
    cpu_before = server_cpu(SERVER_PID)

    async def attacker(n: int) -> None:
        # One connection per network: `pipeline` logins sent at once (the issue's
        # shape), every reply read; those answered BUSY are sent again 100 ms later
        # (the retry a client would make), until each got a hash or the flood ends.
        nonlocal sent
        pending = [f"ghost{n}x{i}" for i in range(pipeline)]
        client = await connect(port, f"127.1.{n}.1")
        while pending and trio.current_time() < end:
            try:
                await client.send_raw(b"".join(encode_login(name, "guess") for name in pending))
                sent += len(pending)
                retry = []
                for name in pending:
                    reply = decode_login_reply((await client.receive_packet()).body)
                    results[ResultCode(reply.result).name] += 1
                    if reply.result == ResultCode.BUSY:
                        retry.append(name)
                pending = retry
            except (OSError, trio.BrokenResourceError, ConnectionError):
                results["closed"] += 1
                await client.aclose()
                client = await connect(port, f"127.1.{n}.1")
            await trio.sleep(0.1)
        await client.aclose()

    def one_login() -> tuple[float, str]:
        # A blocking client in a thread: the figure is the server's, not this
        # process's event loop, which is busy running the 200 attackers.
        start = time.perf_counter()
        try:
            with BlockingClient.connect("127.0.0.1", port, timeout=60) as client:
                connected = time.perf_counter() - start
                reply = client.login("realuser", "right password")
        except OSError as exc:
            return time.perf_counter() - start, f"no reply: {exc}"
        code = f"{ResultCode(reply.result).name}, connect {connected * 1000:.0f} ms"
        return time.perf_counter() - start, code

    async def real_user() -> None:
        await trio.sleep(1.0)  # the flood is under way
        while trio.current_time() < end - 0.5:
            latencies.append(await trio.to_thread.run_sync(one_login))
            await trio.sleep(1.0)

    with trio.move_on_after(seconds + 90):  # bounded even if the server stalls
        async with trio.open_nursery() as nursery:
            for n in range(networks):
                nursery.start_soon(attacker, n)
            nursery.start_soon(real_user)
    cpu = server_cpu(SERVER_PID) - cpu_before
    figures = ", ".join(f"{seconds * 1000:.0f} ms ({code})" for seconds, code in latencies)
    worst = max((s for s, _ in latencies), default=float("nan"))
    median = statistics.median(s for s, _ in latencies) if latencies else float("nan")
    print(
        f"flood: {networks * pipeline} unknown-name logins from {networks} networks "
        f"({pipeline} pipelined, BUSY ones retried after 100 ms: {sent} sent) for "
        f"{seconds:.0f} s; replies {dict(results)}; server CPU {cpu:.1f} s "
        f"({cpu / max(1, sum(results.values())) * 1e6:.0f} us per reply)"
    )
    print(
        f"flood: the real user's logins: {figures or 'none answered'}; "
        f"median {median * 1000:.0f} ms, worst {worst * 1000:.0f} ms (target <= 1000 ms)"
    )


async def lockout(port: int, guesses: int) -> None:
    setup = await connect(port)
    assert (await setup.register("owner", "owner's password")).result in (0, 1)
    await setup.aclose()
    guessed: collections.Counter[str] = collections.Counter()
    for i in range(guesses):  # a connection per guess: the flood rule does not stop it
        guesser = await connect(port, "127.2.0.1")
        reply = await guesser.login("owner", f"guess {i}")
        guessed[ResultCode(reply.result).name] += 1
        await guesser.aclose()
    owner_results = []
    for _ in range(6):
        client = await connect(port)
        start = trio.current_time()
        reply = await client.login("owner", "owner's password")
        owner_results.append(
            f"{ResultCode(reply.result).name} ({(trio.current_time() - start) * 1000:.0f} ms)"
        )
        await client.aclose()
    print(f"lockout: {guesses} guesses from 127.2.0.1 got {dict(guessed)}")
    print(f"lockout: the owner from 127.0.0.1, 6 tries: {', '.join(owner_results)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", nargs="*", help="flood, lockout (default: both)")
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout to serve")
    parser.add_argument("--flood-seconds", type=float, default=8.0)
    parser.add_argument("--networks", type=int, default=200)
    parser.add_argument("--pipeline", type=int, default=10)
    parser.add_argument("--guesses", type=int, default=40)
    parser.add_argument(
        "--pin", action="store_true", help="server on CPU 0 (one hash thread), attackers on CPU 1"
    )
    args = parser.parse_args()
    if args.pin:
        global PIN
        PIN = True
        os.sched_setaffinity(0, {1})
    print(machine())
    print(f"serving {args.tree}")
    for attack in args.attacks or ["flood", "lockout"]:
        with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), args.tree) as port:
            if attack == "flood":
                trio.run(flood, port, args.flood_seconds, args.networks, args.pipeline)
            else:
                trio.run(lockout, port, args.guesses)


if __name__ == "__main__":
    main()

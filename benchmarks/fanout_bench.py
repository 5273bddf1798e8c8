"""Fan-out: one group of N connections on one worker, broadcasts at a steady rate, against
a bare trio fan-out in the same run.

    python benchmarks/fanout_bench.py [--connections 10000] [--rate 10] [--seconds 10] [--runs 3]

Each server runs pinned to CPU 0 (``taskset -c 0``), the receiver
(``fanout/receiver.c``, built here with ``cc``) pinned to CPU 1. The receiver opens the
connections, waits ``--warmup`` seconds, then counts ``--seconds`` seconds of pushes:
deliveries per second, per server CPU-second (``/proc/PID/stat``), and the delivery
latency from the publish (its timestamp in the body) to the receive, p50 and p99. Runs
alternate between the targets. Servers are stopped by their own PID (SIGTERM, then SIGKILL
after 5 s); load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD = HERE / "build"
RECEIVER = BUILD / "fanout_receiver"


def build() -> None:
    BUILD.mkdir(exist_ok=True)
    source = HERE / "fanout" / "receiver.c"
    if not RECEIVER.exists() or RECEIVER.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(RECEIVER), str(source)], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(target: str, port: int, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if target == "bare-trio":
        cmd = [sys.executable, str(HERE / "fanout" / "bare.py"), "--port", str(port), "--rate", str(args.rate)]
        return cmd, env
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "fanout"), str(REPO), env.get("PYTHONPATH", "")])
    env["FANOUT_RATE"] = str(args.rate)
    cmd = [
        sys.executable, "-m", "trioserver", "--no-master", "--app", "fanout_app:router",
        "--listen", f"127.0.0.1:{port}",
        "--set", f"server.max_connections={args.connections + 100}",
        "--set", "server.backlog=4096",
        "--set", "connection.heartbeat=false",
        "--set", "http.listen=[]",
        "--set", 'accounts.url="memory:"',
        "--set", 'logging.level="warning"',
    ]  # fmt: skip
    return cmd, env


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def one_run(target: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    cmd, env = command(target, port, args)
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *cmd], env=env, cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_port(port, proc)
        out = subprocess.run(
            ["taskset", "-c", "1", str(RECEIVER), "-p", str(port), "-c", str(args.connections),
             "-w", str(args.warmup), "-t", str(args.seconds), "-S", str(proc.pid)],
            capture_output=True, check=True, timeout=args.warmup + args.seconds + 60,
        )  # fmt: skip
        result: dict[str, float] = json.loads(out.stdout)
        return result
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--targets", nargs="*", default=["bare-trio", "trioserver"])
    args = parser.parse_args()
    build()
    results: dict[str, list[dict[str, float]]] = {t: [] for t in args.targets}
    for run in range(args.runs):
        for target in args.targets:
            r = one_run(target, args)
            results[target].append(r)
            print(
                f"run {run + 1} {target:11} {r['per_second']:>9,.0f} deliveries/s "
                f"{r['per_cpu_second']:>10,.0f} per CPU-s  p50 {r['p50'] * 1e3:6.2f} ms  "
                f"p99 {r['p99'] * 1e3:6.2f} ms  closed {r['closed']:.0f}",
                flush=True,
            )
    print(f"\n{args.connections} connections, {args.rate:g} broadcasts/s, medians of {args.runs}:")
    base = None
    for target, runs in results.items():
        per_cpu = statistics.median(r["per_cpu_second"] for r in runs)
        base = base or per_cpu
        print(
            f"  {target:11} {statistics.median(r['per_second'] for r in runs):>9,.0f} /s  "
            f"{per_cpu:>10,.0f} per CPU-s ({per_cpu / base:.2f}x bare)  "
            f"p50 {statistics.median(r['p50'] for r in runs) * 1e3:.2f} ms  "
            f"p99 {statistics.median(r['p99'] for r in runs) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()

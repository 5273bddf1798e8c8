"""Fan-out: one group of N connections on one worker, broadcasts at a steady rate, against
a bare trio fan-out in the same run.

    python benchmarks/fanout_bench.py [--connections 10000] [--rate 10] [--seconds 10] [--runs 3]
        [--targets bare-trio trioserver trioserver-2workers trioserver-2redis]

``trioserver-2workers``: a master and two workers (the mesh between them), the
connections spread by the kernel; ``trioserver-2redis``: two instances sharing a
``redis-server``, half the connections on each; one publisher in both. Their server
CPU is the sum over the workers (and redis-server).

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


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def command(
    target: str, port: int, args: argparse.Namespace, extra: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if target == "bare-trio":
        cmd = [sys.executable, str(HERE / "fanout" / "bare.py"), "--port", str(port), "--rate", str(args.rate)]
        return cmd, env
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "fanout"), str(REPO), env.get("PYTHONPATH", "")])
    env["FANOUT_RATE"] = str(args.rate)
    workers = ["--workers", "2"] if target == "trioserver-2workers" else ["--no-master"]
    cmd = [
        sys.executable, "-m", "trioserver", *workers, "--app", "fanout_app:router",
        "--listen", f"127.0.0.1:{port}",
        "--set", f"server.max_connections={args.connections + 100}",
        "--set", "server.backlog=4096",
        "--set", "connection.heartbeat=false",
        "--set", "http.listen=[]",
        "--set", 'accounts.url="memory:"',
        "--set", 'logging.level="warning"',
        *extra,
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


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", "0", *cmd], env=env, cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def one_run(target: str, args: argparse.Namespace) -> dict[str, float]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_port()]
        if target == "trioserver-2redis":
            sys.path.insert(0, str(REPO))
            from tests.hub.redisserver import free_port as redis_port

            rport = redis_port()
            procs.append(
                spawn(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", ""], {})
            )
            wait_port(rport, procs[0])
            ports.append(free_port())
            for i, port in enumerate(ports):
                cmd, env = command(target, port, args, ("--set", f'bus.url="redis://127.0.0.1:{rport}/0"'))
                env["FANOUT_PUBLISH"] = "1" if i == 0 else "0"
                procs.append(spawn(cmd, env))
                wait_port(port, procs[-1])
            measured = [p.pid for p in procs]
        else:
            cmd, env = command(target, ports[0], args)
            procs.append(spawn(cmd, env))
            wait_port(ports[0], procs[0])
            measured = [procs[0].pid]
            if target == "trioserver-2workers":
                deadline = time.monotonic() + 15
                while len(children(procs[0].pid)) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(1)  # both workers serving
                measured = children(procs[0].pid)
        receiver = [str(RECEIVER), "-c", str(args.connections), "-w", str(args.warmup),
                    "-t", str(args.seconds)]  # fmt: skip
        for port in ports:
            receiver += ["-p", str(port)]
        for pid in measured:
            receiver += ["-S", str(pid)]
        out = subprocess.run(
            ["taskset", "-c", "1", *receiver],
            capture_output=True, check=True, timeout=args.warmup + args.seconds + 60,
        )  # fmt: skip
        result: dict[str, float] = json.loads(out.stdout)
        return result
    finally:
        for proc in reversed(procs):
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

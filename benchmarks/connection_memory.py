"""Where an idle binary connection's bytes go, per connection: trioserver against bare trio.

The server runs in this process (a worker, or ``baselines/bare_trio.py``'s handler
under ``trio.serve_tcp``); a client subprocess opens N connections, holds them, then
pings each once. Two passes per server, each in a fresh process:

- **RSS**: growth of the server process's resident memory per connection, idle and
  after the ping (what ``run.py``'s ``idle-10k`` reports, without a loadgen);
- **tracemalloc**: the Python allocations that are still live, diffed against the
  empty server and grouped by where they were made (a few frames of traceback), so
  each line is a per-connection object and its bytes; tracemalloc counts the bytes
  asked for, so RSS per connection is that plus the allocator's rounding (pymalloc
  rounds every block up to 16 bytes) and the partly used pages.

Then ``sys.getsizeof`` of each object one parked connection holds (its Connection,
transport, socket, task, the coroutine frames it is parked in, cancel scope, trio's
per-task and per-fd records). The kernel's side of a socket (buffers, the epoll
entry) is not in RSS and not counted here.

::

    python benchmarks/connection_memory.py                      # both, 10,000 connections
    python benchmarks/connection_memory.py --server trioserver --connections 5000 --top 30
    python benchmarks/connection_memory.py --set connection.heartbeat=true   # other settings

The trioserver worker runs with ``run.py``'s binary settings (heartbeat and flood
rule off, accounts in memory) unless ``--set`` says otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PING = b"\x00\x08\x00\x00\x00\x00\x00\x00"
#: The settings run.py's ``trioserver`` target serves the binary protocol with.
_BATCH = 500
RUN_PY_SETTINGS = ("connection.flood_check=false", "connection.heartbeat=false")


# -- the client (a subprocess: its sockets are not the server's memory) ----------------------


#: The HTTP case's file and request: the reply ends with the file's last byte.
BODY = b"x" * 1023 + b"!"
REQUEST = b"GET /index.html HTTP/1.1\r\nHost: bench\r\n\r\n"


def client(port: int, http: bool) -> None:
    """On "open K" open K more connections; on "ping" ping each once (HTTP: one
    keep-alive request) and read every reply; then hold them until told."""
    socks: list[socket.socket] = []
    while (line := sys.stdin.readline().split()) and line[0] == "open":
        socks += [socket.create_connection(("127.0.0.1", port)) for _ in range(int(line[1]))]
        print("opened", flush=True)
    if line != ["ping"]:
        return
    count = len(socks)
    for s in socks:
        s.sendall(REQUEST if http else PING)
    selector = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ, bytearray())
    waiting = count
    while waiting:
        for key, _ in selector.select(timeout=30):
            got: bytearray = key.data
            got += key.fileobj.recv(64)  # type: ignore[union-attr]
            if got.endswith(b"!") if http else len(got) >= len(PING):
                selector.unregister(key.fileobj)
                waiting -= 1
    print("pinged", flush=True)
    sys.stdin.readline()  # hold until the server has measured


# -- the server side ---------------------------------------------------------------------------


_T0 = time.monotonic()


def _progress(what: str) -> None:
    print(f"{time.monotonic() - _T0:7.2f} s {what}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _settle() -> None:
    gc.collect()


async def _serve(kind: str, count: int, settings: list[str], trace: bool, nframes: int) -> dict:
    import trio
    import trio.testing

    result: dict[str, Any] = {"server": kind, "connections": count}
    connections: Callable[[], int]
    pick: Callable[[], list[tuple[str, int, str]]]
    async with trio.open_nursery() as nursery:
        if kind == "bare":
            sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))
            from bare_trio import handle

            listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            # The runner's own set: current_statistics() walks every registered fd.
            tasks = trio._core._run.GLOBAL_RUN_CONTEXT.runner.tasks
            base_tasks = len(tasks)

            def connections() -> int:
                return len(tasks) - base_tasks

            def pick() -> list[tuple[str, int, str]]:
                return _bare_objects(handle)

            worker = None
        elif kind == "http":
            from trioserver.config import Address
            from trioserver.testing import memory_config
            from trioserver.worker import Worker

            docroot = Path(tempfile.mkdtemp(prefix="connection-memory-"))
            (docroot / "index.html").write_bytes(BODY)
            worker = Worker(
                memory_config(
                    server__listen=(),
                    http__listen=(Address("127.0.0.1", 0),),
                    http__document_root=docroot,
                    # A traced server is slow: no connection times out while measured.
                    http__header_timeout=3600.0,
                    http__keep_alive_timeout=3600.0,
                    server__max_connections=max(count + 100, 10_000),
                )
            )
            await nursery.start(worker.serve)
            port = worker.http_addresses[0][1]

            def connections() -> int:
                return worker.http_connection_count

            def pick() -> list[tuple[str, int, str]]:
                return []

        else:
            from trioserver.config import Address
            from trioserver.testing import memory_config
            from trioserver.worker import Worker

            overrides: dict[str, Any] = {
                "server__listen": (Address("127.0.0.1", 0),),
                "http__listen": (),
                "server__max_connections": max(count + 100, 10_000),
            }
            for item in [*RUN_PY_SETTINGS, *settings]:
                key, _, value = item.partition("=")
                overrides[key.replace(".", "__")] = json.loads(value)
            worker = Worker(memory_config(**overrides))
            await nursery.start(worker.serve)
            port = worker.addresses[0][1]

            def connections() -> int:
                return len(worker.shared.connections)

            def pick() -> list[tuple[str, int, str]]:
                return _trioserver_objects(worker)

        await trio.testing.wait_all_tasks_blocked()
        _settle()
        if trace:
            tracemalloc.start(nframes)
        snaps = [tracemalloc.take_snapshot()] if trace else []
        rss = [rss_bytes()]
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                __file__,
                "--client",
                str(port),
                *(["--http"] if kind == "http" else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        lines = _lines(proc.stdout)
        # In batches, each accepted before the next: a traced server accepts slowly,
        # and connections beyond its listen queue would be dropped.
        opened = 0
        while opened < count:
            batch = min(_BATCH, count - opened)
            await proc.stdin.send_all(f"open {batch}\n".encode())
            if await lines.__anext__() != "opened":
                raise SystemExit("the client failed to open its connections")
            opened += batch
            with trio.move_on_after(60):
                while connections() < opened:  # noqa: ASYNC110 (bare trio has no hook)
                    await trio.sleep(0.005)
            if connections() < opened:
                raise SystemExit(f"{connections()} of {opened} connections arrived in 60 s")
        _progress("all accepted")
        await trio.testing.wait_all_tasks_blocked()
        _settle()
        rss.append(rss_bytes())
        _progress("settled")
        if trace:
            snaps.append(tracemalloc.take_snapshot())
        _progress("snapshot")
        await proc.stdin.send_all(b"ping\n")
        if await lines.__anext__() != "pinged":
            raise SystemExit("the client got no answer to its pings")
        await trio.testing.wait_all_tasks_blocked()
        _settle()
        rss.append(rss_bytes())
        if trace:
            snaps.append(tracemalloc.take_snapshot())
            tracemalloc.stop()
        result["rss_idle"] = (rss[1] - rss[0]) / count
        result["rss_pinged"] = (rss[2] - rss[0]) / count
        if trace:
            result["traced_idle"] = _traced_total(snaps[0], snaps[1]) / count
            result["traced_pinged"] = _traced_total(snaps[0], snaps[2]) / count
            result["lines"] = _grouped(snaps[0], snaps[2], count)
        else:
            result["objects"] = pick()
        await proc.stdin.send_all(b"close\n")
        await proc.wait()
        if worker is not None:
            worker.stop(grace=0)
        nursery.cancel_scope.cancel()
    return result


async def _lines(stream: Any) -> Any:
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line.decode().strip()


_NOISE = ("tracemalloc.py", "connection_memory.py", "<frozen importlib", "selectors.py")


def _traced_total(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    return sum(d.size_diff for d in after.compare_to(before, "filename"))


def _grouped(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int
) -> list[dict[str, Any]]:
    """Allocations still live after the ping, by traceback, per connection."""
    out = []
    for diff in after.compare_to(before, "traceback"):
        if diff.size_diff <= 0:
            continue
        frames = [f for f in diff.traceback if not f.filename.endswith(_NOISE)] or list(
            diff.traceback
        )
        out.append(
            {
                "bytes": diff.size_diff / count,
                "blocks": diff.count_diff / count,
                "where": [f"{_short(f.filename)}:{f.lineno}" for f in frames],
                "code": _source(frames[-1].filename, frames[-1].lineno),
            }
        )
    out.sort(key=lambda d: -d["bytes"])
    return out


def _short(path: str) -> str:
    for marker in ("site-packages/", "wt-memory/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.basename(path)


def _source(path: str, lineno: int) -> str:
    try:
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if i == lineno:
                    return line.strip()[:70]
    except OSError:
        pass
    return ""


# -- sys.getsizeof of what one parked connection holds -----------------------------------------


def _await_chain(coro: Any) -> Iterator[Any]:
    """A parked task's coroutines and generators, outermost first."""
    while coro is not None:
        yield coro
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def _all_tasks() -> Iterator[Any]:
    import trio

    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        yield task
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)


def _name(obj: Any) -> str:
    code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
    if code is not None:
        return f"{type(obj).__name__} {code.co_qualname} (frame inline)"
    return type(obj).__name__


def _entry(container: Any) -> int:
    """One member's share of a container many connections are in."""
    return sys.getsizeof(container) // max(1, len(container))


def _task_objects(task: Any) -> list[tuple[str, int, str]]:
    """The task, its trio records and the frames it is parked in."""
    import trio

    rows: list[tuple[str, int, str]] = [
        ("Task", sys.getsizeof(task), "trio"),
        ("  Task.context (contextvars.Context)", sys.getsizeof(task.context), "trio"),
        ("  Task._child_nurseries (list)", sys.getsizeof(task._child_nurseries), "trio"),
    ]
    status = task._cancel_status
    if len(status._tasks) > 1:  # the nursery's scope: shared by every connection
        rows.append(
            ("  CancelStatus._tasks set entry (the nursery's)", _entry(status._tasks), "trio")
        )
    else:
        rows.append(("  the CancelScope its reader is in", sys.getsizeof(status._scope), "trio"))
        rows.append(("  its CancelStatus", sys.getsizeof(status), "trio"))
        rows.append(("    CancelStatus._children (set)", sys.getsizeof(status._children), "trio"))
        rows.append(("    CancelStatus._tasks (set)", sys.getsizeof(status._tasks), "trio"))
    for coro in _await_chain(task.coro):
        rows.append((f"  {_name(coro)}", sys.getsizeof(coro), "frame"))
        frame = coro.cr_frame if hasattr(coro, "cr_frame") else coro.gi_frame
        for name, value in frame.f_locals.items():
            if callable(value) and getattr(value, "__closure__", None):
                cells = sum(sys.getsizeof(c) for c in value.__closure__)
                rows.append(
                    (
                        f"    closure {name} + {len(value.__closure__)} cells",
                        sys.getsizeof(value) + cells,
                        "frame",
                    )
                )
    runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
    waiters = None
    for fd, w in runner.io_manager._registered.items():
        if w.read_task is task:
            waiters = w
            rows.append(("  epoll EpollWaiters record", sys.getsizeof(w), "trio"))
            rows.append(("  its key, the fd (int)", sys.getsizeof(fd), "trio"))
    if waiters is None:
        rows.append(("  (not parked in wait_readable)", 0, "trio"))
    size = len(runner.tasks)
    rows.append(
        (
            f"  runner.tasks set entry ({size:,} tasks)",
            _entry(runner.tasks),
            "trio",
        )
    )
    nursery = task.parent_nursery
    rows.append(
        (
            "  nursery._children set entry",
            _entry(nursery._children),
            "trio",
        )
    )
    parent = status._parent
    if parent is not None and len(parent._children) > 1:
        rows.append(
            (
                "  parent CancelStatus._children entry",
                _entry(parent._children),
                "trio",
            )
        )
    return rows


def _trioserver_objects(worker: Any) -> list[tuple[str, int, str]]:
    conns = worker.shared.connections
    conn = conns[sorted(conns)[len(conns) // 2]]
    rows: list[tuple[str, int, str]] = [("Connection", sys.getsizeof(conn), "trioserver")]
    for name in type(conn).__slots__:
        value = getattr(conn, name, None)
        if value is None or value is conn.shared or isinstance(value, bool):
            continue
        if isinstance(value, int | float) and -5 <= value <= 256:
            continue  # cached small int
        rows.append((f"  .{name} ({type(value).__name__})", sys.getsizeof(value), "trioserver"))
        if name == "transport" and hasattr(value, "sock"):
            rows.append(("    .sock (socket.socket)", sys.getsizeof(value.sock), "trioserver"))
        if name == "peer":
            rows.append(("    .port (int)", sys.getsizeof(value.port), "trioserver"))
    rows.append(
        (
            f"  shared.connections dict entry ({len(conns):,})",
            _entry(conns),
            "trioserver",
        )
    )
    task = next(t for t in _all_tasks() if _frame_self(t.coro) is conn)
    for coro in _await_chain(task.coro):
        frame = coro.cr_frame if hasattr(coro, "cr_frame") else coro.gi_frame
        for name, value in frame.f_locals.items():
            if type(value).__module__.startswith("trioserver.framer"):
                rows.append(
                    (f"  reader local {name} ({type(value).__name__})", sys.getsizeof(value), "")
                )
                buf = getattr(value, "_buf", None)
                if buf is not None:
                    rows.append(("    ._buf (bytearray)", sys.getsizeof(buf), "trioserver"))
            elif isinstance(value, bytes) and value:
                rows.append((f"  reader local {name} (bytes)", sys.getsizeof(value), "trioserver"))
    rows.extend(_task_objects(task))
    pool = worker.pool
    rows.append(("  pool._slots list entry", 8, "trioserver"))
    del pool
    return rows


def _frame_self(coro: Any) -> Any:
    frame = getattr(coro, "cr_frame", None)
    return None if frame is None else frame.f_locals.get("self")


def _bare_objects(handle: Any) -> list[tuple[str, int, str]]:
    def runs_handle(task: Any) -> Any:
        for coro in _await_chain(task.coro):
            if getattr(coro, "cr_code", None) is handle.__code__:
                return coro
        return None

    task = next(t for t in _all_tasks() if runs_handle(t) is not None)
    frame = runs_handle(task).cr_frame
    stream = frame.f_locals["stream"]
    rows: list[tuple[str, int, str]] = [
        ("SocketStream", sys.getsizeof(stream), "trio"),
        ("  trio socket wrapper", sys.getsizeof(stream.socket), "trio"),
        ("    its socket.socket", sys.getsizeof(stream.socket._sock), "trio"),
        ("  ConflictDetector x2", 2 * sys.getsizeof(stream._send_conflict_detector), "trio"),
    ]
    for name, value in frame.f_locals.items():
        if isinstance(value, bytes | bytearray):
            rows.append(
                (f"  handler local {name} ({type(value).__name__})", sys.getsizeof(value), "")
            )
    rows.extend(_task_objects(task))
    return rows


# -- the report ------------------------------------------------------------------------------


def _run_child(kind: str, count: int, settings: list[str], trace: bool, nframes: int) -> dict:
    cmd = [sys.executable, __file__, "--serve", kind, "--connections", str(count)]
    cmd += ["--nframes", str(nframes)] + (["--trace"] if trace else [])
    for item in settings:
        cmd += ["--set", item]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def _print_objects(kind: str, rows: list[tuple[str, int, str]]) -> None:
    print(f"\n{kind}: sys.getsizeof of what one parked connection holds")
    for label, size, _ in rows:
        print(f"  {size:6,} B  {label}")
    print(f"  {sum(r[1] for r in rows):6,} B  sum")


#: What each traced line is, by where it was allocated (first match wins).
_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "the wait for bytes (trio's wait_readable chain, or the read parking)",
        (
            "_io_epoll.py",
            "wait_readable(",
            "_traps.py",
            "parking.py",
            "_monotonic()",
            "trio/_socket.py",
            "_highlevel_socket.py:14",
            "contextlib.py",
        ),
    ),
    (
        "the cancel scope (CancelScope, CancelStatus and its two sets, the with)",
        ("CancelStatus", "CancelScope(", "with self.scope", "_children.add(self)"),
    ),
    (
        "the task's coroutine, and the frame object trio makes of it at spawn",
        ("coro = async_fn(*args)", "cr_frame"),
    ),
    (
        "trio's Task, its context, its entries in trio's sets",
        ("_util.py:291", "Task>", "copy_context", "self.tasks.add", "nursery._children.add"),
    ),
    ("the decoder", ("framer.py", "FrameDecoder(")),
    ("the outbox", ("Outbox(",)),
    ("the Connection object", ("Connection(",)),
    ("the pool slot", ("Slot(", "_slots.append")),
    ("the socket and its transport", ("socket.py", "SocketTransport(", "SocketStream(")),
    ("the peer", ("peer.py",)),
)


def _kind(line: dict[str, Any]) -> str:
    text = " ".join(line["where"]) + " " + line["code"]
    for kind, marks in _KINDS:
        if any(mark in text for mark in marks):
            return kind
    return "the rest"


def _print_kinds(kind: str, lines: list[dict[str, Any]]) -> None:
    totals: dict[str, float] = {}
    for line in lines:
        totals[_kind(line)] = totals.get(_kind(line), 0.0) + line["bytes"]
    print(f"\n{kind}: live allocations per connection after the ping, by what they are")
    for name, size in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {size:6,.0f} B  {name}")
    print(f"  {sum(totals.values()):6,.0f} B  traced in all")


def _print_lines(kind: str, lines: list[dict[str, Any]], top: int) -> None:
    print(f"\n{kind}: live allocations per connection after the ping, by traceback")
    print("   bytes  blocks  where (innermost last) / line")
    for d in lines[:top]:
        where = " < ".join(reversed(d["where"][-3:]))
        print(f"  {d['bytes']:6.0f}  {d['blocks']:6.2f}  {where}")
        print(f"                  {d['code']}")
    rest = sum(d["bytes"] for d in lines[top:])
    print(f"  {rest:6.0f}          (the other {max(0, len(lines) - top)} lines)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--server",
        choices=["trioserver", "bare", "both", "http"],
        default="both",
        help="http: trioserver's HTTP connections after one keep-alive request each",
    )
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=20, help="tracemalloc lines to print")
    parser.add_argument("--nframes", type=int, default=8)
    parser.add_argument(
        "--set", action="append", default=[], help="section.name=JSON for the worker"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--http", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.http)
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve:
        import trio

        result = trio.run(_serve, args.serve, args.connections, args.set, args.trace, args.nframes)
        print(json.dumps(result))
        return
    if args.connections + 64 > hard:
        raise SystemExit(f"RLIMIT_NOFILE is {hard}: at most {hard - 64} connections")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    print(f"code: {commit}")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + f"; {args.connections:,} connections; worker settings: "
        + ", ".join([*RUN_PY_SETTINGS, *args.set])
    )
    kinds = ["bare", "trioserver"] if args.server == "both" else [args.server]
    results = {}
    for kind in kinds:
        plain = _run_child(kind, args.connections, args.set, False, args.nframes)
        traced = _run_child(kind, args.connections, args.set, True, args.nframes)
        results[kind] = {
            **plain,
            **{k: v for k, v in traced.items() if k.startswith(("traced", "lines"))},
        }
    print("\nper connection      RSS idle  RSS after ping  traced idle  traced after ping")
    for kind, r in results.items():
        print(
            f"  {kind:<16} {r['rss_idle']:7,.0f} B  {r['rss_pinged']:11,.0f} B"
            f"  {r['traced_idle']:9,.0f} B  {r['traced_pinged']:13,.0f} B"
        )
    for kind, r in results.items():
        _print_objects(kind, r["objects"])
        _print_kinds(kind, r["lines"])
        _print_lines(kind, r["lines"], args.top)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""A worker process: what runs in the child after the master forks it.

::

    after fork: title, log role, parent-death signal, load the application
    trio.run
    └─ nursery
       ├─ signals: TERM → retire (drain)   USR2 → final stop (take the queue, then
       │  drain)   INT/QUIT → stop now   USR1 → reopen logs
       ├─ worker.serve                              (READY goes to the master once it serves)
       ├─ control: the master's commands with a handoff channel beside them:
       │  ADOPT → serve what an old worker hands over on it (Worker.adopt_from)
       │  HAND_OVER → retire by handing the connections over it (Worker.hand_over)
       ├─ heartbeat: a byte to the master every liveness_timeout / 2
       ├─ connection log: the summary of suppressed drop/kick lines each interval
       ├─ reports: the worker's statistics to the master every metrics.interval
       └─ loop lag: a timer whose lateness is the event loop's lag (stats.watch_loop_lag)

The pipe to the master carries the records of :mod:`trioserver.prefork.pipe`: single
bytes (``READY``, ``HEARTBEAT``) and length-prefixed statistics reports; a last
report goes out after the drain, so the master's totals miss nothing. Its
write failing with EPIPE means the master is gone, as does ``getppid()``
changing; ``PR_SET_PDEATHSIG`` makes the kernel tell us at once on Linux. Either
way the worker drains and exits: no worker outlives its master.

Retiring (SIGTERM, as a reload retires the old workers) is the worker's drain: it
closes this process's copy of the slot's listening sockets, which stay open in
the master and in the new worker of the slot (see :mod:`trioserver.prefork.procs`), so
connections the kernel queued there are accepted by the new worker, not reset.

Retiring by handoff (``HAND_OVER`` on the control socket, a reload with
``master.handoff``) is the same retire, except that the connections that can move go,
live, to the slot's new worker first; the worker then sends the master a
:class:`~trioserver.handoff_counts.HandoffCounts` on the pipe.

The final stop (SIGUSR2, ``FINAL_STOP_SIGNAL``) has no next worker: the master has
made the sockets start no new handshake, and the worker accepts what is queued
before it closes them, so that too is answered in the drain rather than reset.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Final

import trio

from ..config import Config
from ..handlers.router import Router
from ..handoff_counts import HandoffCounts
from ..ops.logs import configure_logging, reopen_logs, set_role
from ..sockets import BoundListener
from ..stats import watch_loop_lag
from ..worker import Worker
from .app import AppError, load_router
from .handoff import ADOPT, HAND_OVER
from .pipe import MasterPipe, encode_handed_over, encode_report
from .procs import HEARTBEAT, READY, ChildSetup, set_title

__all__ = ["load_router", "run_child"]

log = logging.getLogger("trioserver.worker")

#: Exit codes a worker process uses; anything before READY is a boot failure anyway.
EXIT_OK: Final = 0
EXIT_CRASHED: Final = 1
EXIT_BOOT_FAILED: Final = 3

_PR_SET_PDEATHSIG: Final = 1


class _WorkerProcess:
    """One worker process's control tasks around :class:`Worker`."""

    def __init__(self, setup: ChildSetup, router: Router) -> None:
        self.setup = setup
        self.index = setup.spec.index
        self.config: Config = setup.spec.config
        # The worker's own listener record, so it accepts on its fast path.
        self.listeners = [_bound(sock) for sock in setup.listeners]
        self.http_listeners = [_bound(sock) for sock in setup.http_listeners]
        self.tls_listeners = [_bound(sock) for sock in setup.tls_listeners]
        self.https_listeners = [_bound(sock) for sock in setup.https_listeners]
        self.worker = Worker(
            self.config,
            router,
            listeners=self.listeners,
            http_listeners=self.http_listeners,
            index=self.index,
            tls_listeners=self.tls_listeners,
            https_listeners=self.https_listeners,
            tls=setup.tls,
            instance=setup.instance or None,
            peers=range(1, setup.spec.workers + 1),
        )
        self.pipe = MasterPipe(setup.pipe, setup.master_pid)
        metrics = self.config.metrics
        if metrics.interval > 0:
            self.worker.counters.time_handlers(metrics.handler_timing)
        self.ready = False
        self._retiring = False
        #: The handoff under way, which only a stop-now signal may cut short.
        self._handoff_scope: trio.CancelScope | None = None

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._signals)
            await nursery.start(self._serve, nursery.cancel_scope)
            if self.setup.control is not None:
                nursery.start_soon(self._control, self.setup.control, nursery)
            self.ready = True
            log.info(
                "worker %d ready on %s",
                self.index,
                ", ".join(
                    _name(listener)
                    for listener in [
                        *self.listeners,
                        *self.http_listeners,
                        *self.tls_listeners,
                        *self.https_listeners,
                    ]
                )
                or "no listener",
            )
            if not self.pipe.send(READY):
                self._master_gone(nursery)
            nursery.start_soon(self._heartbeat, nursery)
            metrics = self.config.metrics
            if metrics.interval > 0:
                nursery.start_soon(self._report, metrics.interval)
                nursery.start_soon(watch_loop_lag, self.worker.counters, metrics.lag_interval)

    async def _serve(self, done: trio.CancelScope, *, task_status: trio.TaskStatus[Worker]) -> None:
        try:
            await self.worker.serve(task_status=task_status)
        finally:
            done.cancel()  # drained: the signal and heartbeat tasks end too
            if self.ready and self.config.metrics.interval > 0:
                self._send_report()  # the final figures, so the master's totals are exact

    async def _signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        wanted = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
        with trio.open_signal_receiver(*wanted) as signals:
            task_status.started()
            async with trio.open_nursery() as nursery:
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        reopen_logs()
                        log.info("SIGUSR1: log files reopened")
                    elif signum == signal.SIGTERM and not self._retiring:
                        nursery.start_soon(self.retire, "SIGTERM")
                    elif signum == signal.SIGUSR2:
                        # A reload's SIGTERM may have come first: the queue is still taken.
                        self.worker.take_queued()
                        if not self._retiring:
                            nursery.start_soon(self.retire, "SIGUSR2 (final stop)")
                    else:
                        log.info("%s: stopping now", signal.Signals(signum).name)
                        if self._handoff_scope is not None:
                            self._handoff_scope.cancel()  # what is unacknowledged closes too
                        self.worker.stop(grace=0)

    async def retire(self, why: str) -> None:
        """Drain, within the master's graceful_timeout (see the module docstring)."""
        if self._retiring:
            return
        self._retiring = True
        set_title(f"trioserver: worker {self.index} (stopping)")
        await trio.lowlevel.checkpoint()
        master = self.config.master
        grace = min(self.config.server.drain_timeout, master.graceful_timeout)
        log.info("%s: draining (up to %.1f s)", why, grace)
        self.worker.stop(grace=grace)

    async def _control(self, control: socket.socket, nursery: trio.Nursery) -> None:
        """The master's commands, each with a handoff channel: ``ADOPT``, ``HAND_OVER``."""
        with control:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(control, 64, 1)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(control)
                    continue
                except OSError:
                    return
                socks = [socket.socket(fileno=fd) for fd in fds]
                if not data and not socks:
                    return  # the master is gone; the heartbeat and the pipe notice
                if data in (ADOPT, HAND_OVER) and len(socks) == 1:
                    nursery.start_soon(
                        self.hand_over if data == HAND_OVER else self._adopt, socks[0]
                    )
                    continue
                log.error("worker %d: unknown command %r from the master", self.index, data)
                for sock in socks:
                    sock.close()

    async def hand_over(self, channel: socket.socket) -> None:
        """Retire by moving what can move over ``channel``, then drain; report the counts."""
        if self._retiring:
            channel.close()  # already draining (a signal came first): nothing left to move
            return
        self._retiring = True
        set_title(f"trioserver: worker {self.index} (handing over)")
        started = trio.current_time()
        budget, grace = handoff_budget(self.config)
        log.info(
            "worker %d: handing its connections to the slot's new worker (up to %.1f s)",
            self.index,
            budget,
        )
        # Shielded: its drain ends serve, which cancels this nursery, and the report
        # must still go out; a stop-now signal or the budget's end cancels it on purpose.
        self._handoff_scope = trio.CancelScope(shield=True, deadline=started + budget)
        with channel, self._handoff_scope:
            try:
                await self.worker.hand_over(channel)
            except Exception:
                log.exception("worker %d: the handoff failed; draining instead", self.index)
        if self._handoff_scope.cancelled_caught and trio.current_time() >= started + budget:
            log.warning(
                "worker %d: the handoff is not done after %.1f s; what has not moved drains "
                "here within %.1f s, before master.graceful_timeout",
                self.index,
                budget,
                grace,
            )
        self._handoff_scope = None
        # From the counters, which hand_over updates even when it is cut short; a worker
        # hands over once in its life, so they hold this handoff alone.
        counters = self.worker.counters
        result = HandoffCounts(
            counters.handoff_moved,
            counters.handoff_kept,
            counters.handoff_failed,
            trio.current_time() - started,
        )
        self.pipe.send(encode_handed_over(result.to_json()))
        # Whatever is still here drains as on any retire (a no-op once it has), so that
        # the worker exits before the master's graceful_timeout kills it.
        self.worker.stop(grace=grace)

    async def _adopt(self, channel: socket.socket) -> None:
        """Serve the connections an old worker hands over, until its channel ends."""
        with channel:
            try:
                await self.worker.adopt_from(channel)
            except Exception:
                log.exception("worker %d: adopting handed-over connections failed", self.index)

    async def _heartbeat(self, nursery: trio.Nursery) -> None:
        interval = self.config.master.liveness_timeout / 2
        while True:
            await trio.sleep(interval)
            if not self.pipe.send(HEARTBEAT):
                self._master_gone(nursery)
                return

    async def _report(self, interval: float) -> None:
        """Send the worker's statistics now, then every ``interval`` seconds."""
        while True:
            self._send_report()
            await trio.sleep(interval)

    def _send_report(self) -> None:
        self.pipe.send(encode_report(self.worker.statistics().to_json()))

    def _master_gone(self, nursery: trio.Nursery) -> None:
        log.warning("worker %d: the master is gone; draining and exiting", self.index)
        nursery.start_soon(self.retire, "master gone")


def handoff_budget(config: Config) -> tuple[float, float]:
    """(seconds a retiring worker may spend handing over, seconds then left to drain).

    Both fit in ``master.graceful_timeout``, after which the master kills the worker and
    every connection still there with it: a handoff that runs long (a loaded machine)
    stops in time for the rest to drain, answered and closed, not reset. The drain gets
    ``server.drain_timeout`` but at most half of the timeout.
    """
    total = config.master.graceful_timeout
    grace = min(config.server.drain_timeout, total / 2)
    return max(0.0, total - grace - 0.5), grace


def _bound(sock: socket.socket) -> BoundListener:
    """The worker's listener record for an inherited socket (so it accepts on its fast path)."""
    return BoundListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)), sock)


def _name(listener: BoundListener) -> str:
    host, port = listener.sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the master dies (elsewhere the heartbeat notices)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the heartbeat covers it
        pass


def run_child(setup: ChildSetup) -> int:
    """Run one worker process to its end; return its exit code (3: failed to boot)."""
    spec = setup.spec
    set_role(f"worker {spec.index}")
    set_title(f"trioserver: worker {spec.index}")
    # Reloads are the master's business; a terminal hangup must not kill workers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    process: _WorkerProcess | None = None
    try:
        configure_logging(spec.config.logging)
        _die_with_parent()
        if os.getppid() != setup.master_pid:
            log.warning("worker %d: the master died before the worker started", spec.index)
            return EXIT_OK
        try:
            router = load_router(spec.config.master.app)
        except Exception as exc:
            log.error(
                "worker %d cannot load the application %r: %s: %s",
                spec.index,
                spec.config.master.app,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, ImportError | AppError),
            )
            return EXIT_BOOT_FAILED
        process = _WorkerProcess(setup, router)
        trio.run(process.main)
        return EXIT_OK
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_CRASHED
        if process is None or not process.ready:
            log.error("worker %d exited with code %d while booting", spec.index, code)
        return code
    except BaseException:
        booting = process is None or not process.ready
        log.exception("worker %d %s", spec.index, "failed to boot" if booting else "crashed")
        return EXIT_BOOT_FAILED if booting else EXIT_CRASHED
    finally:
        logging.shutdown()

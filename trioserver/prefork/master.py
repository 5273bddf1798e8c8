"""The prefork master: starts the workers, respawns them, reloads, stops; plain Python, no trio.

::

    master = Master(config, system, load_config=reload_from_disk)
    exit_code = master.run()        # until SIGTERM / SIGINT / SIGQUIT, or a halt

Signal handlers only queue the signal (:class:`~trioserver.prefork.procs.OsSystem`); one
loop waits for signals, worker messages and deadlines, and dispatches
(``SIGNAL_ACTIONS``). Every rule lives here and reaches the OS through a
:class:`~trioserver.prefork.procs.System`, so the tests drive it with a fake system and
a fake clock.

Rules (after gunicorn's arbiter, but typed and testable):

- A worker says READY once it serves, then beats every ``liveness_timeout / 2``.
  Silence for ``liveness_timeout`` means its event loop is stuck: SIGKILL, replace.
- A worker that exits before READY (or is not ready within ``boot_timeout``) halts
  the server: a new one would fail the same way. During a reload it aborts the
  reload instead, and the running workers keep serving on the old config.
- A ready worker that dies is replaced at once; ``crash_limit`` deaths within
  ``crash_window`` seconds halt the server.
- Reload: read and check the new config (a bad one is logged and ignored), start
  the new workers, wait until every one is READY, then SIGTERM the old ones. The
  listening sockets stay open throughout (see :mod:`trioserver.prefork.procs`), so no
  connection is refused or reset.
- Retiring a worker on a reload (or an aborted reload) is SIGTERM: it drains its
  connections and leaves the queued ones to the slot's new worker.
- Handoff (``master.handoff``, the new config's value): once every new worker of a
  reload serves, each ready old worker and its slot's new worker
  (:func:`~trioserver.prefork.handoff.handoff_targets`) get the two ends of a handoff
  channel, and the old one is not sent SIGTERM. It moves what can move, drains the
  rest, reports a :class:`~trioserver.handoff_counts.HandoffCounts` on its pipe and
  exits; the master
  logs each result and the reload's totals once every old worker has reported or exited,
  and counts them in the metrics. An old worker the command cannot reach is sent SIGTERM.
  A new worker that dies during the handoff is a ready worker of the running generation:
  it is replaced at once (its replacement adopts nothing), and the old worker drains what
  it could not move. The reload itself is not undone. A SIGHUP during a handoff reloads
  once it has ended, as one during a reload does.
- Stop: the listening sockets first stop queueing new connections
  (:meth:`~trioserver.prefork.procs.System.stop_queueing`; the last close of a
  listening socket would reset whatever is still queued), then ``FINAL_STOP_SIGNAL``
  (SIGUSR2) to every worker: it accepts what is queued and drains it with the rest.
  SIGKILL after ``graceful_timeout``; the fast stop sends SIGQUIT and kills after
  ``FAST_STOP_GRACE``. The master exits once every worker is reaped.
- Statistics: workers report on their pipe every ``metrics.interval``; a
  :class:`~trioserver.ops.metrics.Gatherer` folds the reports into per-slot series
  (counters never go backwards across respawns), which the admin listener serves
  (:mod:`trioserver.ops.admin`) and the master sums into a log line every
  ``metrics.log_interval``.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import attrs

from ..config import Address, Config, ConfigError, LoggingSettings, worker_count
from ..handoff_counts import HandoffCounts
from ..ops.metrics import Gatherer
from .handoff import HandoffRun, handoff_targets
from .procs import (
    READY,
    ConfigListeners,
    Event,
    Exited,
    HandoffReport,
    OsSystem,
    System,
    WorkerMessage,
    WorkerReport,
    WorkerSpec,
    describe_exit,
    raise_open_file_limit,
    set_title,
)

__all__ = [
    "FAST_STOP_GRACE",
    "FINAL_STOP_SIGNAL",
    "SIGNAL_ACTIONS",
    "Action",
    "ExitCode",
    "Master",
    "WorkerProcess",
    "serve",
    "worker_count",
]

log = logging.getLogger("trioserver.master")

#: Seconds workers get to close their connections on a fast stop before SIGKILL.
FAST_STOP_GRACE: Final = 2.0
#: What the master sends a worker on the final stop, once the listening sockets queue no
#: more: drain, and take what is still queued first (SIGTERM leaves it to the next worker).
FINAL_STOP_SIGNAL: Final = signal.SIGUSR2
#: Seconds before trying again when fork itself fails (out of processes or memory).
FORK_RETRY: Final = 1.0


class Action(enum.Enum):
    REAP = "reap exited workers, replace the ones that should still run"
    GRACEFUL_STOP = "stop: workers drain, SIGKILL after graceful_timeout"
    FAST_STOP = "stop now: workers close their connections, SIGKILL soon after"
    RELOAD = "re-read the config, start new workers, then retire the old ones"
    REOPEN_LOGS = "reopen log files here and in every worker"


#: What each signal makes the master do (docs/design.md, "The process model").
SIGNAL_ACTIONS: Final[Mapping[int, Action]] = {
    signal.SIGCHLD: Action.REAP,
    signal.SIGTERM: Action.GRACEFUL_STOP,
    signal.SIGINT: Action.FAST_STOP,
    signal.SIGQUIT: Action.FAST_STOP,
    signal.SIGHUP: Action.RELOAD,
    signal.SIGUSR1: Action.REOPEN_LOGS,
}


class ExitCode(enum.IntEnum):
    """The master's exit status."""

    STOPPED = 0
    #: Could not start: cannot listen, pidfile taken, daemon set-up failed.
    START_FAILED = 1
    #: A worker failed before it was ready (gunicorn uses 3 too).
    BOOT_FAILED = 3
    #: Too many workers died within crash_window.
    CRASH_LOOP = 4


@attrs.define(eq=False)
class WorkerProcess:
    """One worker process as the master tracks it."""

    index: int
    generation: int
    pid: int
    config: Config
    started: float
    last_beat: float
    ready: bool = False
    #: Sent SIGTERM or SIGQUIT on purpose: its exit is expected, it is not replaced.
    retiring: bool = False
    #: When the master SIGKILLs it if it is still there.
    kill_at: float = math.inf
    #: Why the master SIGKILLed it, for the exit log line.
    killed: str | None = None

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.pid})"


@attrs.define(eq=False)
class _Reload:
    generation: int
    config: Config
    workers: int
    #: When the reload began (the master's clock).
    started: float = 0.0


def _nothing(*args: object) -> None:
    pass


class Master:
    """The master's rules, on top of a :class:`~trioserver.prefork.procs.System`."""

    def __init__(
        self,
        config: Config,
        system: System,
        *,
        load_config: Callable[[], Config],
        apply_config: Callable[[Config], None] = _nothing,
        reopen_logs: Callable[[], None] = _nothing,
        on_ready: Callable[[], None] = _nothing,
        gatherer: Gatherer | None = None,
    ) -> None:
        self.config = config
        #: Every worker's statistics, if this master keeps them.
        self.gatherer = gatherer
        self.system = system
        self._load_config = load_config
        self._apply_config = apply_config
        self._reopen_logs = reopen_logs
        self._on_ready = on_ready
        self.workers: dict[int, WorkerProcess] = {}
        self.exit_code: ExitCode | None = None
        self._count = worker_count(config)
        self._generation = 0
        self._next_generation = 1
        self._reload: _Reload | None = None
        self._reload_again = False
        self._booted = False
        self._stopping: str | None = None
        #: When a graceful stop's ``stop_delay`` ends and the workers are told to drain.
        self._retire_at: float | None = None
        self._fast = False
        self._final_code = ExitCode.STOPPED
        self._crashes: collections.deque[float] = collections.deque()
        self._fork_retry_at = -math.inf
        #: Handoffs under way: the old workers each still waits for.
        self._handoffs: list[HandoffRun] = []

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and dispatch until every worker is gone; the exit code."""
        self.start()
        while self.exit_code is None:
            self.step()
        return int(self.exit_code)

    def start(self) -> None:
        log.info("master starting %d workers (config: %s)", self._count, self.config.source)
        self._reconcile()

    def step(self) -> None:
        """Wait for the next event or deadline, and act on it."""
        for event in self.system.wait(self.next_timeout()):
            self.handle(event)
        self.tick()

    def handle(self, event: Event) -> None:
        if isinstance(event, WorkerMessage):
            self._message(event.pid, event.data)
            return
        if isinstance(event, HandoffReport):
            self._handed_over(event.pid, event.payload)
            return
        if isinstance(event, WorkerReport):
            worker = self.workers.get(event.pid)
            if worker is not None:
                worker.last_beat = self.system.now()  # a report is a sign of life too
                if self.gatherer is not None:
                    self.gatherer.report(event.pid, event.payload)
            return
        action = SIGNAL_ACTIONS.get(event.signum)
        if action is not Action.REAP:
            log.info(
                "%s: %s", signal.Signals(event.signum).name, action.value if action else "ignored"
            )
        if action is Action.REAP:
            for exited in self.system.reap():
                self._exited(exited)
        elif action is Action.GRACEFUL_STOP:
            self.stop(fast=False, why=signal.Signals(event.signum).name)
        elif action is Action.FAST_STOP:
            self.stop(fast=True, why=signal.Signals(event.signum).name)
        elif action is Action.RELOAD:
            self.reload()
        elif action is Action.REOPEN_LOGS:
            self._reopen_logs()
            for worker in self.workers.values():
                self.system.kill(worker.pid, signal.SIGUSR1)

    def tick(self) -> None:
        """Act on deadlines (kills, boot and liveness timeouts); replace missing workers."""
        now = self.system.now()
        if self._retire_at is not None and now >= self._retire_at:
            self._retire_at = None
            grace = self.config.master.graceful_timeout
            log.info("stop delay over: %d workers drain, up to %.1f s", len(self.workers), grace)
            self._stop_workers(now)
        for worker in list(self.workers.values()):
            if worker.killed is not None:
                continue
            settings = worker.config.master
            if now >= worker.kill_at:
                self._kill(worker, f"still running {now - worker.kill_at:.0f} s past its deadline")
            elif worker.retiring:
                continue
            elif not worker.ready and now - worker.started >= settings.boot_timeout:
                log.error(
                    "%s is not serving after %.1f s (master.boot_timeout); killing it",
                    worker.name,
                    settings.boot_timeout,
                )
                self._kill(worker, f"not serving after {settings.boot_timeout:g} s")
            elif worker.ready and now - worker.last_beat >= settings.liveness_timeout:
                log.error(
                    "%s sent no heartbeat for %.1f s: its event loop is stuck (a blocking "
                    "call in a handler?); killing and replacing it",
                    worker.name,
                    now - worker.last_beat,
                )
                self._kill(worker, f"no heartbeat for {now - worker.last_beat:.1f} s")
        self._reconcile()
        if self.gatherer is not None:
            line = self.gatherer.summary_if_due(self.config.metrics.log_interval, now)
            if line is not None:
                log.info("%s", line)
        self._finish_if_done()

    @property
    def health(self) -> str:
        """``serving``, or ``starting`` (not every worker ready yet) or ``draining`` (stopping)."""
        if self._stopping is not None:
            return "draining"
        return "serving" if self._booted else "starting"

    def next_timeout(self) -> float | None:
        """Seconds until the next deadline ``tick`` acts on (None: only events matter)."""
        deadlines = [self._fork_retry_at] if self._fork_retry_at > -math.inf else []
        if self._retire_at is not None:
            deadlines.append(self._retire_at)
        for worker in self.workers.values():
            if worker.killed is not None:
                continue
            deadlines.append(worker.kill_at)
            if worker.retiring:
                continue
            settings = worker.config.master
            if worker.ready:
                deadlines.append(worker.last_beat + settings.liveness_timeout)
            else:
                deadlines.append(worker.started + settings.boot_timeout)
        if self.gatherer is not None:
            due = self.gatherer.summary_deadline(
                self.config.metrics.log_interval, self.system.now()
            )
            if due is not None:
                deadlines.append(due)
        soonest = min(deadlines, default=math.inf)
        if soonest == math.inf:
            return None
        return max(0.0, soonest - self.system.now())

    # -- commands -----------------------------------------------------------------------

    def stop(self, *, fast: bool, why: str) -> None:
        """Graceful (drain, then SIGKILL after graceful_timeout) or fast stop.

        A graceful stop first waits ``master.stop_delay`` with the health check
        failing (workers keep serving), so a balancer stops sending new connections
        before the listening sockets close; a second SIGTERM ends the wait.
        """
        if self._stopping is not None and (self._fast or not fast):
            if not fast and self._retire_at is not None:
                self._retire_at = self.system.now()  # asked again: do not wait any longer
                self.tick()
            return
        first = self._stopping is None
        self._stopping = why
        self._fast = fast
        self._reload = None
        now = self.system.now()
        delay = self.config.master.stop_delay
        if not fast and first and delay > 0 and self.workers:
            self._retire_at = now + delay
            log.info(
                "stopping (%s): health now reports draining; workers keep serving %.1f s "
                "(master.stop_delay), then drain",
                why,
                delay,
            )
            return
        self._retire_at = None
        if fast:
            log.info("stopping now (%s): %d workers", why, len(self.workers))
            for worker in self.workers.values():
                worker.retiring = True
                worker.kill_at = min(worker.kill_at, now + FAST_STOP_GRACE)
                self.system.kill(worker.pid, signal.SIGQUIT)
        else:
            grace = self.config.master.graceful_timeout
            log.info("stopping (%s): %d workers drain, up to %.1f s", why, len(self.workers), grace)
            self._stop_workers(now)
        self._finish_if_done()

    def reload(self) -> None:
        """Read the config again and replace every worker, new ones first."""
        if self._stopping is not None:
            return
        if self._reload is not None or self._handoffs:
            # During a handoff the new workers are still adopting: ones they would have to
            # hand over again at once would refuse what arrives, and it would drain.
            log.info("a reload is in progress; reloading again once it ends")
            self._reload_again = True
            return
        try:
            new = self._load_config()
        except ConfigError as exc:
            log.error("reload: %s; the workers keep running on %s", exc, self.config.source)
            return
        if new.metrics.listen != self.config.metrics.listen:
            log.warning(
                "reload: metrics.listen changed to %s; the admin listener stays on %s until "
                "the server is restarted",
                new.metrics.listen or "off",
                self.config.metrics.listen or "off",
            )
        count = worker_count(new)
        try:
            self.system.prepare(new, count)
        except OSError as exc:
            log.error("reload: %s; the workers keep running on %s", exc, self.config.source)
            return
        self._reload = _Reload(self._next_generation, new, count, self.system.now())
        self._next_generation += 1
        log.info(
            "reload: %s read; starting %d new workers before retiring the %d running",
            new.source,
            count,
            len(self.workers),
        )
        self._reconcile()

    # -- events -------------------------------------------------------------------------

    def _message(self, pid: int, data: bytes) -> None:
        worker = self.workers.get(pid)
        if worker is None:
            return
        worker.last_beat = self.system.now()
        if READY in data and not worker.ready:
            worker.ready = True
            log.info("%s ready after %.2f s", worker.name, worker.last_beat - worker.started)
            self._progress()

    def _handed_over(self, pid: int, payload: bytes) -> None:
        """An old worker's handoff result: log it, count it, finish its reload's totals."""
        run = next((r for r in self._handoffs if pid in r.pending), None)
        if run is None:
            return
        worker = self.workers.get(pid)
        name = worker.name if worker is not None else f"pid {pid}"
        try:
            result = HandoffCounts.from_json(payload)
        except ValueError as exc:
            log.error("%s sent a malformed handoff result (%s); not counted", name, exc)
            run.gone(pid)
        else:
            log.info("%s handed over in %.3f s: %s", name, result.seconds, result.describe())
            run.reported(pid, result)
            if self.gatherer is not None:
                self.gatherer.handoff(result)
        self._handoff_progress(run)

    def _handoff_progress(self, run: HandoffRun) -> None:
        if not run.done:
            return
        self._handoffs.remove(run)
        seconds = self.system.now() - run.started
        missing = (
            f"; {run.unreported} old workers exited without a report" if run.unreported else ""
        )
        log.info("reload: handoff done in %.3f s: %s%s", seconds, run.total.describe(), missing)
        if self.gatherer is not None:
            self.gatherer.handoff_done(seconds)
        if not self._handoffs:
            self._again()

    def _exited(self, exited: Exited) -> None:
        if self.gatherer is not None:
            self.gatherer.exited(exited.pid, exited.reports, exited.cpu_seconds)
        for payload in exited.handoffs:
            self._handed_over(exited.pid, payload)
        for run in [r for r in self._handoffs if exited.pid in r.pending]:
            run.gone(exited.pid)
            self._handoff_progress(run)
        worker = self.workers.pop(exited.pid, None)
        if worker is None:
            return
        if READY in exited.unread:
            worker.ready = True
        how = describe_exit(exited.returncode, worker.killed)
        if worker.retiring or self._stopping is not None:
            expected = exited.returncode == 0 or worker.killed is None
            (log.info if expected else log.warning)("%s stopped: %s", worker.name, how)
        elif not worker.ready:
            why = f"{worker.name} failed to boot: it {how}"
            if self._reload is not None and worker.generation == self._reload.generation:
                self._abort_reload(why)
            else:
                self._halt(
                    ExitCode.BOOT_FAILED,
                    f"{why}. Stopping the server instead of starting another: it would "
                    "fail the same way (the worker's log lines above say why)",
                )
        else:
            self._crashed(worker, how)
        self._finish_if_done()

    def _crashed(self, worker: WorkerProcess, how: str) -> None:
        now = self.system.now()
        settings = self.config.master
        self._crashes.append(now)
        while self._crashes and self._crashes[0] <= now - settings.crash_window:
            self._crashes.popleft()
        if len(self._crashes) >= settings.crash_limit:
            self._halt(
                ExitCode.CRASH_LOOP,
                f"{worker.name} {how}: that is {len(self._crashes)} worker deaths within "
                f"{settings.crash_window:g} s (master.crash_limit = {settings.crash_limit}). "
                "Stopping the server instead of respawning; the log lines above say why",
            )
            return
        log.error("%s %s; starting a new one", worker.name, how)

    # -- internals -----------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Start a worker for every index of the running (and reloading) config that has none."""
        if self._stopping is not None or self.system.now() < self._fork_retry_at:
            return
        wanted = [(self._generation, self.config, self._count)]
        if self._reload is not None:
            wanted.append((self._reload.generation, self._reload.config, self._reload.workers))
        for generation, config, count in wanted:
            present = {
                w.index
                for w in self.workers.values()
                if w.generation == generation and not w.retiring
            }
            for index in range(1, count + 1):
                if index in present:
                    continue
                try:
                    pid = self.system.spawn(WorkerSpec(index, count, generation, config))
                except OSError as exc:
                    log.error(
                        "cannot start worker %d: %s; trying again in %.0f s", index, exc, FORK_RETRY
                    )
                    self._fork_retry_at = self.system.now() + FORK_RETRY
                    return
                now = self.system.now()
                self.workers[pid] = WorkerProcess(index, generation, pid, config, now, now)
                if self.gatherer is not None:
                    self.gatherer.started(pid, index, generation)
                log.info("worker %d started (pid %d)", index, pid)

    def _progress(self) -> None:
        """A worker became ready: finish the boot or the reload if every worker now is."""
        if not self._booted and self._all_ready(self._generation, self._count):
            self._booted = True
            log.info("serving: %d workers ready", self._count)
            self._on_ready()
        reload = self._reload
        if reload is None or not self._all_ready(reload.generation, reload.workers):
            return
        old = [w for w in self.workers.values() if w.generation != reload.generation]
        self._reload = None
        self.config = reload.config
        self._generation = reload.generation
        self._count = reload.workers
        self._apply_config(reload.config)
        now = self.system.now()
        log.info(
            "reload: %d new workers ready on %s after %.3f s; retiring %d old ones",
            reload.workers,
            reload.config.source,
            now - reload.started,
            len(old),
        )
        if reload.config.master.handoff:
            self._hand_over(old, reload, now)
        for worker in old:
            self._retire(worker, now)
        self.system.release(self.config)
        self._again()

    def _hand_over(self, old: list[WorkerProcess], reload: _Reload, now: float) -> None:
        """Give each ready old worker and its slot's new worker a handoff channel."""
        new = {
            w.index: w.pid
            for w in self.workers.values()
            if w.generation == reload.generation and w.ready and not w.retiring
        }
        by_pid = {w.pid: w for w in old if w.ready and not w.retiring}
        pending = set()
        for old_pid, new_pid in handoff_targets(((w.index, w.pid) for w in by_pid.values()), new):
            worker = by_pid[old_pid]
            if not self.system.hand_over(old_pid, new_pid):
                continue  # retired with SIGTERM by the caller
            worker.retiring = True  # by handing over, not by SIGTERM
            worker.kill_at = now + worker.config.master.graceful_timeout
            pending.add(old_pid)
        if pending:
            self._handoffs.append(HandoffRun(reload.generation, now, pending))
            log.info("reload: %d old workers hand their connections to the new ones", len(pending))

    def _all_ready(self, generation: int, count: int) -> bool:
        ready = {
            w.index
            for w in self.workers.values()
            if w.generation == generation and w.ready and not w.retiring
        }
        return ready >= set(range(1, count + 1))

    def _abort_reload(self, why: str) -> None:
        reload = self._reload
        assert reload is not None
        self._reload = None
        log.error(
            "reload failed: %s. The running workers keep serving on %s", why, self.config.source
        )
        now = self.system.now()
        for worker in list(self.workers.values()):
            if worker.generation == reload.generation:
                self._retire(worker, now)
        self.system.release(self.config)
        self._again()

    def _again(self) -> None:
        if self._reload_again:
            self._reload_again = False
            self.reload()

    def _stop_workers(self, now: float) -> None:
        """The final stop: no new connection queues, then every worker drains what is."""
        if self.workers:
            self.system.stop_queueing()
        for worker in self.workers.values():
            self._retire(worker, now, FINAL_STOP_SIGNAL)

    def _retire(self, worker: WorkerProcess, now: float, signum: int = signal.SIGTERM) -> None:
        if worker.retiring:
            return
        worker.retiring = True
        worker.kill_at = now + worker.config.master.graceful_timeout
        self.system.kill(worker.pid, signum)

    def _kill(self, worker: WorkerProcess, why: str) -> None:
        if worker.retiring:
            log.warning("%s %s; killing it", worker.name, why)
        worker.killed = why
        self.system.kill(worker.pid, signal.SIGKILL)

    def _halt(self, code: ExitCode, message: str) -> None:
        log.error("%s", message)
        self._final_code = code
        self.stop(fast=False, why="halt")

    def _finish_if_done(self) -> None:
        if self._stopping is not None and not self.workers and self.exit_code is None:
            self.exit_code = self._final_code
            log.info(
                "master exiting with code %d (%s)", self.exit_code, self.exit_code.name.lower()
            )


def _checked(config: Config) -> Config:
    """``config`` once its application passes the check a start makes (for a reload)."""
    from .app import AppError, check_app

    try:
        check_app(config.master.app, config.master.boot_timeout)
    except AppError as exc:
        raise ConfigError(str(exc)) from None
    return config


def _reconfigure_logging(configure: Callable[[LoggingSettings], object], config: Config) -> None:
    configure(config.logging)


# ---------------------------------------------------------------------------
# The process around the master: limits, sockets, daemon, pidfile, signals.


def serve(config: Config, load_config: Callable[[], Config]) -> int:
    """Run the server with a master in this process (``python -m trioserver``); the exit code.

    ``load_config`` re-reads the configuration on SIGHUP. Logging must be set up.
    """
    from ..ops.admin import AdminPages, AdminServer
    from ..ops.logs import capture_stderr, configure_logging, reopen_logs, set_role
    from ..ops.procstat import read_process
    from . import daemon, pidfile
    from .app import AppError, check_app
    from .child import run_child

    settings = config.master
    path = Path(settings.pidfile).absolute() if settings.pidfile is not None else None
    if settings.daemon and path is None:
        log.error(
            "daemon mode needs a pidfile so that stop, reload and status can find the "
            "server: set master.pidfile or pass --pidfile"
        )
        return ExitCode.START_FAILED
    if path is not None:
        try:
            pidfile.check_free(path)
        except pidfile.PidfileError as exc:
            log.error("%s", exc)
            return ExitCode.START_FAILED
    set_role("master")
    try:
        check_app(settings.app, settings.boot_timeout)
    except AppError as exc:
        log.error("cannot start: %s", exc)
        return ExitCode.START_FAILED
    set_title("trioserver: master")
    raise_open_file_limit(config.server.max_connections)
    system = OsSystem(run_child)
    try:
        try:
            system.prepare(config, worker_count(config))
        except OSError as exc:
            log.error("%s", exc)
            return ExitCode.START_FAILED
        keys = ConfigListeners.of(config)
        for what, listeners in (
            ("", keys.server),
            (" (HTTP)", keys.http),
            (" (TLS)", keys.tls),
            (" (HTTPS)", keys.https),
        ):
            for key in listeners:
                host, port = system.listeners.bound(key) or (key.address.host, key.address.port)
                log.info("listening%s on %s:%d", what, host, port)
        gatherer = Gatherer(process_figures=read_process)
        master_ref: list[Master] = []
        admin_address: str | None = None
        if config.metrics.listen is not None:
            pages = AdminPages(gatherer, lambda: master_ref[0].health if master_ref else "starting")
            try:
                admin = AdminServer.bind(
                    config.metrics.listen,
                    pages.answer,
                    system.now,
                    config.metrics.admin_timeout,
                    request_timeout=config.metrics.admin_request_timeout,
                    max_clients=config.metrics.admin_max_clients,
                )
            except OSError as exc:
                log.error("%s", exc)
                return ExitCode.START_FAILED
            system.watch(admin)
            host, port = admin.address
            admin_address = str(Address(host, port))
            log.info("metrics on http://%s:%d/metrics (health: /healthz)", host, port)
        notify: daemon.Readiness | None = None
        if settings.daemon:
            notify = daemon.daemonize()
            system.close_in_children(notify)
            if config.logging.file is not None and config.logging.stderr_to_file:
                capture_stderr(config.logging.file)
        if path is not None:
            try:
                pidfile.write(path)
                if admin_address is not None:
                    pidfile.write_admin(path, admin_address)
            except (pidfile.PidfileError, OSError) as exc:
                log.error("%s", exc)
                return ExitCode.START_FAILED
        try:
            system.install_signals(SIGNAL_ACTIONS)
            master = Master(
                config,
                system,
                load_config=lambda: _checked(load_config()),
                apply_config=lambda new: _reconfigure_logging(configure_logging, new),
                reopen_logs=reopen_logs,
                on_ready=notify.ready if notify is not None else _nothing,
                gatherer=gatherer,
            )
            master_ref.append(master)
            return master.run()
        finally:
            if path is not None:
                pidfile.remove(path)
    finally:
        system.close()

"""The master's seam to the operating system: fork, kill, waitpid, clocks, signals, sockets.

:class:`~trioserver.prefork.master.Master` holds every rule (respawn, crash loop, boot
failure, reload order, handoff, stop deadlines) and touches the OS only through a
:class:`System`. :class:`OsSystem` is the real one; the master's unit tests pass
a fake that records spawns and kills and plays exits and heartbeats, so the rules
are tested without processes, sleeps or monkeypatching.

Listening sockets are bound here, in the master, one SO_REUSEPORT socket per
worker slot and configured listener, and each worker inherits its slot's sockets. The kernel
balances new connections over the slots exactly as if each worker had bound its
own after the fork, but a slot's socket outlives any one worker
process. That is what makes a reload and a respawn lose nothing: a listening
socket that closes resets every connection still waiting in its accept queue
(Linux, unless ``net.ipv4.tcp_migrate_req`` is on), and per-process sockets close
whenever their worker retires or dies. Here the old and the new worker of a slot
share its socket while they overlap; the old one merely stops calling accept.
The final stop has no next worker: :meth:`OsSystem.stop_queueing` first makes the
sockets start no new handshake, so the workers can empty the queues before the
sockets close.

Each worker also gets a ``SOCK_SEQPACKET`` control socket at the fork, for the
master's commands that carry an fd. :meth:`OsSystem.hand_over` makes a handoff
channel for a reload and sends one end to the old worker (``HAND_OVER``) and one to
the new (``ADOPT``), keeping no copy (see :mod:`trioserver.prefork.handoff`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import resource
import secrets
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import Final, Protocol

import attrs

from ..config import Address, Config
from ..sockets import bind_listener, stop_queueing
from ..tls import ServerTls, load_config_tls
from .handoff import ADOPT, HAND_OVER
from .pipe import HEARTBEAT, READY, PipeDecoder, PipeProtocolError

__all__ = [
    "HEARTBEAT",
    "READY",
    "ChildSetup",
    "ConfigListeners",
    "Exited",
    "FileOwner",
    "HandoffReport",
    "ListenerKey",
    "ListeningSockets",
    "OsSystem",
    "SignalReceived",
    "System",
    "Watcher",
    "WorkerMessage",
    "WorkerReport",
    "WorkerSpec",
    "describe_exit",
    "listener_keys",
    "raise_open_file_limit",
    "set_title",
]

log = logging.getLogger("trioserver.master")

# READY and HEARTBEAT (re-exported from :mod:`trioserver.prefork.pipe`) are what a worker
# writes on its pipe to the master: once when it serves, then periodically;
# statistics reports come between them.

#: Fds a worker needs beside its connections: listeners, pipes, log file, account store...
FD_RESERVE: Final = 64


# ---------------------------------------------------------------------------
# Records crossing the seam.


@attrs.frozen
class WorkerSpec:
    """What to start: worker ``index`` (1-based) of ``workers``, of config ``generation``."""

    index: int
    workers: int
    generation: int
    config: Config


@attrs.frozen
class SignalReceived:
    """A signal the master's handler queued."""

    signum: int


@attrs.frozen
class WorkerMessage:
    """Bytes a worker wrote on its pipe to the master (``READY``, ``HEARTBEAT``)."""

    pid: int
    data: bytes


@attrs.frozen
class WorkerReport:
    """A statistics report a worker sent (JSON bytes, ``WorkerStatistics.to_json``)."""

    pid: int
    payload: bytes


@attrs.frozen
class HandoffReport:
    """What a retiring worker did with its connections (``HandoffCounts.to_json`` bytes)."""

    pid: int
    payload: bytes


@attrs.frozen
class Exited:
    """A reaped child: its subprocess-style return code (negative: killed by that signal).

    ``unread`` is what was still in its pipe, so a worker that said READY and died at
    once is not mistaken for one that failed to boot.
    """

    pid: int
    returncode: int
    unread: bytes = b""
    #: Statistics reports that were still in its pipe (its last figures).
    reports: tuple[bytes, ...] = ()
    #: User plus system CPU seconds it used in all (``wait4``'s rusage), if known.
    cpu_seconds: float | None = None
    #: Handoff results that were still in its pipe.
    handoffs: tuple[bytes, ...] = ()


Event = SignalReceived | WorkerMessage | WorkerReport | HandoffReport


class System(Protocol):
    """Everything the master asks of the OS."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def prepare(self, config: Config, workers: int) -> None:
        """Bind the listening sockets ``workers`` workers of ``config`` need (OSError if not)."""
        ...

    def release(self, config: Config) -> None:
        """Close listening sockets for addresses ``config`` no longer listens on."""
        ...

    def spawn(self, spec: WorkerSpec) -> int:
        """Fork a worker process for ``spec``; return its pid."""
        ...

    def stop_queueing(self) -> None:
        """Have every listening socket start no new handshake (the final stop), so the
        workers can accept all that is queued before the sockets close."""
        ...

    def kill(self, pid: int, signum: int) -> None:
        """Send ``signum`` to ``pid``; a process already gone is not an error."""
        ...

    def hand_over(self, old: int, new: int) -> bool:
        """Give workers ``old`` and ``new`` the two ends of a new handoff channel: ``new``
        adopts what arrives on it, ``old`` hands its connections over it. False if that
        cannot be sent (a control socket gone): retire ``old`` the plain way then."""
        ...

    def reap(self) -> list[Exited]:
        """Every child that has exited since the last call (never blocks)."""
        ...

    def wait(self, timeout: float | None) -> list[Event]:
        """Block until a signal or a worker message arrives, or ``timeout`` seconds pass."""
        ...


# ---------------------------------------------------------------------------
# How a child ended.

#: Signals whose log line adds a likely cause.
_SIGNAL_HINTS: Final[dict[int, str]] = {
    signal.SIGKILL: "perhaps out of memory (the kernel's OOM killer sends SIGKILL)",
    signal.SIGSEGV: "a crash in native code",
    signal.SIGABRT: "aborted, usually by a failed assertion in native code",
    signal.SIGBUS: "a crash in native code (bad memory access)",
}


def describe_exit(returncode: int, killed_by_master: str | None = None) -> str:
    """``exited with code 3``, ``was killed by SIGKILL (perhaps out of memory)``, ..."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if killed_by_master:
        return f"was killed by {name} (by the master: {killed_by_master})"
    hint = _SIGNAL_HINTS.get(signum)
    return f"was killed by {name}" + (f" ({hint})" if hint else "")


def set_title(title: str) -> None:
    """Name this process for ps and top (``trioserver: master``, ``trioserver: worker 2``)."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a declared dependency
        return
    setproctitle.setproctitle(title)


# ---------------------------------------------------------------------------
# Open-file limit.


def raise_open_file_limit(max_connections: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; log both; warn if connections won't fit.

    Workers inherit the limit at fork. It is per process, so each worker needs room
    for ``server.max_connections`` plus a reserve, whatever the worker count.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    else:
        log.info("open-file limit %d (hard limit %d)", soft, hard)
    need = max_connections + FD_RESERVE
    if soft < need:
        log.warning(
            "server.max_connections = %d needs about %d open files per worker but the limit "
            "is %d (hard %d): raise it (ulimit -n, systemd LimitNOFILE=) or lower "
            "max_connections; until then accepts beyond the limit fail and back off",
            max_connections,
            need,
            soft,
            hard,
        )
    return soft, hard


# ---------------------------------------------------------------------------
# Listening sockets, one per worker slot and configured listener.


@attrs.frozen
class ListenerKey:
    """Which listening sockets a configured listener uses.

    A fixed port is one listener whatever list names it: the config refuses two
    protocols on one address, and a reload that moves it to another position keeps
    its sockets (and their accept queues). Port 0 asks for a port of its own, so
    each entry gets one: keyed by its setting and position, two lists that both say
    ``127.0.0.1:0`` get two ports, kept across reloads while the entry stays put.
    """

    address: Address
    #: For port 0 only: the setting (``[server] tls_listen``...) and index naming it.
    setting: str = ""
    position: int = -1


def listener_keys(setting: str, addresses: Sequence[Address]) -> list[ListenerKey]:
    """The keys of one list of addresses (``setting`` names the list)."""
    return [
        ListenerKey(address) if address.port else ListenerKey(address, setting, position)
        for position, address in enumerate(addresses)
    ]


@attrs.frozen
class ConfigListeners:
    """A config's listeners, list by list, as :class:`ListenerKey`."""

    server: list[ListenerKey]
    http: list[ListenerKey]
    tls: list[ListenerKey]
    https: list[ListenerKey]

    @classmethod
    def of(cls, config: Config) -> ConfigListeners:
        return cls(
            listener_keys("[server] listen", config.server.listen),
            listener_keys("[http] listen", config.http.listen),
            listener_keys("[server] tls_listen", config.server.tls_listen),
            listener_keys("[http] tls_listen", config.http.tls_listen),
        )

    def all(self) -> list[ListenerKey]:
        return [*self.server, *self.http, *self.tls, *self.https]


class ListeningSockets:
    """The master's listening sockets: per configured listener, one per worker slot.

    Worker ``i`` of ``n`` gets the slots ``k`` with ``k % n == i - 1``: after a reload to
    fewer workers the extra slots are served, not closed (closing would reset their
    queues). Port 0 is resolved by the first slot; the others bind the same port.
    """

    def __init__(self) -> None:
        self._slots: dict[ListenerKey, list[socket.socket]] = {}

    def prepare(self, keys: Sequence[ListenerKey], backlog: int, workers: int) -> None:
        created: list[socket.socket] = []
        try:
            for key in keys:
                slots = self._slots.setdefault(key, [])
                while len(slots) < workers:
                    target = key.address
                    if slots and target.port == 0:
                        target = Address(target.host, slots[0].getsockname()[1])
                    sock = bind_listener(target, backlog)
                    created.append(sock)
                    slots.append(sock)
                for sock in slots:
                    sock.listen(backlog)  # a reload may change the backlog
        except BaseException:
            for sock in created:
                for slots in self._slots.values():
                    if sock in slots:
                        slots.remove(sock)
                sock.close()
            self._slots = {k: s for k, s in self._slots.items() if s}
            raise

    def for_worker(
        self, keys: Sequence[ListenerKey], index: int, workers: int
    ) -> list[socket.socket]:
        return [
            sock
            for key in keys
            for k, sock in enumerate(self._slots[key])
            if k % workers == index - 1
        ]

    def bound(self, key: ListenerKey) -> tuple[str, int] | None:
        """The (host, port) ``key`` is bound to (port 0 resolved), if it is."""
        slots = self._slots.get(key)
        if not slots:
            return None
        name = slots[0].getsockname()
        return name[0], name[1]

    def release(self, keep: Iterable[ListenerKey]) -> None:
        keep = set(keep)
        for key in [k for k in self._slots if k not in keep]:
            for sock in self._slots.pop(key):
                sock.close()

    def all(self) -> list[socket.socket]:
        return [sock for slots in self._slots.values() for sock in slots]

    def close(self) -> None:
        self.release(())


# ---------------------------------------------------------------------------
# The real system.


class Watcher(Protocol):
    """Something else the master's poll loop serves (the admin listener): its fds and
    deadlines join the wait, so it never needs a thread or a blocking call."""

    def interest(self) -> Mapping[int, int]:
        """fd → poll events wanted right now."""
        ...

    def on_ready(self, fd: int, revents: int) -> None: ...

    def deadline(self) -> float | None:
        """Monotonic time at which :meth:`on_time` has something to do, if any."""
        ...

    def on_time(self, now: float) -> None: ...

    def close(self) -> None:
        """Close every fd (in the master at exit, and in each worker after the fork)."""
        ...


@attrs.frozen
class ChildSetup:
    """What a freshly forked worker process gets from the master."""

    spec: WorkerSpec
    listeners: list[socket.socket]
    #: Write end of the pipe the master reads READY and heartbeats from.
    pipe: int
    master_pid: int
    #: The slot's HTTP listening sockets (``[http] listen``).
    http_listeners: list[socket.socket] = attrs.Factory(list)
    #: The slot's TLS listening sockets (``[server] tls_listen``, ``[http] tls_listen``)
    #: and the certificate the master loaded for them (inherited across the fork).
    tls_listeners: list[socket.socket] = attrs.Factory(list)
    https_listeners: list[socket.socket] = attrs.Factory(list)
    tls: ServerTls | None = None
    #: This server's name, the same in all its workers (the hub's connection ids).
    instance: str = ""
    #: The worker's end of its control socket (``SOCK_SEQPACKET``): the master's
    #: commands that carry an fd, ``ADOPT`` and ``HAND_OVER`` with a handoff channel.
    control: socket.socket | None = None


ChildMain = Callable[[ChildSetup], int]


class FileOwner(Protocol):
    """Something that holds an fd and may close it: ``fileno()`` is -1 once closed."""

    def fileno(self) -> int: ...


def _report_child_failure(spec: WorkerSpec) -> None:  # pragma: no cover - in the child
    """Log why a forked worker could not reach its main function, then print it to stderr.

    The handlers inherited from the master write where the master's lines go (the log
    file in daemon mode, where stderr may be /dev/null).
    """
    try:
        log.critical("worker %d could not start after the fork", spec.index, exc_info=True)
        for handler in logging.getLogger("trioserver").handlers:
            handler.flush()
    except BaseException:
        import traceback

        traceback.print_exc()


class OsSystem:
    """:class:`System` on real processes: fork, signals through a wakeup fd, poll.

    Signal handlers only append the signal number to a queue; ``set_wakeup_fd``
    makes ``poll`` return at once, and :meth:`wait` hands the queue to the master's
    loop.
    """

    def __init__(self, child_main: ChildMain) -> None:
        self._child_main = child_main
        #: Names this server in its workers' connection ids and hub addresses.
        self.instance = secrets.token_hex(4)
        self.listeners = ListeningSockets()
        self._signals: collections.deque[int] = collections.deque()
        self._handled: tuple[int, ...] = ()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._pipes: dict[int, int] = {}  # read fd -> worker pid
        #: The master's end of each worker's control socket, by pid.
        self._controls: dict[int, socket.socket] = {}
        self._pipe_of: dict[int, int] = {}  # worker pid -> read fd
        self._decoders: dict[int, PipeDecoder | None] = {}  # read fd -> its records
        self._watchers: list[Watcher] = []
        self._watched: dict[int, tuple[Watcher, int]] = {}  # fd -> (watcher, events)
        self._old_wakeup_fd: int | None = None
        self._child_closes: list[FileOwner] = []
        #: The certificate loaded for each config prepared (read in the master, so a
        #: reload with a bad file is refused before a worker starts; see tls.py).
        self._tls: dict[Config, ServerTls | None] = {}

    def close_in_children(self, owner: FileOwner) -> None:
        """Have every worker forked from now on close ``owner``'s fd while it has one.

        The owner is asked at each fork, not its fd number once: after the owner
        closes its fd, the number is reused (for a worker's pipe, a listening
        socket), and closing it in the child would close that instead.
        """
        self._child_closes.append(owner)

    def watch(self, watcher: Watcher) -> None:
        """Serve ``watcher`` from :meth:`wait`; workers close its fds after the fork."""
        self._watchers.append(watcher)

    # -- signals ------------------------------------------------------------------------

    def install_signals(self, signums: Iterable[int]) -> None:
        """Route ``signums`` into the queue; call before the first fork."""
        self._handled = tuple(signums)
        for signum in self._handled:
            signal.signal(signum, self._enqueue)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _enqueue(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def close(self) -> None:
        """Restore signal handling, close pipes and listening sockets."""
        if self._handled:
            signal.set_wakeup_fd(-1 if self._old_wakeup_fd is None else self._old_wakeup_fd)
            for signum in self._handled:
                signal.signal(signum, signal.SIG_DFL)
            self._handled = ()
        for fd in [self._wake_r, self._wake_w, *self._pipes]:
            _close_quietly(fd)
        for sock in self._controls.values():
            sock.close()
        self._controls.clear()
        self._pipes.clear()
        self._pipe_of.clear()
        self._decoders.clear()
        for watcher in self._watchers:
            watcher.close()
        self._watchers.clear()
        self.listeners.close()

    # -- System -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def prepare(self, config: Config, workers: int) -> None:
        tls = load_config_tls(config)  # TlsSetupError (an OSError) says which file and why
        self.listeners.prepare(ConfigListeners.of(config).all(), config.server.backlog, workers)
        self._tls[config] = tls

    def release(self, config: Config) -> None:
        self.listeners.release(ConfigListeners.of(config).all())
        self._tls = {config: self._tls[config]} if config in self._tls else {}

    def stop_queueing(self) -> None:
        sockets = self.listeners.all()
        if not all([stop_queueing(sock) for sock in sockets]):
            log.warning(
                "cannot stop the listening sockets queueing new connections here (not "
                "Linux?): connections that arrive during the stop may be reset"
            )

    def spawn(self, spec: WorkerSpec) -> int:
        config = spec.config
        keys = ConfigListeners.of(config)
        listeners = self.listeners.for_worker(keys.server, spec.index, spec.workers)
        http = self.listeners.for_worker(keys.http, spec.index, spec.workers)
        tls = self.listeners.for_worker(keys.tls, spec.index, spec.workers)
        https = self.listeners.for_worker(keys.https, spec.index, spec.workers)
        server_tls = self._tls.get(config)
        if server_tls is None and (tls or https):
            server_tls = self._tls[config] = load_config_tls(config)
        # The pipe first: it takes the lowest free fd numbers, as it always did
        # (tests/prefork/test_fork_seam.py pins reuse of a just-closed number).
        read_fd, write_fd = os.pipe()
        control, child_control = _seqpacket_pair()
        master_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            code = 3
            try:
                self._become_child(keep=[*listeners, *http, *tls, *https])
                os.close(read_fd)
                control.close()
                setup = ChildSetup(
                    spec,
                    listeners,
                    write_fd,
                    master_pid,
                    http,
                    tls,
                    https,
                    server_tls,
                    self.instance,
                    child_control,
                )
                code = self._child_main(setup)
            except BaseException:
                _report_child_failure(spec)
            finally:
                os._exit(code)
        os.close(write_fd)
        child_control.close()
        self._controls[pid] = control
        os.set_blocking(read_fd, False)
        self._pipes[read_fd] = pid
        self._pipe_of[pid] = read_fd
        self._decoders[read_fd] = PipeDecoder()
        self._poll.register(read_fd, select.POLLIN)
        return pid

    def _become_child(self, keep: list[socket.socket]) -> None:
        """Drop what belongs to the master: its signal routing, pipes, other slots' sockets."""
        signal.set_wakeup_fd(-1)
        for signum in self._handled:
            signal.signal(signum, signal.SIG_DFL)
        owned = [owner.fileno() for owner in self._child_closes]
        for fd in [self._wake_r, self._wake_w, *self._pipes, *(fd for fd in owned if fd >= 0)]:
            _close_quietly(fd)
        for sock in self._controls.values():
            sock.close()  # other workers': a worker's commands come from the master only
        for sock in self.listeners.all():
            if sock not in keep:
                sock.close()
        for watcher in self._watchers:
            watcher.close()

    def kill(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def hand_over(self, old: int, new: int) -> bool:
        to_old, to_new = self._controls.get(old), self._controls.get(new)
        if to_old is None or to_new is None:
            return False
        old_end, new_end = _seqpacket_pair()
        with old_end, new_end:  # the master keeps no copy: the channel is theirs alone
            for pid, control, command, end in ((new, to_new, ADOPT, new_end),
                                               (old, to_old, HAND_OVER, old_end)):  # fmt: skip
                try:
                    socket.send_fds(control, [command], [end.fileno()])
                except OSError as exc:  # gone (EPIPE), or its buffer full of unread commands
                    log.warning("cannot send worker pid %d its handoff channel: %s", pid, exc)
                    return False  # a new end without its old end: its adopt ends at once
        return True

    def reap(self) -> list[Exited]:
        exited = []
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            unread = b""
            reports: tuple[bytes, ...] = ()
            handoffs: tuple[bytes, ...] = ()
            fd = self._pipe_of.pop(pid, None)
            if fd is not None:
                data, _ = _read_all(fd)
                unread, reports, handoffs = self._decode(fd, pid, data)
                self._forget(fd)
            control = self._controls.pop(pid, None)
            if control is not None:
                control.close()
            cpu = usage.ru_utime + usage.ru_stime
            code = os.waitstatus_to_exitcode(status)
            exited.append(Exited(pid, code, unread, reports, cpu, handoffs))
        return exited

    def wait(self, timeout: float | None) -> list[Event]:
        events: list[Event] = []
        if not self._signals:
            timeout = self._watch_timeout(timeout)
            millis = None if timeout is None else max(0, int(timeout * 1000) + 1)
            try:
                ready = self._poll.poll(millis)
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
                ready = []
            for fd, revents in ready:
                if fd == self._wake_r:
                    _read_all(fd)
                    continue
                watched = self._watched.get(fd)
                if watched is not None:
                    watched[0].on_ready(fd, revents)
                    continue
                pid = self._pipes.get(fd)
                if pid is None:
                    continue
                data, eof = _read_all(fd)
                if data:
                    control, reports, handoffs = self._decode(fd, pid, data)
                    if control:
                        events.append(WorkerMessage(pid, control))
                    events.extend(WorkerReport(pid, report) for report in reports)
                    events.extend(HandoffReport(pid, result) for result in handoffs)
                if eof:  # the worker is gone; SIGCHLD follows and reap() reports it
                    self._pipe_of.pop(pid, None)
                    self._forget(fd)
        if self._watchers:
            now = self.now()
            for watcher in self._watchers:
                watcher.on_time(now)
        # Messages first: a READY that arrived with its sender's death still counts.
        while self._signals:
            events.append(SignalReceived(self._signals.popleft()))
        return events

    def _watch_timeout(self, timeout: float | None) -> float | None:
        """Register the watchers' fds as they want them now; the timeout their deadlines allow."""
        wanted: dict[int, tuple[Watcher, int]] = {}
        now = self.now()
        for watcher in self._watchers:
            for fd, mask in watcher.interest().items():
                wanted[fd] = (watcher, mask)
            deadline = watcher.deadline()
            if deadline is not None:
                left = max(0.0, deadline - now)
                timeout = left if timeout is None else min(timeout, left)
        for fd in self._watched.keys() - wanted.keys():
            if fd in self._pipes:
                continue  # closed by the watcher, and the number reused for a new pipe
            with contextlib.suppress(KeyError, ValueError):
                self._poll.unregister(fd)
        for fd, (_, mask) in wanted.items():
            if self._watched.get(fd, (None, -1))[1] != mask:
                self._poll.register(fd, mask)  # registering again modifies
        self._watched = wanted
        return timeout

    def _decode(
        self, fd: int, pid: int, data: bytes
    ) -> tuple[bytes, tuple[bytes, ...], tuple[bytes, ...]]:
        """A pipe's bytes as (control bytes, reports, handoff results); a broken stream
        counts as beats only."""
        decoder = self._decoders.get(fd)
        if decoder is None:
            return HEARTBEAT, (), ()
        try:
            decoded = decoder.feed(data)
        except PipeProtocolError as exc:
            log.error("worker pid %d: %s; ignoring its statistics from now on", pid, exc)
            self._decoders[fd] = None
            return HEARTBEAT, (), ()
        return decoded.control, decoded.reports, decoded.handoffs

    def _forget(self, fd: int) -> None:
        self._pipes.pop(fd, None)
        self._decoders.pop(fd, None)
        with contextlib.suppress(KeyError):
            self._poll.unregister(fd)
        _close_quietly(fd)


def _read_all(fd: int) -> tuple[bytes, bool]:
    """Everything readable now, and whether the writer has closed (EOF)."""
    chunks = []
    eof = False
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.EBADF:
                eof = True
                break
            raise
        if not data:
            eof = True
            break
        chunks.append(data)
    return b"".join(chunks), eof


def _seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    """(master's end, worker's end) of a control socket or handoff channel, non-blocking."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)

"""What a forked worker closes and reports before its main function runs (real fork, real pipes)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import trustme

from trioserver.config import Address, Config
from trioserver.prefork.daemon import Readiness
from trioserver.prefork.handoff import ADOPT, HAND_OVER
from trioserver.prefork.pipe import READY
from trioserver.prefork.procs import ChildSetup, Exited, OsSystem, WorkerMessage, WorkerSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, Linux")

CONFIG = Config().replace(server__listen=(Address("127.0.0.1", 0),), http__listen=())


def child(setup: ChildSetup) -> int:
    os.write(setup.pipe, READY)
    return 0


def spawn(system: OsSystem) -> int:
    return system.spawn(WorkerSpec(1, 1, 0, CONFIG))


def run_one(system: OsSystem, pid: int) -> tuple[list[object], Exited]:
    """Worker ``pid``'s messages until it is reaped, and how it ended."""
    events: list[object] = []
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline, f"worker {pid} did not end: {events}"
        events.extend(system.wait(0.05))
        for exited in system.reap():
            if exited.pid == pid:
                return events, exited


def test_a_closed_readiness_pipe_whose_number_is_reused_is_not_closed_in_children() -> None:
    system = OsSystem(child)
    system.prepare(CONFIG, 1)
    read_end, write_end = os.pipe()
    try:
        readiness = Readiness(write_end)
        system.close_in_children(readiness)
        readiness.ready()  # closes write_end: the next pipe the master opens gets its number
        pid = spawn(system)
        if write_end not in system._pipes:
            os.waitpid(pid, 0)
            pytest.skip("the worker's pipe did not reuse the readiness pipe's fd number")
        events, exited = run_one(system, pid)
        assert exited.returncode == 0, exited
        assert any(isinstance(e, WorkerMessage) and READY in e.data for e in events) or (
            READY in exited.unread
        )
    finally:
        os.close(read_end)
        system.close()


class Broken:
    def fileno(self) -> int:
        raise RuntimeError("raised in the child before its main function")


def test_a_failure_between_fork_and_main_reaches_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("trioserver")
    logger.addHandler(handler)
    system = OsSystem(child)
    system.prepare(CONFIG, 1)
    try:
        system.close_in_children(Broken())
        _, exited = run_one(system, spawn(system))
    finally:
        logger.removeHandler(handler)
        handler.close()
        system.close()
    assert exited.returncode == 3
    text = log_file.read_text()
    assert "worker 1 could not start after the fork" in text
    assert "RuntimeError: raised in the child before its main function" in text


def ports_of_each_list(setup: ChildSetup) -> int:
    """Exit with how many distinct listening ports the worker got over its four lists."""
    lists = [setup.listeners, setup.http_listeners, setup.tls_listeners, setup.https_listeners]
    ports = {sock.getsockname()[1] for sockets in lists for sock in sockets}
    return len(ports) if all(len(sockets) == 1 for sockets in lists) else 100


def test_each_port_0_listener_gets_a_socket_of_its_own(tmp_path: Path) -> None:
    """Four lists that all say 127.0.0.1:0: four sockets on four ports, not one shared."""
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    any_port = (Address("127.0.0.1", 0),)
    config = Config().replace(
        server__listen=any_port,
        http__listen=any_port,
        server__tls_listen=any_port,
        http__tls_listen=any_port,
        tls__certificate=tmp_path / "server.pem",
        tls__private_key=tmp_path / "server.key",
    )
    system = OsSystem(ports_of_each_list)
    try:
        system.prepare(config, 1)
        _, exited = run_one(system, system.spawn(WorkerSpec(1, 1, 0, config)))
    finally:
        system.close()
    assert exited.returncode == 4


def handoff_child(setup: ChildSetup) -> int:
    """Old worker (slot 1): take HAND_OVER's channel, send on it, answer the ack. New
    worker (slot 2): take ADOPT's channel, ack, read it to its end (which needs every
    other copy closed), exit. Bystander (slot 3): wait to be killed."""
    assert setup.control is not None
    setup.control.setblocking(True)
    if setup.spec.index == 3:
        setup.control.recv(64)
        return 0
    data, fds, _, _ = socket.recv_fds(setup.control, 64, 1)
    with socket.socket(fileno=fds[0]) as channel:
        channel.setblocking(True)
        if setup.spec.index == 1:
            channel.send(b"a connection")
            return 0 if data == HAND_OVER and channel.recv(100) == b"+ack" else 6
        got = channel.recv(100)
        channel.send(b"+ack")
        return 0 if data == ADOPT and got == b"a connection" and channel.recv(100) == b"" else 7


def test_the_master_gives_an_old_and_a_new_worker_a_channel_of_their_own() -> None:
    """The two ends reach the two workers over their control sockets, messages go both
    ways, and the channel ends once the old worker closes its end: no one else (the
    master, a worker forked later) holds a copy."""
    system = OsSystem(handoff_child)
    system.prepare(CONFIG, 2)
    try:
        old = system.spawn(WorkerSpec(1, 2, 0, CONFIG))
        new = system.spawn(WorkerSpec(2, 2, 1, CONFIG))
        bystander = system.spawn(WorkerSpec(3, 3, 1, CONFIG))
        assert not system.hand_over(old, 12345)  # not a worker of this master
        assert system.hand_over(old, new)
        exits: dict[int, Exited] = {}
        deadline = time.monotonic() + 10
        while new not in exits or old not in exits:
            assert time.monotonic() < deadline, f"the handoff did not end: {exits}"
            system.wait(0.05)
            exits.update((e.pid, e) for e in system.reap())
        assert exits[old].returncode == 0  # 6: no ack
        assert exits[new].returncode == 0  # 7: no message, or no end of the channel
        os.kill(bystander, signal.SIGKILL)
        while bystander not in exits:
            assert time.monotonic() < deadline
            system.wait(0.05)
            exits.update((e.pid, e) for e in system.reap())
    finally:
        system.close()

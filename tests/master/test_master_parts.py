"""The master's small parts on their own: pidfile, listening slots, application loading."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trioserver.config import Address, ConfigError, load_config
from trioserver.dispatch import Router
from trioserver.prefork import pidfile
from trioserver.prefork.child import load_router
from trioserver.prefork.procs import ListeningSockets


def test_pidfile_is_written_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "server.pid"
    pidfile.write(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["server.pid"]  # no temporary left
    pidfile.check_free(path)  # our own pid does not block us
    pidfile.remove(path)
    assert not path.exists()


def test_a_live_pidfile_refuses_a_second_server(tmp_path: Path) -> None:
    path = tmp_path / "server.pid"
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as other:
        path.write_text(f"{other.pid}\n")
        with pytest.raises(pidfile.PidfileError, match=f"already running as pid {other.pid}"):
            pidfile.check_free(path)
        with pytest.raises(pidfile.PidfileError, match="already running"):
            pidfile.write(path)
        pidfile.remove(path)  # not ours: left alone
        assert path.exists()
        other.communicate(b"")
    pidfile.write(path)  # its process is gone: a stale file is replaced
    assert pidfile.read_pid(path) == os.getpid()


def test_garbage_in_a_pidfile_is_no_pid(tmp_path: Path) -> None:
    path = tmp_path / "server.pid"
    path.write_text("hello\n")
    assert pidfile.read_pid(path) is None
    assert pidfile.read_pid(tmp_path / "missing.pid") is None


def test_slots_share_one_resolved_port_and_are_dealt_round_robin() -> None:
    sockets = ListeningSockets()
    address = Address("127.0.0.1", 0)
    try:
        sockets.prepare([address], backlog=16, workers=3)
        ports = {s.getsockname()[1] for s in sockets.all()}
        assert len(sockets.all()) == 3 and len(ports) == 1
        assert sockets.bound(address) == ("127.0.0.1", ports.pop())
        # After a reload to 2 workers the third slot is served by worker 1, not closed.
        sockets.prepare([address], backlog=16, workers=2)
        first, second, third = sockets.all()
        assert sockets.for_worker([address], 1, 2) == [first, third]
        assert sockets.for_worker([address], 2, 2) == [second]
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets.all())
        sockets.release([])
        assert sockets.all() == []
    finally:
        sockets.close()


def test_an_address_in_use_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sockets = ListeningSockets()
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            sockets.prepare([Address("127.0.0.1", port)], backlog=16, workers=2)
        assert sockets.all() == []


def test_load_router_forms() -> None:
    assert isinstance(load_router(""), Router)
    assert isinstance(load_router("trioserver.handlers:default_router"), Router)
    with pytest.raises(AttributeError, match="has no 'nope'"):
        load_router("trioserver.handlers:nope")
    with pytest.raises(TypeError, match="must be a Router or return one"):
        load_router("os:getpid")
    with pytest.raises(ModuleNotFoundError):
        load_router("no_such_module_here:app")


def test_master_settings_validate() -> None:
    config = load_config(None, ("master.workers=4", 'master.app="pkg.mod:make"'))
    assert config.master.workers == 4 and config.master.app == "pkg.mod:make"
    with pytest.raises(ConfigError, match="is not 'module:function'"):
        load_config(None, ('master.app="justamodule"',))
    with pytest.raises(ConfigError, match=r"\[master\] workers"):
        load_config(None, ("master.workers=-1",))

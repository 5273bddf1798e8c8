"""The master's small parts on their own: pidfile, listening slots, application loading."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sample_apps

from trioserver.config import Address, Config, ConfigError, load_config
from trioserver.dispatch import Router
from trioserver.prefork import pidfile
from trioserver.prefork.app import AppError, find_app, load_router
from trioserver.prefork.procs import ConfigListeners, ListenerKey, ListeningSockets


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
    address = ListenerKey(Address("127.0.0.1", 0), "[server] listen", 0)
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


def test_port_0_entries_get_ports_of_their_own_and_keep_them_on_reload() -> None:
    any_port = (Address("127.0.0.1", 0),)
    config = load_config(None, ('server.listen=["127.0.0.1:0"]', 'http.listen=["127.0.0.1:0"]'))
    config = config.replace(tls__certificate=Path("unread.pem"))  # only the lists are read
    keys = ConfigListeners.of(config.replace(server__tls_listen=any_port * 2))
    assert len(set(keys.all())) == 4  # two lists and two entries of one list: four listeners
    sockets = ListeningSockets()
    try:
        sockets.prepare(keys.all(), backlog=16, workers=2)
        ports = {key: sockets.bound(key) for key in keys.all()}
        assert len(set(ports.values())) == 4
        # A reload that keeps the entries keeps their ports; dropping one closes its sockets.
        again = ConfigListeners.of(config.replace(server__tls_listen=any_port))
        sockets.prepare(again.all(), backlog=16, workers=2)
        sockets.release(again.all())
        assert {key: sockets.bound(key) for key in again.all()} == {
            key: ports[key] for key in again.all()
        }
        assert sockets.bound(keys.tls[1]) is None and len(sockets.all()) == 6
    finally:
        sockets.close()


def test_a_fixed_port_keeps_its_sockets_when_it_moves_in_its_list() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fixed = Address("127.0.0.1", port)
    before = ConfigListeners.of(Config().replace(server__listen=(fixed,), http__listen=()))
    after = ConfigListeners.of(
        Config().replace(server__listen=(Address("127.0.0.1", 0), fixed), http__listen=())
    )
    assert after.server[1] == before.server[0]
    sockets = ListeningSockets()
    try:
        sockets.prepare(before.all(), backlog=16, workers=1)
        (first,) = sockets.all()
        sockets.prepare(after.all(), backlog=16, workers=1)
        sockets.release(after.all())
        assert sockets.for_worker(after.server, 1, 1)[1] is first
    finally:
        sockets.close()


def test_an_address_in_use_names_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sockets = ListeningSockets()
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            sockets.prepare([ListenerKey(Address("127.0.0.1", port))], backlog=16, workers=2)
        assert sockets.all() == []


def test_load_router_forms() -> None:
    assert isinstance(load_router(""), Router)
    assert isinstance(load_router("trioserver.handlers:default_router"), Router)
    with pytest.raises(AppError, match="has no 'nope'"):
        load_router("trioserver.handlers:nope")
    with pytest.raises(AppError, match="must be a Router or return one"):
        load_router("os:getpid")
    with pytest.raises(ModuleNotFoundError):
        load_router("no_such_module_here:app")


def test_a_function_that_is_not_a_factory_is_refused_without_calling_it() -> None:
    """examples/echo_server.py's main() runs a server of its own: it must never be called."""
    with pytest.raises(AppError) as info:
        find_app("examples.echo_server:main")
    message = str(info.value)
    assert "main() is declared to return None, not a Router" in message
    assert "examples.echo_server has a Router: 'examples.echo_server:router'" in message
    assert isinstance(find_app("examples.echo_server:router"), Router)
    with pytest.raises(AppError, match=r"needs arguments \(config\)"):
        find_app("sample_apps:needs_config")
    with pytest.raises(AppError, match="is declared to return int"):
        find_app("sample_apps:returns_int")
    with pytest.raises(AppError, match="must be a Router or a function returning one, got 3"):
        find_app("sample_apps:THREE")
    # a factory without an annotation is judged by what it returns, when it is called
    assert find_app("sample_apps:unannotated") is sample_apps.unannotated
    assert isinstance(load_router("sample_apps:unannotated"), Router)


def test_master_settings_validate() -> None:
    config = load_config(None, ("master.workers=4", 'master.app="pkg.mod:make"'))
    assert config.master.workers == 4 and config.master.app == "pkg.mod:make"
    with pytest.raises(ConfigError, match="is not 'module:function'"):
        load_config(None, ('master.app="justamodule"',))
    with pytest.raises(ConfigError, match=r"\[master\] workers"):
        load_config(None, ("master.workers=-1",))


def test_the_admin_file_beside_the_pidfile(tmp_path: Path) -> None:
    path = tmp_path / "server.pid"
    pidfile.write(path)
    pidfile.write_admin(path, "127.0.0.1:9100")
    assert pidfile.admin_path(path) == tmp_path / "server.pid.admin"
    assert pidfile.read_admin(path) == (os.getpid(), "127.0.0.1:9100")
    assert path.read_text() == f"{os.getpid()}\n"  # the pidfile holds the pid alone
    pidfile.remove(path)
    assert list(tmp_path.iterdir()) == []


def test_an_admin_file_of_another_process_is_neither_used_nor_removed(tmp_path: Path) -> None:
    from trioserver.prefork.control import admin_of

    path = tmp_path / "server.pid"
    pidfile.admin_path(path).write_text('{"pid": 1, "admin": "127.0.0.1:9100"}\n')
    assert admin_of(path, os.getpid()) is None
    assert admin_of(path, 1) == Address("127.0.0.1", 9100)
    pidfile.remove(path)
    assert pidfile.admin_path(path).exists()

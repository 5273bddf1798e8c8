"""Settings: defaults, TOML files, overrides, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from trioserver.config import (
    SECTIONS,
    Address,
    Config,
    ConfigError,
    ConnectionSettings,
    HttpSettings,
    LoggingSettings,
    MasterSettings,
    ServerSettings,
    describe_settings,
    load_config,
)
from trioserver.framer import DEFAULT_MAX_PACKET_LENGTH, HEADER_SIZE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trioserver.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config()
    # the relative paths among the defaults are anchored to the start directory
    assert config == Config().replace(
        accounts__url=f"sqlite:///{Path.cwd().absolute()}/data/accounts.sqlite3",
        master__pidfile=Path.cwd().absolute() / "trioserver.pid",
    )
    assert config.server.listen == (Address("127.0.0.1", 10000),)
    assert config.server.max_packet_length == 29000
    assert config.connection.heartbeat_wait == 20.0
    assert config.connection.max_pending_replies == 400
    assert (config.connection.flood_interval, config.connection.flood_kick_counter) == (0.1, 10)


def test_file_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = ["0.0.0.0:9000", "[::1]:9001"]\nhandler_tasks = 4\n'
        "[connection]\nheartbeat_wait = 5\n",
    )
    config = load_config(path, ("connection.flood_check=false", "server.handler_tasks=2"))
    assert config.server.listen == (Address("0.0.0.0", 9000), Address("::1", 9001))
    assert config.server.handler_tasks == 2
    assert config.connection.heartbeat_wait == 5.0
    assert config.connection.flood_check is False
    assert config.source == str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nlistn = []\n", "unknown setting [server] 'listn'"),
        ("[sever]\n", "unknown section [sever]"),
        ("[server]\nhandler_tasks = 0\n", "[server] handler_tasks: 0 is outside 1..10000"),
        ("[server]\nhandler_tasks = '4'\n", "[server] handler_tasks: expected an integer"),
        ("[server]\nlisten = ['localhost']\n", "[server] listen: 'localhost' is not 'host:port'"),
        ("[server]\nlisten = ['h:99999']\n", "outside 0..65535"),
        ("[connection]\nheartbeat = 1\n", "[connection] heartbeat: expected true or false"),
        ("[connection]\nheartbeat_wait = 0\n", "heartbeat_wait: 0 must be > 0.0"),
        ("[logging]\nlevel = 'loud'\n", "[logging] level: 'loud' is not one of"),
        ("server = 3\n", "must be a [section] table"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match=r"not 'section\.name=value'"):
        load_config(None, ("heartbeat=1",))
    with pytest.raises(ConfigError, match=r"--set .*unknown section \[nope\]"):
        load_config(None, ("nope.x=1",))
    with pytest.raises(ConfigError, match=r"^--set server\.x=1: unknown setting \[server\] 'x'"):
        load_config(None, ("server.x=1",))
    # a bare word is taken as a string, as typed on a command line
    assert load_config(None, ("logging.level=debug",)).logging.level == "debug"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("/nonexistent/trioserver.toml")


def test_every_setting_is_described() -> None:
    text = describe_settings()
    assert "[server]" in text and "max_pending_replies = 400" in text
    assert text.count("# Why:") >= 10


def test_relative_paths_are_made_absolute_against_the_start_directory(tmp_path: Path) -> None:
    config = load_config(
        None,
        (
            'logging.file="logs/trioserver.log"',
            'master.pidfile="run/trioserver.pid"',
            'accounts.url="sqlite:///data/a.sqlite3"',
            'http.document_root="site"',
        ),
        base=tmp_path,
    )
    assert config.logging.file == tmp_path / "logs/trioserver.log"
    assert config.master.pidfile == tmp_path / "run/trioserver.pid"
    assert config.accounts.url == f"sqlite:///{tmp_path}/data/a.sqlite3"
    assert config.http.document_root == tmp_path / "site"
    absolute = load_config(None, ('accounts.url="sqlite:////srv/a.sqlite3"',), base=tmp_path)
    assert absolute.accounts.url == "sqlite:////srv/a.sqlite3"


# -- every way of building a config checks its values --------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ServerSettings(max_connections=-5), "[server] max_connections: -5 is outside"),
        (
            lambda: Config().replace(server__queue_size="big"),
            "[server] queue_size: expected an integer, got 'big'",
        ),
        (
            lambda: attrs.evolve(ConnectionSettings(), heartbeat_wait=float("nan")),
            "[connection] heartbeat_wait: expected a finite number, got nan",
        ),
        (lambda: LoggingSettings(level="loud"), "[logging] level: 'loud' is not one of"),
        (lambda: MasterSettings(app="nocolon"), "[master] app: 'nocolon' is not 'module:function'"),
        (lambda: HttpSettings(listen=[3]), "[http] listen: expected a 'host:port' string, got 3"),
        (lambda: Config().replace(server__nope=1), "unknown setting [server] 'nope'"),
        (lambda: Config().replace(sever__backlog=1), "unknown section 'sever'"),
        (
            lambda: Config().replace(http__listen=["127.0.0.1:10000"]),
            "[server] listen and [http] listen share 127.0.0.1:10000",
        ),
    ],
)
def test_settings_are_checked_wherever_they_are_made(build: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert message in str(info.value)


def test_a_section_must_be_its_own_record() -> None:
    with pytest.raises(TypeError, match="server"):
        Config(server=ConnectionSettings())  # type: ignore[arg-type]


def test_an_address_checks_its_port() -> None:
    with pytest.raises(ValueError, match=r"port 70000 is outside 0\.\.65535"):
        Address("127.0.0.1", 70000)


def test_parsers_accept_their_own_output() -> None:
    """A record rebuilt from its own values is the same record: converters are idempotent."""
    defaults = Config()
    for name in SECTIONS:
        section = getattr(defaults, name)
        values = attrs.asdict(section, recurse=False)
        assert type(section)(**values) == section
    listen = (Address("::1", 1), Address("0.0.0.0", 2))
    assert ServerSettings(listen=listen).listen == listen
    assert ServerSettings(listen=["[::1]:1", ":2"]).listen == listen
    assert ConnectionSettings(heartbeat_wait=5).heartbeat_wait == 5.0


def test_the_max_packet_length_default_is_the_framers() -> None:
    assert ServerSettings().max_packet_length == DEFAULT_MAX_PACKET_LENGTH
    with pytest.raises(ConfigError, match=rf"outside {HEADER_SIZE}\.\.65535"):
        ServerSettings(max_packet_length=HEADER_SIZE - 1)


def test_file_errors_still_name_the_file_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nqueue_size = 'big'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: [server] queue_size: expected an integer, got 'big'"


# -- environment variables, precedence, the effective configuration --------------------------


def test_precedence_defaults_file_environment_set(tmp_path: Path) -> None:
    path = write(tmp_path, "[master]\nworkers = 2\n[server]\nbacklog = 100\nhandler_tasks = 3\n")
    environ = {
        "WEB_CONCURRENCY": "7",
        "TRIOSERVER_MASTER_WORKERS": "4",
        "TRIOSERVER_SERVER_HANDLER_TASKS": "5",
        "TRIOSERVER_CONNECTION_FLOOD_CHECK": "false",
        "TRIOSERVER_PG_BIN": "/usr/lib/postgresql/16/bin",  # not a section: someone else's
    }
    config = load_config(path, ("server.handler_tasks=6",), environ=environ)
    assert config.server.backlog == 100  # file over default
    assert config.master.workers == 4  # environment over file over WEB_CONCURRENCY
    assert config.server.handler_tasks == 6  # --set over environment
    assert config.connection.flood_check is False
    assert load_config(None, environ={"WEB_CONCURRENCY": "7"}).master.workers == 7
    assert load_config(path, environ={"WEB_CONCURRENCY": "7"}).master.workers == 2
    # a library call is not changed by the environment unless it passes one
    assert load_config(None).master.workers == 0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"TRIOSERVER_MASTER_WORKRS": "4"},
            "environment variable TRIOSERVER_MASTER_WORKRS: [master] has no setting 'workrs'",
        ),
        (
            {"TRIOSERVER_MASTER_WORKERS": "many"},
            "environment variable TRIOSERVER_MASTER_WORKERS: [master] workers: expected an "
            "integer, got 'many'",
        ),
        (
            {"WEB_CONCURRENCY": "-1"},
            "environment variable WEB_CONCURRENCY: [master] workers: -1 is outside 0..1024",
        ),
    ],
)
def test_environment_errors_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    assert message in str(info.value)


def test_errors_name_the_layer_the_value_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nbacklog = 100\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ("server.backlog=0",))
    assert str(info.value).startswith("--set server.backlog=0: [server] backlog: 0 is outside")


def test_default_pidfile_is_beside_the_data_directory(tmp_path: Path) -> None:
    config = load_config(None, base=tmp_path)
    assert config.master.pidfile == tmp_path / "trioserver.pid"
    assert config.accounts.url == f"sqlite:///{tmp_path}/data/accounts.sqlite3"
    assert load_config(None, ('master.pidfile=""',)).master.pidfile is None


def test_the_effective_configuration_loads_back_as_itself(tmp_path: Path) -> None:
    config = load_config(
        None,
        (
            'server.listen=["[::1]:9000", "0.0.0.0:9001"]',
            'server.proxy_trusted=["10.0.0.0/8"]',
            "connection.flood_interval=0.025",
            'logging.file="log/x \\"quoted\\".log"',
            'metrics.listen="127.0.0.1:9100"',
            "http.listen=[]",
        ),
        base=tmp_path,
    )
    text = describe_settings(config)
    assert "# Default: 0.1\nflood_interval = 0.025\n" in text
    again = load_config(write(tmp_path, text), base=tmp_path)
    assert attrs.evolve(again, source=config.source) == config


def test_the_defaults_text_shows_no_default_lines() -> None:
    assert "# Default:" not in describe_settings()
    assert describe_settings(Config()) == describe_settings()

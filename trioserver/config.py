"""Every setting, declared once: its type, default, validation, help and reason.

A setting lives in one section class below (``[server]``, ``[connection]``, ...);
the TOML file uses the same sections and names, and the command line overrides any
of them with ``--set section.name=value``. An unknown section or key, or a value
that does not validate, is a :class:`ConfigError` that names the key and the file.

Adding a setting means adding one ``setting(...)`` field to its section; the
loader, ``check-config`` and ``python -m trioserver settings`` pick it up.

Each setting's parser is the field's attrs converter, so every way of making a
config checks it: the file loader, ``Config().replace(server__queue_size=...)``,
``ServerSettings(max_connections=...)`` and ``attrs.evolve``. A parser accepts
both what a TOML file holds (a list of strings) and its own output (a tuple of
:class:`Address`), and a bad value is a :class:`ConfigError` naming the setting
and the value. Configs are made at start and on reload, never per connection,
so the checks cost nothing where it matters.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from .framer import ABSOLUTE_MAX_PACKET_LENGTH, DEFAULT_MAX_PACKET_LENGTH, HEADER_SIZE

__all__ = [
    "AccountsSettings",
    "Address",
    "Config",
    "ConfigError",
    "ConnectionSettings",
    "HttpSettings",
    "LoggingSettings",
    "MasterSettings",
    "MetricsSettings",
    "ServerSettings",
    "TlsSettings",
    "describe_settings",
    "environment_settings",
    "load_config",
    "parse_address",
    "worker_count",
]

T = TypeVar("T")
Parser = Callable[[Any], Any]


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the source."""

    def __init__(self, message: str, *, setting: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        #: ``(section, name)`` of the setting whose value was refused, if one was.
        self.setting = setting


# ---------------------------------------------------------------------------
# Value parsers: raw TOML / command-line value -> typed value, or ValueError.


def _port(instance: Any, field: attrs.Attribute[Any], port: int) -> None:
    if isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is outside 0..65535")


@attrs.frozen(order=True)
class Address:
    """A host and a TCP port to listen on."""

    host: str = attrs.field(validator=attrs.validators.instance_of(str))
    port: int = attrs.field(validator=[attrs.validators.instance_of(int), _port])

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``"127.0.0.1:10000"``, ``"[::1]:10000"`` or ``":10000"`` (all IPv4 interfaces)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a 'host:port' string, got {text!r}")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not 'host:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is outside 0..65535")
    return Address(host, port)


def _optional_address(value: Any) -> Address | None:
    if value is None or value == "":
        return None
    if isinstance(value, Address):
        return value
    return parse_address(value)


def _addresses(value: Any) -> tuple[Address, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of 'host:port' strings, got {value!r}")
    return tuple(v if isinstance(v, Address) else parse_address(v) for v in value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


def _int(lo: int, hi: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{value!r} is outside {bound}")
        return value

    return parse


def _float(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        if number < lo or (lo_open and number == lo) or (hi is not None and number > hi):
            low = f"> {lo}" if lo_open else f">= {lo}"
            bound = f"{low} and <= {hi}" if hi is not None else low
            raise ValueError(f"{value!r} must be {bound}")
        return number

    return parse


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return str(value)

    return parse


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of networks like '10.0.0.0/8', got {value!r}")
    out = []
    for item in value:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            out.append(item)
            continue
        try:
            out.append(ipaddress.ip_network(_str(item)))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a network like '10.0.0.0/8': {exc}") from None
    return tuple(out)


def _optional_path(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    if isinstance(value, Path):
        return value
    return Path(_str(value))


def _converter(parse: Parser) -> attrs.Converter[Any, Any]:
    """``parse`` as an attrs converter whose errors name the setting: ``[server] backlog: ...``."""

    def convert(value: Any, instance: Any, field: attrs.Attribute[Any]) -> Any:
        try:
            return parse(value)
        except ConfigError:
            raise
        except ValueError as exc:
            section = SECTION_NAMES.get(type(instance), type(instance).__name__)
            raise ConfigError(
                f"[{section}] {field.name}: {exc}", setting=(section, field.name)
            ) from None

    return attrs.Converter(convert, takes_self=True, takes_field=True)


def setting(default: T, help: str, parse: Parser, *, why: str = "") -> T:
    """Declare one setting: an attrs field that ``parse`` converts and checks on every build."""
    return attrs.field(
        default=default,
        converter=_converter(parse),
        metadata={"help": help, "why": why, "parse": parse},
    )


# ---------------------------------------------------------------------------
# The sections.


@attrs.frozen
class ServerSettings:
    """``[server]``: the binary-protocol listeners and one worker's capacity."""

    listen: tuple[Address, ...] = setting(
        (Address("127.0.0.1", 10000),),
        "Addresses the binary protocol listens on, as 'host:port' strings.",
        _addresses,
        why="Loopback by default: exposing a server is a decision, not an accident "
        "(the original bound 0.0.0.0 only).",
    )
    max_connections: int = setting(
        10000,
        "Most connections one worker holds (open plus resting); one more is accepted "
        "and closed at once.",
        _int(1, 1_000_000),
        why="The connection pool is allocated up front, so this is memory paid at start; "
        "10,000 is the original's order of magnitude and a few MB here.",
    )
    max_connections_per_network: int = setting(
        1000,
        "Most connections one client network (an IPv4 address, an IPv6 /64) holds in one "
        "worker at once, binary, TLS, HTTP and WebSocket together; one more is refused "
        "(counted as network_cap). 0 = no cap. Behind a PROXY header the network is the "
        "client's the header names, counted once the header is read.",
        _int(0, 1_000_000),
        why="One pool serves every listener, so without a cap one host's idle connections "
        "can fill it (nginx limit_conn does the same). A tenth of the default "
        "max_connections leaves a host at most a tenth of the pool yet fits a NAT gateway "
        "of hundreds of players; with SO_REUSEPORT each worker counts its own share.",
    )
    connection_cap_exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        "Networks whose connections max_connections_per_network does not count (a balancer "
        "that sends no PROXY header, a proxy on the same host).",
        _networks,
        why="Such an address speaks for many clients: capping it caps the whole service. "
        "Loopback covers a proxy on the same host and local load tests; a PROXY "
        "header's client is counted even when the balancer is exempt.",
    )
    handler_tasks: int = setting(
        8,
        "Handler tasks consuming the message queue (the original's thread pool size).",
        _int(1, 10_000),
        why="Handlers that await (database, hashing threads) overlap up to this many; "
        "pure handlers gain nothing from more.",
    )
    queue_size: int = setting(
        1024,
        "Connections with work that may wait in the shared message queue before readers "
        "stop reading (TCP backpressure).",
        _int(1, 1_000_000),
    )
    inbox_size: int = setting(
        64,
        "Packets one connection may have waiting for a handler before its reader stops "
        "reading from it.",
        _int(1, 100_000),
        why="Bounds a pipelining client's memory to inbox_size x max_packet_length.",
    )
    max_packet_length: int = setting(
        DEFAULT_MAX_PACKET_LENGTH,
        "Largest pkgLen accepted (header included); a larger one closes the connection.",
        _int(HEADER_SIZE, ABSOLUTE_MAX_PACKET_LENGTH),
        why="The original's 30000-byte buffer minus its 1000-byte margin.",
    )
    receive_size: int = setting(
        65536,
        "Most bytes read from a socket in one receive.",
        _int(1024, 16 * 1024 * 1024),
    )
    backlog: int = setting(
        4096,
        "listen() backlog for each listening socket.",
        _int(1, 65535),
        why="Room for a reconnect storm: 10,000 clients coming back at once overflow nginx's "
        "511, and each overflowed SYN waits a second or more for its retry (10,000 idle "
        "connections took 7.5 s to open with 511, 1.9 s with 4096). Linux caps it at "
        "net.core.somaxconn (4096 by default).",
    )
    drain_timeout: float = setting(
        10.0,
        "Seconds a stopping worker gives in-flight requests and queued replies before "
        "closing every connection.",
        _float(0.0),
    )
    # -- PROXY protocol: the client address a load balancer passes on --
    proxy_protocol: str = setting(
        "off",
        "PROXY protocol header required on every [server] listen address: 'off', 'v1', "
        "'v2' or 'any'. When on, a connection without a valid header is closed, and the "
        "client address it names is what logs, rate limits and handlers see.",
        _choice("off", "v1", "v2", "any"),
        why="Only a load balancer sends it: on a listener clients reach directly, anyone "
        "could claim any address. Applies to the binary listeners, not [http] listen.",
    )
    proxy_trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")),
        "Networks allowed to send PROXY headers (your balancers); with proxy_protocol on, "
        "a connection from anywhere else is closed before a byte is read.",
        _networks,
        why="A PROXY header lets its sender pick the client address rate limits are keyed "
        "on; loopback covers a balancer on the same host, any other must be named.",
    )
    proxy_timeout: float = setting(
        5.0,
        "Seconds a new connection has to deliver its complete PROXY header.",
        _float(0.0, lo_open=True),
        why="A balancer sends the header at once; waiting longer only lets a stuck or "
        "hostile peer hold a connection slot.",
    )
    proxy_unix: str = setting(
        "balancer",
        "A PROXY v2 header for a client on a UNIX socket (family AF_UNIX): 'balancer' "
        "keeps the connection's own address (the balancer's) as the client's, 'refuse' "
        "closes the connection.",
        _choice("balancer", "refuse"),
        why="A socket path is no network address: the usual unbound client sends an "
        "empty one, and any path is the sender's to choose, so neither may key logs "
        "and per-network limits. The spec's fallback for a family a receiver does not "
        "take addresses from is the real endpoint, which keeps such clients together "
        "under the balancer's address instead of closing them.",
    )
    tls_listen: tuple[Address, ...] = setting(
        (),
        "Addresses the binary protocol listens on over TLS (the [tls] certificate), beside "
        "the plaintext listen addresses; empty: none. With proxy_protocol on, the PROXY "
        "header comes first, in plaintext, then the TLS handshake (as HAProxy sends it).",
        _addresses,
        why="Off until a certificate is configured; a login's password then travels "
        "encrypted without a TLS terminator in front.",
    )
    event_timeout: float = setting(
        5.0,
        "Seconds an async on_close handler may run; it is cancelled after that.",
        _float(0.0, lo_open=True),
        why="on_close runs shielded so a drain cannot cut it short; the deadline keeps a "
        "stuck one (a database that never answers) from holding the worker's exit.",
    )


@attrs.frozen
class ConnectionSettings:
    """``[connection]``: the rules a connection lives by: heartbeat, flood, send queue, recycle."""

    heartbeat: bool = setting(
        True,
        "Close connections that stop pinging (3 x heartbeat_wait + 10 s without a ping).",
        _bool,
        why="Detects dead peers (a pulled cable is invisible to TCP) and slow-drip headers.",
    )
    heartbeat_wait: float = setting(
        20.0,
        "W, the client's ping interval; a connection silent for 3W + 10 s is closed.",
        _float(0.0, lo_open=True),
        why="The original's Sock_MaxWaitTime.",
    )
    any_packet_refreshes: bool = setting(
        False,
        "Let any valid packet, not only ping, refresh the heartbeat deadline.",
        _bool,
        why="The original counts pings only; clients that speak often may not ping.",
    )
    session_lifetime: float = setting(
        0.0,
        "Hard limit on a connection's age in seconds, pings or not (0 = off).",
        _float(0.0),
        why="The original's Sock_TimeOutKick; off by default as there.",
    )
    login_timeout: float = setting(
        0.0,
        "Seconds a binary connection may stay without logging in; then it is closed "
        "(counted as the kick login_timeout). 0 = off. Applies only when the router serves "
        "login or resume (message code 6 or 1) and accounts are configured ([accounts] url "
        "or an embedder's service): a router without them never logs anyone in.",
        _float(0.0),
        why="Off as in the original, where a client that pings is never closed, and some "
        "clients connect before showing their login screen. A server on the internet "
        "should set it (30 s covers a slow login under load): a connection that never "
        "logs in otherwise holds its slot for good by pinging, and one that does not "
        "ping for 3W + 10 s (70 s).",
    )
    flood_check: bool = setting(
        True,
        "Close a connection that sends flood_kick_counter packets in a row each less "
        "than flood_interval apart.",
        _bool,
        why="On in the original; turn it off for pipelining clients and benchmarks.",
    )
    flood_interval: float = setting(
        0.1,
        "Seconds; a packet arriving sooner than this after the previous one counts "
        "towards a flood.",
        _float(0.0, lo_open=True),
        why="The original's 100 ms.",
    )
    flood_kick_counter: int = setting(
        10,
        "Fast packets in a row that make a flood (that packet is dropped, the connection closed).",
        _int(1),
        why="The original's 10.",
    )
    max_pending_replies: int = setting(
        400,
        "A connection with more replies than this waiting to be sent is closed as malicious.",
        _int(1),
        why="The original's 400.",
    )
    max_pending_bytes: int = setting(
        4 * 1024 * 1024,
        "A connection with more reply bytes than this waiting to be sent is closed.",
        _int(1024),
        why="400 replies of up to 29 KB would be 11.6 MB per client; bytes need a cap of "
        "their own. 4 MiB covers 400 register replies a hundred times over.",
    )
    recycle_delay: float = setting(
        1.0,
        "Seconds a closed connection's slot rests before reuse.",
        _float(0.0),
        why="Long enough for every message already queued for the old connection to be "
        "seen as stale and for its tasks to unwind; short enough that a full server "
        "frees room quickly. (The original waits 60 s because its threads kept raw "
        "pointers; sequence numbers make that unnecessary.) Resting slots never count "
        "against server.max_connections.",
    )
    max_resting: int = setting(
        20_000,
        "Most closed connections' slots resting at once; past it the oldest rest ends early.",
        _int(0),
        why="A resting slot costs about 130 bytes, so 20,000 bound them to about 2.6 MB, "
        "room for 20,000 connections closed per recycle delay (more than one worker "
        "accepts). Ending a rest early is safe: the slot's sequence number has moved on, "
        "so nothing queued for the old connection reaches the next one.",
    )


def _websocket_path(value: Any) -> str:
    path = _str(value).strip()
    if path and (not path.startswith("/") or any(c in path for c in "?# ")):
        raise ValueError(f"expected a path such as '/ws' (or empty: off), got {value!r}")
    return path


def _origins(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of origins such as 'https://example.com', got {value!r}")
    out = []
    for item in value:
        origin = _str(item).strip().rstrip("/")
        if origin != "*" and "://" not in origin:
            raise ValueError(f"{item!r} is not an origin ('scheme://host[:port]' or '*')")
        out.append(origin)
    return tuple(out)


@attrs.frozen
class HttpSettings:
    """``[http]``: the static file server beside the binary protocol."""

    listen: tuple[Address, ...] = setting(
        (Address("127.0.0.1", 8080),),
        "Addresses HTTP listens on, as 'host:port' strings; an empty list turns HTTP off.",
        _addresses,
        why="Loopback by default, like [server] listen.",
    )
    document_root: Path | None = setting(
        None,
        "Directory served; empty means the small bundled site that says what is running.",
        _optional_path,
        why="A fresh install answers at once, and serves nothing of the machine's by accident.",
    )
    index: str = setting(
        "index.html",
        "File served for a path that names a directory (there is no directory listing).",
        _str,
    )
    keep_alive_timeout: float = setting(
        15.0,
        "Seconds an idle keep-alive connection is kept open waiting for its next request.",
        _float(0.0, lo_open=True),
        why="Long enough for a page's follow-up requests; short because each idle "
        "connection holds a slot of the worker's pool (nginx 75 s, Apache 5 s).",
    )
    keep_alive_reserve: float = setting(
        0.05,
        "Fraction of server.max_connections kept for new connections: while fewer slots "
        "than this are free, each new connection (of any listener) makes the worker close "
        "up to two idle HTTP keep-alive connections, oldest first. 0 = only once the pool "
        "is full.",
        _float(0.0, 1.0),
        why="An idle keep-alive connection costs its client one reconnect if closed "
        "(RFC 9112 lets either side close it; browsers retry), a refused binary client "
        "loses its session. 5 % (500 slots by default) is more than one accept burst, and "
        "two closed per arrival outpace the arrivals. nginx likewise reclaims idle "
        "keep-alive connections when it runs out.",
    )
    header_timeout: float = setting(
        10.0,
        "Seconds from a request's first byte (or the connection's start) to its complete "
        "headers; later, the client gets 408 and the connection closes.",
        _float(0.0, lo_open=True),
        why="Bounds a slow-drip (slowloris) client to one slot for this long, however "
        "slowly it sends.",
    )
    send_timeout: float = setting(
        60.0,
        "Seconds a file being sent from disk may make no progress (the client reads "
        "nothing) before the connection is closed; responses from memory must be taken "
        "within the keep-alive timeout.",
        _float(0.0, lo_open=True),
        why="nginx's send_timeout; a client that stops reading must not hold a slot forever.",
    )
    max_request_line: int = setting(
        8192,
        "Longest request target in bytes; longer gets 414.",
        _int(64, 1024 * 1024),
        why="nginx's large_client_header_buffers size.",
    )
    max_header_size: int = setting(
        16384,
        "Most bytes of header fields in one request; more gets 431.",
        _int(256, 1024 * 1024),
        why="Browsers with large cookies stay well under 16 KiB; the parser buffers at "
        "most this plus one receive per connection.",
    )
    max_body_size: int = setting(
        16384,
        "Largest request body read (and thrown away); larger gets 413 and the connection closes.",
        _int(0, 1024 * 1024 * 1024),
        why="A static server has no use for bodies; reading small ones keeps keep-alive "
        "connections in sync, refusing large ones costs nothing.",
    )
    access_log: bool = setting(
        False,
        "Log one line per request (logger 'trioserver.http.access', level INFO).",
        _bool,
        why="Off by default: a log line costs about as much as serving a small file.",
    )
    cache_max_file_size: int = setting(
        65536,
        "Files up to this many bytes are kept in memory; larger ones are sent from disk.",
        _int(0),
        why="Above this size sendfile costs less than the copy it saves.",
    )
    cache_max_bytes: int = setting(
        4 * 1024 * 1024,
        "Most bytes of file contents one worker keeps in memory.",
        _int(0),
        why="Fits a typical site's pages, scripts and icons and stays well inside the "
        "40 MB per worker target.",
    )
    cache_max_entries: int = setting(
        1024,
        "Most URL paths whose resolved file (and its headers) one worker remembers.",
        _int(0),
        why="Bounds memory when a client asks for many different paths.",
    )
    cache_check_interval: float = setting(
        1.0,
        "Seconds a cached path is trusted before the file is checked again (0 = every request).",
        _float(0.0),
        why="A path check (realpath + stat) costs more than serving a cached file; "
        "Last-Modified has one-second resolution anyway.",
    )
    tls_listen: tuple[Address, ...] = setting(
        (),
        "Addresses HTTPS listens on (the [tls] certificate, ALPN http/1.1), beside the "
        "plaintext listen addresses; empty: none.",
        _addresses,
        why="Off until a certificate is configured, like [server] tls_listen.",
    )
    websocket_path: str = setting(
        "/ws",
        "Path whose GET upgrades to a WebSocket carrying the binary protocol (its packets "
        "in binary messages, served by the same router and hub); empty turns WebSocket off.",
        _websocket_path,
        why="Browsers cannot open TCP connections; one path on the HTTP port lets a web "
        "page be a client without a second port or a proxy.",
    )
    websocket_origins: tuple[str, ...] = setting(
        (),
        "Origins ('https://game.example') whose pages may open the WebSocket, besides pages "
        "of the same host and port; '*' allows any. A client that sends no Origin (not a "
        "browser) is not checked.",
        _origins,
        why="Same host only by default: another site's script must not open a connection "
        "in a visitor's name (cross-site WebSocket hijacking).",
    )
    websocket_max_message: int = setting(
        262144,
        "Most payload bytes in one WebSocket message; a bigger one closes the connection "
        "(close code 1009, kick 'websocket_too_big').",
        _int(8, 64 * 1024 * 1024),
        why="Messages are read as they arrive, never buffered whole, so this is no memory "
        "bound; it refuses clients that do not send a few packets per message, as "
        "trioserver.js does (a packet is at most 64 KiB).",
    )


def _power_of_two(lo: int, hi: int) -> Parser:
    check = _int(lo, hi)

    def parse(value: Any) -> int:
        number: int = check(value)
        if number & (number - 1):
            raise ValueError(f"{value!r} is not a power of two")
        return number

    return parse


def _store_url(value: Any) -> str:
    url = _str(value).strip()
    if url and not url.startswith(("sqlite:///", "postgresql://", "postgres://", "memory:")):
        raise ValueError(
            "expected 'sqlite:///path', 'postgresql://...', 'memory:' or empty "
            f"(got a URL starting {url.partition(':')[0]!r})"
        )
    return url


@attrs.frozen
class AccountsSettings:
    """``[accounts]``: the account store behind register (5) and login (6)."""

    url: str = setting(
        "sqlite:///data/accounts.sqlite3",
        "Where accounts live: 'sqlite:///relative/path', 'sqlite:////absolute/path', "
        "'postgresql://user@host:port/db' (any libpq URL), 'memory:' (lost at exit, for "
        "tests) or empty (register and login answer 'server unavailable').",
        _store_url,
        why="SQLite needs no setup, so a fresh 'python -m trioserver' keeps real accounts; "
        "a data directory rather than the working directory keeps the database and its "
        "WAL files together. Workers on one machine share the file; point every machine "
        "at one PostgreSQL to scale out.",
    )
    pool_size: int = setting(
        4,
        "Store connections one worker keeps (SQLite connections or the PostgreSQL pool's "
        "maximum); as many store calls run at once, each in a thread.",
        _int(1, 1000),
        why="Enough to overlap lookups with a commit; small because PostgreSQL's 100 "
        "connections are shared by every worker on every machine.",
    )
    connect_timeout: float = setting(
        5.0,
        "Seconds a request waits for a store connection before it gets 'server unavailable'.",
        _float(0.0, lo_open=True),
    )
    retry_interval: float = setting(
        1.0,
        "Seconds after a store failure during which requests get 'server unavailable' at "
        "once; then one request probes the store again.",
        _float(0.0),
        why="While the database is down, waiting connect_timeout on every request would "
        "tie up every handler task; failing fast keeps the worker serving everything else.",
    )
    hash: str = setting(
        "scrypt",
        "Password hash for new passwords: 'scrypt', or 'insecure-fast' (one salted "
        "SHA-256: a leaked database falls to brute force at once; for benchmarks only).",
        _choice("scrypt", "insecure-fast"),
        why="scrypt is memory-hard and in the standard library. Stored hashes name their "
        "scheme and parameters, so either kind still verifies after a change, and a login "
        "re-hashes a password stored with other settings.",
    )
    scrypt_n: int = setting(
        16384,
        "scrypt cost N (a power of two); memory per hash is 128 x N x r bytes.",
        _power_of_two(2, 2**20),
        why="16 MiB and about 50-100 ms per hash with r=8: the scrypt paper's interactive-login "
        "setting, affordable at hash_threads hashes at once inside a worker's memory budget.",
    )
    scrypt_r: int = setting(8, "scrypt block size r.", _int(1, 64), why="The standard value.")
    scrypt_p: int = setting(1, "scrypt parallelism p.", _int(1, 16), why="The standard value.")
    hash_threads: int = setting(
        0,
        "Password hashes one worker computes at once, each in a thread; 0 means the "
        "worker's share of the cores (CPUs / workers, at least 1).",
        _int(0, 256),
        why="A hash is pure CPU and runs outside the GIL: more threads than the worker's "
        "share of the cores only make every hash slower and take cores from the other "
        "workers' event loops.",
    )
    hash_queue: int = setting(
        0,
        "Hashes that may wait for a hash thread; beyond it a login or register gets "
        "'busy' (5) at once. 0 means half of server.handler_tasks minus hash_threads "
        "(at least 1).",
        _int(0, 100_000),
        why="A waiting hash holds a handler task, so the default leaves at least half of "
        "them for pings and other handlers, and bounds a queued login's wait to a few "
        "hash times instead of seconds.",
    )
    ipv4_prefix: int = setting(
        32,
        "Prefix length of the IPv4 network one client counts as for every account limit.",
        _int(0, 32),
        why="One IPv4 address is usually one host or one NAT: nginx and HAProxy key by it.",
    )
    ipv6_prefix: int = setting(
        64,
        "Prefix length of the IPv6 network one client counts as for every account limit.",
        _int(0, 128),
        why="One IPv6 host or site is usually given a whole /64 (RFC 6177), so keying by "
        "/128 would let one host pass as 2**64 clients.",
    )
    max_failures_per_name: int = setting(
        5,
        "Failed logins for one name from one client network in a burst; further attempts "
        "for that name from that network get 'rate limited' until the bucket refills (a "
        "slowdown: one more try per failure_window / this), while the owner from another "
        "network is unaffected (0 = no limit). A login in progress holds a token until it "
        "succeeds, so this also caps concurrent logins to one name from one network.",
        _int(0),
        why="OWASP: lock out the (name, source) pair and slow it down rather than the "
        "account for everyone, so a guesser cannot lock the owner out; 5 tries per 300 s "
        "then one a minute per network.",
    )
    max_failures_per_name_untrusted: int = setting(
        20,
        "Failed logins for one name, summed over every network that failed recently and "
        "never logged in to it, in a burst (0 = no limit). Networks with no recent failures "
        "and networks the name logged in from are not held by it.",
        _int(0),
        why="Bounds guessing spread over many networks at one name, without letting the "
        "guessers lock out the owner, whose network is clean or known.",
    )
    max_failures_per_address: int = setting(
        20,
        "Failed logins one client network may make in a burst, across names (0 = no limit).",
        _int(0),
        why="Bounds a client guessing across many names; higher than the per-name limit "
        "because several people may share one address (NAT).",
    )
    max_registrations_per_address: int = setting(
        20,
        "Registrations one client network may attempt in a burst (0 = no limit).",
        _int(0),
        why="Each registration costs a hash and a durable write; bursts beyond this are "
        "refused before either.",
    )
    failure_window: float = setting(
        300.0,
        "Seconds in which an emptied limit refills completely (its tokens return evenly).",
        _float(0.0, lo_open=True),
    )
    limiter_max_keys: int = setting(
        100_000,
        "Names and addresses each limiter remembers; beyond it, the least recently seen "
        "are forgotten.",
        _int(1),
        why="Bounds memory (about 200 bytes each) against clients that rotate names or addresses.",
    )
    shared_limits: bool = setting(
        True,
        "Count failed logins and resumes in the account store as well, so every worker and "
        "instance using it shares one budget per name, network and pair (SQLite: the "
        "machine's workers; PostgreSQL: every instance). Read with the account, written "
        "only on a failure. Off: each worker counts its own, and N workers allow N times "
        "the budget. The 'memory:' store is one worker's in any case.",
        _bool,
        why="A limit the attacker multiplies by spreading connections over workers is no "
        "limit; in the store, it costs no extra round trip on a success and fails with the "
        "store it needs anyway (no store, no login).",
    )
    confusables: bool = setting(
        True,
        "Refuse to register a name that looks like an existing one (Cyrillic 'а' for "
        "Latin 'a'): names are compared by a UTS #39-style skeleton of the common Cyrillic "
        "and Greek look-alikes of Latin letters.",
        _bool,
        why="Two accounts a reader cannot tell apart invite impersonation; the check costs "
        "one store lookup, and only for names with a mapped character.",
    )
    session_secret: str = setting(
        "data/session_secret",
        "File with the key that signs session tokens (RESUME, 1); created with mode 0600 "
        "on first start if absent. Share it between workers and instances that serve the "
        "same accounts. Empty turns sessions off. A 'memory:' store uses a key in memory.",
        _str,
        why="Beside the default SQLite database, so one data directory holds both; a file "
        "rather than a setting keeps the key out of config dumps.",
    )
    session_lifetime: float = setting(
        86400.0,
        "Seconds a session token stays valid after the login or resume that made it.",
        _float(0.0, lo_open=True),
        why="A day covers overnight disconnects and restarts without a password, and "
        "bounds what a stolen token is worth.",
    )


@attrs.frozen
class LoggingSettings:
    """``[logging]``: where log lines go."""

    level: str = setting(
        "info",
        "Lowest level logged.",
        _choice("debug", "info", "warning", "error", "critical"),
    )
    file: Path | None = setting(
        None,
        "Log file path; empty means standard error.",
        _optional_path,
    )
    json: bool = setting(False, "Write one JSON object per line.", _bool)
    stderr_to_file: bool = setting(
        True,
        "In daemon mode, point standard error at the log file (when logging.file is set) "
        "instead of /dev/null; its lines are raw text, not the log format.",
        _bool,
        why="Tracebacks printed before logging is set up, Python's fatal-error dumps and "
        "native crash messages go to fd 2: on /dev/null a worker that dies at start "
        "leaves no reason behind (nginx sends stderr to its error log the same way).",
    )
    connection_lines: int = setting(
        10,
        "Lines about misbehaving connections (dropped packets, connections closed by the "
        "server) written in full per logging.connection_lines_interval in each worker; "
        "the rest are counted by reason and summed up in one line when the interval ends.",
        _int(0, 1_000_000),
        why="Each bad connection costs a line, so a garbage flood wrote thousands a second "
        "(2.7 GB an hour at info). Ten show what the attack looks like, the summary its "
        "size by reason, and the log stays near a line a second per worker.",
    )
    connection_lines_interval: float = setting(
        10.0,
        "Seconds over which logging.connection_lines is counted (0: write every line).",
        _float(0.0),
        why="The same 10 s as the master's statistics summary (metrics.log_interval), so "
        "the two can be read side by side.",
    )


def _app_spec(value: Any) -> str:
    text = _str(value).strip()
    if text:
        module, sep, attr = text.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"{text!r} is not 'module:function' (for example 'myapp:make_router')")
    return text


@attrs.frozen
class MasterSettings:
    """``[master]``: the prefork master: worker processes, stop, reload, daemon mode."""

    workers: int = setting(
        0,
        "Worker processes; 0 means one per CPU the server may run on.",
        _int(0, 1024),
        why="Each worker is one trio loop on one core, and the kernel spreads new "
        "connections over the workers' SO_REUSEPORT sockets: one per core uses every core.",
    )
    app: str = setting(
        "",
        "Application served by the workers: 'module:function' returning a Router (or "
        "'module:name' of a Router); empty serves the built-in handlers.",
        _app_spec,
        why="Imported in each worker after the fork, never in the master, so a reload "
        "(SIGHUP) starts workers on the code as it is on disk now.",
    )
    graceful_timeout: float = setting(
        30.0,
        "Seconds a stopping or retiring worker may take before the master kills it (SIGKILL).",
        _float(0.0),
        why="A backstop: the worker itself closes what is left after server.drain_timeout; "
        "this only catches a worker that cannot finish (gunicorn's default).",
    )
    handoff: bool = setting(
        True,
        "On a reload (SIGHUP), old workers hand their binary and WebSocket connections, "
        "live, to the new workers instead of draining them; TLS connections and HTTP "
        "requests still drain. Off: every old connection drains and closes.",
        _bool,
        why="A reload then disconnects nobody who can be moved: for game, chat and device "
        "clients a drain is a reconnect storm and a login paid again on every deploy. "
        "The new config's value decides for the reload that reads it.",
    )
    stop_delay: float = setting(
        0.0,
        "Seconds a graceful stop (SIGTERM) keeps serving, with /healthz already answering "
        "503, before the workers stop accepting and drain.",
        _float(0.0),
        why="Behind a load balancer, set it to the balancer's time to mark a server down "
        "(check interval x fall count): new connections then stop arriving before the "
        "listening sockets close, so none is accepted and then lost. 0 by default: "
        "without a balancer it would only delay the stop.",
    )
    boot_timeout: float = setting(
        30.0,
        "Seconds a new worker has to start serving; a slower one has failed to boot.",
        _float(0.0, lo_open=True),
        why="Loading the application and opening the account store normally take well "
        "under a second; a worker still not serving after this is stuck.",
    )
    liveness_timeout: float = setting(
        30.0,
        "Seconds without a heartbeat after which a worker's event loop counts as stuck: "
        "the worker is killed and replaced. Workers beat every half of this.",
        _float(0.0, lo_open=True),
        why="A handler that blocks the loop (a blocking call instead of trio.to_thread) "
        "stalls every connection of that worker; 30 s rides out a long GC pause or swap.",
    )
    crash_limit: int = setting(
        5,
        "Unexpected worker exits within crash_window that stop the server instead of "
        "another respawn.",
        _int(1),
        why="A worker that dies again at once is a bug or a broken host; restarting it "
        "forever only fills the log.",
    )
    crash_window: float = setting(
        60.0,
        "Seconds over which crash_limit is counted.",
        _float(0.0, lo_open=True),
    )
    daemon: bool = setting(
        False,
        "Detach from the terminal (double fork, new session, stdin and stdout to /dev/null, "
        "stderr to the log file: logging.stderr_to_file); needs a pidfile.",
        _bool,
        why="Off: service managers (systemd, containers) want a foreground process.",
    )
    pidfile: Path | None = setting(
        Path("trioserver.pid"),
        "File holding the master's pid, written at start and removed at exit; 'stop', "
        "'reload', 'reopen' and 'status' find the server through it (and its admin "
        "listener through the '.admin' file beside it). A relative path is taken from "
        "the directory the server starts in. Empty: none.",
        _optional_path,
        why="The start directory already holds the default account store (data/), so "
        "it is what identifies a server: the control commands run from there find it "
        "with no option. $XDG_RUNTIME_DIR is unset under system services, cron and "
        "containers, and /run needs root. A second server with the same pidfile refuses "
        "to start while the first lives.",
    )


@attrs.frozen
class MetricsSettings:
    """``[metrics]``: live statistics, the Prometheus page and the log summary."""

    listen: Address | None = setting(
        None,
        "Address of the master's admin listener ('host:port'): GET /metrics (Prometheus "
        "text format, one series per worker slot), /healthz (200 serving, 503 starting "
        "or draining) and /status.json (what 'status' shows). Empty: no listener.",
        _optional_address,
        why="Off by default: a scrape port is the operator's choice (9100, the usual "
        "example, is node_exporter's), and a fixed default would make a second server on "
        "the same host fail to start or, worse, be scraped in the first one's place. "
        "Bind it to loopback or a private network: the page is unauthenticated.",
    )
    interval: float = setting(
        1.0,
        "Seconds between the statistics reports each worker sends the master (0: workers "
        "report nothing, time no handlers and run no lag timer).",
        _float(0.0),
        why="The page and 'status' are at most this old; a report is a few KiB of JSON, "
        "so once a second costs nothing measurable.",
    )
    handler_timing: int = setting(
        8,
        "Time the plain handlers of one packet batch in this many (1: every batch; 0: "
        "never). Async handlers are always timed while interval > 0.",
        _int(0),
        why="A timed handler costs two clock reads and a bucket update (~0.3 µs, a tenth "
        "of a ping); sampling one batch in 8 keeps the cost under the benchmark's noise "
        "(benchmarks/README.md) and still gives thousands of samples a second under load.",
    )
    lag_interval: float = setting(
        0.25,
        "Seconds between a worker's event-loop lag probes (a timer whose lateness is the lag).",
        _float(0.0, lo_open=True),
        why="Four wake-ups a second cost nothing and still catch any stall longer than "
        "this that repeats.",
    )
    log_interval: float = setting(
        10.0,
        "Seconds between the master's one-line summary of all workers in the log (0: none).",
        _float(0.0),
        why="The original printed its statistics every 10 s.",
    )
    admin_timeout: float = setting(
        5.0,
        "Seconds an admin-listener client has to send its request and read the answer.",
        _float(0.0, lo_open=True),
        why="The master serves the page from its own loop; a slow or stuck scraper is "
        "closed after this instead of holding a connection.",
    )
    admin_request_timeout: float = setting(
        2.0,
        "Seconds an admin-listener client has to send its whole request after connecting.",
        _float(0.0, lo_open=True),
        why="A scraper or a balancer's probe sends its few hundred bytes right after the "
        "handshake; one that has sent nothing after 2 s is idle, not slow, and its socket "
        "is reclaimed (nginx's client_header_timeout, shortened for a private port).",
    )
    admin_max_clients: int = setting(
        1024,
        "Admin-listener connections open at once; at the limit the oldest one that has not "
        "sent a whole request is closed for each new one.",
        _int(1, 100_000),
        why="The listener never stops accepting, so no number of idle sockets can keep "
        "a probe out; the limit only bounds the master's fds and buffers (1,024 fits "
        "the usual open-file limit beside the workers' pipes).",
    )
    fold_unknown_codes: bool = setting(
        True,
        "Count packets of msgCodes the application does not serve under one series "
        '(code="unknown") instead of one series per code.',
        _bool,
        why="The client picks the msgCode: one series per code lets anyone grow every "
        "report and the /metrics page by a series per code sent (65,536 possible), "
        "which costs the workers, the master and the scraper. Served codes keep their own.",
    )


@attrs.frozen
class TlsSettings:
    """``[tls]``: the certificate both TLS listeners serve (server.tls_listen, http.tls_listen)."""

    certificate: Path | None = setting(
        None,
        "PEM file with the server's certificate, followed by any intermediate certificates "
        "(the whole chain is served). Read by the master at start and on every reload.",
        _optional_path,
        why="No default: a certificate names its host. A reload (SIGHUP) reads it again, so "
        "a renewed certificate reaches new connections without a restart.",
    )
    private_key: Path | None = setting(
        None,
        "PEM file with the certificate's private key (unencrypted); empty: the key is in "
        "the certificate file.",
        _optional_path,
        why="The master reads it before the workers start; an encrypted key would need a "
        "passphrase at every reload, so it is refused with that reason.",
    )
    client_ca: Path | None = setting(
        None,
        "PEM file of the certificate authorities client certificates must chain to; when "
        "set, every TLS client must present a valid certificate (handlers see its subject "
        "as ctx.peer_certificate). Empty: no client certificates asked for.",
        _optional_path,
        why="Mutual TLS is for device fleets and internal services; asking browsers or "
        "game clients for a certificate they do not have would refuse them all.",
    )
    handshake_timeout: float = setting(
        10.0,
        "Seconds a new TLS connection has to complete its handshake (counted from the end "
        "of its PROXY header, if any); a slower one is closed and counted as a "
        "'timeout' TLS failure.",
        _float(0.0, lo_open=True),
        why="A handshake is two round trips and a signature: well under a second even on a "
        "slow mobile link, and 10 s rides out a few lost packets (TCP's first retransmission "
        "waits 1 s, then doubles). Longer only lets clients that connect and send nothing "
        "hold connection slots.",
    )
    minimum_version: str = setting(
        "1.2",
        "Oldest TLS version accepted: '1.2' or '1.3'.",
        _choice("1.2", "1.3"),
        why="TLS 1.0 and 1.1 are deprecated (RFC 8996); every client of the last decade "
        "speaks 1.2.",
    )


def _bus_url(value: Any) -> str:
    url = _str(value).strip()
    if url and not url.startswith("redis://"):
        raise ValueError(f"expected 'redis://HOST:PORT/DB' or empty, got {url!r}")
    return url


@attrs.frozen
class BusSettings:
    """``[bus]``: how the hub reaches the other workers and the other instances."""

    url: str = setting(
        "",
        "Where groups, user delivery and presence are shared: empty for the workers of "
        "this machine only (they reach each other directly over Unix sockets), or "
        "'redis://HOST:PORT/DB' for every instance using that Redis.",
        _bus_url,
        why="One machine needs no other server; several machines need one place that "
        "knows every instance's groups and users.",
    )
    members_timeout: float = setting(
        1.0,
        "Seconds hub.members() waits for the other workers' answers before it returns what it has.",
        _float(0.0, lo_open=True),
        why="A worker answers within a scheduler pass; one that is stuck or dying must "
        "not hold a WHO forever.",
    )
    max_pending_bytes: int = setting(
        16 << 20,
        "Bytes of hub messages waiting to be sent to one other worker (or the bus) before "
        "new ones are dropped and counted (remote_dropped).",
        _int(1 << 16),
        why="A stuck peer must not grow this worker's memory without bound; 16 MiB holds "
        "a burst of thousands of broadcasts.",
    )


SECTIONS: Final[Mapping[str, type]] = {
    "server": ServerSettings,
    "connection": ConnectionSettings,
    "logging": LoggingSettings,
    "http": HttpSettings,
    "accounts": AccountsSettings,
    "master": MasterSettings,
    "metrics": MetricsSettings,
    "tls": TlsSettings,
    "bus": BusSettings,
}
#: Each section class's name in the file, for error messages.
SECTION_NAMES: Final[Mapping[type, str]] = {cls: name for name, cls in SECTIONS.items()}


def _section(cls: type[T]) -> Any:
    """A ``Config`` field holding one section record (of exactly that class).

    The default record is made once and shared: it is frozen, and checking the
    defaults again for every ``Config()`` would only cost time.
    """
    return attrs.field(default=cls(), validator=attrs.validators.instance_of(cls))


@attrs.frozen
class Config:
    """The whole configuration: one frozen record per section.

    Rules that involve more than one setting are checked here too, so a
    ``replace`` cannot make a config the loader would refuse.
    """

    server: ServerSettings = _section(ServerSettings)
    connection: ConnectionSettings = _section(ConnectionSettings)
    logging: LoggingSettings = _section(LoggingSettings)
    http: HttpSettings = _section(HttpSettings)
    accounts: AccountsSettings = _section(AccountsSettings)
    master: MasterSettings = _section(MasterSettings)
    metrics: MetricsSettings = _section(MetricsSettings)
    tls: TlsSettings = _section(TlsSettings)
    bus: BusSettings = _section(BusSettings)
    #: Where it came from, for error messages and reload.
    source: str = "<built-in defaults>"

    def __attrs_post_init__(self) -> None:
        _check_across_sections(self)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or ``section__name=value`` settings replaced.

        Every value is checked as the file loader checks it (:class:`ConfigError`).
        """
        flat: dict[str, dict[str, Any]] = {}
        whole: dict[str, Any] = {}
        for key, value in sections.items():
            section, sep, name = key.partition("__")
            if section not in SECTIONS and not (key == "source" and not sep):
                raise ConfigError(
                    f"unknown section {section!r} in {key!r} (known: {', '.join(SECTIONS)})"
                )
            if sep:
                flat.setdefault(section, {})[name] = value
            else:
                whole[key] = value
        for section, values in flat.items():
            current = whole.get(section, getattr(self, section))
            whole[section] = _evolve_section(current, section, values)
        return attrs.evolve(self, **whole)


def _evolve_section(current: Any, section: str, values: Mapping[str, Any]) -> Any:
    """``attrs.evolve`` with an unknown name as a :class:`ConfigError` that lists the known."""
    known = {f.name for f in attrs.fields(type(current))}
    for name in values:
        if name not in known:
            raise ConfigError(
                f"unknown setting [{section}] {name!r} (known: {', '.join(sorted(known))})"
            )
    return attrs.evolve(current, **values)


def _section_fields(cls: type) -> Iterator[attrs.Attribute[Any]]:
    yield from attrs.fields(cls)


def _check_keys(cls: type, raw: Mapping[str, Any], section: str, where: str) -> None:
    known = {f.name for f in _section_fields(cls)}
    for key in raw:
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"{where}: unknown setting [{section}] {key!r} (known: {hint})")


def _parse_value(text: str) -> Any:
    """A TOML value (``30``, ``true``, ``["a:1"]``), or the text itself as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string, as people type it on a command line


def _parse_override(text: str) -> tuple[str, str, Any]:
    key, sep, value_text = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"override {text!r} is not 'section.name=value'")
    return section, name, _parse_value(value_text)


#: Environment variables ``TRIOSERVER_<SECTION>_<NAME>`` set settings
#: (``TRIOSERVER_MASTER_WORKERS=4``); one whose first word is not a section is
#: someone else's (the test suite's ``TRIOSERVER_PG_BIN``) and is left alone.
ENV_PREFIX: Final = "TRIOSERVER_"
#: The platform convention (Heroku, Render, Dokku) for the number of worker
#: processes. gunicorn and uvicorn take it as their default worker count, and so
#: does trioserver: below the config file, so a file naming master.workers wins.
WEB_CONCURRENCY: Final = "WEB_CONCURRENCY"


def environment_settings(environ: Mapping[str, str]) -> list[tuple[str, str, str, Any]]:
    """The settings ``environ`` sets: ``(variable, section, name, value)``, sorted.

    A variable naming a known section but no setting of it is an error (a typo
    must not be ignored); values are read as ``--set`` reads them.
    """
    found = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        section, _, name = variable.removeprefix(ENV_PREFIX).lower().partition("_")
        cls = SECTIONS.get(section)
        if cls is None:
            continue
        known = sorted(f.name for f in _section_fields(cls))
        if name not in known:
            hint = ", ".join(f"{ENV_PREFIX}{section.upper()}_{k.upper()}" for k in known)
            raise ConfigError(
                f"environment variable {variable}: [{section}] has no setting {name!r} "
                f"(known: {hint})"
            )
        found.append((variable, section, name, _parse_value(environ[variable])))
    return found


def worker_count(config: Config) -> int:
    """``master.workers``, with 0 meaning one per CPU this process may run on."""
    if config.master.workers:
        return config.master.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: tuple[str, ...] = (),
    *,
    base: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read a TOML file (or nothing: the defaults) and apply ``section.name=value`` overrides.

    Precedence, lowest first: the defaults, ``WEB_CONCURRENCY`` (for
    ``master.workers``), the file, the ``TRIOSERVER_<SECTION>_<NAME>`` variables
    of ``environ``, then ``overrides`` (``--set``). ``environ`` None means none:
    the command line passes ``os.environ``, while a library call does not change
    with the environment of whoever runs it. An error names where the value came
    from: the file, the variable or the ``--set``.

    Relative paths in settings are made absolute against ``base`` (default: the
    current directory); the command line passes the directory it started in, so
    a daemon (which changes to ``/``) and its reloads keep the same files.
    """
    raw: dict[str, Any] = {}
    source = "<built-in defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}  # where each value came from, for errors

    def put(section: str, name: str, value: Any, where: str) -> None:
        merged.setdefault(section, {})[name] = value
        origin[(section, name)] = where

    env: Mapping[str, str] = {} if environ is None else environ
    if env.get(WEB_CONCURRENCY, "").strip():
        where = f"environment variable {WEB_CONCURRENCY}"
        put("master", "workers", _parse_value(env[WEB_CONCURRENCY]), where)
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}] (known: {', '.join(SECTIONS)})"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section!r} must be a [section] table")
        _check_keys(SECTIONS[section], values, section, source)
        for name, value in values.items():
            put(section, name, value, source)
    for variable, section, name, value in environment_settings(env):
        put(section, name, value, f"environment variable {variable}")
    for text in overrides:
        section, name, value = _parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {text}: unknown section [{section}] (known: {', '.join(SECTIONS)})"
            )
        _check_keys(SECTIONS[section], {name: value}, section, f"--set {text}")
        put(section, name, value, f"--set {text}")
    built = {}
    for name, cls in SECTIONS.items():
        try:
            built[name] = cls(**merged.get(name, {}))
        except ConfigError as exc:
            where = origin.get(exc.setting, source) if exc.setting else source
            raise ConfigError(f"{where}: {exc}", setting=exc.setting) from None
    try:
        return _absolute_paths(Config(**built, source=source), base)
    except ConfigError as exc:
        where = source if set(origin.values()) <= {source} else f"{source} with overrides"
        raise ConfigError(f"{where}: {exc}") from None


def _absolute_paths(config: Config, base: Path | None) -> Config:
    """Resolve relative paths once, at load: a daemon changes to ``/`` and a reload
    may run from anywhere, so ``data/accounts.sqlite3`` must not move with them."""
    root = (base or Path.cwd()).absolute()
    changes: dict[str, Any] = {}
    log_file = config.logging.file
    if log_file is not None and not log_file.is_absolute():
        changes["logging__file"] = root / log_file
    pidfile = config.master.pidfile
    if pidfile is not None and not pidfile.is_absolute():
        changes["master__pidfile"] = root / pidfile
    document_root = config.http.document_root
    if document_root is not None and not document_root.is_absolute():
        changes["http__document_root"] = root / document_root
    for name in ("certificate", "private_key", "client_ca"):
        tls_path = getattr(config.tls, name)
        if tls_path is not None and not tls_path.is_absolute():
            changes[f"tls__{name}"] = root / tls_path
    url = config.accounts.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        changes["accounts__url"] = "sqlite:///" + str(root / url.removeprefix("sqlite:///"))
    return config.replace(**changes) if changes else config


def _check_across_sections(config: Config) -> None:
    """Rules that involve more than one setting."""
    lists = {
        "[server] listen": config.server.listen,
        "[http] listen": config.http.listen,
        "[server] tls_listen": config.server.tls_listen,
        "[http] tls_listen": config.http.tls_listen,
    }
    names = list(lists)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = {a for a in set(lists[first]) & set(lists[second]) if a.port != 0}
            if shared:
                raise ConfigError(
                    f"{first} and {second} share "
                    f"{', '.join(sorted(map(str, shared)))}; one address serves one protocol"
                )
    tls_on = [name for name in names[2:] if lists[name]]
    if tls_on and config.tls.certificate is None:
        raise ConfigError(
            f"{' and '.join(tls_on)} need a certificate: set [tls] certificate "
            "(and private_key, unless the key is in the certificate file)"
        )


def _toml(value: Any) -> str:
    """A setting's value as TOML (what the loader reads back to the same value)."""
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(str(v)) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '""'
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # strings, paths, addresses


def describe_settings(config: Config | None = None) -> str:
    """Every setting with its help and reason, as TOML: the defaults, or ``config``'s values.

    With ``config`` (``settings --effective``) a value other than the default says
    what the default is, and the text loads back as the same configuration.
    """
    lines: list[str] = []
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        for field in _section_fields(cls):
            value = field.default
            if config is not None:
                value = getattr(getattr(config, section), field.name)
            lines.append(f"# {field.metadata['help']}")
            if field.metadata["why"]:
                lines.append(f"# Why: {field.metadata['why']}")
            if value != field.default:
                lines.append(f"# Default: {_toml(field.default)}")
            lines.append(f"{field.name} = {_toml(value)}")
            lines.append("")
    return "\n".join(lines)

"""The command line: ``python -m trioserver [serve|stop|reload|reopen|status|client|...]``.

With no command it serves on the built-in defaults (binary protocol on
127.0.0.1:10000, pidfile ./trioserver.pid), so ``python -m trioserver`` is a
complete server and ``python -m trioserver stop`` from the same directory stops it.

Settings come from, lowest first: the defaults, ``WEB_CONCURRENCY`` (worker
count), the ``-c`` file, ``TRIOSERVER_<SECTION>_<NAME>`` environment variables,
then ``--set`` and the options that stand for one (``--listen``, ``--workers``...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from . import __version__
from .config import (
    Config,
    ConfigError,
    ServerSettings,
    describe_settings,
    load_config,
    parse_address,
)
from .ops.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("trioserver")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="SECTION.NAME=VALUE",
        action="append",
        default=[],
        help="override one setting (repeatable), e.g. --set connection.heartbeat_wait=30",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="binary-protocol listen address (repeatable); same as --set server.listen=[...]",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trioserver",
        description="A trio server for long-lived TCP connections (the course's binary "
        "protocol). Without a command, serves on the built-in defaults.",
        epilog="Settings, lowest precedence first: the built-in defaults; WEB_CONCURRENCY "
        "(the worker count, as gunicorn and uvicorn read it); the -c file; environment "
        "variables TRIOSERVER_<SECTION>_<NAME> (e.g. TRIOSERVER_MASTER_WORKERS=4, values "
        "written as in TOML); then --set and the options that stand for one. "
        "'settings --effective' prints the result. The server writes ./trioserver.pid "
        "(master.pidfile), where stop, reload, reopen and status look for it.",
    )
    parser.add_argument("--version", action="version", version=f"trioserver {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the server (the default)")
    _config_args(serve)
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (0: one per CPU); same as --set master.workers=N",
    )
    serve.add_argument(
        "--daemon", action="store_true", help="detach from the terminal (needs a pidfile)"
    )
    serve.add_argument("--pidfile", metavar="FILE", help="same as --set master.pidfile=FILE")
    serve.add_argument(
        "--app",
        metavar="MODULE:FUNCTION",
        help="application: a function returning a Router; same as --set master.app=...",
    )
    serve.add_argument(
        "--no-master",
        action="store_true",
        help="run one worker in this process, without a master (for debugging)",
    )

    for name, text in (
        ("stop", "stop a running server (SIGTERM: it drains) and wait until it is gone"),
        ("reload", "reload a running server's config (SIGHUP): new workers, then old ones retire"),
        ("reopen", "make a running server reopen its log files (SIGUSR1), after logrotate"),
        ("status", "show a running server's master and workers with their ages"),
    ):
        control = sub.add_parser(name, help=text)
        control.add_argument(
            "-c", "--config", metavar="FILE", help="TOML config naming the pidfile"
        )
        control.add_argument("--set", dest="overrides", action="append", default=[])
        control.add_argument("--pidfile", metavar="FILE", help="the server's pidfile")
        if name == "status":
            control.add_argument(
                "--admin",
                metavar="HOST:PORT",
                help="the master's admin listener, for per-worker figures (default: the "
                "one the running server recorded beside its pidfile, else metrics.listen)",
            )
        if name == "stop":
            control.add_argument(
                "--fast", action="store_true", help="SIGQUIT: close connections now"
            )
            control.add_argument(
                "--timeout", type=float, default=60.0, help="seconds to wait (default 60)"
            )

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", help="TOML config file")
    check.add_argument("--set", dest="overrides", action="append", default=[])

    settings = sub.add_parser(
        "settings", help="print every setting with its default and reason, as TOML"
    )
    settings.add_argument(
        "--effective",
        action="store_true",
        help="print the values that would run (defaults, -c file, environment, --set) "
        "instead of the defaults; implied by -c, --set or --listen",
    )
    _config_args(settings)

    client = sub.add_parser("client", help="talk to a running server")
    client.add_argument("--server", default=str(ServerSettings().listen[0]), metavar="HOST:PORT")
    client.add_argument("--tls", action="store_true", help="connect over TLS (server.tls_listen)")
    client.add_argument(
        "--cafile", metavar="FILE", help="PEM CA file to verify the server by (with --tls)"
    )
    client.add_argument(
        "--certfile", metavar="FILE", help="PEM client certificate (and key) to present"
    )
    client.add_argument("--keyfile", metavar="FILE", help="its private key, if not in --certfile")
    client.add_argument(
        "--server-name", metavar="NAME", help="name to verify the certificate for (default: host)"
    )
    client_sub = client.add_subparsers(dest="action", required=True)
    ping = client_sub.add_parser("ping", help="send pings and print each round trip")
    ping.add_argument("-n", "--count", type=int, default=1)
    for name in ("register", "login"):
        action = client_sub.add_parser(name, help=f"{name} an account")
        action.add_argument("username")
        action.add_argument("password")
        if name == "login":
            action.add_argument(
                "--save-session",
                metavar="FILE",
                help="write the session token to FILE (mode 0600) for 'client resume FILE'",
            )
    resume = client_sub.add_parser(
        "resume", help="log in with a session saved by 'client login --save-session'"
    )
    resume.add_argument("session", metavar="FILE", help="the session file (renewed on success)")
    return parser


def _load(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "listen", None):
        quoted = ", ".join(f'"{a}"' for a in args.listen)
        overrides.append(f"server.listen=[{quoted}]")
    if getattr(args, "workers", None) is not None:
        overrides.append(f"master.workers={args.workers}")
    if getattr(args, "daemon", False):
        overrides.append("master.daemon=true")
    for option in ("pidfile", "app"):
        if getattr(args, option, None):
            overrides.append(f"master.{option}={json.dumps(getattr(args, option))}")
    return load_config(args.config, tuple(overrides), base=_START_DIR, environ=os.environ)


#: Where trioserver was started: relative paths in settings stay relative to it,
#: through a daemon's chdir("/") and every reload.
_START_DIR = Path.cwd()


def _serve(args: argparse.Namespace) -> int:
    if args.config:
        # Absolute: a daemon changes to / and reloads (SIGHUP) read the file again.
        args.config = os.path.abspath(args.config)
    config = _load(args)
    configure_logging(config.logging)
    log.info("trioserver %s starting (config: %s)", __version__, config.source)
    if not args.no_master:
        from .prefork.master import serve

        if config.master.daemon and config.logging.file is None:
            log.warning("daemon mode with logging.file unset: log lines go to /dev/null")
        return serve(config, lambda: _load(args))

    from .prefork.app import AppError, load_router
    from .worker import run_worker

    try:
        router = load_router(config.master.app)
    except AppError as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        run_worker(config, router)
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


def _control(args: argparse.Namespace) -> int:
    from .prefork import control

    config = load_config(args.config, tuple(args.overrides), environ=os.environ)
    if args.pidfile:
        path = Path(args.pidfile)
    else:
        if config.master.pidfile is None:
            print(
                "error: no pidfile to find the server by (master.pidfile is empty): pass --pidfile",
                file=sys.stderr,
            )
            return 2
        path = config.master.pidfile
    try:
        if args.command == "status":
            try:
                admin = parse_address(args.admin) if args.admin else None
            except ValueError as exc:
                print(f"error: --admin: {exc}", file=sys.stderr)
                return 2
            print(control.status(path, admin, configured=config.metrics.listen))
        elif args.command == "reload":
            pid = control.send(path, signal.SIGHUP)
            print(f"reload signalled to pid {pid}")
        elif args.command == "reopen":
            pid = control.send(path, signal.SIGUSR1)
            print(f"log reopening signalled to pid {pid}")
        else:
            pid = control.stop(path, fast=args.fast, timeout=args.timeout)
            print(f"stopped pid {pid}")
    except control.ControlError as exc:
        print(f"trioserver: {exc}", file=sys.stderr)
        return 3 if args.command == "status" else 1
    return 0


def _client(args: argparse.Namespace) -> int:
    from .client import BlockingClient, ConnectionClosed
    from .messages import LoginReply, RegisterReply, ResultCode

    address = parse_address(args.server)
    context = None
    if args.tls or args.cafile or args.certfile:
        from .client import client_tls_context

        try:
            context = client_tls_context(
                cafile=args.cafile, certfile=args.certfile, keyfile=args.keyfile
            )
        except OSError as exc:
            print(f"error: TLS set-up: {exc}", file=sys.stderr)
            return 1
    try:
        with BlockingClient.connect(
            address.host, address.port, tls=context, server_hostname=args.server_name
        ) as client:
            if args.action == "ping":
                for _ in range(args.count):
                    rtt = client.ping()
                    print(f"ping {address}: {rtt * 1e3:.3f} ms")
                return 0
            reply: LoginReply | RegisterReply
            if args.action == "resume":
                session = _read_session(args.session)
                reply = client.resume(session[0], session[1])
            else:
                call = client.register if args.action == "register" else client.login
                reply = call(args.username, args.password)
    except (OSError, ConnectionClosed, ValueError) as exc:
        print(f"error: {address}: {exc}", file=sys.stderr)
        return 1
    name = reply.username.decode("utf-8", "replace")
    print(f"{args.action} {name!r}: {describe_result(args.action, reply.result)}")
    if reply.result != ResultCode.OK:
        return 2
    path = args.session if args.action == "resume" else getattr(args, "save_session", None)
    if path and isinstance(reply, LoginReply):
        _write_session(path, name, reply.token)
    return 0


def _write_session(path: str, username: str, token: bytes) -> None:
    """Save a session (name and token) readable by its owner only: a token is a password."""
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"username": username, "token": token.hex()}, file)
        file.write("\n")
    os.replace(temporary, path)


def _read_session(path: str) -> tuple[str, bytes]:
    with open(path) as file:
        data = json.load(file)
    try:
        return str(data["username"]), bytes.fromhex(data["token"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a session file ({exc})") from None


#: What each register or login result means to the person who typed the command.
_RESULT_TEXT: Final[Mapping[tuple[str, int], str]] = {
    ("register", 0): "registered",
    ("register", 1): "the name is taken",
    ("login", 0): "logged in",
    ("login", 1): "wrong username or password (the server does not say which)",
    ("*", 2): "the server refused the name or password (empty, too long, or not allowed)",
    ("*", 3): "the server's account store is unavailable (not configured, or down)",
    ("*", 4): "too many attempts from this name or address; wait and try again",
    ("*", 5): "the server is busy checking passwords; try again in a moment",
    ("resume", 0): "logged in (session renewed)",
    ("resume", 1): "the session is expired, invalid, or the password changed: log in again",
}


def describe_result(action: str, code: int) -> str:
    """``rejected: wrong username or password ...``: the result code's name and meaning."""
    from .messages import ResultCode

    try:
        name = ResultCode(code).name.lower()
    except ValueError:
        return f"unknown result {code}"
    text = _RESULT_TEXT.get((action, code)) or _RESULT_TEXT.get(("*", code))
    return f"{name}: {text}" if text else name


def _check_config(args: argparse.Namespace) -> int:
    """Validate the file; with TLS listeners, load the certificate pair as the master would."""
    from .tls import TlsSetupError, load_config_tls

    config = load_config(args.file, tuple(args.overrides), environ=os.environ)
    try:
        server_tls = load_config_tls(config)
    except TlsSetupError as exc:
        print(f"config error: {config.source}: {exc}", file=sys.stderr)
        return 2
    tls = f" (TLS: {server_tls.description})" if server_tls is not None else ""
    print(f"{config.source}: ok{tls}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command in ("stop", "reload", "reopen", "status"):
            return _control(args)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "settings":
            if args.effective or args.config or args.overrides or args.listen:
                config = _load(args)
                print(f"# The configuration that would run (from {config.source}, the")
                print("# environment and --set); a value that is not the default says so.")
                print(describe_settings(config))
            else:
                print(describe_settings())
            return 0
        if args.command == "client":
            return _client(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")

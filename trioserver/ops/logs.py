"""Logging set-up for the command line. Never called when trioserver is a library.

One handler on the root logger formats every record, trioserver's and every
library's (psycopg_pool's complaints while PostgreSQL is down, trio's, the
standard library's), in the configured format: text or one JSON object a line,
to standard error or ``logging.file``, at ``logging.level``. Every line carries
the process role and pid, so lines from a master and its workers interleaved in
one file can be told apart.

The HTTP access log (logger ``trioserver.http.access``, on with
``http.access_log``) gets its own shape from the same handler: in text mode the
combined log format (Apache's and nginx's default, which log analysers read)
plus the request's duration in seconds::

    127.0.0.1 - - [02/Dec/2026:06:07:18 +0000] "GET / HTTP/1.1" 200 1234 "-" "curl/8.5.0" 0.000213

and in JSON mode the same facts as fields (``client``, ``method``, ``target``,
``protocol``, ``status``, ``bytes``, ``referrer``, ``user_agent``,
``duration``). The access record's arguments are the client, method, target,
HTTP version, status and body length; the referrer, user agent and duration
come in its ``extra`` (:data:`ACCESS_EXTRA`). Everything in a request is the
client's choice, so text mode escapes quotes, backslashes, control and
non-ASCII characters as nginx does (``\\x22``): a request cannot forge a line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ..config import LoggingSettings

__all__ = [
    "ACCESS_EXTRA",
    "ACCESS_LOGGER",
    "AccessFields",
    "JsonFormatter",
    "TextFormatter",
    "access_fields",
    "capture_stderr",
    "configure_logging",
    "reopen_logs",
    "set_role",
]

#: The logger the HTTP server writes one record per request to.
ACCESS_LOGGER: Final = "trioserver.http.access"
#: The ``extra`` keys of an access record beside its arguments: header values as
#: text (latin-1, as received), the duration in seconds.
ACCESS_EXTRA: Final = ("referrer", "user_agent", "duration")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s [%(role)s %(pid)d] %(name)s: %(message)s"
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip

_role = "server"
#: The file standard error points at (daemon mode), reopened with the log files.
_stderr_path: Path | None = None


def set_role(role: str) -> None:
    """Name this process in log lines ("master", "worker 1", ...)."""
    global _role
    _role = role


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        record.pid = os.getpid()
        return True


# ---------------------------------------------------------------------------
# The access record.

AccessFields = dict[str, Any]


def access_fields(record: logging.LogRecord) -> AccessFields | None:
    """An access record's facts by name; None if ``record`` is not one of that shape."""
    args = record.args
    if record.name != ACCESS_LOGGER or not isinstance(args, tuple) or len(args) != 6:
        return None
    client, method, target, version, status, length = args
    extra: Mapping[str, Any] = record.__dict__
    duration = extra.get("duration")
    return {
        "client": str(client),
        "method": str(method),
        "target": str(target),
        "protocol": f"HTTP/{version}",
        "status": status,
        "bytes": length,
        "referrer": _text_or_none(extra.get("referrer")),
        "user_agent": _text_or_none(extra.get("user_agent")),
        "duration": float(duration) if isinstance(duration, int | float) else None,
    }


def _text_or_none(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) and value else None


def _escape_char(char: str) -> str:
    code = ord(char)
    if char in '"\\' or code < 0x20 or code >= 0x7F:
        # Header text is latin-1, one char per byte received: show that byte.
        raw = bytes([code]) if code < 0x100 else char.encode("utf-8")
        return "".join(f"\\x{b:02X}" for b in raw)
    return char


def _escape(text: str | None) -> str:
    """``text`` safe inside a quoted field of a log line ("-" when absent)."""
    if not text:
        return "-"
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(map(_escape_char, text))


def _clf_time(created: float) -> str:
    """``02/Dec/2026:06:07:18 +0000``: local time with its offset, English month names."""
    t = time.localtime(created)
    offset = t.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


def combined_line(fields: AccessFields, created: float) -> str:
    """The combined log format, then the duration in seconds ("-" if unknown)."""
    duration = fields["duration"]
    return (
        f"{_escape(fields['client'])} - - [{_clf_time(created)}] "
        f'"{_escape(fields["method"])} {_escape(fields["target"])} {fields["protocol"]}" '
        f"{fields['status']} {fields['bytes']} "
        f'"{_escape(fields["referrer"])}" "{_escape(fields["user_agent"])}" '
        f"{'-' if duration is None else f'{duration:.6f}'}"
    )


# ---------------------------------------------------------------------------
# The formatters.


class TextFormatter(logging.Formatter):
    """``time LEVEL [role pid] logger: message``; access records in the combined format."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        fields = access_fields(record)
        if fields is not None:
            return combined_line(fields, record.created)
        if not hasattr(record, "role"):  # formatted without our handler's filter
            _RoleFilter().filter(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, role, pid, message (+ access fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "role": getattr(record, "role", _role),
            "pid": getattr(record, "pid", os.getpid()),
            "message": record.getMessage(),
        }
        fields = access_fields(record)
        if fields is not None:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# ---------------------------------------------------------------------------
# Set-up.


def _ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_trioserver", False) is True


def configure_logging(settings: LoggingSettings) -> logging.Handler:
    """Send every record to stderr or ``settings.file``, replacing our earlier handler."""
    root = logging.getLogger()
    # Earlier versions of this set-up (and a reload's) put a handler on "trioserver".
    for logger in (root, logging.getLogger("trioserver")):
        for old in list(logger.handlers):
            if _ours(old):
                logger.removeHandler(old)
                old.close()
    handler: logging.Handler
    if settings.file is not None:
        handler = logging.FileHandler(settings.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    setattr(handler, "_trioserver", True)  # noqa: B010 - marks the handler we own
    handler.addFilter(_RoleFilter())
    handler.setFormatter(JsonFormatter() if settings.json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    ours = logging.getLogger("trioserver")
    ours.setLevel(logging.NOTSET)  # the root's level rules every logger alike
    ours.propagate = True
    return handler


def capture_stderr(path: Path) -> None:
    """Point fd 2 at ``path`` (appending), now and on every :func:`reopen_logs`.

    For a daemon, whose stderr is /dev/null: workers forked later inherit it, so a
    traceback printed before logging is set up, or a native crash message, lands
    in the log file.
    """
    global _stderr_path
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    _stderr_path = path


def reopen_logs() -> None:
    """Reopen our log file at its path (SIGUSR1, after logrotate moved the old one away)."""
    if _stderr_path is not None:
        capture_stderr(_stderr_path)
    for handler in logging.getLogger().handlers:
        if _ours(handler) and isinstance(handler, logging.FileHandler):
            stream = open(handler.baseFilename, handler.mode, encoding=handler.encoding)  # noqa: SIM115
            old = handler.setStream(stream)  # type: ignore[arg-type]
            if old is not None:
                old.close()

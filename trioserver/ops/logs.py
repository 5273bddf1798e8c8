"""Logging set-up for the command line. Never called when trioserver is a library.

Every line carries the process role and pid, so lines from a master and its
workers interleaved in one file can be told apart.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from ..config import LoggingSettings

__all__ = ["capture_stderr", "configure_logging", "reopen_logs", "set_role"]

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, role, pid, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "role": getattr(record, "role", _role),
            "pid": getattr(record, "pid", os.getpid()),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: LoggingSettings) -> logging.Handler:
    """Send the ``trioserver`` logger to stderr or a file, replacing our earlier handler."""
    logger = logging.getLogger("trioserver")
    for old in list(logger.handlers):
        if getattr(old, "_trioserver", False):
            logger.removeHandler(old)
            old.close()
    handler: logging.Handler
    if settings.file is not None:
        handler = logging.FileHandler(settings.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    setattr(handler, "_trioserver", True)  # noqa: B010 - marks the handler we own
    handler.addFilter(_RoleFilter())
    if settings.json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(role)s %(pid)d] %(name)s: %(message)s")
        )
    logger.addHandler(handler)
    logger.setLevel(settings.level.upper())
    logger.propagate = False
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
    for handler in logging.getLogger("trioserver").handlers:
        if getattr(handler, "_trioserver", False) and isinstance(handler, logging.FileHandler):
            stream = open(handler.baseFilename, handler.mode, encoding=handler.encoding)  # noqa: SIM115
            old = handler.setStream(stream)  # type: ignore[arg-type]
            if old is not None:
                old.close()

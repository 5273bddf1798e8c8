"""Log set-up: one format for every library's records, and the access log's two shapes."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from trioserver.config import LoggingSettings
from trioserver.ops.logs import (
    ACCESS_LOGGER,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    reopen_logs,
    set_role,
)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) \[(.+?) (\d+)\] (\S+): (.*)$")


@pytest.fixture
def role() -> Any:
    set_role("worker 3")
    yield
    set_role("server")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_every_librarys_records_follow_the_configured_text_format(
    tmp_path: Path, role: Any
) -> None:
    log = tmp_path / "server.log"
    configure_logging(LoggingSettings(file=log, level="info"))
    logging.getLogger("psycopg.pool").warning("error connecting in 'pool-1': refused")
    logging.getLogger("trioserver.worker").info("worker ready")
    logging.getLogger("psycopg.pool").debug("below the level: not written")
    found = [TEXT_LINE.match(line) for line in lines(log)]
    assert [m.groups() if m else None for m in found] == [
        ("WARNING", "worker 3", str(os.getpid()), "psycopg.pool",
         "error connecting in 'pool-1': refused"),
        ("INFO", "worker 3", str(os.getpid()), "trioserver.worker", "worker ready"),
    ]  # fmt: skip


def test_every_librarys_records_follow_json_mode(tmp_path: Path, role: Any) -> None:
    log = tmp_path / "server.log"
    configure_logging(LoggingSettings(file=log, json=True))
    logging.getLogger("psycopg.pool").warning("error connecting")
    (entry,) = [json.loads(line) for line in lines(log)]
    assert entry["logger"] == "psycopg.pool" and entry["level"] == "warning"
    assert entry["role"] == "worker 3" and entry["message"] == "error connecting"


def test_configuring_again_replaces_our_handler_and_reopen_follows_the_path(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    configure_logging(LoggingSettings(file=first))
    configure_logging(LoggingSettings(file=second))
    logging.getLogger("anything").warning("one")
    assert not lines(first) and len(lines(second)) == 1
    second.rename(tmp_path / "b.log.1")
    reopen_logs()
    logging.getLogger("anything").warning("two")
    assert lines(second)[0].endswith("anything: two")


def access_record(**extra: Any) -> logging.LogRecord:
    """An access record as trioserver/http/server.py's ``_log_access`` makes one."""
    record = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        '%s "%s %s HTTP/%s" %d %d',
        ("10.1.2.3", "GET", "/a.txt?x=1", "1.1", 200, 20),
        None,
        extra=extra or None,
    )
    return record


CLF_TIME = r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"


def test_access_record_in_the_combined_format_with_duration() -> None:
    record = access_record(
        referrer="http://example.com/", user_agent="curl/8.5.0", duration=0.000213
    )
    line = TextFormatter().format(record)
    expected = (
        rf'^10\.1\.2\.3 - - {CLF_TIME} "GET /a\.txt\?x=1 HTTP/1\.1" 200 20 '
        r'"http://example\.com/" "curl/8\.5\.0" 0\.000213$'
    )
    assert re.match(expected, line), line


def test_access_record_without_the_extra_fields() -> None:
    """Today's call passes no extra: the fields it lacks show as "-"."""
    line = TextFormatter().format(access_record())
    assert line.endswith('"GET /a.txt?x=1 HTTP/1.1" 200 20 "-" "-" -')


def test_access_fields_from_the_client_are_escaped() -> None:
    record = access_record(user_agent='evil" 200 0 "\x1b[31m\xe9', referrer="\\", duration=1)
    line = TextFormatter().format(record)
    assert line.endswith(r'"\x5C" "evil\x22 200 0 \x22\x1B[31m\xE9" 1.000000')


def test_access_record_in_json_mode_as_fields() -> None:
    record = access_record(referrer="", user_agent="curl/8.5.0", duration=0.25)
    entry = json.loads(JsonFormatter().format(record))
    assert {k: entry[k] for k in entry if k not in ("time", "pid", "role")} == {
        "level": "info",
        "logger": ACCESS_LOGGER,
        "message": '10.1.2.3 "GET /a.txt?x=1 HTTP/1.1" 200 20',
        "client": "10.1.2.3",
        "method": "GET",
        "target": "/a.txt?x=1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 20,
        "referrer": None,
        "user_agent": "curl/8.5.0",
        "duration": 0.25,
    }


def test_other_records_of_the_access_logger_keep_the_usual_format() -> None:
    record = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER, logging.WARNING, __file__, 1, "odd %s", ("one",), None
    )
    assert TextFormatter().format(record).endswith("trioserver.http.access: odd one")

"""Process figures read from /proc: the parsers on fixed text, then this very process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from trioserver.ops.procstat import parse_stat, parse_statm, read_process

# A comm with spaces and parentheses: the fields are counted from the last ")".
STAT = "4242 (trio (worker) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 1 0 1000 "


def test_parse_stat_adds_user_and_system_ticks() -> None:
    assert parse_stat(STAT, ticks=100) == 3.25


def test_parse_statm_counts_resident_pages() -> None:
    assert parse_statm("12345 678 90 1 0 500 0\n", page=4096) == 678 * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_this_process(tmp_path: Path) -> None:
    before = read_process(os.getpid())
    assert before is not None
    with open(tmp_path / "x", "w"):
        during = read_process(os.getpid())
    assert during is not None and during.open_fds == before.open_fds + 1
    assert before.resident_bytes > 1_000_000 and before.cpu_seconds > 0


def test_a_process_that_is_gone(tmp_path: Path) -> None:
    assert read_process(os.getpid(), proc=str(tmp_path)) is None

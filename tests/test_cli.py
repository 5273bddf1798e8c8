"""The command line, as a user runs it: a real server process and the client command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

PYTHON = [sys.executable, "-m", "trioserver"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYTHON, *argv], capture_output=True, text=True, timeout=60)


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[connection]\nheartbeat_wait = 30\n")
    result = run("check-config", str(good))
    assert result.returncode == 0 and "ok" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[connection]\nheartbeat_wai = 30\n")
    result = run("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: unknown setting [connection] 'heartbeat_wai'" in result.stderr


def test_settings_lists_defaults() -> None:
    result = run("settings")
    assert result.returncode == 0
    assert 'listen = ["127.0.0.1:10000"]' in result.stdout


async def test_serve_then_client_ping_then_sigterm() -> None:
    proc = await trio.lowlevel.open_process(
        [*PYTHON, "serve", "--listen", "127.0.0.1:0", "--set", "logging.level='info'"],
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(30):
            while not (match := re.search(rb"listening on 127\.0\.0\.1:(\d+)", seen)):
                chunk = await proc.stderr.receive_some()
                assert chunk, seen.decode()
                seen += chunk
        port = match.group(1).decode()
        result = await trio.to_thread.run_sync(
            lambda: run("client", "--server", f"127.0.0.1:{port}", "ping", "-n", "2")
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("ping 127.0.0.1") == 2
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()

"""The command line, as a user runs it: a real server process and the client command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.polling import wait_for
from trioserver.config import load_config
from trioserver.prefork.pidfile import read_pid

PYTHON = [sys.executable, "-m", "trioserver"]


REPO = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIOSERVER_", "WEB_CONC"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def run(
    *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTHON, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env if env is not None else _env(),
    )


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


async def test_serve_then_client_ping_then_sigterm(tmp_path: Path) -> None:
    proc = await trio.lowlevel.open_process(
        [*PYTHON, "serve", "--listen", "127.0.0.1:0", "--set", "logging.level='info'"],
        stderr=subprocess.PIPE,
        cwd=tmp_path,  # the default pidfile and data directory are made there
        env=_env(),
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
        server = ("client", "--server", f"127.0.0.1:{port}")
        session = tmp_path / "alice.session"
        for argv, out in [
            (("register", "alice", "secret"), "register 'alice': ok: registered"),
            (("login", "alice", "secret", "--save-session", str(session)), "login 'alice': ok"),
            (("resume", str(session)), "resume 'alice': ok: logged in (session renewed)"),
            (("resume", str(session)), "resume 'alice': ok"),  # the renewed token works
        ]:
            result = await trio.to_thread.run_sync(lambda argv=argv: run(*server, *argv))
            assert result.returncode == 0 and out in result.stdout, result
        assert session.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "data" / "session_secret").stat().st_mode & 0o777 == 0o600
        session.write_text('{"username": "alice", "token": "' + "00" * 32 + '"}')
        result = await trio.to_thread.run_sync(lambda: run(*server, "resume", str(session)))
        assert result.returncode == 2 and "rejected: the session is expired" in result.stdout
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


def test_the_default_run_is_found_by_status_reopen_and_stop(tmp_path: Path) -> None:
    """Plain ``serve`` writes ./trioserver.pid; the control commands find it with no option,
    and ``status`` finds the admin listener (on port 0 here) from the running server. The
    worker count comes from the environment (TRIOSERVER_ over WEB_CONCURRENCY)."""
    log = tmp_path / "server.log"
    args = [
        *PYTHON, "serve", "--listen", "127.0.0.1:0",
        "--set", "http.listen=[]", "--set", 'accounts.url="memory:"',
        "--set", 'metrics.listen="127.0.0.1:0"', "--set", "metrics.interval=0.1",
        "--set", f'logging.file="{log}"',
    ]  # fmt: skip
    env = _env(TRIOSERVER_MASTER_WORKERS="2", WEB_CONCURRENCY="5")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        pidfile = tmp_path / "trioserver.pid"
        wait_for("the pidfile", lambda: read_pid(pidfile) == proc.pid, timeout=30)
        wait_for("serving", lambda: "serving: 2 workers ready" in log.read_text(), timeout=30)
        status = run("status", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert f"master pid {proc.pid}" in status.stdout
        assert re.search(r"figures from 127\.0\.0\.1:\d+ .*health: serving", status.stdout)
        rows = [line.split()[0] for line in status.stdout.splitlines()[2:]]
        assert rows[:3] == ["1", "2", "all"]
        log.rename(tmp_path / "server.log.1")  # as logrotate does
        reopen = run("reopen", cwd=tmp_path)
        assert reopen.returncode == 0, reopen.stderr
        wait_for("the reopened log", lambda: log.exists() and "reopened" in log.read_text())
        stop = run("stop", cwd=tmp_path)
        assert stop.returncode == 0 and f"stopped pid {proc.pid}" in stop.stdout
        assert proc.wait(30) == 0
        assert not pidfile.exists() and not (tmp_path / "trioserver.pid.admin").exists()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_an_app_that_is_not_a_factory_fails_before_any_worker_starts(tmp_path: Path) -> None:
    result = run(
        "--listen", "127.0.0.1:0", "--set", "http.listen=[]",
        "--app", "examples.echo_server:main", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "main() is declared to return None, not a Router" in result.stderr
    assert "'examples.echo_server:router'" in result.stderr
    assert "worker 1 started" not in result.stderr
    assert not (tmp_path / "trioserver.pid").exists()
    result = run("--listen", "127.0.0.1:0", "--app", "examples.echo_server:nope", cwd=tmp_path)
    assert result.returncode == 1 and "examples.echo_server has no 'nope'" in result.stderr


def test_settings_effective_prints_what_would_run(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text("[server]\nbacklog = 100\n[master]\nworkers = 2\n")
    env = _env(TRIOSERVER_MASTER_WORKERS="4")
    result = run(
        "settings", "--effective", "-c", str(config), "--set", "server.handler_tasks=3",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "# Default: 4096\nbacklog = 100\n" in text
    assert "# Default: 0\nworkers = 4\n" in text
    assert "handler_tasks = 3\n" in text
    printed = tmp_path / "effective.toml"
    printed.write_text(text)
    again = load_config(printed, base=tmp_path)
    expected = load_config(config, ("server.handler_tasks=3",), base=tmp_path, environ=env)
    assert again.server == expected.server and again.master == expected.master
    # without --effective: the defaults, unchanged by the environment
    assert "workers = 0\n" in run("settings", env=env).stdout


def test_client_results_say_what_they_mean() -> None:
    from trioserver.cli import describe_result

    assert describe_result("login", 1) == (
        "rejected: wrong username or password (the server does not say which)"
    )
    assert describe_result("register", 1) == "rejected: the name is taken"
    assert describe_result("register", 4).startswith("rate_limited: too many attempts")
    assert describe_result("login", 0) == "ok: logged in"
    assert describe_result("login", 99) == "unknown result 99"

"""The pytest plugin as a user meets it: a clear message when its async fixtures cannot run.

Each case runs pytest in a fresh process on a one-test project of its own, as a user's
project would be (the plugin is loaded from the installed entry point).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_TEST = """
async def test_ping(trioserver_client):
    await trioserver_client.ping()
"""


def run_pytest(project: Path, ini: str, *options: str) -> str:
    (project / "pytest.ini").write_text(ini)
    (project / "test_user.py").write_text(USER_TEST)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *options],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


def test_without_pytest_trio_the_error_says_what_to_install(tmp_path: Path) -> None:
    out = run_pytest(tmp_path, "[pytest]\n", "-p", "no:trio")
    assert "1 error" in out
    assert "trioserver_server is an async fixture: it needs the pytest-trio plugin" in out
    assert "pip install 'trioserver[testing]'" in out
    assert "trio_mode = true" in out


def test_without_trio_mode_the_error_says_what_to_mark(tmp_path: Path) -> None:
    out = run_pytest(tmp_path, "[pytest]\n")
    assert "1 error" in out
    assert "test_ping uses trioserver_server, an async fixture that runs only in trio" in out
    assert "@pytest.mark.trio" in out


def test_with_trio_mode_the_fixtures_just_work(tmp_path: Path) -> None:
    out = run_pytest(tmp_path, "[pytest]\ntrio_mode = true\n")
    assert "1 passed" in out, out

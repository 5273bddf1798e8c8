"""The API reference builds from the docstrings with pdoc, without a single warning."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_api_docs.py"


@pytest.fixture
def pdoc_installed() -> None:
    if importlib.util.find_spec("pdoc") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but pdoc is not installed: pip install -e '.[docs]'")
        pytest.skip("pdoc is not installed (pip install -e '.[docs]')")


@pytest.mark.usefixtures("pdoc_installed")
def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    # The flat public face and the modules users build on are all there.
    for page in (
        "trioserver.html",
        "trioserver/framer.html",
        "trioserver/messages.html",
        "trioserver/config.html",
        "trioserver/testing.html",
        "trioserver/prefork/master.html",
    ):
        assert page in pages

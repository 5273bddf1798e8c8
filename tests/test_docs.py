"""The documentation that ships: its examples match the code, and it links only to what ships.

The protocol page's byte vectors are parsed out of the Markdown and checked against
the encoder, and the settings page is regenerated and compared, so neither can drift.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from trioserver import framer, messages
from trioserver.config import SECTIONS
from trioserver.settings_doc import COMMAND, settings_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROTOCOL = DOCS / "protocol.md"


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# -- the protocol page's vectors ---------------------------------------------------


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


#: The calls a ``vector:`` block may name, and the encoder each one checks.
ENCODERS: dict[str, Callable[..., bytes]] = {
    "ping": lambda: framer.PING,
    "packet": lambda code, body: framer.encode(code, _as_bytes(body)),
    "register": messages.encode_register,
    "login": messages.encode_login,
    "register_reply": lambda result, name: messages.encode_register_reply(result, _as_bytes(name)),
    "login_reply": lambda result, name: messages.encode_login_reply(result, _as_bytes(name)),
    "resume": lambda name, token: messages.encode_resume(name, bytes.fromhex(token)),
}

_BLOCK = re.compile(r"^```text\nvector: (?P<call>.+)\n(?P<hex>(?:.*\n)*?)```$", re.MULTILINE)


def _vectors(text: str) -> list[tuple[str, bytes]]:
    """Every ``vector:`` block: its call and its bytes (comments after ``#`` ignored)."""
    out = []
    for match in _BLOCK.finditer(text):
        digits = "".join(line.partition("#")[0] for line in match["hex"].splitlines())
        out.append((match["call"], bytes.fromhex(digits)))
    return out


def _encode(call: str) -> bytes:
    """Run a block's call, e.g. ``register("alice", "secret", 1)``, on the real encoder."""
    node = ast.parse(call, mode="eval").body
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name), call
    assert node.func.id in ENCODERS, f"{call}: unknown encoder (known: {sorted(ENCODERS)})"
    args: list[Any] = [ast.literal_eval(arg) for arg in node.args]
    return ENCODERS[node.func.id](*args)


def test_protocol_page_has_vectors_for_every_builtin_message() -> None:
    calls = {call.partition("(")[0] for call, _ in _vectors(_read(PROTOCOL))}
    assert calls >= {"ping", "register", "login", "register_reply", "login_reply", "resume"}


@pytest.mark.parametrize(("call", "expected"), _vectors(_read(PROTOCOL)))
def test_protocol_vector_matches_the_encoder(call: str, expected: bytes) -> None:
    assert _encode(call).hex(" ", 4) == expected.hex(" ", 4)


def test_protocol_vector_header_agrees_with_its_body() -> None:
    """Each vector is also a well-formed packet: pkgLen and CRC as the page says."""
    for call, packet in _vectors(_read(PROTOCOL)):
        length, _code, crc = framer.HEADER.unpack_from(packet)
        body = packet[framer.HEADER_SIZE :]
        assert length == len(packet), call
        assert crc == (zlib.crc32(body) if body else 0), call


def _crc_rows(text: str) -> list[tuple[str, bytes, int]]:
    section = text.partition("### The CRC")[2].partition("\n## ")[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[1].startswith("`"):
            continue
        body_text, crc_text = cells
        if m := re.fullmatch(r"ASCII `([^`]*)`", body_text):
            body = m[1].encode("ascii")
        elif m := re.fullmatch(r"(\d+) zero bytes", body_text):
            body = bytes(int(m[1]))
        else:
            raise AssertionError(f"the CRC table's body {body_text!r} is not understood")
        rows.append((body_text, body, int(crc_text.strip("`"), 16)))
    return rows


def test_protocol_crc_table_matches_crc32() -> None:
    rows = _crc_rows(_read(PROTOCOL))
    assert len(rows) >= 3
    for what, body, crc in rows:
        assert zlib.crc32(body) == crc, what
        # The encoder puts exactly that value in the header.
        assert framer.encode(7, body)[4:8] == crc.to_bytes(4, "big"), what


def test_a_wrong_vector_is_caught() -> None:
    """The parser really reads the bytes: one changed digit no longer matches."""
    block = "```text\nvector: ping()\n00080000 00000001   # wrong CRC\n```\n"
    ((call, got),) = _vectors(block)
    assert _encode(call) != got


# -- the settings page -------------------------------------------------------------


def test_settings_page_is_current() -> None:
    current = _read(DOCS / "settings.md") if (DOCS / "settings.md").exists() else ""
    assert current == settings_markdown(), (
        f"docs/settings.md is out of date with trioserver/config.py; run: {COMMAND}"
    )


def test_settings_page_names_every_setting() -> None:
    text = settings_markdown()
    for section, cls in SECTIONS.items():
        for field in attrs.fields(cls):
            assert f"### `{section}.{field.name}`" in text
            assert field.metadata["help"] in text
            assert field.metadata["why"] in text


# -- what ships links only to what ships -------------------------------------------

SHIPPED_PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", SHIPPED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_does_not_point_outside_the_repository(page: Path) -> None:
    text = _read(page)
    assert "../shared" not in text
    assert not re.search(r"\b(PROTOCOL|DESIGN|TARGETS|STYLE)\.md\b", text), (
        f"{page.name} names a team document that does not ship"
    )


@pytest.mark.parametrize("page", SHIPPED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_links_resolve(page: Path) -> None:
    for target in _LINK.findall(_read(page)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.partition("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
        assert ROOT in path.parents or path == ROOT, f"{target} is outside the repository"


# -- the testing page's examples run as written ----------------------------------------


def test_testing_page_examples_pass_as_a_users_tests(tmp_path: Path) -> None:
    """Each ``python`` block of docs/testing.md is a user's test file; pytest runs them all."""
    blocks = re.findall(r"^```python\n(.*?)^```$", _read(DOCS / "testing.md"), re.S | re.M)
    assert len(blocks) >= 4
    for i, block in enumerate(blocks):
        (tmp_path / f"test_example_{i}.py").write_text(block)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    tests = sum(len(re.findall(r"^async def test_", block, re.M)) for block in blocks)
    assert done.returncode == 0 and f"{tests} passed" in done.stdout, done.stdout + done.stderr


# -- the code's own comments and docstrings (they become the API reference) -------------

#: References a user cannot follow: issue numbers, and team documents that do not ship.
_UNSHIPPED = re.compile(r"\bissue[ -]\d+|\b(?:PROTOCOL|DESIGN|TARGETS|STYLE)\.md\b")


def _sources_with_unshipped_references() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "trioserver").rglob("*.py")
        if _UNSHIPPED.search(_read(path))
    }


def test_code_points_only_to_what_ships() -> None:
    offenders = _sources_with_unshipped_references()
    assert not offenders, f"cite docs/ or say why instead of issues and team notes: {offenders}"

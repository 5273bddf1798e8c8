"""Fixtures for the HTTP tests: a document root with a secret beside it, a fake clock,
request builders and a small response reader (httptools' response parser)."""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httptools
import pytest
import trio

from trioserver.config import Config
from trioserver.http import Request
from trioserver.testing import MemoryListener
from trioserver.worker import Worker

SECRET = b"TOP SECRET: outside the document root"
INDEX = b"<!doctype html><title>home</title>hello\n"
BIG_SIZE = 300 * 1024  # over the default cache_max_file_size: served from disk


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    """``tmp_path/www`` with a few files, and ``tmp_path/secret.txt`` outside it."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "index.html").write_bytes(SECRET)
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(INDEX)
    (root / "a.txt").write_bytes(b"0123456789abcdefghij")
    (root / "style.css").write_bytes(b"body{}")
    (root / "app.js").write_bytes(b"1;")
    (root / "noext").write_bytes(b"?")
    (root / "empty.txt").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"sub index")
    (root / "sub" / "page.html").write_bytes(b"sub page")
    (root / "nolist").mkdir()
    (root / "nolist" / "x.txt").write_bytes(b"x")
    (root / "big.bin").write_bytes(bytes(range(256)) * (BIG_SIZE // 256))
    (root / "a b.txt").write_bytes(b"space")
    (root / "%2e.txt").write_bytes(b"literal percent name")
    return root


@attrs.define
class FakeClock:
    """A wall clock the test moves by hand (``clock.now += 5``)."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def request(
    target: bytes = b"/",
    method: bytes = b"GET",
    headers: dict[bytes, bytes] | None = None,
    version: bytes = b"1.1",
    keep_alive: bool = True,
) -> Request:
    return Request(method, target, version, headers or {}, keep_alive)


def raw_request(
    target: str = "/",
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@attrs.define
class ParsedResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class ResponseReader:
    """Feeds bytes to httptools' response parser and collects whole responses."""

    def __init__(self) -> None:
        self.responses: list[ParsedResponse] = []
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def feed(self, data: bytes | bytearray) -> list[ParsedResponse]:
        self._parser.feed_data(data)
        return self.responses

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.responses.append(
            ParsedResponse(self._parser.get_status_code(), self._headers, b"".join(self._body))
        )


def parse_responses(data: bytes) -> list[ParsedResponse]:
    return ResponseReader().feed(data)


def rss_bytes() -> int:
    """This process's resident set size, from /proc."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def download(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET ``path`` over a real connection: the status and the SHA-256 of the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        digest = hashlib.sha256()
        while chunk := response.read(1 << 20):
            digest.update(chunk)
        return response.status, digest.hexdigest()
    finally:
        conn.close()


@asynccontextmanager
async def memory_worker(
    config: Config,
) -> AsyncIterator[tuple[Worker, MemoryListener, MemoryListener]]:
    """A real worker serving ``config`` on two memory listeners (binary, HTTP); stopped
    at once on exit."""
    binary, http = MemoryListener(), MemoryListener()
    worker = Worker(config, listeners=[binary], http_listeners=[http])
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        yield worker, binary, http
        worker.stop(grace=0)


async def read_to_eof(stream: trio.abc.Stream) -> bytes:
    """Everything ``stream`` delivers until the server closes it."""
    received = bytearray()
    while chunk := await stream.receive_some(65536):
        received += chunk
    return bytes(received)

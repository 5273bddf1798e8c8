"""The chat page (/chat.html, over /trioserver.js and WebSocket) in two headless Chromium pages.

A real ``python -m trioserver serve --app examples.chat:router``; two pages log in and
chat with each other and with a TCP client in the same room. Every message must arrive
everywhere, or the test fails. Screenshots of both pages are kept under the test's tmp
directory (their paths are printed). Without the chat app, the page says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples import chat
from trioserver.client import BlockingClient
from trioserver.framer import Packet

from ..browser import chromium
from ..processes import free_port, running_server

TIMEOUT_MS = 15_000


def start_server(tmp_path: Path, *app: str) -> Iterator[tuple[int, int]]:
    """One worker under its master; (binary port, HTTP port)."""
    port, http = free_port(), free_port()
    args = [
        *app, "--listen", f"127.0.0.1:{port}",
        "--set", f'http.listen=["127.0.0.1:{http}"]', "--set", 'accounts.url="memory:"',
        "--set", "connection.flood_check=false",
    ]  # fmt: skip
    with running_server(tmp_path, args, workers=1):
        yield port, http


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    yield from start_server(tmp_path, "--app", "examples.chat:router")


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    yield from start_server(tmp_path)


def open_chat(browser: Any, http: int, errors: list[str]) -> Any:
    page = browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{http}/chat.html")
    return page


def enter(page: Any, user: str) -> None:
    page.wait_for_selector('body[data-state="ready"]', timeout=TIMEOUT_MS)
    page.fill('#login input[name="user"]', user)
    page.fill('#login input[name="password"]', f"{user}-secret")
    page.fill('#login input[name="room"]', "lobby")
    page.click("#login button")
    page.wait_for_selector('body[data-state="joined"]', timeout=TIMEOUT_MS)


def say(page: Any, text: str) -> None:
    page.fill('#say input[name="text"]', text)
    page.click("#say button")


def heard(page: Any, sender: str, text: str) -> None:
    """Fails unless ``page`` shows ``text`` from ``sender`` in time."""
    page.wait_for_selector(
        f'#log li[data-sender="{sender}"][data-text="{text}"]', timeout=TIMEOUT_MS
    )


def receive(client: BlockingClient, expected: Packet) -> None:
    """The TCP client's next packet is ``expected`` (it sends nothing else meanwhile)."""
    assert client.receive_packet() == expected


def test_two_browsers_and_a_tcp_client_chat_in_one_room(
    chat_server: tuple[int, int], tmp_path: Path
) -> None:
    port, http = chat_server
    errors: list[str] = []
    with chromium(tmp_path / "chromium-profile", width=1000, height=700) as browser:
        alice = open_chat(browser, http, errors)
        bob = open_chat(browser, http, errors)
        enter(alice, "alice")
        enter(bob, "bob")
        with BlockingClient.connect("127.0.0.1", port) as carol:
            carol.sock.settimeout(15)
            carol.register("carol", "pw")
            assert carol.login("carol", "pw").result == 0
            assert carol.request(chat.JOIN, b"lobby") == Packet(chat.JOIN, b"\0")

            say(alice, "hello from alice")
            heard(bob, "alice", "hello from alice")
            heard(alice, "alice", "hello from alice")  # the sender hears it too
            receive(carol, Packet(chat.HEARD, b"lobby\0alice\0hello from alice"))

            say(bob, "hi alice, bob here")
            heard(alice, "bob", "hi alice, bob here")
            receive(carol, Packet(chat.HEARD, b"lobby\0bob\0hi alice, bob here"))

            carol.send(chat.SAY, "lobby\0carol on TCP says héllo".encode())
            for page in (alice, bob):
                heard(page, "carol", "carol on TCP says héllo")
            receive(carol, Packet(chat.HEARD, "lobby\0carol\0carol on TCP says héllo".encode()))

            say(bob, "/tell alice just you")
            heard(alice, "bob (privately)", "just you")

            # Who is there: the list shows all three (it refreshes on every message).
            alice.wait_for_function(
                """() => [...document.querySelectorAll('#who li')].map(li => li.textContent)
                    .join(',') === 'alice,bob,carol'""",
                timeout=TIMEOUT_MS,
            )
            for name, page in (("alice", alice), ("bob", bob)):
                shot = tmp_path / f"chat-{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"chat screenshot: {shot}")
                assert shot.stat().st_size > 10_000
    assert errors == []


def test_the_page_says_when_the_server_runs_no_chat(
    plain_server: tuple[int, int], tmp_path: Path
) -> None:
    _, http = plain_server
    errors: list[str] = []
    with chromium(tmp_path / "chromium-profile", width=1000, height=500) as browser:
        page = open_chat(browser, http, errors)
        page.wait_for_selector('body[data-state="no-chat"]', timeout=TIMEOUT_MS)
        assert "does not run the chat example" in page.inner_text("#status")
        assert "--app examples.chat:router" in page.inner_text("#status")
        # The client itself works: the built-in ping is served by every router.
        rtt = page.evaluate(
            """async () => {
                const { TrioClient } = await import('/trioserver.js');
                const client = new TrioClient({ reconnect: false });
                await new Promise(resolve => { client.on('open', resolve); client.connect(); });
                const ms = await client.ping();
                client.close();
                return ms;
            }"""
        )
        assert rtt >= 0
    assert errors == []

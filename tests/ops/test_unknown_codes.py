"""Packets of msgCodes nobody serves are counted in one series, whatever codes clients send."""

from __future__ import annotations

import struct

import pytest

from trioserver.framer import encode
from trioserver.handlers import default_router
from trioserver.nursery_pool import PoolStatistics
from trioserver.ops.metrics import Gatherer
from trioserver.stats import UNKNOWN_CODE, Counters
from trioserver.testing import memory_config, serve_in_memory

parser = pytest.importorskip("prometheus_client.parser")

SERVED = frozenset(route.code for route in default_router())
UNSERVED = [code for code in range(1000, 70000) if code not in SERVED and code < 65536]


def garbage(code: int) -> bytes:
    """A header naming ``code`` whose body does not match its CRC."""
    packet = bytearray(encode(code, b"x"))
    packet[4:8] = struct.pack(">I", 0xDEADBEEF)
    return bytes(packet)


async def send_unknown(codes: list[int], *, fold: bool = True) -> dict[int, int]:
    config = memory_config(connection__flood_check=False, connection__heartbeat=False)
    async with serve_in_memory(config) as server:
        server.worker.counters.serve_codes(SERVED, fold=fold)
        client = await server.connect()
        await client.send_raw(b"".join(encode(code) + garbage(code + 20_000) for code in codes))
        await client.ping()  # answered after every packet before it was counted
        return dict(server.worker.statistics().packets_by_code)


async def test_unknown_and_garbage_codes_share_one_series() -> None:
    by_code = await send_unknown(UNSERVED[:500])
    assert by_code == {0: 1, UNKNOWN_CODE: 1000}


async def test_folding_is_a_setting() -> None:
    by_code = await send_unknown(UNSERVED[:5], fold=False)
    assert len(by_code) == 11  # ping and ten codes of their own


def page_after(codes: int) -> str:
    counters = Counters()
    counters.serve_codes(SERVED)
    counters.packets_by_code[0] += 7
    for code in UNSERVED[:codes]:
        counters.packets_by_code[code] += 1  # counted by the reader before any check
    pool = PoolStatistics(100, 0, 0, 100, 0, 0)
    gatherer = Gatherer(wall_clock=0.0)
    gatherer.started(10, 1, 0)
    stats = counters.snapshot(pool, 0, 1024, inbox_packets=0, outbox_replies=0, outbox_bytes=0)
    gatherer.report(10, stats.to_json())
    return gatherer.render()


def test_the_page_does_not_grow_per_unknown_code() -> None:
    small, large = page_after(10), page_after(60_000)
    assert len(large) == len(small) + len("60000") - len("10")
    samples = {
        (s.labels["code"], s.value)
        for family in parser.text_string_to_metric_families(large)
        for s in family.samples
        if s.name == "trioserver_packets_total"
    }
    assert samples == {("0", 7), ("unknown", 60_000)}

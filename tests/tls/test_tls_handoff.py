"""A reload's handoff leaves TLS connections with the old worker (counted), which drains them."""

from __future__ import annotations

import sys

import pytest
import trio

from trioserver.client import Client, ConnectionClosed, client_tls_context
from trioserver.config import Address
from trioserver.handoff_channel import channel_pair
from trioserver.worker import Worker

from .conftest import Pki

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCM_RIGHTS")

LOOPBACK = (Address("127.0.0.1", 0),)


async def test_tls_connections_are_counted_as_kept_and_drained(pki: Pki) -> None:
    config = pki.config(server__listen=LOOPBACK, server__tls_listen=LOOPBACK, http__listen=())
    old = Worker(config, instance="t")
    new = Worker(config, index=1, instance="t")
    async with trio.open_nursery() as nursery:
        await nursery.start(old.serve)
        await nursery.start(new.serve)
        context = client_tls_context(cafile=pki.ca_file)
        tls = await Client.connect("127.0.0.1", old.tls_addresses[0][1], tls=context)
        plain = await Client.connect("127.0.0.1", old.addresses[0][1])
        async with tls, plain:
            await tls.ping()
            await plain.ping()
            old_end, new_end = channel_pair()
            nursery.start_soon(new.adopt_from, new_end)
            with old_end:
                counts = await old.hand_over(old_end)
            assert (counts.moved, dict(counts.kept), counts.failed) == (1, {"tls": 1}, 0)
            assert old.statistics().handoff_kept_by_reason == {"tls": 1}
            await plain.ping()  # the new worker answers
            with pytest.raises(ConnectionClosed):
                await tls.ping()  # drained: TLS's close, after every reply it was owed
        await old.wait_stopped()
        new_end.close()
        new.stop(grace=0)

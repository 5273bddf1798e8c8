"""A trioserver with one application message: code 100 echoes its body in upper case.

Run it with ``python examples/echo_server.py`` and talk to it with
``python examples/echo_server.py --client``.
"""

from __future__ import annotations

import sys

import trio

import trioserver
from trioserver import Context, Packet

ECHO = 100

router = trioserver.default_router()


@router.route(ECHO)
async def shout(ctx: Context, packet: Packet) -> None:
    """Reply to code 100 with the body in upper case (async handlers may await)."""
    ctx.reply(ECHO, packet.body.upper())


def main() -> None:
    config = trioserver.load_config(overrides=('server.listen=["127.0.0.1:10007"]',))
    if "--client" in sys.argv:
        with trioserver.BlockingClient.connect("127.0.0.1", 10007) as client:
            print(client.request(ECHO, b"hello").body)  # b'HELLO'
        return
    worker = trioserver.Worker(config, router)
    print("echo server on 127.0.0.1:10007; try: python examples/echo_server.py --client")
    trio.run(trioserver.serve_until_signalled, worker)


if __name__ == "__main__":
    main()

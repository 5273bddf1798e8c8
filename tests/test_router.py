"""The router on its own: message code → route, and what it refuses to register."""

from __future__ import annotations

import pytest

from trioserver.framer import Packet
from trioserver.handlers import Context, default_router
from trioserver.handlers.router import Route, Router
from trioserver.messages import LOGIN_BODY_SIZE, REGISTER_BODY_SIZE, RESUME_BODY_SIZE


def plain(ctx: Context, packet: Packet) -> None:
    pass


async def waiting(ctx: Context, packet: Packet) -> None:
    pass


def test_add_makes_a_route_and_tells_plain_from_async_handlers() -> None:
    router = Router()
    route = router.add(100, plain)
    assert route == Route(code=100, handler=plain, body_size=None, is_async=False, name="plain")
    other = router.add(101, waiting, body_size=4, name="lookup")
    assert (other.is_async, other.body_size, other.name) == (True, 4, "lookup")
    assert router.get(100) is route and router.get(101) is other
    assert router.routes == {100: route, 101: other}
    assert 100 in router and 102 not in router and router.get(102) is None


def test_the_default_name_is_the_handlers_qualified_name() -> None:
    class Handlers:
        def echo(self, ctx: Context, packet: Packet) -> None:
            pass

    route = Router().add(100, Handlers().echo)
    assert (
        route.name == "test_the_default_name_is_the_handlers_qualified_name.<locals>.Handlers.echo"
    )


def test_the_route_decorator_registers_and_returns_the_handler() -> None:
    router = Router()

    @router.route(100, body_size=8)
    async def lookup(ctx: Context, packet: Packet) -> None:
        pass

    route = router.get(100)
    assert route is not None
    assert (route.handler, route.body_size, route.is_async) == (lookup, 8, True)


def test_a_served_code_is_replaced_only_when_asked() -> None:
    router = Router()
    first = router.add(100, plain)
    with pytest.raises(ValueError, match="already served by plain; pass replace=True"):
        router.add(100, waiting)
    assert router.get(100) is first  # a refused registration changes nothing
    second = router.add(100, waiting, replace=True)
    assert router.get(100) is second
    router.route(100, replace=True)(plain)
    assert router.get(100) == first


def test_a_built_in_code_can_be_served_by_another_handler() -> None:
    router = default_router()
    with pytest.raises(ValueError, match="already served by ping"):
        router.add(0, plain)
    router.add(0, plain, replace=True)
    route = router.get(0)
    assert route is not None and route.handler is plain and route.body_size is None


@pytest.mark.parametrize("code", [2, 3, 4])
def test_reserved_codes_take_no_handler(code: int) -> None:
    router = Router()
    with pytest.raises(ValueError, match=f"message code {code} is reserved"):
        router.add(code, plain)
    with pytest.raises(ValueError, match="reserved"):
        router.add(code, plain, replace=True)
    assert code not in router


@pytest.mark.parametrize("code", [0, 1, 5, 6, 7, 0xFFFF])
def test_every_other_code_in_range_is_accepted(code: int) -> None:
    assert Router().add(code, plain).code == code


@pytest.mark.parametrize("code", [-1, 0x10000, 70000, True, 7.0, "7", None])
def test_codes_outside_0_to_65535_or_not_ints_are_refused(code: object) -> None:
    with pytest.raises(
        ValueError, match=r"int in 0\.\.65535, got " + repr(code).replace(".", r"\.")
    ):
        Router().add(code, plain)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, 0xFFFF - 8])
def test_body_sizes_that_fit_a_packet_are_accepted(size: int) -> None:
    assert Router().add(100, plain, body_size=size).body_size == size


@pytest.mark.parametrize("size", [-1, 0xFFFF - 7, 1 << 20])
def test_body_sizes_that_cannot_fit_a_packet_are_refused(size: int) -> None:
    router = Router()
    with pytest.raises(ValueError, match=f"body_size {size!r} cannot fit a packet"):
        router.add(100, plain, body_size=size)
    assert 100 not in router


def test_a_handler_must_be_callable() -> None:
    with pytest.raises(TypeError, match="handler for code 10 must be callable, got 'nope'"):
        Router().add(10, "nope")  # type: ignore[arg-type]


def test_iteration_is_in_code_order_whatever_the_order_of_registration() -> None:
    router = Router()
    for code in (300, 7, 65535, 0, 100):
        router.add(code, plain)
    assert [route.code for route in router] == [0, 7, 100, 300, 65535]


def test_the_default_router_serves_ping_resume_register_and_login_with_their_sizes() -> None:
    routes = [(r.code, r.name, r.body_size, r.is_async) for r in default_router()]
    assert routes == [
        (0, "ping", 0, False),
        (1, "resume", RESUME_BODY_SIZE, True),
        (5, "register", REGISTER_BODY_SIZE, True),
        (6, "login", LOGIN_BODY_SIZE, True),
    ]


def test_router_rejects_bad_registrations() -> None:
    router = default_router()
    with pytest.raises(ValueError, match="reserved"):
        router.add(3, lambda c, p: None)
    with pytest.raises(ValueError, match="already served"):
        router.add(0, lambda c, p: None)
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        router.add(70000, lambda c, p: None)
    with pytest.raises(TypeError, match="callable"):
        router.add(10, "not a function")  # type: ignore[arg-type]
    router.add(0, lambda c, p: None, replace=True)

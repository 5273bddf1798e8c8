"""A bot swarm: N simulated clients, each running your script against the worker.

::

    async def script(bot: Bot) -> None:
        await bot.sleep(bot.random.uniform(0, 20))       # spread the bots out
        await bot.register()
        await bot.login()
        while True:
            await bot.ping()
            await bot.sleep(20)

    report = await run_swarm(server, script, bots=1000, duration=600,
                             faults=FaultPlan.random(seed=7))
    report.outcomes()          # {'running': 941, 'closed': 38, 'reset': 21}

Each bot's report holds only what depends on its own timeline (its faults, what
it sent and got, when, and how it ended), in virtual seconds since the swarm
started, rounded to the microsecond; so the same seed gives an equal report on
every run, whatever order trio's scheduler picks among tasks ready at one instant.
"""

from __future__ import annotations

import collections
import enum
import random
from collections.abc import Awaitable, Callable, Collection, Mapping

import attrs
import trio
import trio.testing

from ..client import Client, ConnectionClosed
from ..framer import PING, Packet, encode
from ..messages import (
    MessageCode,
    decode_login_reply,
    decode_register_reply,
    encode_login,
    encode_register,
)
from ..stats import WorkerStatistics
from ._faults import Fault, FaultPlan
from ._network import LinkEnd, wait_until
from ._server import InMemoryServer

__all__ = ["Bot", "BotEvent", "BotReport", "Outcome", "Script", "SwarmReport", "run_swarm"]


class Outcome(enum.StrEnum):
    """How a bot's run ended."""

    FINISHED = "finished"  #: the script returned
    RUNNING = "running"  #: still running when the swarm's time was up
    CLOSED = "closed"  #: the server closed the connection (a kick, a refusal, a drain)
    RESET = "reset"  #: the connection was reset (a ``Reset`` fault)
    HALF_CLOSED = "half_closed"  #: the script sent after its own ``HalfClose``
    ERROR = "error"  #: the script raised anything else (see ``BotReport.error``)


@attrs.frozen
class BotEvent:
    """One packet a bot sent or received, at a virtual time since the swarm started."""

    at: float
    kind: str  #: "sent", "reply" or "push" (a code the swarm was told is pushed)
    code: int


@attrs.frozen
class BotReport:
    """What one bot saw."""

    index: int
    peer: str
    faults: tuple[Fault, ...]
    outcome: Outcome
    #: When the script ended (virtual seconds since the swarm started); the duration if running.
    ended_at: float
    sent: int
    replies: Mapping[int, int]  #: packets received, by message code (pushes too)
    error: str | None
    events: tuple[BotEvent, ...]
    #: Pushes received (packets of the swarm's ``push_codes``), by message code.
    pushes: Mapping[int, int] = attrs.field(factory=dict)


@attrs.frozen
class SwarmReport:
    """Every bot's report, and the worker's statistics when the time was up."""

    seed: int
    duration: float
    bots: tuple[BotReport, ...]
    statistics: WorkerStatistics

    def outcomes(self) -> dict[str, int]:
        """How many bots ended each way, e.g. ``{"running": 990, "reset": 10}``."""
        return dict(sorted(collections.Counter(bot.outcome.value for bot in self.bots).items()))

    def with_outcome(self, outcome: Outcome) -> list[BotReport]:
        return [bot for bot in self.bots if bot.outcome is outcome]


Script = Callable[["Bot"], Awaitable[None]]


def _peer(index: int) -> str:
    # One address per bot: per-address limits (registrations, failed logins)
    # must not make bots depend on each other.
    return f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}:{40000 + index % 20000}"


class Bot:
    """One simulated client, as a script sees it.

    ``name`` and ``password`` are this bot's credentials (``bot<index>``), ``random``
    a random stream seeded from the swarm's seed and the bot's index, ``client``
    the underlying :class:`~trioserver.client.Client` for anything else.
    """

    def __init__(
        self,
        index: int,
        seed: int,
        faults: tuple[Fault, ...],
        start: float,
        keep_events: bool,
        push_codes: frozenset[int] = frozenset(),
    ) -> None:
        self.index = index
        self.name = f"bot{index}"
        self.password = f"secret-{index}"
        self.peer = _peer(index)
        self.faults = faults
        self.random = random.Random(f"trioserver-bot:{seed}:{index}")
        self._start = start
        self._keep = keep_events
        # Events as three flat lists of floats, strs and ints, turned into BotEvents
        # only for the report: a swarm records tens of thousands, and an object each
        # would be paid for again by every garbage collection while the swarm runs.
        self._event_at: list[float] = []
        self._event_kind: list[str] = []
        self._event_code: list[int] = []
        self._send_nowait: Callable[[bytes], int] | None = None
        self._clock = trio.lowlevel.current_clock().current_time  # trio.current_time, less a call
        self._replied_at = start
        self._sent = 0
        self._replies: collections.Counter[int] = collections.Counter()
        self._client: Client | None = None
        self._push_codes = push_codes
        self._pushes: collections.Counter[int] = collections.Counter()
        #: Packets received while ``receive(code)`` waited for another code, oldest first.
        self._held: collections.deque[Packet] = collections.deque()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError(f"bot {self.index} is not connected yet")
        return self._client

    def _connected(self, client: Client) -> None:
        self._client = client
        self._send_nowait = getattr(client.stream, "send_nowait", None)

    @property
    def now(self) -> float:
        """Virtual seconds since the swarm started."""
        return round(self._clock() - self._start, 6)

    async def sleep(self, seconds: float) -> None:
        """``trio.sleep(seconds)``, cheaper: the wake-up is no ``Cancelled`` through the frames."""
        if not seconds > 0:  # 0 (a checkpoint), or trio's error for < 0 and NaN
            await trio.sleep(seconds)
            return
        await wait_until(self._clock() + seconds)

    async def send(self, code: int, body: bytes = b"") -> None:
        """Send one packet without waiting for a reply."""
        await self._send_raw(encode(code, body), code)

    async def receive(self, code: int | None = None) -> Packet:
        """The next packet from the server (``ConnectionClosed`` once it closed).

        With ``code``, the next packet of that code: the ones of other codes that
        arrive first (pushes between a request and its reply) are held, in order,
        for the next calls.
        """
        held = self._held
        for i, packet in enumerate(held):
            if code is None or packet.code == code:
                del held[i]
                return packet
        while True:
            packet = await self.client.receive_packet()
            self._replied_at = now = self._clock()
            self._replies[packet.code] += 1
            if packet.code in self._push_codes:
                self._pushes[packet.code] += 1
                if self._keep:
                    self._record(now, "push", packet.code)
            elif self._keep:
                self._record(now, "reply", packet.code)
            if code is None or packet.code == code:
                return packet
            held.append(packet)

    def held(self) -> list[Packet]:
        """The packets received but not yet returned by :meth:`receive` (and forget them)."""
        packets = list(self._held)
        self._held.clear()
        return packets

    async def request(self, code: int, body: bytes = b"", *, reply: int | None = None) -> Packet:
        """Send one packet and return the next one received (of code ``reply``, if given:
        pushes that come first are held for :meth:`receive`)."""
        await self.send(code, body)
        return await self.receive(reply)

    async def ping(self) -> float:
        """One heartbeat; returns its round trip in virtual seconds."""
        start = self._clock()
        await self._send_request(PING, MessageCode.PING, start)
        self._expect(await self.receive(MessageCode.PING), MessageCode.PING)
        return self._replied_at - start

    async def register(self, name: str | None = None, password: str | None = None) -> int:
        """Register (by default as this bot); returns the result code (0 is OK)."""
        data = encode_register(name or self.name, password or self.password)
        await self._send_request(data, MessageCode.REGISTER, self._clock())
        return decode_register_reply(
            self._expect(await self.receive(MessageCode.REGISTER), MessageCode.REGISTER)
        ).result

    async def login(self, name: str | None = None, password: str | None = None) -> int:
        """Log in (by default as this bot); returns the result code (0 is OK)."""
        data = encode_login(name or self.name, password or self.password)
        await self._send_request(data, MessageCode.LOGIN, self._clock())
        reply = await self.receive(MessageCode.LOGIN)
        return decode_login_reply(self._expect(reply, MessageCode.LOGIN)).result

    async def _send_raw(self, data: bytes, code: int) -> None:
        await self.client.stream.send_all(data)
        self._count_sent(self._clock(), code)

    async def _send_request(self, data: bytes, code: int, now: float) -> None:
        """Send a request whose reply is read next: without a checkpoint if the wire
        takes it all at once, as the read that follows is one (a swarm then takes
        one scheduler pass less per round trip)."""
        send_nowait = self._send_nowait
        sent = 0 if send_nowait is None else send_nowait(data)
        if sent < len(data):
            await self.client.stream.send_all(data[sent:])
        self._count_sent(now, code)

    def _count_sent(self, at: float, code: int) -> None:
        self._sent += 1
        if self._keep:
            self._record(at, "sent", code)

    def _record(self, at: float, kind: str, code: int) -> None:
        self._event_at.append(at)
        self._event_kind.append(kind)
        self._event_code.append(code)

    @staticmethod
    def _expect(packet: Packet, code: int) -> bytes:
        if packet.code != code:
            raise AssertionError(f"expected a reply with msgCode {code}, got {packet.code}")
        return packet.body

    def _report(self, outcome: Outcome, ended_at: float, error: str | None) -> BotReport:
        return BotReport(
            index=self.index,
            peer=self.peer,
            faults=self.faults,
            outcome=outcome,
            ended_at=ended_at,
            sent=self._sent,
            replies=dict(sorted(self._replies.items())),
            error=error,
            pushes=dict(sorted(self._pushes.items())),
            events=tuple(
                BotEvent(round(at - self._start, 6), kind, code)
                for at, kind, code in zip(
                    self._event_at, self._event_kind, self._event_code, strict=True
                )
            ),
        )


def _classify(exc: Exception, stream: trio.abc.Stream | None) -> tuple[Outcome, str | None]:
    was_reset = isinstance(stream, LinkEnd) and stream.was_reset
    if isinstance(exc, ConnectionClosed | trio.BrokenResourceError):
        return (Outcome.RESET if was_reset else Outcome.CLOSED), None
    half_closed = isinstance(stream, LinkEnd) and stream.half_closed
    if isinstance(exc, trio.ClosedResourceError) and half_closed:
        return Outcome.HALF_CLOSED, None
    return Outcome.ERROR, repr(exc)


async def run_swarm(
    server: InMemoryServer,
    script: Script,
    *,
    bots: int,
    duration: float,
    faults: FaultPlan | None = None,
    ramp_up: float = 0.0,
    keep_events: bool = True,
    push_codes: Collection[int] = (),
) -> SwarmReport:
    """Run ``bots`` copies of ``script`` against ``server`` for ``duration`` virtual seconds.

    Bot ``i`` connects at ``ramp_up * i / bots`` with the faults ``faults`` plans
    for key ``i``, then runs ``script(bot)``. At ``duration`` every script still
    running is cancelled, and the worker's statistics are taken once it settled.
    Packets with a code in ``push_codes`` are recorded as pushes (kind ``"push"``,
    ``BotReport.pushes``) rather than replies.
    """
    if bots < 0:
        raise ValueError(f"bots must be >= 0, got {bots!r}")
    if not duration >= 0:
        raise ValueError(f"duration must be >= 0, got {duration!r}")
    if not ramp_up >= 0:
        raise ValueError(f"ramp_up must be >= 0, got {ramp_up!r}")
    plan = faults if faults is not None else FaultPlan()
    start = trio.current_time()
    end = start + duration
    pushed = frozenset(push_codes)
    crew = [Bot(i, plan.seed, plan.faults_for(i), start, keep_events, pushed) for i in range(bots)]
    reports: dict[int, BotReport] = {}

    async def run_one(bot: Bot) -> None:
        if ramp_up:
            await wait_until(start + ramp_up * bot.index / max(bots, 1))
        stream = await server.listener.connect(
            peer=bot.peer, faults=bot.faults, seed=plan.seed, key=bot.index
        )
        bot._connected(Client(stream))
        try:
            await script(bot)
        except Exception as exc:
            outcome, error = _classify(exc, stream)
            reports[bot.index] = bot._report(outcome, bot.now, error)
        else:
            reports[bot.index] = bot._report(Outcome.FINISHED, bot.now, None)

    with trio.move_on_at(end):
        async with trio.open_nursery() as nursery:
            for bot in crew:
                nursery.start_soon(run_one, bot)
        await trio.sleep_until(end)
    # Let the worker finish what this instant brought before taking its statistics.
    await trio.testing.wait_all_tasks_blocked()
    statistics = server.worker.statistics()
    for bot in crew:
        if bot._client is None:
            continue
        stream = bot._client.stream
        if isinstance(stream, LinkEnd):
            stream.close()  # no checkpoint each: a thousand Cancelled raised for nothing
        else:
            await trio.aclose_forcefully(stream)
    await trio.lowlevel.checkpoint()
    ran = round(end - start, 6)
    return SwarmReport(
        seed=plan.seed,
        duration=duration,
        bots=tuple(
            reports.get(bot.index) or bot._report(Outcome.RUNNING, ran, None) for bot in crew
        ),
        statistics=statistics,
    )

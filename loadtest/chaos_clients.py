"""The chaos run's browsers: users whose sockets come and go on random push nodes, planned from the seed.

Each user is granted a few topics in their token (``news``, ``sport``, ``room:*``), subscribes to some, and now and
then also asks for one it was not granted (``vip``: refused). A quarter of the users stay offline until the settle
phase, so their messages wait in their inboxes; the others hold 1-2 sockets (tabs), each open a few seconds, then
closed and opened again elsewhere. A tab remembers each topic's last position (and the broadcasts', ``*``) and its
next socket subscribes with ``recover`` from there, as the browser client does. A socket acks most frames (which ones is a hash of the seed, socket and message id, so
a seed replays the same choices), and some read slowly. A socket the server closes is opened again on the next node.
Every frame is recorded with the client's wall time (``chaos_check.SocketRecord``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from loadtest.chaos_check import BROADCAST, Arrival, Observations, SocketRecord
from tests.client import ClusterClient, next_frame

GRANTS = ("news", "sport", "room:*")
ROOMS = ("room:1", "room:2", "room:3")
FORBIDDEN = "vip"  # never granted
RETRY_CONNECT_S = 0.3


@dataclass(frozen=True, slots=True)
class UserPlan:
    name: str
    grants: tuple[str, ...]
    topics: tuple[str, ...]  # asked for on each socket (granted ones, sometimes also FORBIDDEN)
    offline: bool  # no socket before the settle phase


@dataclass(frozen=True, slots=True)
class SocketPlan:
    id: str
    user: UserPlan
    start: float  # s after the run's start
    stop: float
    node: int  # index of the first push node tried
    slow: bool
    ack_percent: int
    tab: str  # the sockets of one tab share their topics' positions
    bundles: bool = False  # asks for bundles (several topic frames in one websocket frame)


def plan_users(rng: random.Random, run: str) -> list[UserPlan]:
    users = []
    for i in range(rng.randint(40, 60)):
        grants = tuple(rng.sample(GRANTS, rng.randint(0, 3)))
        topics = [t for g in grants for t in ([rng.choice(ROOMS)] if g == "room:*" else [g])]
        if rng.random() < 0.15:
            topics.append(FORBIDDEN)
        users.append(UserPlan(f"{run}-u{i}", grants, tuple(topics), rng.random() < 0.25))
    return users


def plan_sockets(rng: random.Random, users: list[UserPlan], seconds: float, nodes: int) -> list[SocketPlan]:
    """Each online user's 1-2 slots, each a chain of sockets open 2-8 s with 0.3-3 s between them; half the slots (by
    their name, leaving the seed's draws as they were) ask for bundles."""
    plans: list[SocketPlan] = []
    for user in users:
        if user.offline:
            continue
        for slot in range(rng.randint(1, 2)):
            at = rng.uniform(0, 2)
            while at < seconds:
                hold = rng.uniform(2, 8)
                plans.append(SocketPlan(f"{user.name}.{slot}.{len(plans)}", user, at, min(seconds, at + hold),
                                        rng.randrange(nodes), rng.random() < 0.1, rng.choice((80, 90, 100)),
                                        f"{user.name}.{slot}", chosen(0, user.name, str(slot), percent=50)))
                at += hold + rng.uniform(0.3, 3)
    return plans


def chosen(seed: int, *parts: str, percent: int) -> bool:
    """A decision that depends only on the seed and ``parts``: whether a socket acks a message, say."""
    digest = hashlib.blake2b(":".join((str(seed), *parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest) % 100 < percent


class Clients:
    """Runs socket plans against the stack's push nodes, recording into ``obs``; ``end_now`` closes every socket."""

    def __init__(self, client: ClusterClient, obs: Observations, seed: int, started: float) -> None:
        self.client = client
        self.obs = obs
        self.seed = seed
        self.started = started  # wall clock of second 0
        self.ended = False
        self._open: set[ClientConnection] = set()
        self._ending: set[ClientConnection] = set()  # closed by the client: its plan's stop time, or ``end_now``
        self._closes: set[asyncio.Task[None]] = set()
        self._positions: dict[str, dict[str, tuple[int, str]]] = {}  # tab -> topic -> its last (offset, epoch)

    def end_now(self) -> None:
        """Close every socket, and open no other."""
        self.ended = True
        for ws in list(self._open):
            self._end(ws)

    def _end(self, ws: ClientConnection) -> None:
        """The client closes ``ws`` (a close handshake of at most ``close_timeout``): its reader sees the socket closed.
        A close, not a cancellation, ends a socket's hold: on Python 3.11 a cancellation that lands inside the
        websockets client's own timeouts can be turned into their ``TimeoutError`` and lost, leaving a reader that
        never returns."""
        if ws in self._ending:
            return
        self._ending.add(ws)
        task = asyncio.create_task(ws.close())
        self._closes.add(task)
        task.add_done_callback(self._closes.discard)

    async def run(self, plans: list[SocketPlan], settle: bool = False) -> None:
        async with asyncio.TaskGroup() as group:
            for plan in sorted(plans, key=lambda p: p.start):
                await asyncio.sleep(max(0.0, self.started + plan.start - time.time()))
                group.create_task(self.keep(plan, settle))

    async def keep(self, plan: SocketPlan, settle: bool) -> None:
        """Hold the plan's socket until its stop time, opening it again (on the next node) whenever it is refused or the
        server closes it."""
        loop = asyncio.get_running_loop()
        stop_at = self.started + plan.stop
        ports = self.client.stack.push_ports
        attempt = 0
        while not self.ended and time.time() < stop_at:
            node = (plan.node + attempt) % len(ports)
            record = SocketRecord(f"{plan.id}.{attempt}", plan.user.name, ports[node], settle, plan.slow)
            attempt += 1
            try:
                ws = await self.client.open(await self.client.token(plan.user.name, topics=list(plan.user.grants)), node,
                                            bundles=plan.bundles)
            except (OSError, TimeoutError, InvalidHandshake, aiohttp.ClientError):
                await asyncio.sleep(RETRY_CONNECT_S)
                continue
            ws.close_timeout = 1
            self.obs.sockets.append(record)
            self._open.add(ws)
            stop = loop.call_later(0 if self.ended else max(0.0, stop_at - time.time()), self._end, ws)
            try:
                await self.read(ws, record, plan)
            except (ConnectionClosed, TimeoutError):  # closed, or no welcome in time
                pass
            finally:
                stop.cancel()
                record.closed_at = time.time()
                record.server_closed = ws not in self._ending
                self._open.discard(ws)
                self._ending.discard(ws)
                await ws.close()
            await asyncio.sleep(RETRY_CONNECT_S)

    async def read(self, ws: ClientConnection, record: SocketRecord, plan: SocketPlan) -> None:
        welcome = await next_frame(ws)
        if welcome.get("type") != "welcome":
            raise ConnectionClosed(None, None)
        record.opened_at = time.time()
        positions = self._positions.setdefault(plan.tab, {})
        topics = [*plan.user.topics, BROADCAST]
        for topic in plan.user.topics:
            record.subscribe_sent[topic] = time.time()
        record.recover_from = {t: positions[t] for t in topics if t in positions}
        recover = {t: {"offset": o, "epoch": e} for t, (o, e) in record.recover_from.items()}
        await ws.send(orjson.dumps({"type": "subscribe", "topics": topics, **({"recover": recover} if recover else {})}).decode())
        async for data in ws:
            lines = data.split("\n")  # one line unless it is a bundle (JSON text has no raw newline)
            record.bundles += len(lines) > 1
            for line in lines:
                await self.take(ws, record, plan, positions, orjson.loads(line))

    async def take(self, ws: ClientConnection, record: SocketRecord, plan: SocketPlan, positions: dict[str, tuple[int, str]],
                   frame: dict[str, Any]) -> None:
        """One frame of the protocol (alone in its websocket frame, or a line of a bundle)."""
        kind = frame.get("type")
        if kind == "message":
            await self.received(ws, record, plan, frame)
        elif kind == "subscribed":
            record.granted.update((t, time.time()) for t in frame["topics"] if t != BROADCAST)
            record.recovered.update(frame.get("recovered", {}))
            for topic, p in frame["positions"].items():
                record.told[topic] = (p["offset"], p["epoch"])
                if not frame.get("recovered", {}).get(topic):
                    positions[topic] = (p["offset"], p["epoch"])
        elif kind == "error" and frame.get("code") == "forbidden":
            record.refused.update(frame["topics"])
        elif kind == "reconnect":
            raise ConnectionClosed(None, None)

    async def received(self, ws: ClientConnection, record: SocketRecord, plan: SocketPlan, frame: dict[str, Any]) -> None:
        payload = frame.get("payload")
        tag = payload.get("chaos") if isinstance(payload, dict) else None
        topic = BROADCAST if frame.get("broadcast") else frame.get("topic")
        offset, epoch = frame.get("offset"), frame.get("epoch")
        record.arrivals.append(Arrival(frame["id"], tag, frame["ts"], time.time(), topic, offset, epoch))
        positions = self._positions.setdefault(plan.tab, {})
        if topic is not None and offset is not None and epoch is not None:
            last = positions.get(topic)
            if last is None or last[1] != epoch or last[0] < offset:
                positions[topic] = (offset, epoch)
        if plan.slow:
            await asyncio.sleep(0.05 + 0.25 * chosen(self.seed, record.id, frame["id"], "slow", percent=50))
        if chosen(self.seed, record.id, frame["id"], percent=plan.ack_percent):
            record.acks.setdefault(frame["id"], time.time())
            await ws.send(orjson.dumps({"type": "ack", "id": frame["id"]}).decode())

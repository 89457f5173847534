"""The broadcast and topic scenarios' client side: a worker (see ``loadtest.fleet``) that holds many
sockets, subscribed to a topic or not, and records when each message reaches each of them.

Each socket counts the messages it receives by id; a message reaching the same socket twice is a
duplicate. The latency of a delivery is its arrival minus the frame's ``ts`` (when collect accepted
it; or the post's send time, as ``Client.read`` gives it), recorded on every tenth socket to keep the
report small; the parent also gets each message's last arrival, to time a broadcast to its last socket.
The sockets speak as the share's ``client`` does: ours, or a peer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from loadtest.inbox import Client, TakingConnection


@dataclass
class FanoutShare:
    tokens: list[str]
    urls: list[str]  # socket i goes to urls[i % len(urls)]
    topic: str | None  # subscribe every socket to it (None: broadcast only)
    expect: int  # messages the parent will post: each socket should get each once
    timeout: float  # the longest this worker waits for them after its sockets are up
    client: Client  # how the sockets speak (a peer's has no topics: ``topic`` None)


@dataclass
class FanoutReport:
    connected: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # sockets whose subscription the node refused
    deliveries: int = 0
    frames: int = 0  # websocket frames that carried them (fewer, with bundles)
    duplicates: int = 0
    last_arrival: dict[str, float] = field(default_factory=dict)  # message id -> its last arrival here
    per_message: Counter[str] = field(default_factory=Counter)  # message id -> sockets it reached here
    latencies_ms: list[float] = field(default_factory=list)  # a sample: every tenth socket's deliveries
    busy: float = 0.0  # this process's CPU over its work, as a fraction of one core


async def subscribe(ws: ClientConnection, topic: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
    """Subscribe ``ws`` to ``topic``, resuming from the position ``since`` (``{"offset", "epoch"}``) when given, and
    return the node's answer (the next frame: nothing else is sent to the socket meanwhile)."""
    ask = {"type": "subscribe", "topics": [topic], **({"recover": {topic: since}} if since else {})}
    await ws.send(orjson.dumps(ask).decode())
    return dict(orjson.loads(await asyncio.wait_for(ws.recv(), 30)))


def granted(answer: dict[str, Any], topic: str) -> bool:
    return answer.get("type") == "subscribed" and topic in answer.get("topics", [])


@contextlib.asynccontextmanager
async def listen(concurrency: int, source: str, share: FanoutShare) -> AsyncIterator[FanoutReport]:
    """Open (and subscribe) every socket of ``share``, receive until each has ``expect`` messages or nothing new
    arrived for 10 s (at most ``timeout``), report; the sockets close when left."""
    report, gate, sockets = FanoutReport(), asyncio.Semaphore(concurrency), list[TakingConnection]()
    cpu, wall = time.process_time(), time.monotonic()

    changed, answers = asyncio.Event(), set[asyncio.Task[None]]()

    def reader(ws: TakingConnection, sampled: bool) -> Callable[[bytes], bool]:
        """What takes ``ws``'s frames as they are parsed (``TextTaker``): a task per socket cost ~40 µs a frame."""
        seen: set[str] = set()

        def take(data: bytes) -> bool:
            now = time.time()
            report.frames += 1
            messages, answer = share.client.read(data)
            if answer is not None:
                answers.add(task := asyncio.get_running_loop().create_task(ws.send(answer)))
                task.add_done_callback(answers.discard)
            for mid, sent_ms in messages:
                if mid in seen:
                    report.duplicates += 1
                    continue
                seen.add(mid)
                report.deliveries += 1
                report.per_message[mid] += 1
                report.last_arrival[mid] = now
                if sampled:
                    report.latencies_ms.append(now * 1000 - sent_ms)
                changed.set()
            return True

        return take

    async def one(i: int, token: str) -> None:
        async with gate:
            try:
                ws = await share.client.open(share.urls[i % len(share.urls)], token, source)
            except Exception as exc:  # counted and reported: the parent prints failures by kind
                report.failures[type(exc).__name__] += 1
                return
            if share.topic is not None and not granted(await subscribe(ws, share.topic), share.topic):
                report.refused += 1
            ws.take_text = reader(ws, i % 10 == 0)
            sockets.append(ws)
            report.connected += 1

    await asyncio.gather(*(one(i, t) for i, t in enumerate(share.tokens)))
    deadline = time.monotonic() + share.timeout
    while report.deliveries < share.expect * len(sockets) and time.monotonic() < deadline:
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), 10 if report.deliveries else share.timeout)
        except TimeoutError:
            break
    for ws in sockets:
        ws.take_text = None
    report.busy = (time.process_time() - cpu) / (time.monotonic() - wall)
    try:
        yield report
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

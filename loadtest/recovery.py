"""The recovery scenario's client side: a worker (see ``loadtest.fleet``) whose sockets each subscribe to one topic,
resuming from a position when they have one, and check that they get exactly the messages after it.

The scenario runs it twice. First without positions: each socket subscribes and notes the position its node
answers (``positions``), then the sockets close when the worker is left (the disconnect). Then with those
positions, each socket on another node: it subscribes with ``recover`` and should be answered ``recovered: true``
and get offsets position+1 .. position+``expect``, in that order, once each, in the position's epoch. A socket that
does not is described (offsets missing, doubled, out of order, unexpected; another epoch) for the parent to print.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from loadtest.fanout import granted, subscribe
from loadtest.inbox import open_socket

GRACE_SECONDS = 1.0  # after the last socket has its messages, how long more each listens for one too many
DESCRIBED = 20  # sockets described per worker, at most (the others are only counted)


@dataclass
class RecoveryShare:
    tokens: list[str]
    urls: list[str]  # socket i connects to urls[i]
    topic: str
    since: list[dict[str, Any]] | None  # socket i resumes from since[i] ({"offset", "epoch"}); None: none resumes
    expect: int  # messages each socket should get after its position
    timeout: float  # the longest this worker waits for them, from its first connect
    bundles: bool = False  # the sockets ask for bundles


@dataclass
class RecoveryReport:
    started: float = 0.0  # this worker's first connect (wall clock)
    connected: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # sockets that failed, by kind (connect, answer, close)
    refused: int = 0  # sockets whose subscription the node refused
    positions: list[dict[str, Any] | None] = field(default_factory=list)  # socket i's position in its answer
    recovered: Counter[str] = field(default_factory=Counter)  # the answers' recovered flags: "true", "false", "none"
    last_answer: float = 0.0  # the last subscribed answer (wall clock)
    complete: int = 0  # sockets that got exactly the messages after their position
    last_complete: float = 0.0  # when the last of those had its last message (wall clock)
    recovery_ms: list[float] = field(default_factory=list)  # per complete socket: its subscribe to its last message
    incomplete: int = 0
    messages: int = 0  # message frames received, all sockets together
    described: list[str] = field(default_factory=list)  # the first DESCRIBED incomplete sockets, what each got
    busy: float = 0.0  # this process's CPU over its work, as a fraction of one core


def differences(got: list[tuple[int, str]], since: dict[str, Any], expect: int) -> str:
    """How the (offset, epoch) pairs a socket got differ from the ``expect`` offsets after ``since``, in its epoch."""
    wanted = range(since["offset"] + 1, since["offset"] + expect + 1)
    offsets = [offset for offset, _ in got]
    counts = Counter(offsets)
    parts = [f"got {len(got)} of {expect}"]
    if missing := [o for o in wanted if o not in counts]:
        parts.append(f"missing {ranges(missing)}")
    if doubled := sorted(o for o, n in counts.items() if n > 1):
        parts.append(f"duplicated {ranges(doubled)}")
    if unexpected := sorted(o for o in counts if o not in wanted):
        parts.append(f"unexpected {ranges(unexpected)}")
    firsts = list(dict.fromkeys(offsets))
    if swapped := next((k for k in range(1, len(firsts)) if firsts[k] < firsts[k - 1]), None):
        parts.append(f"out of order: {firsts[swapped]} after {firsts[swapped - 1]}")
    if epochs := sorted({epoch for _, epoch in got} - {since["epoch"]}):
        parts.append(f"epochs {epochs}, not {since['epoch']}")
    return "; ".join(parts)


def ranges(values: list[int]) -> str:
    """Sorted integers as runs: [1, 2, 3, 7] -> "1-3, 7"."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


@contextlib.asynccontextmanager
async def resume(concurrency: int, source: str, share: RecoveryShare) -> AsyncIterator[RecoveryReport]:
    """Connect every socket of ``share`` (``concurrency`` handshakes in flight), subscribe it (resuming when it has a
    position) and read its messages, until each has ``expect`` (then ``GRACE_SECONDS`` more, for any extra) or
    ``timeout`` passed; check what each got, report; the sockets close when left."""
    report = RecoveryReport(started=time.time(), positions=[None] * len(share.tokens))
    gate, all_done, waiting = asyncio.Semaphore(concurrency), asyncio.Event(), len(share.tokens)
    sockets: list[ClientConnection] = []
    received: list[list[tuple[int, str]]] = [[] for _ in share.tokens]  # socket i's messages: (offset, epoch) each
    flags = ["none"] * len(share.tokens)  # socket i's recovered flag
    cpu, wall = time.process_time(), time.monotonic()

    def done() -> None:
        nonlocal waiting
        waiting -= 1
        if not waiting:
            all_done.set()

    async def one(i: int) -> None:
        """Socket i, from its connect to its ``expect``-th message (``done``), then reading on until cancelled."""
        since = share.since[i] if share.since else None
        got = received[i]
        finished = False
        try:
            async with gate:
                ws = await open_socket(share.urls[i], share.tokens[i], source, share.bundles)
            sockets.append(ws)
            report.connected += 1
            asked = time.time()
            answer = await subscribe(ws, share.topic, since)
            report.last_answer = time.time()
            if not granted(answer, share.topic):
                report.refused += 1
                return
            report.positions[i] = answer["positions"][share.topic]
            if since:
                flags[i] = str(answer.get("recovered", {}).get(share.topic)).lower()
                report.recovered[flags[i]] += 1
            if share.expect == 0 or (since and flags[i] != "true"):  # not recovered: nothing more is due
                return
            async for data in ws:
                for frame in map(orjson.loads, data.split("\n")):  # one line unless it is a bundle
                    if frame.get("type") != "message":
                        continue
                    got.append((frame.get("offset"), frame.get("epoch")))
                    report.messages += 1
                    if len(got) == share.expect:
                        report.recovery_ms.append((time.time() - asked) * 1000)
                        report.last_complete = time.time()
                        finished = True
                        done()
            report.failures[f"closed {ws.close_code}"] += 1
        except ConnectionClosed as exc:
            report.failures[f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}"] += 1
        except Exception as exc:  # counted and reported: the parent prints failures by kind
            report.failures[type(exc).__name__] += 1
        finally:
            if not finished:
                done()

    tasks = [asyncio.create_task(one(i)) for i in range(len(share.tokens))]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_done.wait(), share.timeout)
    if share.expect:
        await asyncio.sleep(GRACE_SECONDS)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for i, got in enumerate(received):
        since = share.since[i] if share.since else report.positions[i]
        if since is None:  # failed or refused: counted as such
            continue
        if [offset for offset, _ in got] == list(range(since["offset"] + 1, since["offset"] + share.expect + 1)) and \
                all(epoch == since["epoch"] for _, epoch in got):
            report.complete += 1
            continue
        report.incomplete += 1
        if len(report.described) < DESCRIBED:
            report.described.append(f"{source} socket {i} ({share.urls[i]}, position {since['offset']} epoch {since['epoch']}, "
                                    f"recovered {flags[i]}): {differences(got, since, share.expect)}")
    report.busy = (time.process_time() - cpu) / (time.monotonic() - wall)
    try:
        yield report
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

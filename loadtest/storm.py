"""The storm's client side: a worker (see ``loadtest.fleet``) whose share of the offline users all
connect at once and receive and ack what was stored for them, as ``Users`` do.

The replay of a user is the time from its node's welcome to the last of its messages (the frames'
``ts`` would count the time the messages waited for their user to come online, which is the
scenario's set-up, not the cluster's work).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from loadtest.inbox import Inbox, Tally, Users
from loadtest.target import Target


@dataclass
class StormShare:
    tokens: dict[str, str]  # user -> token
    expected: list[tuple[str, str]] = field(default_factory=list)  # (user, message id) stored for them


@dataclass(frozen=True)
class ReplayReport:
    connected: int
    failures: Counter[str]
    started: float  # this worker's first connect
    all_welcomed: float
    last_receive: float  # 0.0 when nothing arrived
    tally: Tally
    replay_ms: list[float]  # per user who got anything: its welcome to its last message
    busy: float  # this client process's CPU over its work, as a fraction of one core


@contextlib.asynccontextmanager
async def replay(target: Target, concurrency: int, timeout: float, source: str,
                 share: StormShare) -> AsyncIterator[ReplayReport]:
    """Connect every user of ``share`` (``concurrency`` handshakes in flight), wait until all its messages
    arrived or ``timeout`` after the last welcome, report; the sockets close when left."""
    inbox = Inbox()
    for user, message in share.expected:
        inbox.expect(user, message)
    users = Users(target, share.tokens, inbox, concurrency, source)
    cpu, wall = time.process_time(), time.monotonic()
    await users.open()
    try:
        await inbox.settle(timeout)
        yield ReplayReport(users.connected, users.failures, users.started, users.all_welcomed, inbox.last_receive,
                           inbox.tally(), [(last - users.welcomed[user]) * 1000 for user, last in inbox.last_by_user.items()],
                           (time.process_time() - cpu) / (time.monotonic() - wall))
    finally:
        await users.close()

"""Sending users what waits in their inbox: on connect, again after Redis's state was rebuilt, and when a dispatch
instance (re)opens its link (it may have taken this node for dead and left messages in the inboxes).

A replay reads the user's open ids from Redis (no MongoDB), then their frames a page at a time,
and writes those this socket has not been sent yet, oldest first. At most ``concurrency`` replays
run at once, so a reconnect storm queues instead of flooding Redis, and those running share their
reads (``shared.infra.coalesce``): a storm costs a few pipelines per round, not a few per user. If Redis fails meanwhile, or
its state is being rebuilt, the replay retries with backoff for as long as the socket stays open:
it never gives up silently.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.exceptions import ConnectionClosed

from services.push.hub import Hub, Session
from services.push.metrics import REPLAYED
from shared.delivery.inbox import Inbox
from shared.delivery.lifecycle import LifecycleWriter
from shared.infra.background import Background
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.infra.coalesce import Coalescer
from shared.infra.retry import Backoff
from shared.wire.errors import Unavailable

log = logging.getLogger(__name__)
PAGE_SEND_SECONDS = 30.0  # a page not taken by the client in this time: it is not reading
# a replay waits out these and tries again: Redis failing, or the state being rebuilt
NOT_YET: tuple[type[BaseException], ...] = (*REDIS_FAILURES, Unavailable)


class Replayer:
    def __init__(self, hub: Hub, inbox: Inbox, lifecycle: LifecycleWriter, limit: int, page: int, concurrency: int) -> None:
        self.hub = hub
        self.inbox = inbox
        self.lifecycle = lifecycle
        self.limit = limit
        self.page = page
        self.gate = asyncio.Semaphore(concurrency)
        self._catch_ups = Background()
        self._replays: dict[Session, asyncio.Task[None]] = {}  # each session's first replay, while it runs
        # Replays running at once share their Redis reads: one pipeline for all their inboxes, one for frames.
        self._inboxes: Coalescer[str, list[str]] = Coalescer(lambda users: inbox.pending(users, limit))
        self._frames: Coalescer[str, bytes | None] = Coalescer(lambda ids: inbox.frames(ids, now_ms()))

    def start(self, session: Session) -> None:
        """Run ``session``'s replay beside its reads. Its task is let go once done (a finished task and its coroutine
        are ~0.5 KB an idle socket would otherwise keep)."""
        task = asyncio.create_task(self.replay(session))
        self._replays[session] = task
        task.add_done_callback(lambda _: self._replays.pop(session, None))

    async def stop(self, session: Session) -> None:
        """Cancel ``session``'s replay if it still runs, and wait for it (a bug in it still surfaces: asyncio logs an
        unretrieved error)."""
        task = self._replays.get(session)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def replay(self, session: Session) -> None:
        """Send what is pending, then let live frames through; retry while Redis fails and the socket is open."""
        backoff = Backoff()
        while session.open:
            try:
                await self.send_pending(session)
            except NOT_YET as exc:
                await backoff.failed(log, "replay", exc)
                continue
            except ConnectionClosed:
                return
            if session.go_live():
                return

    async def send_pending(self, session: Session) -> int:
        """Write the open messages this socket was not sent yet, a page of frames at a time; return how many."""
        async with self.gate:
            (pending,) = await self._inboxes.submit([session.user_id])
            ids = [m for m in pending if m not in session.sent]
            written = []
            for start in range(0, len(ids), self.page):
                page = ids[start:start + self.page]
                frames = await self._frames.submit(page)
                try:
                    async with asyncio.timeout(PAGE_SEND_SECONDS):  # a client that stops reading blocks send()
                        for message_id, frame in zip(page, frames):
                            if frame is not None and message_id not in session.sent:  # None: expired, or not held yet
                                session.sent.add(message_id)
                                written.append((message_id, session.user_id))
                                await session.ws.send(frame, text=True)  # the frame's bytes, sent as they are
                except TimeoutError:
                    self.hub.close_slow(session)
                    break
        REPLAYED.inc(len(written))
        self.lifecycle.mark("delivered", written)
        return len(written)

    async def watch_epoch(self, interval: float) -> None:
        """When the state's epoch changes (dispatch rebuilt it), send every open session what came back. An incomplete
        state (no epoch: Redis came back empty and the rebuild runs) counts as a change too, so a rebuild is seen even by a
        node that never read the epoch before it (one started just before Redis was lost)."""
        last: str | None = None
        first = True
        while True:
            try:
                epoch = await self.inbox.epoch()
            except REDIS_FAILURES:
                epoch = last  # unknown: nothing changed as far as this node can tell
            if epoch is not None and epoch != last and not first:
                await self.replay_open_sessions("delivery state was rebuilt")
            last, first = epoch, False
            await asyncio.sleep(interval)

    def catch_up(self, why: str) -> None:
        """Replay every open session in the background."""
        self._catch_ups.start(self.replay_open_sessions(why))

    async def replay_open_sessions(self, why: str) -> None:
        """Send every open session what waits in its inbox (sockets skip what they were already sent), each retrying
        with backoff while Redis fails or the state is being rebuilt, for as long as its socket stays open."""
        sessions = [s for s in self.hub.sessions() if s.open and not s.replaying]
        log.warning(f"{why}; replaying to open sessions", extra={"count": len(sessions)})
        for outcome in await asyncio.gather(*(self._catch_up(s) for s in sessions), return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("replay to an open session failed", extra={"error": repr(outcome)})

    async def _catch_up(self, session: Session) -> None:
        backoff = Backoff()
        while session.open:
            try:
                await self.send_pending(session)
                return
            except NOT_YET as exc:
                await backoff.failed(log, "replay to an open session", exc)
            except ConnectionClosed:
                return

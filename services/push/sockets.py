"""One browser socket, from its token to its close: verify, admit, welcome, replay, then read its frames.

The frames a browser may send (``shared.wire.protocol.parse_client_frame``): pings, acks, subscribe and
unsubscribe, and refresh (a new token for the same user), each paid for from the socket's token bucket. A refusal
closes the socket with its error's close code (``shared.wire.errors``); the token's expiry ends the session (4001)
unless a refresh moved it, and ``EXPIRING_NOTICE_SECONDS`` before it the socket is told (``Lease``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from services.push.acks import Acks
from services.push.config import PushConfig
from services.push.connection import SessionConnection
from services.push.drain import Drain
from services.push.hub import Hub, Session
from services.push.identity import TokenVerifier
from services.push.membership import Membership
from services.push.metrics import CONNECTS, RECOVERIES, REFUSED
from services.push.recovery import TopicReads
from services.push.registrar import Registrar
from services.push.replay import Replayer
from services.push.sequencer import Sequencer
from shared.infra.clients import REDIS_FAILURES
from shared.infra.metrics import ERRORS
from shared.infra.token_bucket import TokenBucket
from shared.model.message import BROADCAST
from shared.model.topics import Grants, Position
from shared.wire.errors import CloseCode, MalformedRequest, RateLimited, ServiceError, Unauthorized, Unavailable
from shared.wire.protocol import (
    AckFrame,
    ExpiringFrame,
    Identity,
    Op,
    PingFrame,
    PongFrame,
    RefreshedFrame,
    RefreshFrame,
    SubscribeFrame,
    TopicsFrame,
    UnsubscribeFrame,
    WelcomeFrame,
    parse_client_frame,
    parse_client_text,
    with_position,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What a browser's upgrade request asks for: its ``token``, from ``?token=`` (browsers cannot set headers) or an
    ``Authorization: Bearer`` header; and ``bundles`` (``?bundle=1``: it reads several topic frames, newline-separated,
    in one websocket frame)."""

    token: str | None
    bundles: bool

    @classmethod
    def of(cls, request: Request) -> Upgrade:
        query = parse_qs(request.path.partition("?")[2])
        bundles = query.get("bundle", [""])[0] == "1"
        if query.get("token"):
            return cls(query["token"][0], bundles)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return cls(token.strip() if scheme.lower() == "bearer" and token.strip() else None, bundles)


TIMER_SLACK = 0.01  # s
NO_HEADERS = Headers()  # every session's request's, once its own were read (``SocketHandler.admit``)


class Lease:
    """What a socket's current token allows, and until when: the topics it grants, the session's deadline (the
    ``asyncio.timeout`` around it: 4001 at the token's expiry) and the one ``expiring`` notice due ``warn_before``
    seconds earlier. A refresh renews all three in place. One loop timer at a time: the notice's, which arms the
    deadline as it fires (a timer is ~0.25 KB of loop handles, measured), or the deadline's alone without notices; no task
    per socket."""

    __slots__ = ("deadline", "grants", "notice", "session", "warn_before")

    def __init__(self, session: Session, deadline: asyncio.Timeout, warn_before: int) -> None:
        self.session = session
        self.deadline = deadline
        self.warn_before = warn_before
        self.grants = Grants()
        self.notice: asyncio.TimerHandle | None = None

    def renew(self, grants: Grants, expires_at: int) -> None:
        """The token now grants ``grants`` until ``expires_at`` (seconds since epoch): arm the notice for this token
        (at once if it has less than ``warn_before`` left), or with ``warn_before`` 0 move the deadline there."""
        loop = asyncio.get_running_loop()
        left = expires_at - time.time()
        self.grants = grants
        self.cancel_notice()
        if self.warn_before:
            self.deadline.reschedule(None)  # until the notice
            # A loop timer may fire a millisecond early (uvloop keeps whole milliseconds): aim a little late, so the
            # notice always comes within the last ``warn_before`` seconds.
            self.notice = loop.call_later(max(0.0, left - self.warn_before) + TIMER_SLACK, self._warn, expires_at)
        else:
            self.deadline.reschedule(loop.time() + left)

    def cancel_notice(self) -> None:
        if self.notice is not None:
            self.notice.cancel()

    def _warn(self, expires_at: int) -> None:
        left = expires_at - time.time()
        self.deadline.reschedule(asyncio.get_running_loop().time() + left)
        if self.session.open:  # written as it is, like a topic message: no await in a timer callback
            broadcast([self.session.ws], ExpiringFrame(max(0, round(left * 1000))).encode())


class SocketHandler:
    """Runs each browser socket of the node; ``verifier`` is set once the node's HTTP client session exists."""

    def __init__(self, config: PushConfig, hub: Hub, registrar: Registrar, replayer: Replayer, acks: Acks, drain: Drain,
                 reads: TopicReads, membership: Membership, sequencer: Sequencer) -> None:
        self.config = config
        self.hub = hub
        self.registrar = registrar
        self.reads = reads
        self.membership = membership
        self.sequencer = sequencer
        self.replayer = replayer
        self.acks = acks
        self.drain = drain
        self.public_topics = Grants.of(config.public_topics)
        self.verifier: TokenVerifier | None = None

    async def serve(self, ws: SessionConnection) -> None:
        """The session of ``ws``, upgraded as its request asked."""
        try:
            identity, bundles = await self.admit(ws)
        except ServiceError as exc:
            await self.refuse(ws, exc, None)
            return
        user = identity.user_id
        if self.drain.started:  # upgraded just before the drain began: it would not be told to leave
            await ws.close(CloseCode.GOING_AWAY, "node draining")
            return
        cap = self.config.max_connections_per_user
        if cap and self.hub.count(user) >= cap:
            await self.refuse(ws, RateLimited(f"{cap} connections for this user already"), user)
            return
        session = Session(ws, user, bundles=bundles and self.config.bundle_ms > 0)
        self.hub.add(session)
        try:
            await self.registrar.arrived(user)
            # Written without awaiting (as the drain's and the expiry's notices are): the socket is fresh, and
            # ``send``'s lock and drain cost a tenth of a connect. Skipped if it closed meanwhile: its read then ends it.
            broadcast([ws], WelcomeFrame(user, self.config.node_id, self.config.bundle_ms if session.bundles else 0).encode())
            session.welcomed = True
            CONNECTS.inc()
            async with asyncio.timeout(None) as deadline:
                lease = Lease(session, deadline, self.config.expiring_notice)
                lease.renew(self.grants(identity), identity.expires_at)
                budget = TokenBucket.full(self.config.client_rate, self.config.client_burst, time.monotonic())
                ws.take_text = partial(self.take_ack, session, budget)
                self.replayer.start(session)
                try:
                    await self.read_frames(session, lease, budget)
                finally:
                    ws.take_text = None
                    lease.cancel_notice()
                    await self.replayer.stop(session)
        except TimeoutError:
            await self.refuse(ws, Unauthorized("token expired"), user)
        except ServiceError as exc:
            await self.refuse(ws, exc, user)
        except ConnectionClosed:
            pass
        finally:
            self.left_topics(session, self.hub.remove(session))
            self.registrar.left(user)

    async def admit(self, ws: SessionConnection) -> tuple[Identity, bool]:
        """Who the upgrade's token names, and whether its client reads bundles. Nothing reads the handshake's request
        and response past here, so their headers and path (the token) are let go: ~3 KB of an idle socket's ~19. The
        protocol's parser keeps the request itself for the connection's life, so it is emptied in place; the token
        goes with this call's frame (a session's own frame would keep it, ~0.2 KB)."""
        assert self.verifier is not None and ws.request is not None  # set before any socket is served; by the handshake
        upgrade = Upgrade.of(ws.request)
        ws.request.path, ws.request.headers, ws.response = "", NO_HEADERS, None
        return await self.verifier.verify(upgrade.token), upgrade.bundles

    def grants(self, identity: Identity) -> Grants:
        """The topics ``identity``'s token lets its socket subscribe to: its claim's and the node's public ones (those
        alone shared by every socket whose token claims none)."""
        return Grants.of(identity.topics) | self.public_topics if identity.topics else self.public_topics

    def take_ack(self, session: Session, budget: TokenBucket, data: bytes) -> bool:
        """An ack frame, taken as it arrives (``SessionConnection.take_text``) while the budget pays for it; any other
        frame, a malformed one or one past the budget is left to ``read_frames``, which answers or refuses it."""
        try:
            frame = parse_client_text(data)
        except MalformedRequest:
            return False
        if not isinstance(frame, AckFrame) or not budget.take(len(frame.ids), time.monotonic()):
            return False
        self.ack(session, frame)
        return True

    def ack(self, session: Session, frame: AckFrame) -> None:
        """The socket's client acknowledged these ids: closed in Redis at the next flush (those written to it)."""
        self.acks.add(session.user_id, frame.ids, written=session.acknowledged(frame.ids))

    async def read_frames(self, session: Session, lease: Lease, budget: TokenBucket) -> None:
        """Answer the socket's frames that ``take_ack`` left until it closes (``ConnectionClosed``); past its rate,
        ``RateLimited``. (``recv`` in a loop, not ``async for``: websockets' iterator is an async generator, ~0.3 KB
        more held by every idle socket.)"""
        while True:
            data = await session.ws.recv()
            frame = parse_client_frame(data)
            cost = (1 if isinstance(frame, (PingFrame, RefreshFrame))
                    else len(frame.ids if isinstance(frame, AckFrame) else frame.topics))
            if not budget.take(cost, time.monotonic()):
                raise RateLimited(f"more than {self.config.client_rate:g} acks a second "
                                  "(ack ids, topics, pings and refreshes count)")
            if isinstance(frame, PingFrame):
                await session.ws.send(PongFrame().encode())
            elif isinstance(frame, AckFrame):
                self.ack(session, frame)
            elif isinstance(frame, SubscribeFrame):
                await self.subscribe(session, lease.grants, frame)
            elif isinstance(frame, UnsubscribeFrame):
                await self.unsubscribe(session, frame.topics)
            elif isinstance(frame, RefreshFrame):
                await self.refresh(session, lease, frame.token)

    async def unsubscribe(self, session: Session, topics: tuple[str, ...]) -> None:
        """Leave these topics (Redis counts the change at the next flush) and say so, after the bundle waiting for the
        socket (which may hold their last messages)."""
        self.left_topics(session, self.hub.unsubscribe(session, topics))
        self.hub.flush_bundles(session)
        await session.ws.send(TopicsFrame(Op.UNSUBSCRIBED, topics).encode())

    async def refresh(self, session: Session, lease: Lease, token: str) -> None:
        """Replace the socket's token with ``token``, verified as at connect and the same user's (else
        ``Unauthorized``): leave the topics it no longer grants (``unsubscribed``), answer ``refreshed``, then move the
        session's deadline and its expiring notice to the new expiry, so the notice cannot precede the answer."""
        assert self.verifier is not None  # set before any socket is served
        identity = await self.verifier.verify(token)
        if identity.user_id != session.user_id:
            raise Unauthorized("refresh token is for another user")
        grants = self.grants(identity)
        revoked = tuple(sorted(t for t in session.topics if not grants.allows(t)))
        if revoked:
            await self.unsubscribe(session, revoked)
        await session.ws.send(RefreshedFrame(identity.expires_at).encode())
        lease.renew(grants, identity.expires_at)

    def left_topics(self, session: Session, topics: list[str]) -> None:
        """The session left these topics (unsubscribed or closed): their counts in Redis change at the next flushes."""
        self.registrar.unsubscribed(topics)
        self.membership.unsubscribed(session.user_id, topics)
        for topic in topics:
            if not self.hub.subscribers(topic):
                self.sequencer.forget(topic)

    async def subscribe(self, session: Session, grants: Grants, frame: SubscribeFrame) -> None:
        """Subscribe to the granted topics (up to the per-connection cap) once Redis counts them, then say which were
        granted, at which position, and which refused (a refusal leaves the connection open); then send what each
        recovering topic missed and the live messages held meanwhile. ``BROADCAST`` is always granted: the socket
        gets broadcasts anyway, its subscribe only reads (and recovers) their position."""
        allowed = [t for t in frame.topics if t == BROADCAST or grants.allows(t)]
        forbidden = [t for t in frame.topics if t not in allowed]
        fresh = [t for t in allowed if t != BROADCAST and t not in session.topics]
        over = fresh[max(0, self.config.max_connection_topics - len(session.topics)):]
        granted = [t for t in allowed if t not in over]
        added = self.hub.subscribe(session, [t for t in granted if t != BROADCAST])
        self.membership.subscribed(session.user_id, added)
        # Live frames of a new subscription (or of broadcasts being recovered) wait until its position is known.
        session.await_positions([*added, *([BROADCAST] if BROADCAST in frame.recover else [])])
        try:
            if added:
                await self.registrar.subscribed(added)
            states = await self.reads.read({t: p.offset if (p := frame.recover.get(t)) else None for t in granted})
        except REDIS_FAILURES as exc:
            raise Unavailable.of("Redis", exc, "subscribe again") from None
        missed = {t: states[t].recover(p) for t, p in frame.recover.items() if t in states}
        for messages in missed.values():
            RECOVERIES.labels("recovered" if messages is not None else "gap").inc()
        replies = [TopicsFrame(Op.SUBSCRIBED, tuple(granted), positions={t: states[t].position for t in granted},
                               recovered={t: m is not None for t, m in missed.items()}) if granted else None,
                   TopicsFrame(Op.ERROR, tuple(forbidden), "forbidden") if forbidden else None,
                   TopicsFrame(Op.ERROR, tuple(over), "limit") if over else None]
        for reply in filter(None, replies):
            await session.ws.send(reply.encode())
        for topic in granted:
            position = states[topic].position
            self.sequencer.seed(topic, position)
            # Broadcasts reach a socket from its welcome on: a recovery of * skips those written to it live.
            frames = [with_position(m.frame, Position(m.offset, position.epoch)) for m in missed.get(topic) or ()
                      if topic != BROADCAST or not session.broadcast_written(m.offset)]
            self.hub.resume(session, topic, frames, position.offset)

    @staticmethod
    async def refuse(ws: ServerConnection, exc: ServiceError, user: str | None) -> None:
        ERRORS.labels(exc.code).inc()
        REFUSED.labels(str(exc.close_code)).inc()
        log.warning("closing connection", extra={"user_id": user, "close_code": exc.close_code, "error": str(exc)})
        await ws.close(exc.close_code, exc.message[:120])

"""One browser socket, from its token to its close: verify, admit, welcome, replay, then read its frames.

The frames a browser may send (``shared.wire.protocol.parse_client_frame``): pings, acks, subscribe and
unsubscribe, each paid for from the socket's token bucket. A refusal closes the socket with its
error's close code (``shared.wire.errors``); the token's expiry ends the session (4001).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from services.push.acks import Acks
from services.push.config import PushConfig
from services.push.drain import Drain
from services.push.hub import Hub, Session
from services.push.identity import TokenVerifier
from services.push.metrics import CONNECTS, REFUSED
from services.push.registrar import Registrar
from services.push.replay import Replayer
from shared.infra.metrics import ERRORS
from shared.infra.token_bucket import TokenBucket
from shared.model.topics import Grants
from shared.wire.errors import CloseCode, RateLimited, ServiceError, Unauthorized
from shared.wire.protocol import (
    AckFrame,
    Op,
    PingFrame,
    PongFrame,
    SubscribeFrame,
    TopicsFrame,
    UnsubscribeFrame,
    WelcomeFrame,
    parse_client_frame,
)

log = logging.getLogger(__name__)


def token_of(request: Request) -> str | None:
    """The token from ``?token=`` (browsers cannot set headers) or an ``Authorization: Bearer`` header."""
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class SocketHandler:
    """Runs each browser socket of the node; ``verifier`` is set once the node's HTTP client session exists."""

    def __init__(self, config: PushConfig, hub: Hub, registrar: Registrar, replayer: Replayer, acks: Acks, drain: Drain) -> None:
        self.config = config
        self.hub = hub
        self.registrar = registrar
        self.replayer = replayer
        self.acks = acks
        self.drain = drain
        self.public_topics = Grants.of(config.public_topics)
        self.verifier: TokenVerifier | None = None

    async def serve(self, ws: ServerConnection) -> None:
        assert self.verifier is not None and ws.request is not None  # both set before any socket is served
        try:
            identity = await self.verifier.verify(token_of(ws.request))
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
        session = Session(ws, user)
        self.hub.add(session)
        try:
            await self.registrar.arrived(user)
            await ws.send(WelcomeFrame(user, self.config.node_id).encode())
            session.welcomed = True
            CONNECTS.inc()
            async with asyncio.timeout(identity.expires_at - time.time()):
                replay = asyncio.create_task(self.replayer.replay(session))
                try:
                    await self.read_frames(session, Grants.of(identity.topics) | self.public_topics)
                finally:
                    replay.cancel()
                    await asyncio.wait([replay])  # a bug in it still surfaces: asyncio logs an unretrieved error
        except TimeoutError:
            await self.refuse(ws, Unauthorized("token expired"), user)
        except ServiceError as exc:
            await self.refuse(ws, exc, user)
        except ConnectionClosed:
            pass
        finally:
            self.registrar.unsubscribed(self.hub.remove(session))
            self.registrar.left(user)

    async def read_frames(self, session: Session, grants: Grants) -> None:
        """Answer the socket's frames until it closes; past its rate, ``RateLimited``."""
        budget = TokenBucket.full(self.config.client_rate, self.config.client_burst, time.monotonic())
        async for data in session.ws:
            frame = parse_client_frame(data)
            cost = 1 if isinstance(frame, PingFrame) else len(frame.ids if isinstance(frame, AckFrame) else frame.topics)
            if not budget.take(cost, time.monotonic()):
                raise RateLimited(f"more than {self.config.client_rate:g} acks a second (ack ids, topics and pings count)")
            if isinstance(frame, PingFrame):
                await session.ws.send(PongFrame().encode())
            elif isinstance(frame, AckFrame):
                self.acks.add(session.user_id, frame.ids, written=session.acknowledged(frame.ids))
            elif isinstance(frame, SubscribeFrame):
                await self.subscribe(session, grants, frame.topics)
            elif isinstance(frame, UnsubscribeFrame):
                self.registrar.unsubscribed(self.hub.unsubscribe(session, frame.topics))
                await session.ws.send(TopicsFrame(Op.UNSUBSCRIBED, frame.topics).encode())

    async def subscribe(self, session: Session, grants: Grants, topics: tuple[str, ...]) -> None:
        """Subscribe to the granted topics (up to the per-connection cap) once Redis counts them, then say which
        were granted and which refused; a refusal leaves the connection open."""
        forbidden = [t for t in topics if not grants.allows(t)]
        fresh = [t for t in topics if grants.allows(t) and t not in session.topics]
        over = fresh[max(0, self.config.max_connection_topics - len(session.topics)):]
        granted = [t for t in topics if grants.allows(t) and t not in over]
        added = self.hub.subscribe(session, granted)
        if added:
            await self.registrar.subscribed(added)
        replies = [TopicsFrame(Op.SUBSCRIBED, tuple(granted)) if granted else None,
                   TopicsFrame(Op.ERROR, tuple(forbidden), "forbidden") if forbidden else None,
                   TopicsFrame(Op.ERROR, tuple(over), "limit") if over else None]
        for reply in filter(None, replies):
            await session.ws.send(reply.encode())

    @staticmethod
    async def refuse(ws: ServerConnection, exc: ServiceError, user: str | None) -> None:
        ERRORS.labels(exc.code).inc()
        REFUSED.labels(str(exc.close_code)).inc()
        log.warning("closing connection", extra={"user_id": user, "close_code": exc.close_code, "error": str(exc)})
        await ws.close(exc.close_code, exc.message[:120])

"""Wiring of a push node: one websockets server for browsers (``/ws``), dispatch (``/internal``),
``/healthz`` and ``/metrics``, plus the presence loops; and uvicorn-style graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import orjson
from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.push.config import PushConfig
from services.push.hub import Hub, Session
from services.push.identity import TokenVerifier
from services.push.limits import AddressCount, TokenBucket
from services.push.link import serve_link
from services.push.acks import Acks
from services.push.metrics import CONNECTS, REFUSED
from services.push.presence import Presence
from services.push.replay import Replayer
from shared.clients import redis_client
from shared.errors import RateLimited, ServiceError, Unauthorized, Unavailable
from shared.lifecycle import LifecycleWriter
from shared.metrics import ERRORS, exposition
from shared.inbox import Inbox
from shared.protocol import (AckFrame, PingFrame, PongFrame, SubscribeFrame, TopicsFrame, UnsubscribeFrame, WelcomeFrame,
                             parse_client_frame)
from shared.routing import NodeCard, RouteWriter, now_ms
from shared.signing import PROOF_HEADER, LinkGuard, LinkRequest
from shared.store import MessageStore
from shared.topics import Grants

log = logging.getLogger(__name__)
LISTEN_BACKLOG = 4096  # asyncio's 100 overflows in a reconnect storm (thousands of SYN retries of 1 s and more)


def http_response(status: int, body: bytes, content_type: str = "application/json") -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status, HTTPStatus(status).phrase, headers, body)


def token_of(request: Request) -> str | None:
    """The token from ``?token=`` (browsers cannot set headers) or an ``Authorization: Bearer`` header."""
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


TOPIC_USERS_PATH = "/internal/topics/"  # + a topic: its subscribers' user ids here (collect's GET /v1/topics/{t}?users=1)
TOPIC_USERS_LIMIT = 1000


def source_of(connection: ServerConnection) -> str:
    """The peer's IP address (without the port)."""
    return str(connection.remote_address[0])


class PushNode:
    def __init__(self, config: PushConfig) -> None:
        self.config = config
        self.hub = Hub(config.max_buffered_bytes, config.write_backlog_bytes)
        self.redis = redis_client(config.redis_url)
        self.writer = RouteWriter(self.redis, config.node_id, config.route_ttl, config.node_ttl)
        self.presence = Presence(self.writer, self.hub, self.card, config.heartbeat_interval)
        self.store = MessageStore(config.mongo_url, config.mongo_db)
        self.lifecycle = LifecycleWriter(self.store)
        inbox = Inbox(self.redis)
        self.replayer = Replayer(self.hub, inbox, self.lifecycle, config.replay_limit, config.replay_page, config.replay_concurrency)
        self.acks = Acks(inbox, self.lifecycle)
        self.verifier: TokenVerifier | None = None
        self.addresses = AddressCount(config.max_connections_per_address)
        self.link_guard = LinkGuard(config.internal_key, config.node_id)
        self.public_topics = Grants.of(config.public_topics)

    def card(self) -> NodeCard:
        c = self.config
        return NodeCard(c.node_id, c.link_url, c.public_url, self.hub.connections, len(self.hub), now_ms()).sealed(c.internal_key)

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            try:
                redis_ok = bool(await self.redis.ping())
            except RedisError:
                redis_ok = False
            report = {"ok": redis_ok, "service": "push", "node": self.config.node_id, "redis": redis_ok,
                      "connections": self.hub.connections, "users": len(self.hub)}
            return http_response(200 if redis_ok else 503, orjson.dumps(report))
        if path == "/metrics":
            body, content_type = exposition()
            return http_response(200, body, content_type)
        if path == "/internal" or path.startswith(TOPIC_USERS_PATH):
            try:
                self.link_guard.admit(request.headers, now_ms())
            except Unauthorized as exc:
                ERRORS.labels(exc.code).inc()
                log.warning("internal request refused", extra={"peer": str(connection.remote_address), "path": path,
                                                               "error": exc.message})
                return http_response(401, orjson.dumps(exc.body()))
            if path == "/internal":
                return None
            users, truncated = self.hub.topic_users(unquote(path.removeprefix(TOPIC_USERS_PATH)), TOPIC_USERS_LIMIT)
            return http_response(200, orjson.dumps({"users": users, "truncated": truncated}))
        if path == "/ws":
            try:
                self.addresses.check(source_of(connection))
            except RateLimited as exc:
                ERRORS.labels(exc.code).inc()
                log.warning("connection refused", extra={"peer": source_of(connection), "error": exc.message})
                return http_response(exc.status, orjson.dumps(exc.body()))
            return None
        return http_response(404, b'{"error":{"code":"not_found","message":"no such path"}}')

    def process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        """On an admitted dispatch link, prove this node holds the internal key too (bound to dispatch's nonce)."""
        if response.status_code == 101 and urlsplit(request.path).path == "/internal":
            response.headers[PROOF_HEADER] = LinkRequest.from_headers(request.headers).answer(self.config.internal_key)

    async def handle(self, ws: ServerConnection) -> None:
        if urlsplit(ws.request.path).path == "/internal":
            await serve_link(ws, self.hub, self.lifecycle, self.config.node_id)
            return
        source = source_of(ws)
        self.addresses.opened(source)
        try:
            await self.client_session(ws)
        finally:
            self.addresses.closed(source)

    async def client_session(self, ws: ServerConnection) -> None:
        assert self.verifier is not None
        try:
            identity = await self.verifier.verify(token_of(ws.request))
        except ServiceError as exc:
            await self.refuse(ws, exc, None)
            return
        user = identity.user_id
        cap = self.config.max_connections_per_user
        if cap and self.hub.count(user) >= cap:
            await self.refuse(ws, RateLimited(f"{cap} connections for this user already"), user)
            return
        session = Session(ws, user)
        grants = Grants.of(identity.topics) | self.public_topics
        budget = TokenBucket.full(self.config.client_rate, self.config.client_burst, time.monotonic())
        self.hub.add(session)
        try:
            await self.presence.arrived(user)
            await ws.send(WelcomeFrame(user, self.config.node_id).encode())
            session.welcomed = True
            CONNECTS.inc()
            async with asyncio.timeout(identity.expires_at - time.time()):
                replay = asyncio.create_task(self.replayer.replay(session))
                try:
                    async for data in ws:
                        frame = parse_client_frame(data)
                        cost = 1 if isinstance(frame, PingFrame) else len(frame.ids if isinstance(frame, AckFrame) else frame.topics)
                        if not budget.take(cost, time.monotonic()):
                            raise RateLimited(f"more than {self.config.client_rate:g} acks a second (ack ids, topics and pings count)")
                        if isinstance(frame, PingFrame):
                            await ws.send(PongFrame().encode())
                        elif isinstance(frame, AckFrame):
                            session.acknowledged(frame.ids)
                            self.acks.add(user, frame.ids)
                        elif isinstance(frame, SubscribeFrame):
                            await self.subscribe(session, grants, frame.topics)
                        elif isinstance(frame, UnsubscribeFrame):
                            self.presence.unsubscribed(self.hub.unsubscribe(session, frame.topics))
                            await ws.send(TopicsFrame("unsubscribed", frame.topics).encode())
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
            self.presence.unsubscribed(self.hub.remove(session))
            self.presence.left(user)

    async def subscribe(self, session: Session, grants: Grants, topics: tuple[str, ...]) -> None:
        """Subscribe to the granted topics (up to the per-connection cap) once Redis counts them, then say which
        were granted and which refused; a refusal leaves the connection open."""
        forbidden = [t for t in topics if not grants.allows(t)]
        fresh = [t for t in topics if grants.allows(t) and t not in session.topics]
        over = fresh[max(0, self.config.max_connection_topics - len(session.topics)):]
        granted = [t for t in topics if grants.allows(t) and t not in over]
        added = self.hub.subscribe(session, granted)
        if added:
            await self.presence.subscribed(added)
        replies = [TopicsFrame("subscribed", tuple(granted)) if granted else None,
                   TopicsFrame("error", tuple(forbidden), "forbidden") if forbidden else None,
                   TopicsFrame("error", tuple(over), "limit") if over else None]
        for reply in filter(None, replies):
            await session.ws.send(reply.encode())

    async def refuse(self, ws: ServerConnection, exc: ServiceError, user: str | None) -> None:
        ERRORS.labels(exc.code).inc()
        REFUSED.labels(str(exc.close_code)).inc()
        log.warning("closing connection", extra={"user_id": user, "code": exc.close_code, "error": exc.message})
        await ws.close(exc.close_code, exc.message[:120])

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then: withdraw routes, close sockets with 1001, wait, cancel."""
        c = self.config
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.verifier = TokenVerifier(c.auth_url, session, c.token_cache_size)
            server = await serve(
                self.handle, c.host, c.port, process_request=self.process_request, process_response=self.process_response,
                compression=None,
                ping_interval=c.ping_interval, ping_timeout=c.ping_interval, max_size=c.max_frame_bytes,
                server_header=None, backlog=LISTEN_BACKLOG,
            )
            loops = [asyncio.create_task(loop) for loop in (
                self.presence.run_flusher(), self.presence.run_heartbeat(), self.lifecycle.run(), self.acks.run(),
                self.replayer.watch_epoch(c.heartbeat_interval))]
            log.info("push node listening", extra={"node": c.node_id, "url": c.public_url})
            await stop
            log.info("shutting down", extra={"node": c.node_id, "count": self.hub.connections})
            for task in loops:
                task.cancel()
            try:
                await self.presence.withdraw()
            except RedisError as exc:
                log.warning("could not withdraw routes; they expire with the node card", extra={"error": repr(exc)})
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), c.shutdown_grace)
            except TimeoutError:
                log.warning("connections still open after the grace period; cancelling")
            try:
                await self.acks.flush()
                await self.lifecycle.flush()
            except (RedisError, Unavailable) as exc:
                log.warning("acks or lifecycle marks not written at shutdown", extra={"error": repr(exc)})
            await self.redis.aclose()
            await self.store.close()
        log.info("stopped", extra={"node": c.node_id})

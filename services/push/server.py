"""Wiring of a push node: one websockets server for browsers and dispatch, and the background loops.

The server's plain HTTP answers are ``gate.py``'s, each browser socket is ``sockets.py``'s, and
shutdown is uvicorn's: on SIGTERM or SIGINT drain (``drain.py``), stop accepting, wait for the
closing handshakes, then cancel."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import aiohttp
from websockets.asyncio.server import ServerConnection, serve

from services.push.acks import Acks
from services.push.config import PushConfig
from services.push.connection import ProxiedConnection, SessionConnection, client_address
from services.push.drain import Drain
from services.push.gate import LINK_PATH, Gate, target_path
from services.push.hub import Hub
from services.push.identity import TokenVerifier
from services.push.keepalive import Keepalive
from services.push.limits import AddressCount
from services.push.link import serve_link
from services.push.membership import Membership
from services.push.recovery import TopicReads
from services.push.registrar import Registrar
from services.push.replay import NOT_YET, Replayer
from services.push.sequencer import Sequencer
from services.push.sockets import SocketHandler
from shared.cluster.routes import NodeCard, RouteReader, RouteWriter, directory
from shared.cluster.topic_log import TopicLog
from shared.delivery.inbox import Inbox
from shared.delivery.lifecycle import LifecycleWriter
from shared.delivery.store import MessageStore
from shared.delivery.webhook_feed import WebhookFeed
from shared.infra.clients import redis_alive, redis_client
from shared.infra.clock import now_ms
from shared.infra.serve import running

log = logging.getLogger(__name__)
WEBSOCKETS_LOG = logging.getLogger("websockets.server")  # given to each connection: by name, each looked it up
LISTEN_BACKLOG = 4096  # asyncio's 100 overflows in a reconnect storm (thousands of SYN retries of 1 s and more)


class PushNode:
    def __init__(self, config: PushConfig) -> None:
        self.config = config
        self.hub = Hub(config.max_buffered_bytes, config.write_backlog_bytes, config.bundle_ms / 1000)
        self.redis = redis_client(config.redis_url)
        self.writer = RouteWriter(self.redis, config.node_id, config.route_ttl, config.node_ttl)
        self.store = MessageStore(config.mongo_url, config.mongo_db)
        self.lifecycle = LifecycleWriter(self.store, config.lifecycle_flush, feed=WebhookFeed(self.redis), node=config.node_id)
        inbox = Inbox(self.redis)
        self.replayer = Replayer(self.hub, inbox, self.lifecycle, config.replay_limit, config.replay_page, config.replay_concurrency)
        self.registrar = Registrar(self.writer, self.hub, self.card, config.heartbeat_interval, self.replayer.catch_up)
        self.acks = Acks(inbox, self.lifecycle)
        self.keepalive = Keepalive(config.ping_interval)
        self.addresses = AddressCount(config.max_connections_per_address)
        self.drain = Drain(self.hub, self.registrar, self.other_nodes, config.drain_seconds)
        self.gate = Gate(config, self.hub, self.drain, self.addresses, self.health)
        reads = TopicReads(TopicLog(self.redis, config.namespaces))
        self.sequencer = Sequencer(reads)
        self.membership = Membership(self.redis, config.node_id, self.hub, config.namespaces, RouteReader(self.redis, config.internal_key))
        self.sockets = SocketHandler(config, self.hub, self.registrar, self.replayer, self.acks, self.drain, reads, self.membership,
                                     self.sequencer)

    def card(self) -> NodeCard:
        c = self.config
        return NodeCard(c.node_id, c.link_url, c.public_url, self.hub.connections, len(self.hub), now_ms()).sealed(c.internal_key)

    async def other_nodes(self) -> list[str]:
        """The public URLs of the other live nodes, least loaded first: where a drain sends this node's clients."""
        cards = await directory(RouteReader(self.redis, self.config.internal_key))
        return [card.public_url for card in cards if card.id != self.config.node_id]

    async def health(self) -> dict[str, Any]:
        redis_ok = await redis_alive(self.redis)
        return {"ok": redis_ok and not self.drain.started, "service": "push", "node": self.config.node_id, "redis": redis_ok,
                "draining": self.drain.started, "connections": self.hub.connections, "users": len(self.hub)}

    async def handle(self, ws: ServerConnection) -> None:
        """An upgraded socket, pinged while open: dispatch's link, or a browser's session."""
        self.keepalive.watch(ws)
        try:
            await self.serve(ws)
        finally:
            self.keepalive.unwatch(ws)

    async def serve(self, ws: ServerConnection) -> None:
        """Dispatch's link, or a browser's session (counted against its address while open)."""
        assert ws.request is not None  # set by the handshake
        assert isinstance(ws, SessionConnection)  # the server's create_connection
        if target_path(ws.request.path) == LINK_PATH:
            ws.send_held()
            # A dispatch instance opens a link when it finds this node live. Just after the card was gone (Redis
            # unreachable past NODE_TTL_SECONDS, say during a Redis failover) it had taken the node for dead and
            # left its users' messages in their inboxes: send the open sessions what waits there.
            if len(self.hub) and time.monotonic() - self.registrar.card_lost_at < 2 * self.config.node_ttl:
                self.replayer.catch_up("a dispatch link opened after the node card was gone")
            await serve_link(ws, self.hub, self.lifecycle, self.config.node_id, self.sequencer)
            return
        source = client_address(ws, self.config.trusted_proxies)
        self.addresses.opened(source)
        try:
            await self.sockets.serve(ws)
        finally:
            self.addresses.closed(source)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then: drain (withdraw, advise every client, close the rest with 1001), stop the
        loops and wait for them, close the server within the grace period, write the last acks and marks."""
        c = self.config
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: None if stop.done() else stop.set_result(None))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            self.sockets.verifier = TokenVerifier(c.auth_url, http, c.token_cache_size)
            server = await serve(
                self.handle, c.host, c.port, process_request=self.gate.process_request,
                process_response=self.gate.process_response, compression=None,
                ping_interval=None, max_size=c.max_frame_bytes,
                server_header=None, backlog=LISTEN_BACKLOG, logger=WEBSOCKETS_LOG, ssl=c.tls(),
                create_connection=ProxiedConnection if c.proxy_protocol else SessionConnection,
            )
            async with running(self.registrar.run_flusher(), self.registrar.run_heartbeat(), self.lifecycle.run(),
                               self.acks.run(), self.replayer.watch_epoch(c.heartbeat_interval), self.membership.run(),
                               self.keepalive.run()):
                log.info("push node listening", extra={"node": c.node_id, "url": c.public_url})
                await stop
                log.info("shutting down", extra={"node": c.node_id, "count": self.hub.connections})
                await self.drain.start()
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), c.shutdown_grace)
            except TimeoutError:
                log.warning("connections still open after the grace period; cancelling")
            try:
                await self.acks.flush()
                await self.lifecycle.flush()
            except NOT_YET as exc:
                log.warning("acks or lifecycle marks not written at shutdown", extra={"error": repr(exc)})
            await self.redis.aclose()
            await self.store.close()
        log.info("stopped", extra={"node": c.node_id})

"""What a push node answers over plain HTTP, and which websocket upgrades it lets through.

* ``/ws`` -- a browser's upgrade: refused with 503 while draining, 429 past the per-address cap (the address
  behind a trusted proxy, ``connection.py``);
* ``/internal`` -- dispatch's link, ``/internal/topics/{t}`` (a topic's user ids, for collect) and
  ``POST /v1/drain``: each signed with the internal key (``shared.wire.signing``), else 401;
* ``/healthz`` and ``/metrics``, like the HTTP services' (``shared.infra.web``).

Refusals take their status and body from the one error map (``shared.wire.errors``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from services.push.config import PushConfig
from services.push.connection import client_address
from services.push.drain import Drain
from services.push.hub import Hub
from services.push.limits import AddressCount
from services.push.metrics import SIGNED
from shared.infra.clock import now_ms
from shared.infra.metrics import exposition
from shared.infra.web import health_answer, refusal, require_ops
from shared.wire.errors import MethodNotAllowed, NotFound, ServiceError, Unavailable
from shared.wire.signing import PROOF_HEADER, LinkGuard, LinkRequest

LINK_PATH = "/internal"
TOPIC_USERS_PATH = "/internal/topics/"  # + a topic: its subscribers' user ids here (collect's GET /v1/topics/{t}?users=1)
TOPIC_USERS_LIMIT = 1000
DRAIN_PATH = "/v1/drain"  # POST, signed like the dispatch link: start draining this node


def target_path(target: str) -> str:
    """The path of an HTTP request's target: an origin-form one (``/ws?token=...``, what clients send) cut at its
    query, any other through ``urlsplit`` (a few µs, paid three times per connect when every target took it)."""
    return target.partition("?")[0] if target.startswith("/") else urlsplit(target).path


def http_response(body: bytes | dict[str, Any], status: int, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> Response:
    """A plain HTTP answer; websockets closes the connection after it, so it says so (a client must not reuse it)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    fields = [("Content-Type", content_type), ("Content-Length", str(len(data))), ("Connection", "close"), *(headers or {}).items()]
    return Response(status, HTTPStatus(status).phrase, Headers(fields), data)


class Gate:
    def __init__(self, config: PushConfig, hub: Hub, drain: Drain, addresses: AddressCount,
                 health: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.config = config
        self.hub = hub
        self.drain = drain
        self.addresses = addresses
        self.health = health
        self.guard = LinkGuard(config.internal_key, config.node_id)

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """An answer for a plain HTTP request or a refused upgrade; None lets the upgrade through."""
        path = target_path(request.path)
        try:
            if path == "/healthz":
                return http_response(*health_answer(await self.health()))
            if path == "/metrics":
                require_ops(request.headers, self.config.ops_guard)
                body, content_type = exposition()
                return http_response(body, 200, content_type=content_type)
            if path in (LINK_PATH, DRAIN_PATH) or path.startswith(TOPIC_USERS_PATH):
                purpose = "topic_users" if path.startswith(TOPIC_USERS_PATH) else "link" if path == LINK_PATH else "drain"
                self.guard.admit(request.headers, request.method, unquote(path), purpose, now_ms())
                SIGNED.labels(purpose).inc()
                return self.internal(path, request)
            if path == "/ws":
                if self.drain.started:
                    raise Unavailable("this node is draining: connect to another node")
                self.addresses.check(client_address(connection, self.config.trusted_proxies))
                return None
            raise NotFound("no such path")
        except ServiceError as exc:
            return http_response(*refusal(exc, path))

    def internal(self, path: str, request: Request) -> Response | None:
        """An admitted internal request: the link's upgrade, a drain, or a topic's users."""
        if path == LINK_PATH:
            return None
        if path == DRAIN_PATH:
            if request.method != "POST":
                raise MethodNotAllowed("POST starts a drain")
            self.drain.start()
            return http_response({"draining": True, "connections": self.hub.connections,
                                  "drain_seconds": self.config.drain_seconds}, 202)
        users, truncated = self.hub.topic_users(unquote(path.removeprefix(TOPIC_USERS_PATH)), TOPIC_USERS_LIMIT)
        return http_response({"users": users, "truncated": truncated}, 200)

    def process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        """On an admitted dispatch link, prove this node holds the internal key too (bound to dispatch's nonce)."""
        if response.status_code == 101 and target_path(request.path) == LINK_PATH:
            link = LinkRequest.from_headers(request.headers, request.method, LINK_PATH)
            response.headers[PROOF_HEADER] = link.answer(self.config.internal_key)

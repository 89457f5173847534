"""collect's browser-facing routes: what a web page needs to reach the cluster, and two pages.

Always served (read-only; the stats and the dashboard to operators only in production, ``OPS_KEY``):

* ``GET /v1/nodes`` -- live push nodes, least loaded first, with the websocket URL browsers use;
* ``GET /v1/stats`` -- a cumulative snapshot for the dashboard (see ``stats.py``), with each priority tier's
  backlog and whether it is shed (``shedding.py``) and each webhook endpoint's queue and outcomes;
* ``GET /dashboard`` and ``GET /static/...`` -- the live dashboard, the JavaScript client, the CSS. In
  production the browser asks for the key (HTTP Basic, any user name) and sends it with the page's fetches.

Development only (absent when ``APP_ENV=production``, because they hand out tokens for any user and
send as a business system without a key):

* ``POST /dev/tokens`` ``{"user_id", "ttl_seconds"?, "topics"?}`` -- a token from auth, asked with the admin key
  (``topics`` becomes the token's claim: the topics the page may subscribe to);
* ``POST /dev/messages`` -- exactly ``POST /v1/messages``, as the first configured business system;
* ``GET /demo`` -- the demo page using both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from services.collect.config import CollectConfig
from services.collect.stats import gather_stats
from shared.cluster.routes import RouteReader, directory
from shared.delivery.inbox import Inbox
from shared.delivery.webhook_endpoints import EndpointStore
from shared.delivery.webhook_queue import WebhookQueues
from shared.infra.clients import REDIS_FAILURES
from shared.infra.web import json_response, read_json, require_ops, timed
from shared.wire.errors import Unavailable

Handler = Callable[[Request], Awaitable[Response]]

STATIC = Path(__file__).parent / "static"
AUTH_TIMEOUT = aiohttp.ClientTimeout(total=5)
MAX_TOKEN_BODY = 4096


def page(name: str, ops_key: str | None = None) -> Handler:
    """A handler serving one HTML page from ``static/`` (to operators only, with ``ops_key``: see ``require_ops``)."""

    async def serve(request: Request) -> Response:
        require_ops(request.headers, ops_key)
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return serve


def as_sender(request: Request, api_key: str) -> Request:
    """The same request (body unread) presenting ``api_key``, so the page never holds the business key."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    scope = {**request.scope, "headers": [*headers, (b"authorization", f"Bearer {api_key}".encode())]}
    return Request(scope, request.receive)


def console_routes(config: CollectConfig, reader: RouteReader, inbox: Inbox, post_messages: Handler,
                   tiers: Callable[[], dict[str, Any]], endpoints: EndpointStore, queues: WebhookQueues) -> list[BaseRoute]:
    """The routes above; ``post_messages`` is collect's own ``POST /v1/messages`` handler, reused as is; ``tiers``
    reports each priority tier's backlog and shedding (``shedding.py``); ``endpoints`` and ``queues`` are the webhook
    endpoints' registry and queues."""

    link_tls = config.link_tls()  # the nodes' /metrics over https, if they serve TLS

    async def nodes(_: Request) -> Response:
        try:
            cards = await directory(reader)
        except REDIS_FAILURES as exc:
            raise Unavailable.of("Redis", exc) from None
        body = [{"id": c.id, "url": c.public_url, "connections": c.connections, "users": c.users} for c in cards]
        return json_response({"nodes": body}, headers={"Cache-Control": "no-store"})

    async def stats(request: Request) -> Response:
        require_ops(request.headers, config.ops_guard)
        snapshot = await gather_stats(reader, inbox, config.dispatch_url, config.ops_key, link_tls, endpoints, queues)
        return json_response({**snapshot, "tiers": tiers()}, headers={"Cache-Control": "no-store"})

    async def dev_token(request: Request) -> Response:
        body = await read_json(request, MAX_TOKEN_BODY)
        ask = {"user_id": body.get("user_id"), "ttl_seconds": body.get("ttl_seconds", 3600)}
        if "topics" in body:  # auth validates them (names or 'prefix:*' patterns)
            ask["topics"] = body["topics"]
        try:
            async with aiohttp.ClientSession(timeout=AUTH_TIMEOUT) as session, \
                    session.post(f"{config.auth_url}/v1/tokens", json=ask,
                                 headers={"Authorization": f"Bearer {config.auth_admin_key}"}) as answer:
                return Response(await answer.read(), answer.status, media_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable.of("auth", exc) from None

    first_key = next(iter(config.api_keys), "")  # no key configured: the post is refused with 401

    async def dev_messages(request: Request) -> Response:
        return await post_messages(as_sender(request, first_key))

    routes: list[BaseRoute] = [
        Route("/v1/nodes", timed("nodes", nodes)),
        Route("/v1/stats", timed("stats", stats)),
        Route("/dashboard", page("dashboard.html", config.ops_guard)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if not config.production:
        routes += [
            Route("/demo", page("demo.html")),
            Route("/dev/tokens", dev_token, methods=["POST"]),
            Route("/dev/messages", dev_messages, methods=["POST"]),
        ]
    return routes

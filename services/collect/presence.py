"""Who is online and who listens to a topic, for business systems (with their API key). Reads only.

* ``GET /v1/presence/{user_id}`` -> ``{"user_id", "online", "connections", "nodes"}``;
* ``POST /v1/presence`` ``{"user_ids": [1 to 1000 ids]}`` -> ``{"online": {user_id: sockets, ...}}``;
* ``GET /v1/topics/{topic}`` -> ``{"topic", "subscribers", "nodes"}``; with ``?users=1`` also ``"users"``
  (at most 1,000, then ``"truncated": true``), asked of each node holding the topic on its internal
  path, signed with the internal key like the dispatch link (``shared.wire.signing``), and reused for
  ``TOPIC_USERS_CACHE_SECONDS`` (``TopicUsers``).

The counts are what push nodes write when a socket opens, closes, subscribes or unsubscribes
(``route:{user}`` and ``topic:{name}``, see ``shared.cluster.routes`` and ``shared.cluster.topic_holders``), never per
message; only nodes whose card is live count, so a node that dies stops counting within its
``NODE_TTL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.collect.scopes import Scope
from shared.cluster.routes import NodeCard, RouteReader
from shared.cluster.topic_holders import TopicReader
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.infra.web import json_response, read_json, timed
from shared.model.topics import valid_topic
from shared.wire.errors import InvalidFields, PayloadTooLarge, Unavailable
from shared.wire.protocol import valid_user_id
from shared.wire.signing import LinkRequest

MAX_USERS = 1000
NODE_TIMEOUT = aiohttp.ClientTimeout(total=5)


def users_url(card: NodeCard, topic: str) -> str:
    """The node's internal HTTP path listing a topic's subscribers (its link URL, over HTTP)."""
    link = urlsplit(card.link_url)
    return f"{'https' if link.scheme == 'wss' else 'http'}://{link.netloc}/internal/topics/{quote(topic, safe='')}"


def merged(answers: list[dict[str, Any]], limit: int) -> tuple[list[str], bool]:
    """The nodes' lists of a topic's users as one sorted list of at most ``limit``, and whether any was cut."""
    users = sorted({u for a in answers for u in a["users"]})
    return users[:limit], len(users) > limit or any(a["truncated"] for a in answers)


class TopicUsers:
    """Each topic's user ids, asked of the nodes holding it at most once per ``ttl`` seconds however many calls want
    them: concurrent calls share one round of signed requests and later ones reuse its answer, so a flood of
    ``?users=1`` calls never becomes a flood of signed requests to the nodes."""

    def __init__(self, internal_key: str, ttl: float, tls: ssl.SSLContext | None = None, capacity: int = 10_000) -> None:
        self.internal_key = internal_key
        self.ttl = ttl
        self.tls = tls  # verifies an https:// node (one serving wss://)
        self.capacity = capacity
        self._answers: OrderedDict[tuple[str, tuple[str, ...]], tuple[float, asyncio.Task[tuple[list[str], bool]]]] = OrderedDict()

    async def get(self, name: str, cards: list[NodeCard]) -> tuple[list[str], bool]:
        """The topic's user ids from each node holding it, merged, at most ``MAX_USERS``, and whether any was cut."""
        key, now = (name, tuple(c.id for c in cards)), time.monotonic()
        kept = self._answers.get(key)
        if kept is None or kept[0] <= now:
            task = asyncio.ensure_future(self._ask_all(name, cards))
            task.add_done_callback(lambda done: self._forget_failed(key, done))
            kept = self._answers[key] = (now + self.ttl, task)
            self._answers.move_to_end(key)
            while len(self._answers) > self.capacity:
                self._answers.popitem(last=False)
        return await asyncio.shield(kept[1])

    def _forget_failed(self, key: tuple[str, tuple[str, ...]], done: asyncio.Task[tuple[list[str], bool]]) -> None:
        kept = self._answers.get(key)
        if kept is not None and kept[1] is done and (done.cancelled() or done.exception() is not None):
            del self._answers[key]

    async def _ask_all(self, name: str, cards: list[NodeCard]) -> tuple[list[str], bool]:
        try:
            async with aiohttp.ClientSession(timeout=NODE_TIMEOUT, connector=aiohttp.TCPConnector(ssl=self.tls or True)) as session:
                answers = await asyncio.gather(*(self._ask(session, c, name) for c in cards))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable.of("a push node", exc) from None
        return merged(answers, MAX_USERS)

    async def _ask(self, session: aiohttp.ClientSession, card: NodeCard, name: str) -> dict[str, Any]:
        url = users_url(card, name)
        headers = LinkRequest.make(self.internal_key, card.id, now_ms(), "GET", unquote(urlsplit(url).path)).headers()
        async with session.get(url, headers=headers) as answer:
            if answer.status != 200:
                raise Unavailable(f"node {card.id} answered {answer.status}")
            body: dict[str, Any] = await answer.json()
            return body


def presence_routes(reader: RouteReader, topics: TopicReader, subscribers: TopicUsers,
                    scope_of: Callable[[Request], Scope]) -> list[BaseRoute]:
    async def live() -> dict[str, NodeCard]:
        try:
            return await reader.live_nodes()
        except REDIS_FAILURES as exc:
            raise Unavailable.of("Redis", exc) from None

    async def sockets(user_ids: list[str]) -> dict[str, dict[str, int]]:
        nodes = await live()
        try:
            return await reader.sockets(user_ids, nodes)
        except REDIS_FAILURES as exc:
            raise Unavailable.of("Redis", exc) from None

    async def one_user(request: Request) -> Response:
        scope = scope_of(request)
        user_id = request.path_params["user_id"]
        if not valid_user_id(user_id):
            raise InvalidFields("user ids are 1-128 characters of letters, digits and _ . @ -")
        scope.check_users([user_id])
        nodes = (await sockets([user_id])).get(user_id, {})
        return json_response({"user_id": user_id, "online": bool(nodes), "connections": sum(nodes.values()),
                              "nodes": sorted(nodes)})

    async def many_users(request: Request) -> Response:
        scope = scope_of(request)
        user_ids = (await read_json(request, 256 * 1024)).get("user_ids")
        if not isinstance(user_ids, list) or not user_ids or not all(valid_user_id(u) for u in user_ids):
            raise InvalidFields(f"body must be {{\"user_ids\": [1 to {MAX_USERS} user ids]}}")
        if len(user_ids) > MAX_USERS:
            raise PayloadTooLarge(f"{len(user_ids)} user ids; the limit is {MAX_USERS}")
        scope.check_users(user_ids)
        found = await sockets(list(dict.fromkeys(user_ids)))
        return json_response({"online": {u: sum(found.get(u, {}).values()) for u in user_ids}})

    async def topic(request: Request) -> Response:
        scope = scope_of(request)
        name = request.path_params["topic"]
        if not valid_topic(name):
            raise InvalidFields("topics are 1-128 characters of letters, digits and _ . : @ -")
        scope.check_topic(name)
        nodes = await live()
        try:
            holding = (await topics.counts([name], nodes)).get(name, {})
        except REDIS_FAILURES as exc:
            raise Unavailable.of("Redis", exc) from None
        body: dict[str, object] = {"topic": name, "subscribers": sum(holding.values()), "nodes": len(holding)}
        if request.query_params.get("users") in ("1", "true"):
            users, truncated = await subscribers.get(name, [nodes[n] for n in sorted(holding)])
            body |= {"users": [u for u in users if scope.allows_user(u)], "truncated": truncated}
        return json_response(body)

    return [
        Route("/v1/presence/{user_id}", timed("presence", one_user), methods=["GET"]),
        Route("/v1/presence", timed("presence_many", many_users), methods=["POST"]),
        Route("/v1/topics/{topic}", timed("topic", topic), methods=["GET"]),
    ]

"""A topic's recent messages, for business systems (with their API key): what a subscriber could recover.

``GET /v1/topics/{topic}/history?since=<offset>&limit=<n>`` -> ``{"topic", "epoch", "offset", "messages": [...],
"complete"}``: the messages after offset ``since`` (default 0: all it keeps), oldest first, at most ``limit``
(default and most ``MAX_LIMIT``), each the frame a subscriber receives (with its ``offset`` and ``epoch``);
``offset`` is the topic's current position and ``complete`` says whether every message after ``since`` up to the
``limit`` is there (false: the history no longer reaches back that far). ``*`` is the broadcasts' history. The topic's
namespace decides how much is kept (``TOPIC_NAMESPACES``, ``shared.model.topics``).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.collect.scopes import Scope
from shared.cluster.topic_log import TopicLog
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.infra.web import timed
from shared.model.message import BROADCAST
from shared.model.topics import Position, valid_topic
from shared.wire.errors import InvalidFields, Unavailable
from shared.wire.protocol import with_position

MAX_LIMIT = 1000


def whole_number(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    """Query parameter ``name`` as an integer in [low, high], else ``InvalidFields`` naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise InvalidFields(f"'{name}' must be an integer from {low}" + (f" to {high}" if high is not None else ""))
    return value


def history_routes(log: TopicLog, scope_of: Callable[[Request], Scope]) -> list[BaseRoute]:
    async def history(request: Request) -> Response:
        scope = scope_of(request)
        name = request.path_params["topic"]
        if name != BROADCAST and not valid_topic(name):
            raise InvalidFields(f"topics are 1-128 characters of letters, digits and _ . : @ -, or {BROADCAST} (broadcasts)")
        scope.check_topic(name)
        since = whole_number(request, "since", 0, 0)
        limit = whole_number(request, "limit", MAX_LIMIT, 1, MAX_LIMIT)
        try:
            state = (await log.read({name: since}, now_ms(), limit))[name]
        except REDIS_FAILURES as exc:
            raise Unavailable.of("Redis", exc) from None
        position = state.position
        messages = [m for m in state.history if m.offset > since][:limit]
        complete = since >= position.offset or bool(messages and messages[0].offset == since + 1)
        frames = b",".join(with_position(m.frame, Position(m.offset, position.epoch)) for m in messages)
        head = orjson.dumps({"topic": name, "epoch": position.epoch, "offset": position.offset, "complete": complete})
        return Response(head[:-1] + b',"messages":[' + frames + b"]}", media_type="application/json")

    return [Route("/v1/topics/{topic}/history", timed("topic_history", history), methods=["GET"])]

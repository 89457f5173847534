"""collect's HTTP surface and wiring: authenticate the business system, store, then hand to dispatch."""

from __future__ import annotations

import contextlib
import hmac
import logging
from typing import AsyncIterator

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.collect.config import CollectConfig
from services.collect.intake import Limits, parse_body
from shared.clients import redis_client
from shared.errors import Unauthorized, Unavailable
from shared.metrics import MESSAGES_IN, MESSAGES_OUT
from shared.routing import now_ms
from shared.store import MessageStore
from shared.stream import DeliveryStream
from shared.web import EXCEPTION_HANDLERS, bearer, json_response, ops_routes, read_json, timed

log = logging.getLogger(__name__)


def sender_of(request: Request, api_keys: dict[str, str]) -> str:
    """The business system's name for a valid API key, or 401."""
    presented = bearer(request)
    for key, name in api_keys.items():
        if hmac.compare_digest(presented, key):
            return name
    raise Unauthorized("unknown API key")


def create_app(config: CollectConfig) -> Starlette:
    redis = redis_client(config.redis_url)
    store = MessageStore(config.mongo_url, config.mongo_db)
    stream = DeliveryStream(redis)
    limits = Limits(config.max_payload_bytes, config.max_batch, config.max_recipients, config.message_ttl_seconds)

    async def post_messages(request: Request) -> Response:
        sender = sender_of(request, config.api_keys)
        postings = parse_body(await read_json(request, config.max_body_bytes), limits, now_ms())
        await store.insert([r for p in postings for r in p.records(sender)])
        deliveries = [d for p in postings for d in p.deliveries()]
        MESSAGES_IN.inc(len(deliveries))
        try:
            await stream.enqueue(deliveries)
        except RedisError as exc:
            raise Unavailable(f"Redis: {exc}") from None
        MESSAGES_OUT.inc(len(deliveries))
        ids = [p.message_id for p in postings]
        for p in postings:
            log.info("accepted", extra={"message_id": p.message_id, "user_id": ",".join(p.user_ids)})
        return json_response({"id": ids[0], "ids": ids} if len(ids) == 1 else {"ids": ids}, 202)

    async def health() -> dict[str, object]:
        mongo_ok = await store.ping()
        try:
            redis_ok = bool(await redis.ping())
        except RedisError:
            redis_ok = False
        return {"ok": mongo_ok and redis_ok, "service": "collect", "mongo": mongo_ok, "redis": redis_ok}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            await store.prepare()
        except Unavailable as exc:
            log.warning("indexes not created yet", extra={"error": exc.message})
        yield
        await redis.aclose()
        await store.close()

    routes = [Route("/v1/messages", timed("post_messages", post_messages), methods=["POST"]), *ops_routes(health)]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)

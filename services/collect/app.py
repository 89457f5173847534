"""collect's HTTP surface and wiring: authenticate the business system, store, then hand to dispatch."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.collect.acceptance import Acceptance
from services.collect.config import CollectConfig
from services.collect.console import console_routes
from services.collect.history import history_routes
from services.collect.intake import Limits, parse_body
from services.collect.openapi import spec
from services.collect.presence import TopicUsers, presence_routes
from services.collect.quotas import DELIVERIES, PRESENCE, KeyRates, PendingSchedules
from services.collect.scopes import EVERYTHING, Scope
from services.collect.shedding import Shedder
from services.collect.webhooks import webhook_routes
from shared.cluster.routes import RouteReader
from shared.cluster.topic_holders import TopicReader
from shared.cluster.topic_log import TopicLog
from shared.delivery.handover import Handover
from shared.delivery.inbox import Inbox
from shared.delivery.store import MessageStore
from shared.delivery.stream import Backlog, ShardedStream
from shared.delivery.webhook_endpoints import EndpointStore
from shared.delivery.webhook_feed import WebhookFeed
from shared.delivery.webhook_queue import WebhookQueues
from shared.infra import tracing
from shared.infra.background import Background
from shared.infra.breaker import OPEN, CircuitBreaker
from shared.infra.clients import REDIS_FAILURES, redis_alive, redis_client
from shared.infra.clock import now_ms
from shared.infra.config import same_secret
from shared.infra.metrics import MESSAGES_IN
from shared.infra.retry import Backoff
from shared.infra.serve import running
from shared.infra.web import EXCEPTION_HANDLERS, bearer, json_response, ops_routes, read_json, timed
from shared.model.message import Message, is_message_id
from shared.model.priority import TIERS, Priority, post_tier
from shared.model.webhook_events import Fact
from shared.wire.errors import NotFound, Unauthorized, Unavailable
from shared.wire.openapi import openapi_route
from shared.wire.webhook_urls import UrlPolicy

log = logging.getLogger(__name__)


def sender_of(request: Request, api_keys: dict[str, str]) -> str:
    """The business system's name for a valid API key, or 401."""
    presented = bearer(request)
    for key, name in api_keys.items():
        if same_secret(presented, key):
            return name
    raise Unauthorized("unknown API key")


def create_app(config: CollectConfig) -> Starlette:
    redis = redis_client(config.redis_url)
    store = MessageStore(config.mongo_url, config.mongo_db)
    inbox = Inbox(redis, config.inbox_limit)
    stream = ShardedStream(redis, config.stream_maxlen, config.stream_shards)
    handover = Handover(redis, inbox, stream, config.replica_acks, config.replica_ack_ms)
    feed = WebhookFeed(redis)
    redis_breaker = CircuitBreaker("redis", failures=REDIS_FAILURES)
    limits = Limits(config.max_payload_bytes, config.max_batch, config.max_recipients, config.message_ttl_seconds,
                    config.max_deliveries)

    acceptance = Acceptance(store, handover, redis_breaker, config.handover_while_storing)

    def storing() -> dict[Priority, Backlog]:
        """Per tier, the posts waiting for their write here, and when the oldest arrived."""
        now = now_ms()
        return {tier: Backlog(calls, now - int(waited * 1000) if calls else None)
                for tier in TIERS for calls, waited in [acceptance.backlog(tier)]}

    shedder = Shedder(stream, config.shed_thresholds, config.shed_sample_ms, storing)
    rates = KeyRates({DELIVERIES: config.key_delivery_rate, PRESENCE: config.key_presence_rate})
    pending = PendingSchedules(redis, config.key_max_scheduled)

    def presence_access(request: Request) -> Scope:
        """A presence or topic query: its key's scope, once its rate allows the query."""
        sender = sender_of(request, config.api_keys)
        rates.spend(PRESENCE, sender, 1)
        return config.api_scopes.get(sender, EVERYTHING)

    async def post_messages(request: Request) -> Response:
        sender = sender_of(request, config.api_keys)
        body = await read_json(request, config.max_body_bytes)
        idempotency_key = request.headers.get("idempotency-key")
        accepted_at = now_ms()
        messages = parse_body(body, limits, accepted_at, sender, idempotency_key)
        config.api_scopes.get(sender, EVERYTHING).check_messages(messages)
        rates.spend(DELIVERIES, sender, sum(max(1, len(m.users)) for m in messages))
        tier = post_tier(m.priority for m in messages)
        shedder.admit(tier)
        for name, breaker in (("Redis", redis_breaker), ("MongoDB", store.breaker)):
            if breaker.state == OPEN:
                raise Unavailable(f"{name} is unavailable (circuit open); nothing was stored")
        with tracing.span("collect.post", sender=sender, messages=len(messages)) as trace:
            if trace:  # tracing is on: the post's stream entry carries its span on to dispatch
                messages = [replace(m, trace=trace) for m in messages]
            await redis_breaker.call(lambda: pending.admit(sender, messages, accepted_at))
            refusal = await acceptance.accept(tier, messages, keyed=idempotency_key is not None)
            if refusal is not None:
                raise refusal
            await pending.record(sender, messages, accepted_at)
        MESSAGES_IN.inc(len(messages))
        ids = [m.id for m in messages]
        return json_response({"id": ids[0], "ids": ids} if len(ids) == 1 else {"ids": ids}, 202)

    async def message_status(request: Request) -> Response:
        """The lifecycle of one message, per recipient (per node counts for a topic or broadcast message); only the
        business system that posted it may look."""
        sender = sender_of(request, config.api_keys)
        message_id = request.path_params["message_id"]
        status = await store.lifecycle(message_id, sender) if is_message_id(message_id) else None
        if status is None:
            raise NotFound(f"no message {message_id!r} for this API key")
        return json_response(status)

    put_backs = Background()

    async def put_back(message: Message) -> bool:
        """Hold a message whose cancel could not be recorded back in the schedule, no longer recorded as cancelled, its
        cancel note dropped; if Redis fails that too, keep trying in the background until it takes it (``restore`` is
        idempotent), so the message is never lost. False if dispatch's reconciler claimed the note meanwhile (a record
        slower than ``CANCEL_GRACE_SECONDS``): the cancel stands, and the reconciler records it."""
        try:
            if await redis_breaker.call(lambda: handover.schedule.restore(message)):
                return True
            log.warning("cancel not recorded here, but dispatch's reconciler has taken it over: it stands",
                        extra={"id": message.id})
            return False
        except Exception as exc:
            log.error("could not put a message whose cancel failed back in the schedule; retrying",
                      extra={"id": message.id, "error": repr(exc)})

        async def keep_trying() -> None:
            backoff = Backoff()
            while True:
                try:
                    if await redis_breaker.call(lambda: handover.schedule.restore(message)):
                        log.info("message put back in the schedule", extra={"id": message.id})
                    else:
                        log.warning("message not put back: dispatch's reconciler recorded its cancel meanwhile",
                                    extra={"id": message.id})
                    return
                except Exception as exc:
                    await backoff.failed(log, f"putting message {message.id} back in the schedule", exc)

        put_backs.start(keep_trying())
        return True

    async def cancel_message(request: Request) -> Response:
        """Cancel a scheduled message that has not fired yet; only the business system that posted it may. The
        schedule's script decides (it or a firing dispatch wins, never both) and, in the same step, notes the cancel
        with its time in Redis (``shared.delivery.schedule``); then MongoDB records it, the ``message.cancelled`` fact
        is appended to the webhooks stream, and only then is the note dropped. If collect dies in between, or Redis
        fails under the fact, dispatch's reconciler finds the note after ``CANCEL_GRACE_SECONDS`` and records and
        appends it itself, under the same time. If the record fails for any reason (MongoDB down, or the document
        refused) the message goes back in the schedule as it was, its note dropped, and the answer is 503: a cancel is
        either recorded (or noted for dispatch to record) or undone, never a 500 with the message gone. A record
        failing after the reconciler has claimed the note (a request slower than the grace) is not undone: the cancel
        stands and the answer is 200. One window is left: a put-back that Redis keeps refusing (in the background,
        after the 503) for longer than the grace can lose to the reconciler, which then records the cancel the 503
        called undone."""
        sender = sender_of(request, config.api_keys)
        message_id = request.path_params["message_id"]
        schedule = handover.schedule
        cancel = await redis_breaker.call(lambda: schedule.cancel(message_id, sender)) if is_message_id(message_id) else None
        if cancel is None:
            raise NotFound(f"no scheduled message {message_id!r} waiting for this API key (unknown, or already fired)")
        message, at = cancel
        recorded = True
        try:
            await store.record_cancelled(message, at)
        except Exception as exc:
            if await put_back(message):
                log.warning("cancel not recorded; the message is scheduled again", extra={"id": message_id, "error": repr(exc)})
                raise Unavailable("the cancel could not be recorded; the message is still scheduled", detail=str(exc)) from exc
            recorded = False
        log.info("scheduled message cancelled", extra={"id": message_id, "sender": sender, "due": message.due_ms})
        await pending.forget(sender, message_id)
        if recorded:
            try:
                await feed.publish([Fact("cancelled", message_id, "", at)])
                await schedule.forget_cancels([message_id])
            except REDIS_FAILURES as exc:  # the note stays: dispatch's reconciler records and appends it again
                log.warning("message.cancelled not appended yet; left to dispatch's reconciler",
                            extra={"id": message_id, "error": repr(exc)})
        return json_response({"id": message_id, "state": "cancelled"})

    async def health() -> dict[str, object]:
        mongo_ok = await store.ping()
        redis_ok = await redis_alive(redis)
        return {"ok": mongo_ok and redis_ok, "service": "collect", "mongo": mongo_ok, "redis": redis_ok,
                "breakers": {"mongodb": store.breaker.state, "redis": redis_breaker.state}, "tiers": shedder.report()}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            await store.prepare()
            acceptance.store_trusted = True  # the store answered a write: the first posts need not go insert-first
        except Unavailable as exc:
            log.warning("indexes not created yet", extra={"error": str(exc)})
        async with running(shedder.run()):
            yield
        await redis.aclose()
        await store.close()

    reader = RouteReader(redis, config.internal_key)
    endpoints, queues = EndpointStore(store.client, config.mongo_db, redis, store.breaker), WebhookQueues(redis)
    routes = [
        Route("/v1/messages", timed("post_messages", post_messages), methods=["POST"]),
        Route("/v1/messages/{message_id}", timed("message_status", message_status), methods=["GET"]),
        Route("/v1/messages/{message_id}", timed("cancel_message", cancel_message), methods=["DELETE"]),
        *ops_routes(health, config.ops_guard),
        *console_routes(config, reader, inbox, post_messages, shedder.report, endpoints, queues),
        *presence_routes(reader, TopicReader(redis), TopicUsers(config.internal_key, config.topic_users_cache_seconds, config.link_tls()),
                         presence_access),
        *history_routes(TopicLog(redis, config.namespaces), presence_access),
        *webhook_routes(endpoints, queues, redis_breaker,
                        UrlPolicy.of(config.production, config.webhook_allow_private), lambda request: sender_of(request, config.api_keys)),
        openapi_route(spec(config.production)),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)

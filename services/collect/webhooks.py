"""Webhook endpoints, for business systems (with their API key): register, list, remove, rotate, failures, replay.

* ``POST /v1/webhooks`` ``{"url", "events": [...], "include_payload"?}`` -> 201 ``{"id", "url", "events",
  "include_payload", "secret"}``; the URL is checked against ``shared.wire.webhook_urls``;
* ``GET /v1/webhooks`` -> ``{"webhooks": [...]}``, each with ``disabled`` (null, or why the webhooks service
  stopped sending to it: ``"answered 410 Gone"``) and its counts (queued, failures, sent, failed attempts,
  dropped, last error);
* ``DELETE /v1/webhooks/{id}``; ``POST /v1/webhooks/{id}/rotate`` -> ``{"id", "secret"}`` (the old secret
  signs too for 24 h);
* ``GET /v1/webhooks/{id}/failures`` -> the events past their last attempt (the first 1,000), and
  ``POST /v1/webhooks/{id}/replay`` queues them all again.

An endpoint belongs to the key that made it: another key gets 404 for it. The webhooks service
(``services/webhooks``) does the sending; this module only writes MongoDB and the endpoint's queues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shared.delivery.webhook_endpoints import Endpoint, EndpointStore
from shared.delivery.webhook_queue import Queued, WebhookQueues
from shared.infra.breaker import CircuitBreaker
from shared.infra.clock import now_ms
from shared.infra.web import json_response, read_json, timed
from shared.model.webhook_events import EVENT_TYPES
from shared.wire.errors import InvalidFields, NotFound
from shared.wire.webhook_urls import UrlPolicy, check_resolved

FAILURES_SHOWN = 1000
FIELDS = {"url", "events", "include_payload"}


def registration(body: dict[str, Any]) -> tuple[str, list[str], bool]:
    """The URL (unchecked), event types and payload choice of a registration body, or ``InvalidFields``."""
    unknown = set(body) - FIELDS
    if unknown:
        raise InvalidFields(f"unknown fields: {', '.join(sorted(unknown))}")
    events, include_payload = body.get("events"), body.get("include_payload", False)
    if not isinstance(events, list) or not events or not all(isinstance(e, str) and e in EVENT_TYPES for e in events):
        raise InvalidFields(f"events must be a non-empty list of {', '.join(EVENT_TYPES)}")
    if not isinstance(include_payload, bool):
        raise InvalidFields("include_payload must be true or false")
    return body.get("url"), list(dict.fromkeys(events)), include_payload  # type: ignore[return-value]


def failure(queued: Queued) -> dict[str, Any]:
    """A failed event as the failure list shows it: its id, the event itself, attempts and the last error."""
    event = orjson.loads(queued.body)
    return {"webhook_id": queued.webhook_id, **event, "attempts": queued.attempts, "last_error": queued.error or None,
            "failed_at": queued.at}


def webhook_routes(endpoints: EndpointStore, queues: WebhookQueues, redis_breaker: CircuitBreaker, policy: UrlPolicy,
                   authenticate: Callable[[Request], str]) -> list[BaseRoute]:
    async def owned(request: Request) -> Endpoint:
        sender = authenticate(request)
        endpoint_id = request.path_params["endpoint_id"]
        endpoint = await endpoints.get(endpoint_id, sender)
        if endpoint is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r} for this API key")
        return endpoint

    async def create(request: Request) -> Response:
        sender = authenticate(request)
        url, events, include_payload = registration(await read_json(request, 16 * 1024))
        await check_resolved(url, policy)
        endpoint, secret = await endpoints.create(sender, url, events, include_payload, now_ms())
        return json_response({**endpoint.public(), "secret": secret}, 201)

    async def listing(request: Request) -> Response:
        mine = await endpoints.owned(authenticate(request))
        counts = await redis_breaker.call(lambda: queues.report([e.id for e in mine]))
        return json_response({"webhooks": [{**e.public(), "stats": counts[e.id]} for e in mine]})

    async def delete(request: Request) -> Response:
        endpoint = await owned(request)
        await endpoints.delete(endpoint)
        await redis_breaker.call(lambda: queues.remove(endpoint.id))
        return json_response({"id": endpoint.id, "deleted": True})

    async def rotate(request: Request) -> Response:
        endpoint = await owned(request)
        return json_response({"id": endpoint.id, "secret": await endpoints.rotate(endpoint, now_ms())})

    async def failures(request: Request) -> Response:
        endpoint = await owned(request)
        failed = await redis_breaker.call(lambda: queues.failures(endpoint.id, FAILURES_SHOWN))
        return json_response({"id": endpoint.id, "failures": [failure(q) for q in failed]})

    async def replay(request: Request) -> Response:
        endpoint = await owned(request)
        replayed = await redis_breaker.call(lambda: queues.replay(endpoint.id, now_ms()))
        return json_response({"id": endpoint.id, "replayed": replayed}, 202)

    return [
        Route("/v1/webhooks", timed("webhook_create", create), methods=["POST"]),
        Route("/v1/webhooks", timed("webhook_list", listing), methods=["GET"]),
        Route("/v1/webhooks/{endpoint_id}", timed("webhook_delete", delete), methods=["DELETE"]),
        Route("/v1/webhooks/{endpoint_id}/rotate", timed("webhook_rotate", rotate), methods=["POST"]),
        Route("/v1/webhooks/{endpoint_id}/failures", timed("webhook_failures", failures), methods=["GET"]),
        Route("/v1/webhooks/{endpoint_id}/replay", timed("webhook_replay", replay), methods=["POST"]),
    ]

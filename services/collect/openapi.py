"""collect's public HTTP API as an OpenAPI 3.1 document (served at ``GET /openapi.json``).

Limits an operator can change (``MAX_BATCH``, ``MAX_RECIPIENTS``, ``MAX_PAYLOAD_BYTES``, ...) are
named in descriptions with their defaults, not as schema bounds, so the document stays true.
"""

from __future__ import annotations

from typing import Any

from services.collect.intake import MAX_DELAY_SECONDS, MAX_IDEMPOTENCY_KEY, MAX_TTL_SECONDS, PRIORITIES
from shared.model.topics import MAX_PATTERNS
from shared.model.webhook_events import EVENT_TYPES
from shared.wire.errors import (
    InvalidFields,
    MalformedRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from shared.wire.openapi import USER_ID, document, errors, json_body, ok

TOPIC = {"type": "string", "pattern": r"^[A-Za-z0-9_.:@-]{1,128}$"}
MESSAGE = {
    "type": "object", "required": ["payload"],
    "description": "one message: for 'user_id' or 'user_ids' (at most MAX_RECIPIENTS, 1,000 by default), for every "
                   "socket subscribed to 'topic', or for every socket ('broadcast': true); the payload's frame at most "
                   "MAX_PAYLOAD_BYTES (64 KiB by default)",
    "properties": {
        "user_id": USER_ID,
        "user_ids": {"type": "array", "items": USER_ID, "minItems": 1, "uniqueItems": True},
        "topic": TOPIC,
        "broadcast": {"const": True},
        "payload": {"description": "any JSON value, delivered as is"},
        "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS,
                        "description": "how long it may wait for an offline user (MESSAGE_TTL_SECONDS, 7 days, by default)"},
        "deliver_at": {"type": "integer", "description": "schedule it: ms since the epoch, before its expiry and at most "
                                                         "30 days out; up to a minute in the past means at once"},
        "delay_seconds": {"type": "integer", "minimum": 0, "maximum": MAX_DELAY_SECONDS,
                          "description": "schedule it this many seconds from now (instead of deliver_at)"},
        "priority": {"enum": PRIORITIES, "default": "normal",
                     "description": "served high before normal before low; under overload new low, then normal, posts are "
                                    "refused (429), high never; a post travels at its most urgent message's"},
    },
    "anyOf": [{"required": ["user_id"]}, {"required": ["user_ids"]}, {"required": ["topic"]}, {"required": ["broadcast"]}],
}
POST_BODY = json_body({"anyOf": [
    MESSAGE,
    {"type": "object", "required": ["messages"],
     "properties": {"messages": {"type": "array", "items": MESSAGE, "minItems": 1,
                                 "description": "at most MAX_BATCH (1,000 by default); all or nothing"}}},
]})
ACCEPTED = ok("stored and handed over; one id per message, in order", {
    "type": "object", "required": ["ids"], "additionalProperties": False,
    "properties": {"id": {"type": "string", "description": "present when the post holds one message"},
                   "ids": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
}, 202)
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "the same sender and key always name the same post: a retry stores nothing new",
                   "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}}
POST_ERRORS = errors(MalformedRequest, Unauthorized, NotFound, PayloadTooLarge, InvalidFields, Overloaded, RateLimited, Unavailable)
POST_ERRORS["429"]["headers"] = {"Retry-After": {"description": "seconds to wait before posting again",
                                                 "schema": {"type": "integer", "minimum": 1}}}
HTML = {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}}
NODE = {"type": "object", "required": ["id", "url", "connections", "users"],
        "properties": {"id": {"type": "string"}, "url": {"type": "string"}, "connections": {"type": "integer"},
                       "users": {"type": "integer"}}}
TOPIC_SIZE = {"type": "object", "required": ["topic", "subscribers", "nodes"],
              "properties": {"topic": {"type": "string"}, "subscribers": {"type": "integer", "minimum": 1},
                             "nodes": {"type": "integer", "minimum": 1}}}
TOKEN_TOPICS = {"type": "array", "maxItems": MAX_PATTERNS, "items": {"type": "string"},
                "description": "the token's topics claim, what it may subscribe to: topic names (1-128 letters, digits "
                               "and _ . : @ -) or 'prefix:*' patterns; auth answers 422 to anything else"}

ENDPOINT_ID = {"name": "endpoint_id", "in": "path", "required": True, "schema": {"type": "string"}}
ENDPOINT = {"type": "object", "required": ["id", "url", "events", "include_payload"],
            "properties": {"id": {"type": "string"}, "url": {"type": "string"},
                           "events": {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
                           "include_payload": {"type": "boolean"},
                           "disabled": {"type": ["string", "null"], "description": "why it stopped (an answer 410)"},
                           "created": {"type": "integer"}}}
SECRET = {"type": "string", "pattern": "^whsec_", "description": "the signing secret (Standard Webhooks); shown only here"}
EVENT = {"type": "object", "required": ["webhook_id", "type", "timestamp", "data", "attempts"],
         "properties": {"webhook_id": {"type": "string"}, "type": {"enum": list(EVENT_TYPES)}, "timestamp": {"type": "string"},
                        "data": {"type": "object"}, "attempts": {"type": "integer"},
                        "last_error": {"type": ["string", "null"]}, "failed_at": {"type": "integer"}}}
STATS = {"type": "object", "description": "events queued and failed for good, attempts answered 2xx (ok) and not, events "
                                          "dropped from a full queue, the last error",
         "properties": {k: {"type": "integer"} for k in ("queued", "failures", "ok", "failed_attempts", "dropped")}}
WEBHOOK_PATHS: dict[str, Any] = {
    "/v1/webhooks": {"post": {
        "summary": "Register a webhook endpoint for this API key: its events are signed POSTs (Standard Webhooks)",
        "security": [{"apiKey": []}],
        "requestBody": json_body({"type": "object", "required": ["url", "events"], "additionalProperties": False,
                                  "properties": {"url": {"type": "string", "description": "https (http and private "
                                                         "addresses only in development or with WEBHOOK_ALLOW_PRIVATE=1)"},
                                                 "events": {"type": "array", "minItems": 1, "items": {"enum": list(EVENT_TYPES)}},
                                                 "include_payload": {"type": "boolean", "default": False}}}),
        "responses": {**ok("registered", {"allOf": [ENDPOINT, {"type": "object", "required": ["secret"],
                                                               "properties": {"secret": SECRET}}]}, 201),
                      **errors(MalformedRequest, Unauthorized, PayloadTooLarge, InvalidFields, Unavailable)},
    }, "get": {
        "summary": "This API key's webhook endpoints, with their counts",
        "security": [{"apiKey": []}],
        "responses": {**ok("the endpoints", {"type": "object", "required": ["webhooks"], "properties": {"webhooks": {
            "type": "array", "items": {"allOf": [ENDPOINT, {"type": "object", "properties": {"stats": STATS}}]}}}}),
                      **errors(Unauthorized, Unavailable)},
    }},
    "/v1/webhooks/{endpoint_id}": {"delete": {
        "summary": "Remove a webhook endpoint and its queued and failed events",
        "security": [{"apiKey": []}], "parameters": [ENDPOINT_ID],
        "responses": {**ok("removed", {"type": "object", "required": ["id", "deleted"],
                                       "properties": {"id": {"type": "string"}, "deleted": {"const": True}}}),
                      **errors(Unauthorized, NotFound, Unavailable)},
    }},
    "/v1/webhooks/{endpoint_id}/rotate": {"post": {
        "summary": "A new secret; the old one keeps signing beside it for 24 h",
        "security": [{"apiKey": []}], "parameters": [ENDPOINT_ID],
        "responses": {**ok("the new secret", {"type": "object", "required": ["id", "secret"],
                                              "properties": {"id": {"type": "string"}, "secret": SECRET}}),
                      **errors(Unauthorized, NotFound, Unavailable)},
    }},
    "/v1/webhooks/{endpoint_id}/failures": {"get": {
        "summary": "Events past their last attempt or dropped from a full queue (the first 1,000)",
        "security": [{"apiKey": []}], "parameters": [ENDPOINT_ID],
        "responses": {**ok("the failed events", {"type": "object", "required": ["id", "failures"],
                                                 "properties": {"id": {"type": "string"},
                                                                "failures": {"type": "array", "items": EVENT}}}),
                      **errors(Unauthorized, NotFound, Unavailable)},
    }},
    "/v1/webhooks/{endpoint_id}/replay": {"post": {
        "summary": "Send every failed event again (due now, attempts counted afresh)",
        "security": [{"apiKey": []}], "parameters": [ENDPOINT_ID],
        "responses": {**ok("queued again", {"type": "object", "required": ["id", "replayed"],
                                            "properties": {"id": {"type": "string"}, "replayed": {"type": "integer"}}}, 202),
                      **errors(Unauthorized, NotFound, Unavailable)},
    }},
}

PATHS: dict[str, Any] = {
    "/v1/messages": {"post": {
        "summary": "Post a message to one or many users, or a batch of messages; 202 only once stored",
        "security": [{"apiKey": []}],
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": POST_BODY,
        "responses": {**ACCEPTED, **POST_ERRORS},
    }},
    "/v1/messages/{message_id}": {"get": {
        "summary": "A message's lifecycle per recipient, for the API key that posted it",
        "security": [{"apiKey": []}],
        "parameters": [{"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            **ok("state and stage times (ms) per recipient; for a topic or broadcast message, stage times and counts", {
                "oneOf": [{
                    "type": "object", "required": ["id", "recipients"],
                    "properties": {"id": {"type": "string"}, "recipients": {"type": "array", "items": {
                        "type": "object", "required": ["user_id", "state", "accepted_at"],
                        "properties": {"user_id": {"type": "string"}, "state": {"type": "string", "description": (
                            "accepted, scheduled (scheduled_at: the due time), due (due_at: when it fired), dispatched, "
                            "delivered, expired, trimmed, cancelled or acked")},
                                       "accepted_at": {"type": "integer"}},
                        "additionalProperties": {"type": "integer", "description": "'{stage}_at': first time of each stage"},
                    }}},
                }, {
                    "type": "object", "required": ["id", "stages", "nodes", "sockets"],
                    "properties": {"id": {"type": "string"}, "topic": {"type": "string"}, "broadcast": {"const": True},
                                   "stages": {"type": "object", "additionalProperties": {"type": "integer"}},
                                   "nodes": {"type": "integer", "description": "push nodes that wrote it"},
                                   "sockets": {"type": "integer", "description": "sockets it was written to"}},
                }],
            }),
            **errors(Unauthorized, NotFound, Unavailable),
        },
    }, "delete": {
        "summary": "Cancel a scheduled message that has not fired yet, for the API key that posted it",
        "security": [{"apiKey": []}],
        "parameters": [{"name": "message_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            **ok("cancelled: it will reach nobody; its status shows the cancelled stage", {
                "type": "object", "required": ["id", "state"], "additionalProperties": False,
                "properties": {"id": {"type": "string"}, "state": {"const": "cancelled"}}}),
            **errors(Unauthorized, NotFound, Unavailable),
        },
    }},
    "/v1/presence/{user_id}": {"get": {
        "summary": "Whether a user is online: sockets and push nodes (live nodes only)",
        "security": [{"apiKey": []}],
        "parameters": [{"name": "user_id", "in": "path", "required": True, "schema": USER_ID}],
        "responses": {
            **ok("the user's presence", {"type": "object", "required": ["user_id", "online", "connections", "nodes"],
                                         "additionalProperties": False,
                                         "properties": {"user_id": {"type": "string"}, "online": {"type": "boolean"},
                                                        "connections": {"type": "integer"},
                                                        "nodes": {"type": "array", "items": {"type": "string"}}}}),
            **errors(Unauthorized, NotFound, InvalidFields, RateLimited, Unavailable),
        },
    }},
    "/v1/presence": {"post": {
        "summary": "The open sockets of up to 1,000 users (0 when offline)",
        "security": [{"apiKey": []}],
        "requestBody": json_body({"type": "object", "required": ["user_ids"],
                                  "properties": {"user_ids": {"type": "array", "items": USER_ID, "minItems": 1, "maxItems": 1000}}}),
        "responses": {
            **ok("sockets per user", {"type": "object", "required": ["online"], "additionalProperties": False,
                                      "properties": {"online": {"type": "object", "additionalProperties": {"type": "integer"}}}}),
            **errors(MalformedRequest, Unauthorized, NotFound, PayloadTooLarge, InvalidFields, RateLimited, Unavailable),
        },
    }},
    "/v1/topics/{topic}": {"get": {
        "summary": "A topic's subscribed sockets and the nodes holding them; with users=1 its user ids (at most 1,000)",
        "security": [{"apiKey": []}],
        "parameters": [{"name": "topic", "in": "path", "required": True, "schema": TOPIC},
                       {"name": "users", "in": "query", "required": False, "schema": {"enum": ["1", "true"]}}],
        "responses": {
            **ok("the topic", {"type": "object", "required": ["topic", "subscribers", "nodes"], "additionalProperties": False,
                               "properties": {"topic": {"type": "string"}, "subscribers": {"type": "integer"},
                                              "nodes": {"type": "integer"},
                                              "users": {"type": "array", "items": {"type": "string"}},
                                              "truncated": {"type": "boolean"}}}),
            **errors(Unauthorized, NotFound, InvalidFields, RateLimited, Unavailable),
        },
    }},
    "/v1/topics/{topic}/history": {"get": {
        "summary": "A topic's kept messages after an offset, oldest first, as subscribers received them (* : broadcasts)",
        "security": [{"apiKey": []}],
        "parameters": [{"name": "topic", "in": "path", "required": True, "schema": {"anyOf": [TOPIC, {"const": "*"}]}},
                       {"name": "since", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                       {"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {
            **ok("the history", {"type": "object", "required": ["topic", "epoch", "offset", "complete", "messages"],
                                 "additionalProperties": False,
                                 "properties": {"topic": {"type": "string"}, "epoch": {"type": "string"},
                                                "offset": {"type": "integer", "description": "the topic's current position"},
                                                "complete": {"type": "boolean", "description": "false: the history no "
                                                             "longer reaches back to since"},
                                                "messages": {"type": "array", "items": {"type": "object"}}}}),
            **errors(Unauthorized, NotFound, InvalidFields, RateLimited, Unavailable),
        },
    }},
    "/v1/nodes": {"get": {
        "summary": "Live push nodes, least loaded first, with the websocket URL browsers use",
        "responses": {**ok("the nodes", {"type": "object", "required": ["nodes"],
                                         "properties": {"nodes": {"type": "array", "items": NODE}}}),
                      **errors(Unavailable)},
    }},
    "/v1/stats": {"get": {
        "summary": "A cumulative snapshot of the cluster for the dashboard (with OPS_KEY set: to operators only)",
        "responses": {**ok("the snapshot", {
            "type": "object", "required": ["ts", "nodes", "users_online", "topics", "messages", "latency", "pending", "tiers"],
            "properties": {
                "tiers": {"type": "object", "description": "per priority tier (high, normal, low): posts this collect "
                                                           "is storing or no dispatch instance has read yet, the oldest "
                                                           "one's age, whether new posts of the tier are refused (429)",
                          "additionalProperties": {"type": "object", "required": ["backlog", "age_ms", "shedding"],
                                                   "properties": {"backlog": {"type": "integer", "minimum": 0},
                                                                  "age_ms": {"type": "integer", "minimum": 0},
                                                                  "shedding": {"type": "boolean"}}}},
                "users_online": {"type": "integer", "minimum": 0,
                                 "description": "the live nodes' users summed: a user on two nodes counts twice"},
                "topics": {"type": "array", "maxItems": 10, "items": TOPIC_SIZE,
                           "description": "the ten largest topics by subscribed sockets, ranked among the first "
                                          "10,000 topic names read"},
            },
        }),
                      **errors(Unauthorized, Unavailable)},
    }},
    "/dashboard": {"get": {"summary": "The live dashboard page (with OPS_KEY set: to operators only)",
                           "responses": {**HTML, **errors(Unauthorized)}}},
    "/static/{path}": {"get": {
        "summary": "The browser client, the pages' scripts and CSS",
        "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the file", "content": {"*/*": {"schema": {}}}}, **errors(NotFound)},
    }},
}

DEV_PATHS: dict[str, Any] = {  # APP_ENV=development only
    "/demo": {"get": {"summary": "The demo page (development only)", "responses": HTML}},
    "/dev/tokens": {"post": {
        "summary": "A token from auth for any user (development only); auth's answer is passed on",
        "requestBody": json_body({"type": "object", "required": ["user_id"],
                                  "properties": {"user_id": USER_ID, "ttl_seconds": {"type": "integer", "minimum": 1},
                                                 "topics": TOKEN_TOPICS}}),
        "responses": {
            **ok("the token", {"type": "object", "required": ["token", "expires_at"],
                               "properties": {"token": {"type": "string"}, "expires_at": {"type": "integer"}}}),
            **errors(MalformedRequest, Unauthorized, NotFound, PayloadTooLarge, InvalidFields, Unavailable),
        },
    }},
    "/dev/messages": {"post": {
        "summary": "Exactly POST /v1/messages, sent as the first configured business system (development only)",
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": POST_BODY,
        "responses": {**ACCEPTED, **POST_ERRORS},
    }},
}


def spec(production: bool) -> dict[str, Any]:
    """The document for the routes this instance serves (the development routes only outside production)."""
    paths = {**PATHS, **WEBHOOK_PATHS} if production else {**PATHS, **WEBHOOK_PATHS, **DEV_PATHS}
    return document("pushcluster collect", "Accepts business systems' messages and serves the browser pages.", paths,
                    {"apiKey": {"type": "http", "scheme": "bearer", "description": "one of COLLECT_API_KEYS"}})


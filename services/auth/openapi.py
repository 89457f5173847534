"""auth's public HTTP API as an OpenAPI 3.1 document (served at ``GET /openapi.json``)."""

from __future__ import annotations

from typing import Any

from shared.model.topics import MAX_PATTERNS
from shared.wire.errors import InvalidFields, MalformedRequest, NotFound, PayloadTooLarge, Unauthorized
from shared.wire.openapi import USER_ID, document, errors, json_body, ok

TOPIC_PATTERNS = {"type": "array", "maxItems": MAX_PATTERNS,
                  "items": {"type": "string", "pattern": r"^[A-Za-z0-9_.:@-]{1,128}$|^[A-Za-z0-9_.:@-]{0,126}:\*$"},
                  "description": "topics the token may subscribe to: names, or 'prefix:*' for every topic under 'prefix:'"}
IDENTITY = {"type": "object", "required": ["user_id", "expires_at"], "additionalProperties": False,
            "properties": {"user_id": {"type": "string"}, "expires_at": {"type": "integer", "description": "seconds since epoch"},
                           "topics": {"type": "array", "items": {"type": "string"}, "description": "the token's topics claim"}}}
TOKEN_ERROR = {"$ref": "#/components/schemas/Error"}

PATHS: dict[str, Any] = {
    "/v1/tokens": {"post": {
        "summary": "Issue a token for a user (development and trusted back ends)",
        "security": [{"adminKey": []}],
        "requestBody": json_body({
            "type": "object", "required": ["user_id"],
            "properties": {"user_id": USER_ID,
                           "ttl_seconds": {"type": "integer", "minimum": 1, "default": 3600,
                                           "description": "at most TOKEN_MAX_TTL_SECONDS (7 days by default)"},
                           "topics": TOPIC_PATTERNS},
        }),
        "responses": {
            **ok("the token", {"type": "object", "required": ["token", "expires_at"], "additionalProperties": False,
                               "properties": {"token": {"type": "string"}, "expires_at": {"type": "integer"}}}),
            **errors(MalformedRequest, Unauthorized, NotFound, PayloadTooLarge, InvalidFields),
        },
    }},
    "/v1/verify": {"post": {
        "summary": "Verify one token (401 if bad) or up to 1,000 at once (one result each)",
        "requestBody": json_body({"oneOf": [
            {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
            {"type": "object", "required": ["tokens"],
             "properties": {"tokens": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000}}},
        ]}),
        "responses": {
            **ok("the identity, or for ``tokens`` one identity or error per token, in order", {"oneOf": [
                IDENTITY,
                {"type": "object", "required": ["results"], "additionalProperties": False,
                 "properties": {"results": {"type": "array", "items": {"oneOf": [IDENTITY, TOKEN_ERROR]}}}},
            ]}),
            **errors(MalformedRequest, Unauthorized, PayloadTooLarge, InvalidFields),
        },
    }},
}

SPEC = document(
    "pushcluster auth", "Issues development JWTs and verifies tokens for push nodes.", PATHS,
    {"adminKey": {"type": "http", "scheme": "bearer", "description": "AUTH_ADMIN_KEY"}},
)

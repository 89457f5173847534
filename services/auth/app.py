"""auth's HTTP surface: issue development tokens, verify tokens for push nodes."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.auth.config import AuthConfig
from services.auth.openapi import SPEC
from services.auth.tokens import TokenService
from shared.infra.config import same_secret
from shared.infra.metrics import MESSAGES_IN
from shared.infra.web import EXCEPTION_HANDLERS, bearer, json_response, ops_routes, read_json, timed
from shared.wire.errors import InvalidFields, Unauthorized
from shared.wire.openapi import openapi_route
from shared.wire.protocol import Identity, valid_user_id

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024
MAX_VERIFY_BATCH = 1000
MAX_VERIFY_BODY = 1024 * 1024


def identity_body(identity: Identity) -> dict[str, object]:
    return {"user_id": identity.user_id, "expires_at": identity.expires_at, "topics": list(identity.topics)}


def create_app(config: AuthConfig) -> Starlette:
    tokens = TokenService(
        config.algorithm, config.verifying_key, config.signing_key, config.issuer, config.audience, config.max_ttl_seconds
    )

    async def issue(request: Request) -> Response:
        if not same_secret(bearer(request), config.admin_key):
            raise Unauthorized("wrong admin key")
        body = await read_json(request, MAX_BODY)
        user_id, ttl = body.get("user_id"), body.get("ttl_seconds", 3600)
        if not isinstance(user_id, str) or not valid_user_id(user_id):
            raise InvalidFields("user_id must be 1-128 characters of letters, digits and _ . @ -")
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise InvalidFields("ttl_seconds must be an integer")
        token, expires_at = tokens.issue(user_id, ttl, body.get("topics", []))
        log.info("token issued", extra={"user_id": user_id})
        return json_response({"token": token, "expires_at": expires_at})

    def verify_one(token: str) -> dict[str, object]:
        try:
            identity = tokens.verify(token)
        except Unauthorized as exc:
            return exc.body()
        return identity_body(identity)

    async def verify(request: Request) -> Response:
        """``{"token"}`` -> the identity or 401; ``{"tokens": [...]}`` -> one result (identity or error) per token,
        so a push node in a reconnect storm asks once for many sockets."""
        body = await read_json(request, MAX_VERIFY_BODY)
        batch = body.get("tokens")
        if isinstance(batch, list) and 0 < len(batch) <= MAX_VERIFY_BATCH and all(isinstance(t, str) for t in batch):
            MESSAGES_IN.inc(len(batch))
            return json_response({"results": [verify_one(t) for t in batch]})
        token = body.get("token")
        if not isinstance(token, str):
            raise InvalidFields(f'body must be {{"token": "..."}} or {{"tokens": [1 to {MAX_VERIFY_BATCH} strings]}}')
        MESSAGES_IN.inc()
        identity = tokens.verify(token)
        return json_response(identity_body(identity))

    async def health() -> dict[str, object]:
        return {"ok": True, "service": "auth"}

    routes = [
        Route("/v1/tokens", timed("tokens", issue), methods=["POST"]),
        Route("/v1/verify", timed("verify", verify), methods=["POST"]),
        *ops_routes(health, config.ops_guard),
        openapi_route(SPEC),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)

"""auth's HTTP surface: issue development tokens, verify tokens for push nodes."""

from __future__ import annotations

import hmac
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.auth.config import AuthConfig
from services.auth.tokens import TokenService
from shared.errors import InvalidFields, Unauthorized
from shared.metrics import MESSAGES_IN
from shared.protocol import valid_user_id
from shared.web import EXCEPTION_HANDLERS, bearer, json_response, ops_routes, read_json, timed

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024


def create_app(config: AuthConfig) -> Starlette:
    tokens = TokenService(
        config.algorithm, config.verifying_key, config.signing_key, config.issuer, config.audience, config.max_ttl_seconds
    )

    async def issue(request: Request) -> Response:
        if not hmac.compare_digest(bearer(request), config.admin_key):
            raise Unauthorized("wrong admin key")
        body = await read_json(request, MAX_BODY)
        user_id, ttl = body.get("user_id"), body.get("ttl_seconds", 3600)
        if not valid_user_id(user_id):
            raise InvalidFields("user_id must be 1-128 characters of letters, digits and _ . @ -")
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise InvalidFields("ttl_seconds must be an integer")
        token, expires_at = tokens.issue(user_id, ttl)
        log.info("token issued", extra={"user_id": user_id})
        return json_response({"token": token, "expires_at": expires_at})

    async def verify(request: Request) -> Response:
        MESSAGES_IN.inc()
        body = await read_json(request, MAX_BODY)
        token = body.get("token")
        if not isinstance(token, str):
            raise InvalidFields("body must be {\"token\": \"...\"}")
        identity = tokens.verify(token)
        return json_response({"user_id": identity.user_id, "expires_at": identity.expires_at})

    async def health() -> dict[str, object]:
        return {"ok": True, "service": "auth"}

    routes = [
        Route("/v1/tokens", timed("tokens", issue), methods=["POST"]),
        Route("/v1/verify", timed("verify", verify), methods=["POST"]),
        *ops_routes(health),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)

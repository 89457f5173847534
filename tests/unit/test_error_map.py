"""The one error map answers every failure in the same JSON shape: a bug too, and a transport error from Redis counts
as Redis being unavailable."""

from __future__ import annotations

import orjson
import pytest
from starlette.requests import Request

from shared.infra.breaker import CircuitBreaker
from shared.infra.clients import REDIS_FAILURES
from shared.infra.web import EXCEPTION_HANDLERS
from shared.wire.errors import Unavailable


async def test_an_unexpected_error_is_answered_as_json_500_not_a_bare_page() -> None:
    """A bug in a handler becomes a 500 with the usual ``{"error": {"code", "message"}}`` body naming its type."""
    request = Request({"type": "http", "method": "POST", "path": "/v1/messages", "headers": [], "query_string": b""})
    response = await EXCEPTION_HANDLERS[Exception](request, RuntimeError("boom"))
    assert response.status_code == 500 and response.media_type == "application/json"
    assert orjson.loads(response.body)["error"]["code"] == "internal"


async def test_a_closed_transport_inside_a_redis_call_is_an_outage_answered_503() -> None:
    """redis-py lets asyncio's RuntimeError through when a dying node closed the connection: the breaker turns it into
    ``Unavailable`` (503), like any Redis failure."""
    breaker = CircuitBreaker("redis", failures=REDIS_FAILURES)

    async def write() -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    with pytest.raises(Unavailable):
        await breaker.call(write)

"""Small Starlette pieces every HTTP service composes: health, metrics, errors, bounded JSON bodies."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.infra.config import same_secret
from shared.infra.metrics import ERRORS, REQUEST_SECONDS, exposition
from shared.wire.errors import OpsOnly, PayloadTooLarge, ServiceError, Unauthorized
from shared.wire.protocol import load_object

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def health_answer(report: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A health report and its status: 503 while a dependency is down (``ok`` false), so balancers look elsewhere."""
    return report, 200 if report.get("ok") else 503


def refusal(exc: ServiceError, path: str) -> tuple[dict[str, Any], int, dict[str, str] | None]:
    """Count and log a refused request; its body, status and headers, from the one error map."""
    ERRORS.labels(exc.code).inc()
    log.warning("request refused", extra={"status": exc.status, "code": exc.code, "error": exc.message, "detail": exc.detail,
                                          "url": path})
    return exc.body(), exc.status, exc.headers()


def require_ops(headers: Mapping[str, str], ops_key: str | None) -> None:
    """``OpsOnly`` unless ``ops_key`` is None (development) or the request presents it: ``Authorization: Bearer <key>``
    (Prometheus' ``authorization``) or Basic with it as the password (a browser's own prompt, then every fetch)."""
    if ops_key is None:
        return
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            credential = base64.b64decode(credential.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            credential = ""
    elif scheme.lower() != "bearer":
        credential = ""
    if not credential or not same_secret(credential.strip(), ops_key):
        raise OpsOnly("this route needs the operators' key (OPS_KEY)")


def ops_routes(health: HealthCheck, ops_key: str | None) -> list[Route]:
    """``GET /healthz`` (503 while a dependency is down; open, for probes) and ``GET /metrics`` (``require_ops``)."""

    async def healthz(_: Request) -> Response:
        return json_response(*health_answer(await health()))

    async def metrics(request: Request) -> Response:
        require_ops(request.headers, ops_key)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return [Route("/healthz", healthz), Route("/metrics", metrics)]


async def service_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return json_response(*refusal(exc, request.url.path))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route or file, method not allowed) in the same error shape."""
    assert isinstance(exc, HTTPException)
    kind = next((k for k in ServiceError.__subclasses__() if k.status == exc.status_code), ServiceError)
    ERRORS.labels(kind.code).inc()
    return json_response(kind(exc.detail).body(), exc.status_code, dict(exc.headers or {}))


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered in the same JSON shape as every other error (never a bare page)."""
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return json_response(*refusal(ServiceError(f"internal error ({type(exc).__name__}); it was logged"), request.url.path))


EXCEPTION_HANDLERS = {ServiceError: service_error_handler, HTTPException: http_error_handler, Exception: unexpected_error_handler}


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object body, refusing more than ``max_bytes`` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return load_object(b"".join(chunks), "body")


def bearer(request: Request) -> str:
    """The token of an ``Authorization: Bearer`` header, or 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing 'Authorization: Bearer' header")
    return token.strip()


def timed(route: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler to record its latency under ``route``."""
    histogram = REQUEST_SECONDS.labels(route)

    async def wrapper(request: Request) -> Response:
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            histogram.observe(time.perf_counter() - start)

    return wrapper

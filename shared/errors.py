"""The few named errors every service raises, and the one place they map to HTTP and websocket codes."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of the errors a client can be told about; anything else is a bug (500 / 1011)."""

    status = 500
    close_code = 1011
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str] | None:
        """HTTP headers the answer carries besides the body."""
        return None


class MalformedRequest(ServiceError):
    """The bytes are not what the protocol says (not JSON, not an object, unknown frame)."""

    status, close_code, code = 400, 4002, "malformed"


class Unauthorized(ServiceError):
    """A missing, bad or expired token or key."""

    status, close_code, code = 401, 4001, "unauthorized"


class NotFound(ServiceError):
    status, close_code, code = 404, 4004, "not_found"


class MethodNotAllowed(ServiceError):
    """The path exists, but not for this HTTP method."""

    status, close_code, code = 405, 4002, "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status, close_code, code = 413, 1009, "too_large"


class InvalidFields(ServiceError):
    """Well-formed JSON whose fields break the contract (missing user id, bad TTL, ...)."""

    status, close_code, code = 422, 4002, "invalid"


class RateLimited(ServiceError):
    """A client past one of its limits (connections per user or address, frames per second)."""

    status, close_code, code = 429, 1008, "rate_limited"


class Overloaded(ServiceError):
    """The cluster sheds new posts of this priority tier for now (its backlog is past a threshold); nothing was stored.
    Retry after ``Retry-After`` seconds."""

    status, close_code, code = 429, 1013, "overloaded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(ServiceError):
    """A dependency (MongoDB, Redis, auth) cannot answer; the caller should retry later."""

    status, close_code, code = 503, 1013, "unavailable"

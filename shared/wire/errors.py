"""The few named errors every service raises, and the one place they map to HTTP and websocket codes.

::

    Exception
    ├── ServiceError            a client may be told: its HTTP status, close code and error code
    │   ├── MalformedRequest    400 / 4002  not JSON, not an object, unknown frame
    │   ├── Unauthorized        401 / 4001  missing, bad or expired token or key
    │   │   └── OpsOnly         401         an operators' route without OPS_KEY (asks the browser for it)
    │   ├── NotFound            404 / 4004
    │   ├── MethodNotAllowed    405 / 4002
    │   ├── PayloadTooLarge     413 / 1009
    │   ├── InvalidFields       422 / 4002  well-formed, but fields break the contract
    │   ├── RateLimited         429 / 1008  past a limit (connections, frames per second)
    │   ├── Overloaded          429 / 1013  this priority tier is shed for now: retry after Retry-After
    │   └── Unavailable         503 / 1013  a dependency is down: retry later
    └── LinkDown                dispatch's link to a node failed: that node's part is retried

Anything else raised while serving is a bug: 500 / 1011.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class CloseCode(IntEnum):
    """The websocket close codes this cluster sends (RFC 6455's and its own 4xxx)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the node is shutting down or draining: reconnect
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY = 1008  # a limit passed
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN = 1013  # too slow, or a dependency down: reconnect later
    UNAUTHORIZED = 4001
    MALFORMED = 4002
    NOT_FOUND = 4004


class ServiceError(Exception):
    """Base of the errors a client can be told about; anything else is a bug (500 / 1011)."""

    status = 500
    close_code = CloseCode.INTERNAL
    code = "internal"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # what went wrong underneath (a driver's text): logged, never sent

    def __str__(self) -> str:
        return self.message if self.detail is None else f"{self.message} ({self.detail})"

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str] | None:
        """HTTP headers the answer carries besides the body."""
        return None


class MalformedRequest(ServiceError):
    """The bytes are not what the protocol says (not JSON, not an object, unknown frame)."""

    status, close_code, code = 400, CloseCode.MALFORMED, "malformed"


class Unauthorized(ServiceError):
    """A missing, bad or expired token or key."""

    status, close_code, code = 401, CloseCode.UNAUTHORIZED, "unauthorized"


class OpsOnly(Unauthorized):
    """An operators' route (``/metrics``, ``/v1/stats``, the dashboard) without the operators' key, in production."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="pushcluster operations"'}


class NotFound(ServiceError):
    status, close_code, code = 404, CloseCode.NOT_FOUND, "not_found"


class MethodNotAllowed(ServiceError):
    """The path exists, but not for this HTTP method."""

    status, close_code, code = 405, CloseCode.MALFORMED, "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status, close_code, code = 413, CloseCode.TOO_BIG, "too_large"


class InvalidFields(ServiceError):
    """Well-formed JSON whose fields break the contract (missing user id, bad TTL, ...)."""

    status, close_code, code = 422, CloseCode.MALFORMED, "invalid"


class RateLimited(ServiceError):
    """A client past one of its limits (connections per user or address, frames per second, an API key's quotas);
    with ``retry_after``, the seconds until it may try again (``Retry-After``)."""

    status, close_code, code = 429, CloseCode.POLICY, "rate_limited"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class Overloaded(ServiceError):
    """The cluster sheds new posts of this priority tier for now (its backlog is past a threshold); nothing was stored.
    Retry after ``Retry-After`` seconds."""

    status, close_code, code = 429, CloseCode.TRY_AGAIN, "overloaded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(ServiceError):
    """A dependency (MongoDB, Redis, auth) cannot answer; the caller should retry later."""

    status, close_code, code = 503, CloseCode.TRY_AGAIN, "unavailable"

    @classmethod
    def of(cls, dependency: str, exc: BaseException, consequence: str = "retry later") -> Unavailable:
        """``dependency`` failed with ``exc``: the answer names the dependency, the log line gets the driver's text."""
        return cls(f"{dependency} is unavailable; {consequence}", detail=f"{type(exc).__name__}: {str(exc)[:300]}")


class LinkDown(Exception):
    """A push node could not take dispatch's batch (unreachable, closed, or too slow): its part is left for a retry."""

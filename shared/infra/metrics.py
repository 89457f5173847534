"""Prometheus metrics shared by every service; each service adds its own beside these."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

ERRORS = Counter("push_errors_total", "Errors answered to clients, by error code", ["code"])
MESSAGES_IN = Counter("push_messages_in_total", "Messages received by this service")
MESSAGES_OUT = Counter("push_messages_out_total", "Messages passed on by this service")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
NODE_CARDS_REFUSED = Counter("push_node_cards_refused_total", "Node cards in Redis ignored: unsigned, badly signed or unreadable")
BREAKER_OPEN = Gauge("push_breaker_open", "1 while a circuit breaker is open (its dependency keeps failing), by breaker",
                     ["breaker"])
REQUEST_SECONDS = Histogram("push_request_seconds", "Time to answer a request", ["route"], buckets=LATENCY_BUCKETS)


def exposition() -> tuple[bytes, str]:
    """The metrics page body and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST

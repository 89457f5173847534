"""A push node's settings, from the environment (``python -m services.push --print-config`` lists them)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, ClassVar

from shared.delivery.lifecycle import FLUSH_SECONDS
from shared.infra.config import InternalKeySettings, MongoSettings, ProxySettings, RedisSettings, TopicSettings, flag, setting
from shared.model.topics import valid_pattern


def parse_topics(raw: str) -> tuple[str, ...]:
    """``"news,sport:*"`` -> ``("news", "sport:*")``, each a valid topic or ``prefix:*`` pattern."""
    topics = tuple(p.strip() for p in raw.split(",") if p.strip())
    bad = [p for p in topics if not valid_pattern(p)]
    if bad:
        raise ValueError(f"has invalid topics or patterns: {', '.join(bad)}")
    return topics


@dataclass(frozen=True)
class PushConfig(RedisSettings, MongoSettings, InternalKeySettings, ProxySettings, TopicSettings):
    SERVICE: ClassVar[str] = "push"
    PREFIXES: ClassVar[tuple[str, ...]] = ("PUSH_",)

    host: str = setting("PUSH_HOST", "127.0.0.1", "where the node listens (`/ws`, `/internal`)")
    port: int = setting("PUSH_PORT", 8101, "its port")
    node_id: str = setting("PUSH_NODE_ID", "", "the node's name in Redis routes", shown="{host}:{port}")
    public_url: str = setting("PUSH_PUBLIC_URL", "", "the URL browsers are given for this node",
                              shown="ws://{host}:{port}/ws (wss with a certificate)")
    tls_cert: str = setting("PUSH_TLS_CERT", "", "PEM certificate (chain) the node serves TLS with, to browsers and dispatch "
                            "alike: its link URL becomes `wss://` (dispatch and collect verify it against `LINK_CA`)")
    tls_key: str = setting("PUSH_TLS_KEY", "", "the certificate's private key (PEM)")
    link_address: str = setting("PUSH_LINK_ADDRESS", "", "`host:port` the node's card gives dispatch and collect for its "
                                "`/internal` link, when they reach it through a proxy or NAT", shown="{host}:{port}")
    auth_url: str = setting("AUTH_URL", "http://127.0.0.1:8001", "auth, asked to verify tokens")
    node_ttl: int = setting("NODE_TTL_SECONDS", 30, "a killed node stops being routed to within this", low=3)
    route_ttl: int = setting("ROUTE_TTL_SECONDS", 3600, "garbage-collection TTL of user routes", low=1)
    token_cache_size: int = setting("TOKEN_CACHE_SIZE", 100_000, "verified tokens kept until they expire", low=0)
    ping_interval: float = setting("PING_INTERVAL_SECONDS", 20.0, "every socket is pinged this often, by one task (`keepalive.py`); "
                                   "a socket whose ping goes unanswered for as long is closed (1011)", low=0.1)
    max_frame_bytes: int = setting("MAX_FRAME_BYTES", 1024 * 1024, "largest frame accepted (client or dispatch)", low=1024)
    shutdown_grace: float = setting("SHUTDOWN_GRACE_SECONDS", 5.0, "wait for closing handshakes before cancelling", low=0)
    max_buffered_bytes: int = setting("MAX_BUFFERED_BYTES", 1024 * 1024,
                                      "bytes waiting in one socket's buffer before it is closed (1013)", low=1024)
    replay_limit: int = setting("REPLAY_LIMIT", 10_000, "most open messages replayed on one connect", low=1)
    replay_page: int = setting("REPLAY_PAGE", 200, "frames read from Redis per round trip while replaying", low=1)
    replay_concurrency: int = setting("REPLAY_CONCURRENCY", 256,
                                      "replays running at once, sharing their Redis reads (reconnect storms)", low=1)
    max_connections_per_user: int = setting("MAX_USER_CONNECTIONS", 32,
                                            "sockets one user may hold on this node (close 1008 past it; 0: no cap)", low=0)
    max_connections_per_address: int = setting("MAX_ADDRESS_CONNECTIONS", 1000,
                                               "sockets from one client address (HTTP 429 past it; 0: no cap)", low=0)
    proxy_protocol: bool = setting("PUSH_PROXY_PROTOCOL", "0", "1: a connection may start with a PROXY protocol v1/v2 header (a "
                                   "TCP balancer's), believed from `TRUSTED_PROXIES` only", cast=flag)
    client_rate: float = setting("CLIENT_RATE", 1000.0, "ack ids (and pings) one socket may send per second ...", low=1)
    client_burst: int = setting("CLIENT_BURST", 20_000, "... and save up (a replay's worth); past it: close 1008", low=1)
    public_topics: tuple[str, ...] = setting("PUBLIC_TOPICS", "", "comma-separated topics or `prefix:*` patterns any "
                                             "authenticated user may subscribe to", cast=parse_topics)
    max_connection_topics: int = setting("MAX_CONNECTION_TOPICS", 1000,
                                         "topics one socket may be subscribed to (past it: refused with code `limit`)", low=1)
    drain_seconds: float = setting("DRAIN_SECONDS", 10.0, "a drain (`POST /v1/drain` or SIGTERM) spreads its clients' "
                                   "reconnects over this, then closes the rest (1001)", low=0)
    write_backlog_bytes: int = setting("WRITE_BACKLOG_BYTES", 64 * 1024, "past this many bytes in a socket's buffer, its new "
                                       "frames wait in the node, high priority first", low=0)
    bundle_ms: int = setting("BUNDLE_MS", 100, "a socket that asked for bundles (`?bundle=1`) is written topic frames at most "
                             "once per this many ms: those coming sooner go out together in one frame, newline-separated "
                             "(0: never bundled)", low=0)
    lifecycle_flush: float = setting("LIFECYCLE_FLUSH_SECONDS", FLUSH_SECONDS, "how long a lifecycle mark (a delivery, an "
                                     "ack) waits for its bulk write to MongoDB, and its webhook fact for the webhooks "
                                     "stream (keep it below `WEBHOOK_ORDER_WINDOW_MS`)", low=0.01)
    expiring_notice: int = setting("EXPIRING_NOTICE_SECONDS", 60, "a socket is sent `expiring` this long before its token "
                                   "expires, once per token (at once if it has less left; 0: never)", low=0)

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert else "ws"

    @property
    def link_url(self) -> str:
        return f"{self.scheme}://{self.link_address or f'{self.host}:{self.port}'}/internal"

    def tls(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None to serve plain websockets."""
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    @property
    def heartbeat_interval(self) -> float:
        return self.node_ttl / 3

    @classmethod
    def derive(cls, values: dict[str, Any]) -> None:
        host, port = values["host"], values["port"]
        values["node_id"] = values["node_id"] or f"{host}:{port}"
        if bool(values["tls_cert"]) != bool(values["tls_key"]):
            raise SystemExit("PUSH_TLS_CERT and PUSH_TLS_KEY go together")
        scheme = "wss" if values["tls_cert"] else "ws"
        values["public_url"] = values["public_url"] or f"{scheme}://{host}:{port}/ws"

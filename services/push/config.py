"""A push node's settings, from the environment.

=======================  ==============================  ===========================================
variable                 default                         meaning
=======================  ==============================  ===========================================
PUSH_HOST / PUSH_PORT    127.0.0.1 / 8101                where the node listens (``/ws``, ``/internal``)
PUSH_NODE_ID             ``{host}:{port}``               the node's name in Redis routes
PUSH_PUBLIC_URL          ``ws://{host}:{port}/ws``       the URL browsers are given for this node
AUTH_URL                 http://127.0.0.1:8001           auth, asked to verify tokens
REDIS_URL                redis://127.0.0.1:6379/0        Redis holding routes and node cards (``redis://:PASSWORD@host:port/db`` for AUTH)
INTERNAL_KEY             dev-internal-key                shared with dispatch: signs the node card and proves the link both ways (never sent)
NODE_TTL_SECONDS         30                              a killed node stops being routed to within this
ROUTE_TTL_SECONDS        3600                            garbage-collection TTL of user routes
TOKEN_CACHE_SIZE         100000                          verified tokens kept until they expire
PING_INTERVAL_SECONDS    20                              websocket ping/pong keepalive
MAX_FRAME_BYTES          1048576                         largest frame accepted (client or dispatch)
SHUTDOWN_GRACE_SECONDS   5                               wait for closing handshakes before cancelling
MAX_BUFFERED_BYTES       1048576                         bytes waiting in one socket's buffer before it is closed (1013)
WRITE_BACKLOG_BYTES      65536                           past this many bytes in a socket's buffer, its new frames wait in the node, high priority first
MONGO_URL / MONGO_DB     mongodb://127.0.0.1:27017/      where the lifecycle is recorded / ``push``
REPLAY_LIMIT             10000                           most open messages replayed on one connect
REPLAY_PAGE              200                             frames read from Redis per round trip while replaying
REPLAY_CONCURRENCY       256                             replays running at once, sharing their Redis reads (reconnect storms)
MAX_USER_CONNECTIONS     32                              sockets one user may hold on this node (close 1008 past it; 0: no cap)
MAX_ADDRESS_CONNECTIONS  1000                            sockets from one source address (HTTP 429 past it; 0: no cap)
CLIENT_RATE              1000                            ack ids (and pings) one socket may send per second ...
CLIENT_BURST             20000                           ... and save up (a replay's worth); past it: close 1008
PUBLIC_TOPICS            (none)                          comma-separated topics or ``prefix:*`` patterns any authenticated user may subscribe to
MAX_CONNECTION_TOPICS    1000                            topics one socket may be subscribed to (past it: refused with code ``limit``)
=======================  ==============================  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import DEFAULT_MONGO_URL, DEFAULT_REDIS_URL, DEV_INTERNAL_KEY, check_secrets, env
from shared.topics import valid_pattern


@dataclass(frozen=True, slots=True)
class PushConfig:
    host: str
    port: int
    node_id: str
    public_url: str
    auth_url: str
    redis_url: str
    internal_key: str
    node_ttl: int
    route_ttl: int
    token_cache_size: int
    ping_interval: float
    max_frame_bytes: int
    shutdown_grace: float
    max_buffered_bytes: int
    write_backlog_bytes: int
    mongo_url: str
    mongo_db: str
    replay_limit: int
    replay_page: int
    replay_concurrency: int
    max_connections_per_user: int
    max_connections_per_address: int
    client_rate: float
    client_burst: int
    public_topics: tuple[str, ...]
    max_connection_topics: int

    @property
    def link_url(self) -> str:
        return f"ws://{self.host}:{self.port}/internal"

    @property
    def heartbeat_interval(self) -> float:
        return self.node_ttl / 3

    @classmethod
    def from_env(cls) -> PushConfig:
        host, port = env("PUSH_HOST", "127.0.0.1"), env("PUSH_PORT", 8101)
        internal_key = env("INTERNAL_KEY", DEV_INTERNAL_KEY)
        check_secrets("push", INTERNAL_KEY=(internal_key, DEV_INTERNAL_KEY))
        public_topics = tuple(p.strip() for p in env("PUBLIC_TOPICS", "").split(",") if p.strip())
        bad = [p for p in public_topics if not valid_pattern(p)]
        if bad:
            raise SystemExit(f"push: PUBLIC_TOPICS has invalid topics or patterns: {', '.join(bad)}")
        return cls(
            host=host,
            port=port,
            node_id=env("PUSH_NODE_ID", f"{host}:{port}"),
            public_url=env("PUSH_PUBLIC_URL", f"ws://{host}:{port}/ws"),
            auth_url=env("AUTH_URL", "http://127.0.0.1:8001"),
            redis_url=env("REDIS_URL", DEFAULT_REDIS_URL),
            internal_key=internal_key,
            node_ttl=env("NODE_TTL_SECONDS", 30),
            route_ttl=env("ROUTE_TTL_SECONDS", 3600),
            token_cache_size=env("TOKEN_CACHE_SIZE", 100_000),
            ping_interval=env("PING_INTERVAL_SECONDS", 20.0),
            max_frame_bytes=env("MAX_FRAME_BYTES", 1024 * 1024),
            shutdown_grace=env("SHUTDOWN_GRACE_SECONDS", 5.0),
            max_buffered_bytes=env("MAX_BUFFERED_BYTES", 1024 * 1024),
            write_backlog_bytes=env("WRITE_BACKLOG_BYTES", 64 * 1024),
            mongo_url=env("MONGO_URL", DEFAULT_MONGO_URL),
            mongo_db=env("MONGO_DB", "push"),
            replay_limit=max(1, env("REPLAY_LIMIT", 10_000)),
            replay_page=max(1, env("REPLAY_PAGE", 200)),
            replay_concurrency=max(1, env("REPLAY_CONCURRENCY", 256)),
            max_connections_per_user=env("MAX_USER_CONNECTIONS", 32),
            max_connections_per_address=env("MAX_ADDRESS_CONNECTIONS", 1000),
            client_rate=env("CLIENT_RATE", 1000.0),
            client_burst=env("CLIENT_BURST", 20_000),
            public_topics=public_topics,
            max_connection_topics=max(1, env("MAX_CONNECTION_TOPICS", 1000)),
        )

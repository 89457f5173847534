"""dispatch's settings, from the environment.

=========================  ==========================  ============================================
variable                   default                     meaning
=========================  ==========================  ============================================
DISPATCH_HOST / _PORT      127.0.0.1 / 8003            where ``/healthz`` and ``/metrics`` listen
DISPATCH_CONSUMER          ``{hostname}-{pid}``        this instance's name in the consumer group
REDIS_URL                  redis://127.0.0.1:6379/0    Redis holding the stream and the routes (``redis://:PASSWORD@host:port/db`` for AUTH)
INTERNAL_KEY               dev-internal-key            shared with push nodes: verifies their cards and proves the link both ways (never sent)
BATCH_SIZE                 200                         most stream entries (posts) read at once
BATCH_BYTES                900000                      most frame bytes sent to a node in one batch (under its MAX_FRAME_BYTES)
BLOCK_MS                   1000                        how long one stream read waits for entries
CLAIM_IDLE_MS              10000                       unacknowledged entries older than this are retried
LINK_TIMEOUT_SECONDS       30                          how long a batch may wait for its node's answer before it is retried
                                                       (a hung node's card expires within NODE_TTL_SECONDS, 30 s)
SEND_WAIT_MS               100                         how long a cycle waits for the nodes' answers; later ones are
                                                       acknowledged in the background, holding up no other node
LINK_WINDOW                16                          batches awaiting one node's answer at most; past it the node is
                                                       skipped and its part of the entries waits for a retry
MAX_ATTEMPTS               10                          tries of one entry; then it is acknowledged and left to its users'
                                                       inboxes (a node that keeps refusing it must not retry it forever)
NODES_REFRESH_SECONDS      1                           how stale the cached list of live nodes may be
MONGO_URL / MONGO_DB       mongodb://127.0.0.1:27017/  MongoDB: the durable record, read to rebuild Redis / ``push``
RECONCILE_INTERVAL_SECONDS 5                           how often the reconciler (one instance) expires and checks Redis
EXPIRE_BATCH               500                         posts expired per Redis round trip
REBUILD_PAGE               1000                        documents per page when rebuilding Redis from MongoDB
PURGE_INTERVAL_SECONDS     3600                        how often history past its ``purge_at`` is deleted
HANDOVER_GRACE_SECONDS     10                          a post stored this long ago and still not handed over was left by collect
HANDOVER_ABANDON_SECONDS   120                         an intent this old whose post MongoDB never got is dropped
FIRE_INTERVAL_MS           50                          how often each instance looks for due scheduled messages
FIRE_BATCH                 1000                        most scheduled messages one instance claims and fires at once
FIRE_GRACE_MS              30000                       a claim not fired within this (its instance died) is claimed again
FIRE_CONCURRENCY           2                           firing loops per instance (each claims its own pages)
=========================  ==========================  ============================================
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from shared.config import DEFAULT_MONGO_URL, DEFAULT_REDIS_URL, DEV_INTERNAL_KEY, check_secrets, env


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    host: str
    port: int
    consumer: str
    redis_url: str
    internal_key: str
    batch_size: int
    batch_bytes: int
    block_ms: int
    claim_idle_ms: int
    link_timeout: float
    send_wait_ms: int
    link_window: int
    max_attempts: int
    nodes_refresh: float
    mongo_url: str
    mongo_db: str
    reconcile_interval: float
    handover_grace: float
    handover_abandon: float
    expire_batch: int
    rebuild_page: int
    purge_interval: float
    fire_interval_ms: int
    fire_batch: int
    fire_grace_ms: int
    fire_concurrency: int

    @classmethod
    def from_env(cls) -> DispatchConfig:
        internal_key = env("INTERNAL_KEY", DEV_INTERNAL_KEY)
        check_secrets("dispatch", INTERNAL_KEY=(internal_key, DEV_INTERNAL_KEY))
        return cls(
            host=env("DISPATCH_HOST", "127.0.0.1"),
            port=env("DISPATCH_PORT", 8003),
            consumer=env("DISPATCH_CONSUMER", f"{socket.gethostname()}-{os.getpid()}"),
            redis_url=env("REDIS_URL", DEFAULT_REDIS_URL),
            internal_key=internal_key,
            batch_size=env("BATCH_SIZE", 200),
            batch_bytes=env("BATCH_BYTES", 900_000),
            block_ms=env("BLOCK_MS", 1000),
            claim_idle_ms=env("CLAIM_IDLE_MS", 10_000),
            link_timeout=env("LINK_TIMEOUT_SECONDS", 30.0),
            send_wait_ms=env("SEND_WAIT_MS", 100),
            link_window=env("LINK_WINDOW", 16),
            max_attempts=env("MAX_ATTEMPTS", 10),
            nodes_refresh=env("NODES_REFRESH_SECONDS", 1.0),
            mongo_url=env("MONGO_URL", DEFAULT_MONGO_URL),
            mongo_db=env("MONGO_DB", "push"),
            reconcile_interval=env("RECONCILE_INTERVAL_SECONDS", 5.0),
            handover_grace=env("HANDOVER_GRACE_SECONDS", 10.0),
            handover_abandon=env("HANDOVER_ABANDON_SECONDS", 120.0),
            expire_batch=env("EXPIRE_BATCH", 500),
            rebuild_page=env("REBUILD_PAGE", 1000),
            purge_interval=env("PURGE_INTERVAL_SECONDS", 3600.0),
            fire_interval_ms=env("FIRE_INTERVAL_MS", 50),
            fire_batch=env("FIRE_BATCH", 1000),
            fire_grace_ms=env("FIRE_GRACE_MS", 30_000),
            fire_concurrency=env("FIRE_CONCURRENCY", 2),
        )

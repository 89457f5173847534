"""dispatch's settings, from the environment (``python -m services.dispatch --print-config`` lists them)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, ClassVar

from shared.delivery.lifecycle import FLUSH_SECONDS
from shared.infra.config import HandoverSettings, InternalKeySettings, MongoSettings, TopicSettings, setting


@dataclass(frozen=True)
class DispatchConfig(HandoverSettings, MongoSettings, InternalKeySettings, TopicSettings):
    SERVICE: ClassVar[str] = "dispatch"
    PREFIXES: ClassVar[tuple[str, ...]] = ("DISPATCH_",)

    host: str = setting("DISPATCH_HOST", "127.0.0.1", "where `/healthz` and `/metrics` listen")
    port: int = setting("DISPATCH_PORT", 8003, "their port")
    consumer: str = setting("DISPATCH_CONSUMER", "", "this instance's name in the consumer group", shown="{hostname}-{pid}")
    batch_size: int = setting("BATCH_SIZE", 200, "most stream entries (posts) read at once", low=1)
    batch_bytes: int = setting("BATCH_BYTES", 900_000, "most frame bytes sent to a node in one batch (under its MAX_FRAME_BYTES)",
                               low=1024)
    block_ms: int = setting("BLOCK_MS", 1000, "how long one stream read waits for entries", low=1)
    claim_idle_ms: int = setting("CLAIM_IDLE_MS", 10_000, "unacknowledged entries older than this are retried", low=1)
    link_timeout: float = setting("LINK_TIMEOUT_SECONDS", 30.0,
                                  "how long a batch may wait for its node's answer before it is retried (one node TTL)", low=0.1)
    send_wait_ms: int = setting("SEND_WAIT_MS", 100, "how long a cycle waits for the nodes' answers; later ones are "
                                "acknowledged in the background, holding up no other node", low=0)
    link_window: int = setting("LINK_WINDOW", 16, "batches awaiting one node's answer at most; past it the node is skipped "
                               "and its part waits for a retry", low=1)
    max_attempts: int = setting("MAX_ATTEMPTS", 10, "tries of one entry; then it is acknowledged and left to its users' inboxes",
                                low=1)
    nodes_refresh: float = setting("NODES_REFRESH_SECONDS", 1.0, "how stale the cached list of live nodes may be", low=0)
    reconcile_interval: float = setting("RECONCILE_INTERVAL_SECONDS", 5.0,
                                        "how often the reconciler (one instance) expires and checks Redis", low=0.1)
    handover_grace: float = setting("HANDOVER_GRACE_SECONDS", 10.0,
                                    "a post stored this long ago and still not handed over was left by collect", low=0.1)
    handover_abandon: float = setting("HANDOVER_ABANDON_SECONDS", 120.0,
                                      "an intent this old whose post MongoDB never got is dropped", low=1)
    cancel_grace: float = setting("CANCEL_GRACE_SECONDS", 20.0,
                                  "a cancel noted in Redis this long ago and still not on record was left by collect (killed, "
                                  "or Redis failing under its webhook fact): the reconciler records it and sends "
                                  "`message.cancelled`; longer than a DELETE's record should take (MongoDB's timeouts: 3 s to "
                                  "find the server, 6 s for an answer); a slower one leaves its cancel to the reconciler",
                                  low=0.1)
    expire_batch: int = setting("EXPIRE_BATCH", 500, "due posts read per post bucket in one expiry page; expired "
                                                     "and trimmed deliveries recorded per user bucket in one page; cancels "
                                                     "left by collect finished in one page", low=1)
    rebuild_page: int = setting("REBUILD_PAGE", 1000, "documents per page when rebuilding Redis from MongoDB", low=1)
    lifecycle_flush: float = setting("LIFECYCLE_FLUSH_SECONDS", FLUSH_SECONDS, "how long a lifecycle mark (a fired "
                                     "message's `due`) waits for its bulk write to MongoDB; expired and trimmed "
                                     "deliveries are recorded as they close, not with it", low=0.01)
    purge_interval: float = setting("PURGE_INTERVAL_SECONDS", 3600.0, "how often history past its `purge_at` is deleted", low=1)
    fire_interval_ms: int = setting("FIRE_INTERVAL_MS", 50, "shortest pause between looks for due scheduled messages", low=1)
    fire_idle_ms: int = setting("FIRE_IDLE_MS", 500, "longest pause between looks (how late a message scheduled for sooner "
                                "than the next known due time may fire)", low=1)
    fire_batch: int = setting("FIRE_BATCH", 1000, "most scheduled messages one instance claims and fires at once", low=1)
    fire_grace_ms: int = setting("FIRE_GRACE_MS", 30_000, "a claim not fired within this (its instance died) is claimed again",
                                 low=1000)
    fire_concurrency: int = setting("FIRE_CONCURRENCY", 2, "firing loops per instance (each claims its own pages)", low=1)

    @classmethod
    def derive(cls, values: dict[str, Any]) -> None:
        values["consumer"] = values["consumer"] or f"{socket.gethostname()}-{os.getpid()}"

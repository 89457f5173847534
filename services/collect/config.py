"""collect's settings, from the environment.

========================  ==========================  ==============================================
variable                  default                     meaning
========================  ==========================  ==============================================
COLLECT_HOST / _PORT      127.0.0.1 / 8002            where collect listens
COLLECT_API_KEYS          demo:dev-api-key            ``name:key`` pairs, comma-separated, one per business system
REDIS_URL                 redis://127.0.0.1:6379/0    Redis holding the delivery stream (``redis://:PASSWORD@host:port/db`` for AUTH)
INTERNAL_KEY              dev-internal-key            the key push nodes sign their cards with: ``/v1/nodes`` lists only cards that verify
MONGO_URL / MONGO_DB      mongodb://127.0.0.1:27017/  MongoDB (or FerretDB) storing messages / database ``push``
MAX_BODY_BYTES            1048576                     largest request body (413 above)
MAX_PAYLOAD_BYTES         65536                       largest single payload, JSON-encoded (413 above)
MAX_BATCH                 1000                        most messages in one ``{"messages": [...]}`` post
MAX_RECIPIENTS            1000                        most ``user_ids`` in one message
MAX_DELIVERIES            100000                      most deliveries (messages x recipients) in one post (413 above)
MESSAGE_TTL_SECONDS       604800                      default lifetime of an undelivered message (7 days; 30 at most)
INBOX_LIMIT               10000                       most open messages kept per user in Redis (the oldest go first)
STREAM_MAXLEN             1000000                     about this many posts may wait for dispatch; past it the oldest lose only their live push
SHED_LOW_ENTRIES          2000                        new low posts get 429 while more posts than this wait in the streams (any tier)
SHED_LOW_AGE_MS           2000                        ... or while the oldest of them has waited longer than this
SHED_NORMAL_ENTRIES       20000                       new normal posts get 429 past this many high and normal posts waiting
SHED_NORMAL_AGE_MS        10000                       ... or an oldest high or normal post this old (high is never shed)
SHED_SAMPLE_MS            200                         how often the tiers' backlogs are read (one Redis round trip)
DISPATCH_URL              http://127.0.0.1:8003       dispatch's HTTP base, scraped by ``GET /v1/stats``
AUTH_URL                  http://127.0.0.1:8001       auth, asked for tokens by the development route ``POST /dev/tokens``
AUTH_ADMIN_KEY            dev-admin-key               auth's admin key, used only by ``POST /dev/tokens`` (absent in production)
========================  ==========================  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass

from services.collect.shedding import Threshold

from shared.config import (DEFAULT_MONGO_URL, DEFAULT_REDIS_URL, DEV_ADMIN_KEY, DEV_API_KEY, DEV_API_KEYS, DEV_INTERNAL_KEY,
                           check_secrets, env)
from shared.priority import Priority


def parse_api_keys(raw: str) -> dict[str, str]:
    """``"shop:k1,billing:k2"`` -> ``{"k1": "shop", "k2": "billing"}`` (key -> sender name)."""
    keys = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, key = pair.partition(":")
        if not sep or not name or not key:
            raise SystemExit(f"collect: COLLECT_API_KEYS entry {pair!r} is not name:key")
        keys[key] = name
    return keys


@dataclass(frozen=True, slots=True)
class CollectConfig:
    host: str
    port: int
    api_keys: dict[str, str]
    redis_url: str
    internal_key: str
    mongo_url: str
    mongo_db: str
    max_body_bytes: int
    max_payload_bytes: int
    max_batch: int
    max_recipients: int
    max_deliveries: int
    message_ttl_seconds: int
    inbox_limit: int
    stream_maxlen: int
    shed_thresholds: dict[Priority, Threshold]
    shed_sample_ms: int
    dispatch_url: str
    auth_url: str
    auth_admin_key: str

    @classmethod
    def from_env(cls) -> CollectConfig:
        api_keys = parse_api_keys(env("COLLECT_API_KEYS", DEV_API_KEYS))
        internal_key = env("INTERNAL_KEY", DEV_INTERNAL_KEY)
        check_secrets("collect", COLLECT_API_KEYS=(api_keys.keys(), DEV_API_KEY), INTERNAL_KEY=(internal_key, DEV_INTERNAL_KEY))
        return cls(
            host=env("COLLECT_HOST", "127.0.0.1"),
            port=env("COLLECT_PORT", 8002),
            api_keys=api_keys,
            redis_url=env("REDIS_URL", DEFAULT_REDIS_URL),
            internal_key=internal_key,
            mongo_url=env("MONGO_URL", DEFAULT_MONGO_URL),
            mongo_db=env("MONGO_DB", "push"),
            max_body_bytes=env("MAX_BODY_BYTES", 1024 * 1024),
            max_payload_bytes=env("MAX_PAYLOAD_BYTES", 64 * 1024),
            max_batch=env("MAX_BATCH", 1000),
            max_recipients=env("MAX_RECIPIENTS", 1000),
            max_deliveries=env("MAX_DELIVERIES", 100_000),
            message_ttl_seconds=env("MESSAGE_TTL_SECONDS", 7 * 24 * 3600),
            inbox_limit=env("INBOX_LIMIT", 10_000),
            stream_maxlen=env("STREAM_MAXLEN", 1_000_000),
            shed_thresholds={Priority.LOW: Threshold(env("SHED_LOW_ENTRIES", 2000), env("SHED_LOW_AGE_MS", 2000)),
                             Priority.NORMAL: Threshold(env("SHED_NORMAL_ENTRIES", 20_000), env("SHED_NORMAL_AGE_MS", 10_000))},
            shed_sample_ms=env("SHED_SAMPLE_MS", 200),
            dispatch_url=env("DISPATCH_URL", "http://127.0.0.1:8003"),
            auth_url=env("AUTH_URL", "http://127.0.0.1:8001"),
            auth_admin_key=env("AUTH_ADMIN_KEY", DEV_ADMIN_KEY),
        )

"""collect's settings, from the environment (``python -m services.collect --print-config`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from services.collect.scopes import Scope, parse_scopes
from services.collect.shedding import Threshold
from shared.infra.config import (
    DEV_ADMIN_KEY,
    DEV_API_KEYS,
    HandoverSettings,
    InternalKeySettings,
    MongoSettings,
    TopicSettings,
    WebhookUrlSettings,
    flag,
    setting,
)
from shared.model.priority import Priority


def parse_api_keys(raw: str) -> dict[str, str]:
    """``"shop:k1,billing:k2"`` -> ``{"k1": "shop", "k2": "billing"}`` (key -> sender name)."""
    keys = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, key = pair.partition(":")
        if not sep or not name or not key:
            raise ValueError(f"has an entry, {pair!r}, that is not name:key")
        keys[key] = name
    return keys


@dataclass(frozen=True)
class CollectConfig(HandoverSettings, MongoSettings, InternalKeySettings, WebhookUrlSettings, TopicSettings):
    SERVICE: ClassVar[str] = "collect"
    PREFIXES: ClassVar[tuple[str, ...]] = ("COLLECT_",)

    host: str = setting("COLLECT_HOST", "127.0.0.1", "where collect listens")
    port: int = setting("COLLECT_PORT", 8002, "its port")
    api_keys: dict[str, str] = setting("COLLECT_API_KEYS", DEV_API_KEYS,
                                       "`name:key` pairs, comma-separated, one per business system", cast=parse_api_keys,
                                       secret=True)
    api_scopes: dict[str, Scope] = setting("COLLECT_API_SCOPES", "", 'JSON: what each sender may reach, `{"shop": {"users": '
                                           '["shop-"], "topics": ["shop"]}}` (user-id prefixes, topic namespaces; '
                                           "`services/collect/scopes.py`); a sender without an entry reaches everything",
                                           cast=parse_scopes)
    key_delivery_rate: float = setting("KEY_DELIVERY_RATE", 100_000.0, "deliveries (messages x recipients) one API key may post "
                                       "per second into one collect instance, 5 s worth at once (429 with Retry-After past it; "
                                       "0: no limit)", low=0)
    key_presence_rate: float = setting("KEY_PRESENCE_RATE", 1000.0, "presence and topic queries one API key may make per second "
                                       "of one collect instance, 5 s worth at once (0: no limit)", low=0)
    key_max_scheduled: int = setting("KEY_MAX_SCHEDULED", 1_000_000, "scheduled messages one API key may have waiting, across "
                                     "the cluster (429 with Retry-After past it; 0: no limit)", low=0)
    max_body_bytes: int = setting("MAX_BODY_BYTES", 1024 * 1024, "largest request body (413 above)", low=1)
    max_payload_bytes: int = setting("MAX_PAYLOAD_BYTES", 64 * 1024, "largest single payload, JSON-encoded (413 above)", low=1)
    max_batch: int = setting("MAX_BATCH", 1000, 'most messages in one `{"messages": [...]}` post', low=1)
    max_recipients: int = setting("MAX_RECIPIENTS", 1000, "most `user_ids` in one message", low=1)
    max_deliveries: int = setting("MAX_DELIVERIES", 100_000, "most deliveries (messages x recipients) in one post (413 above)",
                                  low=1)
    message_ttl_seconds: int = setting("MESSAGE_TTL_SECONDS", 7 * 24 * 3600,
                                       "default lifetime of an undelivered message (7 days; 30 at most)", low=1)
    handover_while_storing: bool = setting("HANDOVER_WHILE_STORING", "1", "1: a post without an Idempotency-Key whose messages are "
                                           "all due now goes to dispatch just before its MongoDB insert (its 202 still "
                                           "waits for the insert); a 503 may then follow a delivery to sockets online at that moment "
                                           "(`services/collect/acceptance.py`). 0: the insert first, always", cast=flag)
    inbox_limit: int = setting("INBOX_LIMIT", 10_000, "most open messages kept per user in Redis (the oldest go first)", low=1)
    stream_maxlen: int = setting("STREAM_MAXLEN", 1_000_000,
                                 "about this many posts may wait for dispatch; past it the oldest lose only their live push",
                                 low=1)
    dispatch_url: str = setting("DISPATCH_URL", "http://127.0.0.1:8003", "dispatch's HTTP base, scraped by `GET /v1/stats`")
    auth_url: str = setting("AUTH_URL", "http://127.0.0.1:8001", "auth, asked for tokens by the development route `POST /dev/tokens`")
    auth_admin_key: str = setting("AUTH_ADMIN_KEY", DEV_ADMIN_KEY, "auth's admin key, used only by `POST /dev/tokens` (development)")
    shed_low_entries: int = setting("SHED_LOW_ENTRIES", 2000,
                                    "new low posts get 429 while more posts than this wait in the streams (any tier)", low=1)
    shed_low_age_ms: int = setting("SHED_LOW_AGE_MS", 2000, "... or while the oldest of them has waited longer than this", low=1)
    shed_normal_entries: int = setting("SHED_NORMAL_ENTRIES", 20_000,
                                       "new normal posts get 429 past this many high and normal posts waiting", low=1)
    shed_normal_age_ms: int = setting("SHED_NORMAL_AGE_MS", 10_000,
                                      "... or an oldest high or normal post this old (high is never shed)", low=1)
    topic_users_cache_seconds: float = setting("TOPIC_USERS_CACHE_SECONDS", 1.0, "a topic's user list (`GET /v1/topics/{t}?users=1`) "
                                               "is asked of its nodes at most once per this, whatever the calls", low=0)
    shed_sample_ms: int = setting("SHED_SAMPLE_MS", 200, "how often the tiers' backlogs are read (one Redis round trip)", low=10)

    @classmethod
    def derive(cls, values: dict[str, Any]) -> None:
        unknown = set(values["api_scopes"]) - set(values["api_keys"].values())
        if unknown:
            raise SystemExit(f"COLLECT_API_SCOPES names senders that COLLECT_API_KEYS does not: {', '.join(sorted(unknown))}")

    @property
    def shed_thresholds(self) -> dict[Priority, Threshold]:
        return {Priority.LOW: Threshold(self.shed_low_entries, self.shed_low_age_ms),
                Priority.NORMAL: Threshold(self.shed_normal_entries, self.shed_normal_age_ms)}

"""The webhooks service's settings, from the environment (``python -m services.webhooks --print-config`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shared.infra.config import InternalKeySettings, MongoSettings, RedisSettings, WebhookUrlSettings, setting


def seconds_list(raw: str) -> tuple[float, ...]:
    """``"5,300,1800"`` -> ``(5.0, 300.0, 1800.0)``: each at least 0.01."""
    try:
        values = tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise ValueError("is not a comma-separated list of seconds") from None
    if not values or min(values) < 0.01:
        raise ValueError("needs at least one delay, each of 0.01 s or more")
    return values


@dataclass(frozen=True)
class WebhooksConfig(RedisSettings, MongoSettings, InternalKeySettings, WebhookUrlSettings):
    SERVICE: ClassVar[str] = "webhooks"
    PREFIXES: ClassVar[tuple[str, ...]] = ("WEBHOOKS_", "WEBHOOK_")

    host: str = setting("WEBHOOKS_HOST", "127.0.0.1", "where `/healthz` and `/metrics` listen")
    port: int = setting("WEBHOOKS_PORT", 8004, "their port")
    schedule: tuple[float, ...] = setting("WEBHOOK_SCHEDULE_SECONDS", "5,300,1800,7200,18000,36000,21600",
                                          "the waits before each retry (about 24 h in all; each +-20% jitter); after the "
                                          "last, the event goes to the failure list", cast=seconds_list)
    timeout: float = setting("WEBHOOK_TIMEOUT_SECONDS", 10.0, "an attempt not answered within this failed", low=0.1)
    queue_limit: int = setting("WEBHOOK_QUEUE_LIMIT", 100_000, "events queued per endpoint at most; past it the oldest go "
                                                               "to its failure list, counted as dropped", low=1)
    concurrency: int = setting("WEBHOOK_CONCURRENCY", 16, "requests in flight per endpoint (events of one user go one "
                                                          "after another)", low=1)
    batch: int = setting("WEBHOOK_BATCH", 500, "events taken from an endpoint's queue per round, and facts per fan-out", low=1)
    order_window: int = setting("WEBHOOK_ORDER_WINDOW_MS", 3000, "facts are held this long before their events are queued, "
                                "so one user's go out in the order they happened: longer than any producer takes to "
                                "append a fact (its `LIFECYCLE_FLUSH_SECONDS` plus its MongoDB write) and than the "
                                "hosts' clocks differ; every event waits it", low=0)
    offline_grace: float = setting("OFFLINE_GRACE_SECONDS", 10.0, "user.offline only once a user has had no socket this "
                                                                  "long (a page reload is not an offline)", low=0)

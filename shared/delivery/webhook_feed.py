"""The Redis side of webhooks shared by the services that record facts and the webhooks service that sends them.

Keys, all under the hash tag ``{webhooks}`` (one slot: the fan-out script and the queues touch
several at once, ``shared.infra.slots`` rule 3):

* ``{webhooks}:events`` -- a STREAM of fact batches (``shared.model.webhook_events``), one entry per
  lifecycle flush or cancel, read by the webhooks service as a consumer group: a fact appended here
  survives any process being killed;
* ``{webhooks}:presence`` -- a STREAM of the users whose sockets on a push node changed, one entry per
  route flush (``shared.cluster.routes``): the presence watcher judges them against the routes;
* ``{webhooks}:types`` -- a SET of the event types some enabled endpoint wants, and
  ``{webhooks}:version``, a counter bumped on every change of an endpoint (``shared.delivery.webhook_endpoints``).

A producer appends its facts only for types some endpoint wants, asking the set at each flush (one
round trip a second), so a cluster without webhooks writes nothing more.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.infra.clients import text
from shared.model.webhook_events import STAGE_EVENTS, Fact, encode_facts

log = logging.getLogger(__name__)

TAG = "{webhooks}"
EVENTS_KEY = f"{TAG}:events"
PRESENCE_KEY = f"{TAG}:presence"
TYPES_KEY = f"{TAG}:types"
VERSION_KEY = f"{TAG}:version"
EVENTS_MAXLEN = 1_000_000  # fact batches waiting for the webhooks service; past it (down that long) the oldest go
PRESENCE_MAXLEN = 100_000


class WebhookFeed:
    """Appending facts for the webhooks service: lifecycle stages (push nodes, dispatch), cancels (collect)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def wanted_stages(self) -> frozenset[str]:
        """The fact stages some enabled endpoint wants, asked of Redis now; ``delivered`` too whenever expiries are
        wanted (an expiry's last state needs the deliveries)."""
        types = {text(t) for t in await self.redis.smembers(TYPES_KEY)}
        stages = {stage for stage, event in STAGE_EVENTS.items() if event in types}
        return frozenset(stages | {"delivered"} if "message.expired" in types else stages)

    async def publish(self, facts: list[Fact]) -> int:
        """Append those of ``facts`` some endpoint wants, as one stream entry; returns how many."""
        if not facts:
            return 0
        stages = await self.wanted_stages()
        return await self.append([f for f in facts if f.stage in stages])

    async def append(self, facts: list[Fact]) -> int:
        """Append ``facts``, already chosen by ``wanted_stages``, as one stream entry; returns how many."""
        if facts:
            await self.redis.xadd(EVENTS_KEY, {"f": encode_facts(facts)}, maxlen=EVENTS_MAXLEN, approximate=True)
        return len(facts)


def stage_presence(pipe: Pipeline, users: list[str]) -> None:
    """Queue on ``pipe`` the users whose sockets on a node changed, for the presence watcher."""
    if users:
        pipe.xadd(PRESENCE_KEY, {"u": ",".join(users)}, maxlen=PRESENCE_MAXLEN, approximate=True)


def entries_of(reply: Any, deleted: bool = False) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of an XREADGROUP reply on one stream: (id, fields), skipping any deleted meanwhile (a pending entry
    the stream's cap trimmed) unless ``deleted``, which keeps them with no fields (to be acknowledged)."""
    streams = reply.items() if isinstance(reply, dict) else reply or []
    return [(text(i), fields or {}) for _, batch in streams for i, fields in batch if fields or deleted]

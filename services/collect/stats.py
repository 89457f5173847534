"""The dashboard's numbers, gathered on demand from where they already live.

* which push nodes are alive: their cards in Redis (``shared.cluster.routes.directory``);
* connections, users, deliveries and delivery latency: each node's ``/metrics``, scraped live
  (cards are only renewed every few seconds, so their counts lag behind);
* messages accepted: collect's own counter (this instance); passed on by dispatch: dispatch's ``/metrics``;
* pending: posts stored with a recipient that has not acknowledged yet (not expired), counted in Redis;
* users online: the sum of the nodes' user counts (``users_online``);
* the ten largest topics: the ``topic:{name}`` hashes of live nodes (``shared.cluster.topic_holders``), over at most
  ``TOPIC_NAMES_READ`` names a request;
* webhook endpoints: each one in MongoDB's registry (``shared.delivery.webhook_endpoints``) with its queue's counts
  in Redis (``shared.delivery.webhook_queue``): events queued (its depth), in the failure list, attempts answered
  2xx and not, dropped, and the last error. The page shows an endpoint's origin, never its path or query (which may
  carry a business system's token); with MongoDB down, the endpoints are unknown (``None``).

Everything returned is a cumulative total or a current gauge, never a rate: the page derives rates
and windowed percentiles from successive snapshots, so this stays stateless and any number of open
dashboards cost the same. A source that does not answer is reported as unknown (``None``, or a node
with ``"up": false``) instead of failing the whole snapshot.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from shared.cluster.routes import NodeCard, RouteReader, directory
from shared.cluster.topic_holders import TOPICS_KEY, TopicReader
from shared.delivery.inbox import Inbox
from shared.delivery.webhook_endpoints import Endpoint, EndpointStore
from shared.delivery.webhook_queue import WebhookQueues
from shared.infra.clients import REDIS_FAILURES
from shared.infra.clock import now_ms
from shared.infra.metrics import exposition
from shared.wire.errors import Unavailable

LATENCY = "push_delivery_latency_seconds"
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
TOPIC_NAMES_READ = 10_000  # topics ranked per snapshot: past this many names, the largest may be among those unread
LARGEST_TOPICS = 10


@dataclass(frozen=True, slots=True)
class Samples:
    """One ``/metrics`` page: unlabelled samples by name, and histogram buckets (``le`` -> cumulative count)."""

    values: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Samples:
        values: dict[str, float] = {}
        buckets: defaultdict[str, dict[float, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_bucket") and "le" in sample.labels:
                    buckets[family.name][float(sample.labels["le"])] = sample.value
                elif not sample.labels:
                    values[sample.name] = sample.value
        return cls(values, dict(buckets))

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


def node_http_base(link_url: str) -> str:
    """A node's HTTP base from its internal link URL: ``ws://h:p/internal`` -> ``http://h:p``."""
    parts = urlsplit(link_url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


async def scrape(session: aiohttp.ClientSession, base_url: str) -> Samples | None:
    """The service's parsed ``/metrics``, or None if it does not answer in time."""
    try:
        async with session.get(f"{base_url}/metrics") as response:
            if response.status != 200:
                return None
            return Samples.parse(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def merge_latency(pages: list[Samples]) -> dict[str, Any]:
    """Sum the nodes' latency histograms; ``+Inf`` is left out of ``buckets`` (JSON has no infinity): it is ``count``."""
    merged: defaultdict[float, float] = defaultdict(float)
    for page in pages:
        for le, count in page.buckets.get(LATENCY, {}).items():
            merged[le] += count
    count = merged.pop(math.inf, 0.0)
    total = sum(page.get(f"{LATENCY}_sum") for page in pages)
    return {"buckets": sorted(merged.items()), "count": count, "sum": total}


def node_entry(card: NodeCard, page: Samples | None) -> dict[str, Any]:
    """What the dashboard shows per node: live gauges when the node answered, its last card otherwise."""
    if page is None:
        return {"id": card.id, "url": card.public_url, "up": False, "connections": card.connections, "users": card.users,
                "delivered": None}
    return {"id": card.id, "url": card.public_url, "up": True, "connections": int(page.get("push_connections")),
            "users": int(page.get("push_users")), "delivered": page.get("push_delivered_total")}


async def topic_names(redis: Redis, limit: int) -> list[str]:
    """Up to ``limit`` names from the ``topics`` set, in Redis's scan order, read in pages (never the whole set at once)."""
    names: dict[str, None] = {}  # a scan may return a name twice
    async for name in redis.sscan_iter(TOPICS_KEY, count=1000):
        names[name.decode()] = None
        if len(names) >= limit:
            break
    return list(names)


def largest_topics(counts: dict[str, dict[str, int]], limit: int = LARGEST_TOPICS) -> list[dict[str, Any]]:
    """The ``limit`` topics with the most subscribed sockets (ties by name), with how many nodes hold them."""
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1].values()), item[0]))[:limit]
    return [{"topic": topic, "subscribers": sum(nodes.values()), "nodes": len(nodes)} for topic, nodes in ranked]


def origin(url: str) -> str:
    """``https://user@hooks.example.com/path?token=x`` -> ``https://hooks.example.com``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def endpoint_entry(endpoint: Endpoint, counts: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard shows of one webhook endpoint: whose it is, where it points, and its queue's counts."""
    return {"id": endpoint.id, "owner": endpoint.sender, "origin": origin(endpoint.url), "events": list(endpoint.events),
            "disabled": endpoint.disabled or None, **counts}


async def webhook_endpoints(endpoints: EndpointStore, queues: WebhookQueues) -> list[dict[str, Any]] | None:
    """Every endpoint (oldest first) with its counts; None when MongoDB does not answer."""
    try:
        registered = sorted(await endpoints.everything(), key=lambda e: (e.created, e.id))
    except Unavailable:
        return None
    counts = await queues.report([e.id for e in registered]) if registered else {}
    return [endpoint_entry(e, counts[e.id]) for e in registered]


async def gather_stats(reader: RouteReader, inbox: Inbox, dispatch_url: str, ops_key: str, tls: ssl.SSLContext, endpoints: EndpointStore,
                       queues: WebhookQueues) -> dict[str, Any]:
    """One snapshot of the cluster (503 only when Redis, the source of truth on live nodes, is down)."""
    try:
        cards = await directory(reader)
        pending = await inbox.open_count()
        names = await topic_names(reader.redis, TOPIC_NAMES_READ)
        counts = await TopicReader(reader.redis).counts(names, [c.id for c in cards])
        webhooks = await webhook_endpoints(endpoints, queues)
    except REDIS_FAILURES as exc:
        raise Unavailable.of("Redis", exc) from None
    async with aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT, headers={"Authorization": f"Bearer {ops_key}"},
                                     connector=aiohttp.TCPConnector(ssl=tls)) as session:
        *node_pages, dispatch_page = await asyncio.gather(
            *(scrape(session, node_http_base(c.link_url)) for c in cards), scrape(session, dispatch_url)
        )
    own = Samples.parse(exposition()[0].decode())
    answered = [p for p in node_pages if p is not None]
    nodes = [node_entry(c, p) for c, p in zip(cards, node_pages)]
    return {
        "ts": now_ms(),
        "nodes": nodes,
        # The live nodes' user counts (live gauges, a card's where its node does not answer, as presence counts a
        # node until its card expires). Each node counts its own distinct users: a user on two nodes counts twice.
        "users_online": sum(n["users"] for n in nodes),
        "topics": largest_topics(counts),
        "messages": {
            "accepted": own.get("push_messages_in_total"),
            "dispatched": dispatch_page.get("push_messages_out_total") if dispatch_page else None,
            "delivered": sum(p.get("push_delivered_total") for p in answered),
        },
        "latency": merge_latency(answered),
        "pending": pending,
        "webhooks": webhooks,
    }

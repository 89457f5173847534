"""The chaos run's posts: planned up front from the seed (so a seed replays the same decisions), then sent on time.

A post carries 1-5 messages (a tenth of them two more: one kept long for an offline user beside a short-lived
scheduled one) mixing one user, several users, a topic and broadcast, delays (``delay_seconds`` 1-4 s or ``deliver_at``),
priorities, ttls from a few seconds to days (most 3600 s or more) and payloads from a few bytes to just under
collect's payload limit; a few are meant to be refused (a payload just over the limit: 413; both ``delay_seconds``
and ``deliver_at``: 422). Some carry an ``Idempotency-Key`` and are sent again with it; some scheduled messages are
cancelled, early or racing their due time, and some already-sent ones too (404). Every
answer is recorded (``chaos_check.PostRecord``, ``CancelRecord``); each payload carries its message's tag, so a
frame can be traced to what was posted even when the post's answer never came.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from loadtest.chaos_check import BROADCAST, CancelRecord, Observations, Planned, PostRecord
from services.collect.config import CollectConfig
from shared.wire.protocol import MessageFrame
from tests.client import API_KEY, ClusterClient

PAYLOAD_LIMIT: int = next(f.default for f in dataclasses.fields(CollectConfig) if f.name == "max_payload_bytes")  # type: ignore[assignment]
LONGEST_ID = "0" * 24  # a message id without Idempotency-Key (20 hex of post id, 4 of index); with one, 22
TOPICS = ("news", "sport", "room:1", "room:2", "room:3")
PRIORITIES = ("high", "normal", "normal", "low")
IN_FLIGHT = 16  # posts awaiting their answer at once


@dataclass(frozen=True, slots=True)
class PostPlan:
    """One post: when it leaves (s after the start), its messages (``deliver_in_ms`` becomes ``deliver_at`` when it
    leaves), its Idempotency-Key, when it is sent again (s after it left), and its cancels: (message index, s after
    it left)."""

    seq: int
    at: float
    items: tuple[dict[str, Any], ...]
    key: str | None = None
    retry_after: float | None = None
    cancels: tuple[tuple[int, float], ...] = ()


def pad_to(frame_bytes: int, tag: str, topic: str | None) -> dict[str, Any]:
    """A payload whose frame (with the longest message id) is ``frame_bytes`` long."""
    payload: dict[str, Any] = {"chaos": tag, "pad": ""}
    base = len(MessageFrame(LONGEST_ID, payload, int(time.time() * 1000), topic).encode())
    payload["pad"] = "x" * max(0, frame_bytes - base)
    return payload


def plan_posts(rng: random.Random, seconds: float, users: list[str], offline: list[str], run: str) -> list[PostPlan]:
    """Posts at random moments over ``seconds`` (about four a second), to ``users`` (of whom ``offline`` connect only in
    the settle phase); ``run`` makes keys unique."""
    plans, at, seq = [], rng.uniform(0.2, 0.6), 0
    while at < seconds:
        plans.append(_plan_post(rng, seq, at, users, offline or users, run))
        seq += 1
        at += rng.expovariate(4.0)
    return plans


def _plan_post(rng: random.Random, seq: int, at: float, users: list[str], offline: list[str], run: str) -> PostPlan:
    items = tuple(_plan_item(rng, f"{seq}.{i}", users) for i in range(rng.randint(1, 5)))
    if rng.random() < 0.1:  # a message kept long for someone offline, beside one due later and kept briefly
        now = {"user_id": rng.choice(offline), "payload": {"chaos": f"{seq}.{len(items)}", "text": "kept"}, "ttl_seconds": 3600,
               "priority": rng.choice(PRIORITIES)}
        later = _plan_item(rng, f"{seq}.{len(items) + 1}", users)
        later.pop("deliver_in_ms", None)
        later["delay_seconds"] = rng.randint(1, 4)
        later["ttl_seconds"] = later["delay_seconds"] + rng.randint(3, 10)
        items += (now, later)
    if rng.random() < 0.02:  # meant for 422: both kinds of due time
        items[0]["delay_seconds"], items[0]["deliver_in_ms"] = 1, 1000
    key = f"{run}-{seq}" if rng.random() < 0.3 else None
    retry_after = rng.uniform(0.0, 1.5) if key and rng.random() < 0.5 else None
    cancels = []
    for i, item in enumerate(items):
        due = item.get("delay_seconds", 0) * 1000 or item.get("deliver_in_ms", 0)
        if due > 0 and rng.random() < 0.3:
            racing = rng.random() < 0.5
            cancels.append((i, (due + rng.uniform(-300, 300)) / 1000 if racing else rng.uniform(0.3, max(0.4, due / 1000 - 0.7))))
        elif due <= 0 and rng.random() < 0.03:
            cancels.append((i, 0.5))
    return PostPlan(seq, at, items, key, retry_after, tuple(cancels))


def _plan_item(rng: random.Random, tag: str, users: list[str]) -> dict[str, Any]:
    kind = rng.choices(("user", "users", "topic", "broadcast"), (45, 25, 25, 5))[0]
    item: dict[str, Any] = {}
    if kind == "user":
        item["user_id"] = rng.choice(users)
    elif kind == "users":
        item["user_ids"] = rng.sample(users, rng.randint(2, 6))
    elif kind == "topic":
        item["topic"] = rng.choice(TOPICS)
    else:
        item["broadcast"] = True
    timing = rng.random()
    delay_ms = 0
    if timing < 0.2:
        item["delay_seconds"] = rng.randint(1, 4)
        delay_ms = item["delay_seconds"] * 1000
    elif timing < 0.3:
        delay_ms = item["deliver_in_ms"] = rng.randint(1000, 4000)
    elif timing < 0.33:
        item["deliver_in_ms"] = -rng.randint(1000, 30_000)  # up to a minute back counts as now
    ttl = rng.choice((5, 10, 20)) + delay_ms // 1000 if rng.random() < 0.15 else rng.choice((3600, 7200, 86_400, 7 * 86_400))
    item["ttl_seconds"] = ttl
    item["priority"] = rng.choice(PRIORITIES)
    topic = BROADCAST if kind == "broadcast" else item.get("topic")
    size = rng.random()
    if size < 0.02:  # meant for 413
        item["payload"] = pad_to(PAYLOAD_LIMIT + rng.randint(3, 64), tag, topic)
    elif size < 0.07:
        item["payload"] = pad_to(PAYLOAD_LIMIT - rng.randint(0, 64), tag, topic)
    elif size < 0.25:
        item["payload"] = pad_to(rng.randint(1000, 8000), tag, topic)
    else:
        item["payload"] = {"chaos": tag, "text": rng.choice(("hi", "héllo ✓", "a.b$c", "\u0000"))}
    return item


def materialise(plan: PostPlan, now_ms: int) -> tuple[dict[str, Any], tuple[Planned, ...]]:
    """The body to send now and the messages as the check sees them (``deliver_in_ms`` made absolute)."""
    items, planned = [], []
    for item in plan.items:
        body = {k: v for k, v in item.items() if k != "deliver_in_ms"}
        if "deliver_in_ms" in item:
            body["deliver_at"] = now_ms + item["deliver_in_ms"]
        deliver_at = body.get("deliver_at")
        users = [item["user_id"]] if "user_id" in item else item.get("user_ids", [])
        topic = BROADCAST if item.get("broadcast") else item.get("topic")
        planned.append(Planned(item["payload"]["chaos"], tuple(users), topic, item["priority"], item.get("delay_seconds", 0) * 1000,
                               deliver_at if deliver_at and deliver_at > now_ms else None, item["ttl_seconds"] * 1000))
        items.append(body)
    return {"messages": items}, tuple(planned)


class Poster:
    """Sends the planned posts, their retries and cancels on time and records every answer in ``obs``."""

    def __init__(self, client: ClusterClient, obs: Observations, started: float) -> None:
        self.client = client
        self.obs = obs
        self.started = started  # wall clock of second 0
        self.gate = asyncio.Semaphore(IN_FLIGHT)

    async def run(self, plans: list[PostPlan]) -> None:
        async with asyncio.TaskGroup() as group:
            for plan in plans:
                await asyncio.sleep(max(0.0, self.started + plan.at - time.time()))
                group.create_task(self.post(plan))

    async def post(self, plan: PostPlan) -> None:
        body, planned = materialise(plan, int(time.time() * 1000))
        first = asyncio.create_task(self.send(plan, body, planned))
        if plan.retry_after is not None:
            await asyncio.sleep(plan.retry_after)
            await self.send(plan, body, planned)
        record = await first
        if record.status != 202:
            return
        for index, after in plan.cancels:
            await asyncio.sleep(max(0.0, record.sent_at + after - time.time()))
            await self.cancel(record.ids[index])

    async def send(self, plan: PostPlan, body: dict[str, Any], planned: tuple[Planned, ...]) -> PostRecord:
        async with self.gate:
            record = PostRecord(plan.seq, planned, time.time(), plan.key)
            self.obs.posts.append(record)
            try:
                status, answer = await request(self.client, "POST", "/v1/messages", body, plan.key)
            except (aiohttp.ClientError, TimeoutError) as exc:
                record.error = type(exc).__name__
                return record
            record.answered_at, record.status = time.time(), status
            if 200 <= status < 300:
                record.ids = tuple(answer["ids"])
            return record

    async def cancel(self, message_id: str) -> None:
        record = CancelRecord(message_id, time.time())
        self.obs.cancels.append(record)
        try:
            status, _ = await request(self.client, "DELETE", f"/v1/messages/{message_id}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            record.error = type(exc).__name__
            return
        record.answered_at, record.status = time.time(), status


async def request(client: ClusterClient, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    """One call to collect: its status and JSON body (the text itself when it is not JSON: a 500 from the server's
    own error page, say, which ``ClusterClient`` would fail to parse)."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    data = orjson.dumps(body) if body is not None else None
    async with client.session.request(method, f"{client.stack.collect_url}{path}", data=data, headers=headers) as r:
        text = await r.read()
    try:
        return r.status, orjson.loads(text)
    except orjson.JSONDecodeError:
        return r.status, text.decode(errors="replace")

"""The webhook fan-out reads from MongoDB only the posts of events some endpoint wants."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.webhooks.fanout import Fanout
from shared.delivery.webhook_endpoints import Endpoint
from shared.model.webhook_events import Fact, encode_facts


class Posts:
    """A posts collection that answers every id and remembers which were asked for."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def find_one(self, query: dict[str, Any], _fields: dict[str, int]) -> dict[str, Any]:
        self.asked.append(query["_id"])
        return {"sender": "demo", "ts": 1}


class Breaker:
    async def call(self, operation: Any) -> Any:
        return await operation()


class Registry:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoints = {endpoint.id: endpoint}

    async def refresh(self) -> None:
        return None

    def poke(self, _ids: Any) -> None:
        return None


class Queues:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def fan_out(self, _group: str, _acks: list[str], events: list[Any], _now: int, _limit: int) -> tuple[int, dict[str, int]]:
        self.events += events
        return len(events), {}


async def test_deliveries_kept_only_for_a_later_expirys_last_state_read_no_post() -> None:
    """With only message.expired wanted, a batch of deliveries is queued for nobody (marked seen) and reads no post."""
    posts, queues = Posts(), Queues()
    endpoint = Endpoint("ep_1", "demo", "http://127.0.0.1:1/hook", ("message.expired",), False, (("whsec_x", 0),))
    store = SimpleNamespace(posts=posts, breaker=Breaker())
    fanout = Fanout(None, store, Registry(endpoint), queues, SimpleNamespace(queue_limit=100))  # type: ignore[arg-type]
    facts = [Fact("delivered", f"post{n}:0", "ada", 1, "node") for n in range(3)]
    await fanout.fan_out([("1-0", {b"f": encode_facts(facts)})])
    assert posts.asked == []
    assert [(webhook_id, targets) for webhook_id, _, targets in queues.events] == [(f.event_id, []) for f in facts]

"""The webhook fan-out reads from MongoDB only the posts of events some endpoint wants, and reads the stream first from its
pending entries, then new ones, telling its ordering window how far it has read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.webhooks.fanout import ENTRIES_PER_READ, Fanout
from services.webhooks.order import OrderWindow, member
from shared.delivery.webhook_endpoints import Endpoint
from shared.infra.clock import now_ms
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
    await fanout.fan_out([(member(f.at, "1-0", n), f) for n, f in enumerate(facts)], ["1-0"])
    assert posts.asked == []
    assert [(webhook_id, targets) for webhook_id, _, targets in queues.events] == [(f.event_id, []) for f in facts]


class Stream:
    """XREADGROUP answering each call with the next of ``pages`` (lists of entry ids), and remembering what was asked."""

    def __init__(self, pages: list[list[str]]) -> None:
        self.pages = pages
        self.asked: list[tuple[str, int | None]] = []

    async def xreadgroup(self, _group: str, _consumer: str, streams: dict[str, str], count: int, block: int | None) -> Any:
        [(name, cursor)] = streams.items()
        self.asked.append((cursor, block))
        page = self.pages.pop(0) if self.pages else []
        fact = Fact("online", "", "ada", 1)
        return [[name, [(i, {b"f": encode_facts([fact])} if i != "5-0" else None) for i in page]]] if page else []


async def test_the_backlog_is_read_past_each_page_then_new_entries_and_each_read_tells_the_window_how_far() -> None:
    """Pending entries are read from 0, then past the last one read (their held facts keep them pending, so reading 0
    again would loop), one deleted meanwhile included (acknowledged with the next batch); then new entries (>). A page of
    the backlog or a full page advances the window to its newest entry; a short page of new entries, to when the read
    began (all there was had been read)."""
    stream = Stream([["1-0", "5-0"], [], [f"{n}-0" for n in range(10, 10 + ENTRIES_PER_READ)], ["900-0"]])
    fanout = Fanout(stream, None, None, None, SimpleNamespace())  # type: ignore[arg-type]
    window = OrderWindow(100)
    cursor = await fanout.read(window, "0")
    assert (cursor, window.read_to, len(window)) == ("5-0", 5, 1)
    assert window.release(10) == ([], ["5-0"])
    cursor = await fanout.read(window, cursor)
    assert (cursor, window.read_to) == (">", 5)
    await fanout.read(window, cursor)
    assert window.read_to == 10 + ENTRIES_PER_READ - 1  # a full page: the stream may hold more
    before = now_ms()
    await fanout.read(window, ">")
    assert before - 100 <= window.read_to <= now_ms()
    assert stream.asked == [("0", None), ("5-0", None), (">", None), (">", None)]  # held facts due: no wait


async def test_new_entries_are_waited_for_until_the_first_held_fact_is_due() -> None:
    """Nothing held: a read waits a second at most; a fact held: until it is due, at most."""
    stream = Stream([])
    fanout = Fanout(stream, None, None, None, SimpleNamespace())  # type: ignore[arg-type]
    window = OrderWindow(500)
    await fanout.read(window, ">")
    now = now_ms()
    window.add(f"{now}-0", [Fact("online", "", "ada", now)])
    await fanout.read(window, ">")
    [(_, idle), (_, until_due)] = stream.asked
    assert idle == 1000 and 400 <= until_due <= 500

"""The delivery state at scale: reconnect storms, Redis lost and rebuilt, the store down, bounded work."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections import Counter

import orjson
import psutil
import pytest
from pymongo import monitoring
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.dispatch.config import DispatchConfig
from services.dispatch.lease import Lease
from services.dispatch.reconciler import Reconciler
from shared.cluster.routes import NODES_KEY, NodeCard, RouteReader, RouteWriter
from shared.delivery.inbox import Inbox, epoch_key, expired_key, inbox_key, post_key
from shared.delivery.lifecycle import LifecycleWriter
from shared.delivery.schedule import CANCELLING_KEY, SCHEDULE_KEY, Schedule
from shared.delivery.store import MessageStore
from shared.delivery.stream import ShardedStream, tier_keys
from shared.delivery.webhook_feed import EVENTS_KEY, TYPES_KEY, WebhookFeed
from shared.infra.clients import redis_client
from shared.infra.clock import now_ms
from shared.infra.config import DEV_INTERNAL_KEY
from shared.infra.slots import POST_BUCKETS, all_user_tags, user_tag
from shared.model.message import Message, message_id, post_of
from shared.model.priority import Priority
from shared.model.webhook_events import Fact, decode_facts
from shared.wire.protocol import MessageFrame
from tests.client import Receiver, frames_within, next_frame, receive_ids
from tests.conftest import RunningStack, Servers, report_scenario
from tests.integration.test_delivery_guarantees import FAST, wait_for_state
from tests.waits import scaled, until
from tools.cluster import Cluster, free_port


async def post_to_each(stack: RunningStack, users: list[str], per_user: int, payload: object = None,
                       per_post: int = 500) -> dict[str, list[str]]:
    """Post ``per_user`` messages to every user (their number, or ``payload``); return each user's ids in posting order."""
    bodies = [{"user_id": u, "payload": n if payload is None else payload} for n in range(per_user) for u in users]
    ids: dict[str, list[str]] = {u: [] for u in users}
    for start in range(0, len(bodies), per_post):
        chunk = bodies[start:start + per_post]
        status, answer = await stack.client.post({"messages": chunk})
        assert status == 202, answer
        for body, mid in zip(chunk, answer["ids"]):
            ids[body["user_id"]].append(mid)
    return ids


async def connect_all(stack: RunningStack, users: list[str]) -> dict[str, object]:
    """Every user connected at once, alternating between the two nodes, each once welcomed."""
    sockets = await asyncio.gather(*(stack.client.connect(u, node=i % 2) for i, u in enumerate(users)))
    return dict(zip(users, sockets))


async def test_reconnect_storm_delivers_every_stored_message_exactly_once(start_stack) -> None:
    """300 offline users with 5 messages each all connect at once: each gets exactly their 5, oldest first."""
    stack: RunningStack = start_stack()
    users = [f"storm{i}" for i in range(300)]
    posted = await post_to_each(stack, users, 5)
    sockets = await connect_all(stack, users)
    received = dict(zip(users, await asyncio.gather(*(receive_ids(sockets[u], 5, timeout=60) for u in users))))
    extra = await asyncio.gather(*(frames_within(sockets[u], 0.3) for u in users[:20]))
    counts = Counter((u, m) for u in users for m in received[u])
    lost, twice = report_scenario("reconnect storm: 300 users x 5 stored messages",
                                  [f"{u}/{m}" for u in users for m in posted[u]],
                                  [f"{u}/{m}" for u, m in counts.elements()])
    assert lost == twice == 0 and not any(extra)
    assert all(received[u] == posted[u] for u in users)
    await asyncio.gather(*(ws.close() for ws in sockets.values()))


async def test_pending_messages_survive_redis_restarted_empty_and_acked_ones_stay_acked(start_stack, cluster: Cluster) -> None:
    """Redis restarted empty while 200 users have pending messages: dispatch rebuilds from MongoDB, each arrives on
    reconnect, and messages acknowledged before the restart are not sent again."""
    redis_port = free_port()
    redis = cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port), **FAST)
    users = [f"lost{i}" for i in range(200)]
    acked_first = await post_to_each(stack, users[:20], 1)
    early = await connect_all(stack, users[:20])
    for user, ws in early.items():
        assert await receive_ids(ws, 1) == acked_first[user]
        await ws.send(orjson.dumps({"type": "ack", "ids": acked_first[user]}).decode())
    for user in users[:20]:
        await wait_for_state(stack, acked_first[user][0], "acked")
    await asyncio.gather(*(ws.close() for ws in early.values()))
    posted = await post_to_each(stack, users, 2)
    redis.stop()
    redis = cluster.start_redis(redis_port)
    sockets = await asyncio.gather(*(connect_until_welcomed(stack, u, i % 2) for i, u in enumerate(users)))
    received = await asyncio.gather(*(receive_ids(ws, 2, timeout=60) for ws in sockets))
    again = await asyncio.gather(*(frames_within(ws, 0.5) for ws in sockets[:20]))
    lost, twice = report_scenario("Redis restarted empty: 200 users x 2 pending, rebuilt from MongoDB",
                                  [m for u in users for m in posted[u]], [m for ids in received for m in ids])
    assert lost == twice == 0
    assert [f for frames in again for f in frames if f["type"] == "message"] == [], "an acked message came back"
    await asyncio.gather(*(ws.close() for ws in sockets))


async def connect_until_welcomed(stack: RunningStack, user: str, node: int, timeout: float = 30) -> ClientConnection:
    """Connect, retrying while the node refuses with 1013 (its Redis is coming back)."""
    async def welcomed() -> ClientConnection | None:
        ws = await stack.client.open(await stack.client.token(user), node)
        try:
            assert (await next_frame(ws))["type"] == "welcome"
            return ws
        except ConnectionClosed:
            assert ws.close_code == 1013, ws.close_code
            return None

    return await until(welcomed, lambda ws: ws is not None, what=f"node {node} to welcome {user}", timeout=timeout, every=0.3)


async def test_pending_messages_reach_users_who_connect_while_the_store_is_down(start_stack, cluster: Cluster) -> None:
    """With FerretDB stopped, users who connect get their pending messages on the same sockets; posting works once it
    is back 5 s later."""
    mongo_port = free_port()
    mongo = cluster.start_ferretdb(mongo_port)
    stack: RunningStack = start_stack(mongo_url=f"mongodb://127.0.0.1:{mongo_port}/")
    users = [f"nostore{i}" for i in range(20)]
    posted = await post_to_each(stack, users, 3)
    mongo.stop()
    sockets = await connect_all(stack, users)
    received = await asyncio.gather(*(receive_ids(sockets[u], 3, timeout=5) for u in users))
    report_scenario("FerretDB stopped during 20 users' replays on connect", [m for u in users for m in posted[u]],
                    [m for ids in received for m in ids])
    assert list(received) == [posted[u] for u in users]
    await asyncio.sleep(5)  # the outage itself: the store stays down 5 s with the replayed users connected
    cluster.start_ferretdb(mongo_port)
    after = await stack.client.post_until_accepted({"user_id": users[0], "payload": "store is back"})
    async with asyncio.timeout(scaled(30)):  # an attempt answered 503 may come first: it went out while its insert ran
        while (frame := await next_frame(sockets[users[0]]))["id"] != after["id"]:
            assert frame["payload"] == "store is back", frame
    await asyncio.gather(*(ws.close() for ws in sockets.values()))


async def test_an_ack_batch_of_500_ids_costs_a_bounded_number_of_redis_commands(start_stack, cluster: Cluster) -> None:
    """One ack frame for a post's 500 messages costs two script calls (the inbox removals, then per message one
    HINCRBY, one for the post's count of held messages, and as that reaches 0 the post's one DEL and its ZREM from its
    expiry index), no read outside them, and records them acked."""
    redis_port = free_port()
    cluster.start_redis(redis_port)
    stack: RunningStack = start_stack(redis_url=cluster.redis_url(redis_port))
    ws = await stack.client.connect("acker")
    ids = (await post_to_each(stack, ["acker"], 500))["acker"]
    assert await receive_ids(ws, 500) == ids
    # dispatch takes no part in an ack; its own reads (the schedule's firing checks, two ZRANGEs each) would land in
    # the count whenever the flush takes long enough on a loaded machine
    stack.procs["dispatch"].stop()
    redis = Redis.from_url(cluster.redis_url(redis_port))
    try:
        await redis.config_resetstat()
        await ws.send(orjson.dumps({"type": "ack", "ids": ids}).decode())

        async def flushed() -> tuple[int, int]:
            return await redis.zcard(inbox_key("acker")), await redis.exists(post_key(post_of(ids[0])))

        # the flush ends by deleting the fully acked messages
        await until(flushed, lambda left: left == (0, 0), what="the ack flush to empty the inbox and delete the post")
        calls = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in (await redis.info("commandstats")).items()}
        assert (calls["zrem"], calls["hincrby"], calls["del"], calls.get("hdel", 0)) == (500 + 1, 500 + 1, 1, 0)
        assert not {"zrange", "hget", "hgetall", "smembers"} & set(calls)
        await wait_for_state(stack, ids[-1], "acked")
    finally:
        await redis.aclose()
    await ws.close()


class CommandCounter(monitoring.CommandListener):
    """Counts the MongoDB commands a client sends and the documents its finds return."""

    def __init__(self) -> None:
        self.commands: Counter[str] = Counter()
        self.documents = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor", {}) if isinstance(event.reply, dict) else {}
        self.documents += len(cursor.get("firstBatch", cursor.get("nextBatch", [])))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_reconciler_at_20000_open_deliveries_reads_no_document_and_expires_in_pages(
        servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 20,000 open deliveries (half past expiry), a reconciler pass reads no MongoDB document and expires the
    10,000 due; after Redis is emptied, the rebuild reads each open post and each closing record once."""
    redis_url, mongo_db = servers.fresh_database()
    redis = Redis.from_url(redis_url)
    counter = CommandCounter()
    store = MessageStore(servers.mongo_url, mongo_db, event_listeners=[counter])
    inbox = Inbox(redis)
    now = now_ms()
    # 100 posts of 100 messages, message i of each to users ui-a and ui-b; the even posts are past their expiry.
    messages = [Message(message_id(f"p{p:03d}", i), (f"u{i}-a", f"u{i}-b"),
                        MessageFrame(message_id(f"p{p:03d}", i), i, now).encode(), now,
                        now - 1000 if p % 2 == 0 else now + 3_600_000) for p in range(100) for i in range(100)]
    await store.accept(messages)
    await inbox.open(messages, now - 2000)  # the even posts were opened before they expired
    await inbox.complete()
    monkeypatch.setenv("APP_ENV", "development")  # its defaults include the development internal key
    config = DispatchConfig.from_env()
    lifecycle = LifecycleWriter(store)
    reconciler = Reconciler(config, store, inbox, lifecycle, Lease(redis, "lease:test", "me", 10_000),
                            RouteReader(redis, DEV_INTERNAL_KEY), ShardedStream(redis))
    counter.commands.clear()
    await redis.config_resetstat()
    await reconciler.reconcile()
    assert counter.documents == 0 and "find" not in counter.commands
    calls = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in (await redis.info("commandstats")).items()}
    assert calls["zrangebyscore"] == POST_BUCKETS + 2, ("one expiry page per post bucket, one look for unfinished "
                                                        "hand-overs and one for unfinished cancels")
    assert calls["hgetall"] == 50
    assert calls["zrem"] == 10_000 + 50, "one per delivery, and one per post leaving its expiry index"
    assert await inbox.open_count() == 50
    await lifecycle.flush()
    assert await store.events.count_documents({"closed": True}) == 50, "one event document per post"

    await redis.flushdb()
    counter.commands.clear()
    counter.documents = 0
    await reconciler.reconcile()
    assert counter.documents == 50 + 50, "each open post and each closing record is read once"
    assert counter.commands["find"] == 2 and counter.commands["getMore"] <= 2
    assert await inbox.open_count() == 50 and await inbox.epoch() is not None
    assert await redis.zcard(inbox_key("u1-a")) == 50, "message 1 of each odd post"
    await store.client.drop_database(mongo_db)
    await store.close()
    await redis.aclose()


async def test_expiries_whose_record_fails_stay_noted_in_redis_and_are_recorded_at_the_next_pass(
        servers: Servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconciler pass that closes an expired delivery but cannot append its webhook fact (that Redis unreachable) keeps
    the note; the next pass records it: status ``expired``, and the fact, under the time the closing was noted with."""
    async with servers.fresh_state() as (redis, store), Redis.from_url(f"redis://127.0.0.1:{free_port()}/0") as unreachable:
        inbox = Inbox(redis)
        now = now_ms()
        gone = Message(message_id("pgone", 0), ("ann",), MessageFrame(message_id("pgone", 0), 0, now).encode(), now - 2000,
                   now - 1000, sender="demo")
        await store.accept([gone])
        await inbox.open([gone], now - 2000)
        await inbox.complete()
        await redis.sadd(TYPES_KEY, "message.expired")  # an endpoint wants expiries
        lifecycle = LifecycleWriter(store, feed=WebhookFeed(unreachable))
        monkeypatch.setenv("APP_ENV", "development")
        reconciler = Reconciler(DispatchConfig.from_env(), store, inbox, lifecycle, Lease(redis, "lease:test", "me", 10_000),
                            RouteReader(redis, DEV_INTERNAL_KEY), ShardedStream(redis))
        with pytest.raises(RedisError):
            await reconciler.reconcile()
        assert await inbox.still_open([(gone.id, "ann")]) == set(), "closed in Redis"
        noted = await inbox.noted("expired", 10, now_ms())
        assert list(noted.marks) == [(gone.id, "ann")], "and noted there, not forgotten"
        lifecycle.feed = WebhookFeed(redis)
        await reconciler.reconcile()
        assert await redis.llen(expired_key(user_tag("ann"))) == 0
        facts = [f for _, fields in await redis.xrange(EVENTS_KEY) for f in decode_facts(fields[b"f"])]
        assert facts == [Fact("expired", gone.id, "ann", noted.marks[gone.id, "ann"])]
        answer = await store.lifecycle(gone.id, "demo")
        assert answer is not None and answer["recipients"][0]["state"] == "expired"


@pytest.mark.parametrize("where", ["single", "cluster"])
async def test_cancels_left_noted_are_recorded_past_the_grace_and_a_claimed_one_is_not_put_back(
        servers: Servers, cluster: Cluster, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Two cancels whose collect never finished (noted in Redis by the cancel script): the reconciler leaves them within
    CANCEL_GRACE_SECONDS; past it, a pass that records them but cannot append their facts (that Redis unreachable)
    keeps their notes, claimed, so collect's late put-back no longer brings a message back; the next pass records them
    and appends ``cancelled`` facts under the noted times, then drops the notes."""
    redis_url, procs = servers.redis_cluster() if where == "cluster" else (servers.fresh_database()[0], [])
    _, mongo_db = servers.fresh_database()
    redis = redis_client(redis_url)
    store = MessageStore(servers.mongo_url, mongo_db)
    schedule = Schedule(redis)
    now = now_ms()
    waiting = [Message(message_id("pcancel", i), ("ann", "bob"), MessageFrame(message_id("pcancel", i), i, now).encode(),
                       now, now + 600_000, sender="demo", due_ms=now + 300_000) for i in range(2)]
    await store.accept(waiting)
    await schedule.hold(waiting)
    await redis.sadd(TYPES_KEY, "message.cancelled")  # an endpoint wants cancels
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    lifecycle = LifecycleWriter(store, feed=WebhookFeed(unreachable))
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("CANCEL_GRACE_SECONDS", "1")
    inbox = Inbox(redis)
    reconciler = Reconciler(DispatchConfig.from_env(), store, inbox, lifecycle, Lease(redis, "lease:test", "me", 10_000),
                            RouteReader(redis, DEV_INTERNAL_KEY), ShardedStream(redis))
    try:
        cancels = [await schedule.cancel(m.id, "demo") for m in waiting]
        assert all(c is not None for c in cancels)
        times = {c.message.id: c.at for c in cancels if c is not None}
        assert await reconciler.finish_cancels() == 0, "within the grace a cancel is collect's"
        await asyncio.sleep(1.2)
        with pytest.raises(RedisError):
            await reconciler.finish_cancels()
        assert not await schedule.restore(waiting[0]), "claimed: collect's late put-back leaves it cancelled"
        assert await redis.zscore(SCHEDULE_KEY, waiting[0].id) is None
        lifecycle.feed = WebhookFeed(redis)
        assert await reconciler.finish_cancels() == 2
        assert await redis.zcard(CANCELLING_KEY) == 0, "the notes are dropped once recorded and appended"
        facts = [f for _, fields in await redis.xrange(EVENTS_KEY) for f in decode_facts(fields[b"f"])]
        assert sorted(facts, key=lambda f: f.message_id) == [Fact("cancelled", m, "", at) for m, at in sorted(times.items())]
        for m in waiting:
            answer = await store.lifecycle(m.id, "demo")
            assert answer is not None
            assert {(r["state"], r["cancelled_at"]) for r in answer["recipients"]} == {("cancelled", times[m.id])}
        assert await schedule.restore(waiting[1]) is False, "recorded: nothing to put back"
    finally:
        await unreachable.aclose()
        if not procs:
            await redis.flushdb()
        await redis.aclose()
        await store.client.drop_database(mongo_db)
        await store.close()
        for proc in procs:
            proc.stop()
            cluster.procs.remove(proc)


async def test_an_inbox_keeps_only_the_newest_messages_up_to_its_limit(servers: Servers) -> None:
    """Past INBOX_LIMIT a user's inbox drops its oldest entries, so one flooded user cannot grow Redis without end."""
    redis_url, _ = servers.fresh_database()
    redis = Redis.from_url(redis_url)
    inbox = Inbox(redis, limit=3)
    messages = [Message(message_id("flood", i), ("victim",), b"F", 1000 + i, now_ms() + 60_000) for i in range(5)]
    await inbox.open(messages)
    assert [m.decode() for m in await redis.zrange(inbox_key("victim"), 0, -1)] == [m.id for m in messages[2:]]
    await redis.aclose()


async def test_history_past_its_purge_time_is_deleted_and_newer_history_kept(servers: Servers) -> None:
    """The purge deletes posts and lifecycle documents whose purge_at has passed, and nothing else."""
    _, mongo_db = servers.fresh_database()
    store = MessageStore(servers.mongo_url, mongo_db)
    old, new = (Message(message_id(p, 0), ("u",), b"F", 1, expires, "shop")
                for p, expires in (("old", 1000), ("new", now_ms() + 10 * 86_400_000)))
    await store.accept([old, new])
    await store.record({(old.id, "u"): {"acked": 5}})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert await store.purge(later) == 2, "the old post (expired 1970) and the event written now, 31 days on"
    assert [d["_id"] async for d in store.posts.find({}, {"_id": 1})] == ["new"]
    await store.client.drop_database(mongo_db)
    await store.close()


async def test_the_rebuilds_reads_outlast_a_request_timeout_the_store_cannot_meet(servers: Servers) -> None:
    """With a request socket timeout (40 ms) shorter than FerretDB takes to filter and sort 4,000 posts, the same
    query as a request times out, while the rebuild's pass reads every message: a slow store delays a rebuild, it
    no longer makes it restart forever."""
    _, mongo_db = servers.fresh_database()
    seed = MessageStore(servers.mongo_url, mongo_db)
    expires = now_ms() + 3_600_000
    await seed.accept([Message(message_id(f"p{n:05}", 0), ("u",), b"x" * 2000, n, expires, "shop") for n in range(4000)])
    await seed.close()
    store = MessageStore(servers.mongo_url, mongo_db, timeout_ms=20)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(PyMongoError):
        await store.posts.find({"expires_at": {"$gt": now}}).sort("ts", 1).to_list(500)
    read = [m async for page in store.open_messages(now, 500) for m in page]
    assert len(read) == 4000 and read[0].id == message_id("p00000", 0)
    await store.client.drop_database(mongo_db)
    await store.close()


async def test_a_client_that_stops_reading_is_closed_and_gets_everything_on_reconnect(start_stack) -> None:
    """A socket that stops reading while 10,000 messages (40 MB) are posted to it is closed once MAX_BUFFERED_BYTES
    wait in its buffer: the node's memory stays bounded, another user's messages keep arriving fast, and a reconnect
    replays every message, none lost."""
    stack: RunningStack = start_stack(nodes=1)
    c, port = stack.client, stack.stack.push_ports[0]
    node = psutil.Process(stack.push(0).popen.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little on the client's side
    sock.connect(("127.0.0.1", port))
    sloth = await connect(f"ws://127.0.0.1:{port}/ws?token={await c.token('sloth')}", sock=sock, max_queue=1)
    assert (await next_frame(sloth))["type"] == "welcome"  # and never read again
    brisk = await c.connect("brisk")
    rss_before = node.memory_info().rss
    flood = asyncio.create_task(post_to_each(stack, ["sloth"], 10_000, payload="x" * 4000, per_post=200))
    latencies = []
    while not flood.done():
        sent = time.perf_counter()
        _, probe = await c.post({"user_id": "brisk", "payload": "still served"})
        assert (await next_frame(brisk, 5))["id"] == probe["id"]
        latencies.append(time.perf_counter() - sent)
        await asyncio.sleep(0.05)  # paces the probes: one every ~50 ms while the flood runs
    ids = (await flood)["sloth"]
    closed = await until(lambda: c.metric(stack.stack.push_url(port), "push_slow_closed_total"), what="the node to close the sloth",
                         timeout=30, every=0.2)
    assert closed == 1, "closed once, not once per message"
    growth = (node.memory_info().rss - rss_before) / 2**20
    print(f"non-reading client: node RSS grew {growth:.1f} MiB for 40 MB posted; {len(latencies)} probes to another "
          f"user, max {max(latencies) * 1000:.0f} ms")
    assert growth < 24, f"the node kept what the client did not read: {growth:.1f} MiB more"
    assert len(latencies) >= 5 and max(latencies) < 1.0
    sloth.transport.abort()
    again = await c.connect("sloth")
    received = await receive_ids(again, 10_000, timeout=90)
    lost, twice = report_scenario("client never reads: 10,000 x 4 KB posted to it, closed at 1 MiB buffered", ids, received)
    assert lost == twice == 0
    await again.close()
    await brisk.close()


async def test_tidying_forgets_dead_node_ids_and_consumers_of_gone_dispatch_instances(servers: Servers,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Node ids without a card and idle consumers with nothing pending are removed; a live node and this instance stay."""
    redis_url, mongo_db = servers.fresh_database()
    redis = Redis.from_url(redis_url)
    await RouteWriter(redis, "alive", 3600, 30).heartbeat(NodeCard("alive", "ws://x", "ws://y"))
    await redis.sadd(NODES_KEY, "ghost")
    streams = ShardedStream(redis)
    (stream,) = streams.shards
    await stream.ensure_group()
    for consumer in ("gone-1", "me"):  # each takes one entry and acknowledges it: nothing left pending
        await redis.xadd(tier_keys()[Priority.NORMAL], {"p": "x", "t": 0})
        await stream.ack([e.entry_id for e in await stream.read(consumer, 1, 1)])
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("DISPATCH_CONSUMER", "me")
    store = MessageStore(servers.mongo_url, mongo_db)
    reconciler = Reconciler(DispatchConfig.from_env(), store, Inbox(redis), LifecycleWriter(store),
                            Lease(redis, "lease:test", "me", 10_000), RouteReader(redis, DEV_INTERNAL_KEY), streams)
    await reconciler.tidy(idle_consumer_ms=0)
    assert await redis.smembers(NODES_KEY) == {b"alive"}
    assert [c["name"] for c in await redis.xinfo_consumers(tier_keys()[Priority.NORMAL], "dispatch")] == [b"me"]
    await store.close()
    await redis.aclose()


async def first_frame_is_a_new_message(stack: RunningStack, user: str, ws: ClientConnection) -> None:
    """Post ``user`` a message and check that it is the first frame ``ws`` gets after its welcome, then close ``ws``."""
    code, marker = await stack.client.post({"user_id": user, "payload": "after"})
    assert code == 202, marker
    assert (await next_frame(ws))["id"] == marker["id"], "the first frame after the welcome is the new message"
    await ws.close()


async def test_a_rebuild_after_one_bucket_was_lost_sends_no_acked_message_to_a_user_of_another(start_stack) -> None:
    """One user bucket's marker lost (a cluster master restarted empty) rebuilds the whole state: a user of a bucket
    that was not lost, reconnecting while the rebuild has reopened what they acked, is sent none of it."""
    stack: RunningStack = start_stack(REBUILD_PAGE="1", **FAST)
    receiver = Receiver("keeper", await stack.client.connect("keeper"))
    ids = []
    for n in range(150):
        code, answer = await stack.client.post({"user_id": "keeper", "payload": n})
        assert code == 202, answer
        ids.append(answer["id"])
    await receiver.received(ids, timeout=30)
    redis = Redis.from_url(stack.stack.redis_url)
    try:
        await until(lambda: redis.zcard(inbox_key("keeper")), lambda n: n == 0, what="every ack to close its entry")
        await redis.delete(epoch_key(next(t for t in all_user_tags() if t != user_tag("keeper"))))
        await until(lambda: redis.zcard(inbox_key("keeper")), lambda n: n > 0, what="the rebuild to reopen acked entries")
        again = await stack.client.connect("keeper", node=1)
        await until(lambda: Inbox(redis).epoch(), lambda epoch: epoch is not None, what="the rebuild to complete", timeout=30)
        await first_frame_is_a_new_message(stack, "keeper", again)
    finally:
        await redis.aclose()
        await receiver.close()


async def test_a_rebuild_begun_right_after_acks_sends_none_of_them_back(start_stack) -> None:
    """A rebuild that begins while the acks' marks still wait for their node's lifecycle flush, and reopens those
    messages within milliseconds, closes them again before it completes: the acking user is sent none of them."""
    stack: RunningStack = start_stack(**FAST)
    receiver = Receiver("quick", await stack.client.connect("quick"))
    code, answer = await stack.client.post({"messages": [{"user_id": "quick", "payload": n} for n in range(20)]})
    assert code == 202, answer
    await receiver.received(answer["ids"], timeout=30)
    redis = Redis.from_url(stack.stack.redis_url)
    try:
        before = await Inbox(redis).epoch()
        await until(lambda: redis.zcard(inbox_key("quick")), lambda n: n == 0, what="every ack to close its entry")
        await redis.delete(epoch_key(next(t for t in all_user_tags() if t != user_tag("quick"))))
        await until(lambda: Inbox(redis).epoch(), lambda epoch: epoch not in (None, before), what="the rebuild to complete",
                    timeout=30)
        assert await redis.zcard(inbox_key("quick")) == 0, "the rebuild left an acked message open"
        again = await stack.client.connect("quick", node=1)
        await first_frame_is_a_new_message(stack, "quick", again)
    finally:
        await redis.aclose()
        await receiver.close()

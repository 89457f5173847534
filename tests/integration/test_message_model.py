"""A post's parts keep their own delivery state: through the real processes, a part handed over later (scheduled)
neither closes nor shortens what the post's other parts still owe; on a real Redis, the scripts follow the model."""

from __future__ import annotations

import random

import pytest
from redis.asyncio import Redis

from shared.delivery.inbox import Inbox, expiry_key, inbox_key, post_key
from shared.infra.clients import redis_client
from shared.infra.clock import now_ms
from shared.infra.scripts import guard_key
from shared.infra.slots import post_tag
from shared.model.message import post_of
from tests.client import Receiver, receive_ids
from tests.conftest import RunningStack, Servers
from tests.integration.test_delivery_guarantees import FAST, status
from tests.model_world import USERS, World, catalogue
from tests.waits import until
from tools.cluster import Cluster


def state_of(body: dict) -> str:
    return body["recipients"][0]["state"]


async def test_a_fired_part_acked_leaves_the_posts_due_part_owed(start_stack, topology: str) -> None:
    """Bob's delayed part of a post fires and is acked; alice, connecting afterwards, still gets the post's due part."""
    stack: RunningStack = start_stack(**FAST)
    bob = Receiver("bob", await stack.client.connect("bob"))
    code, answer = await stack.client.post({"messages": [
        {"user_id": "alice", "payload": "A", "ttl_seconds": 3600},
        {"user_id": "bob", "payload": "B", "delay_seconds": 1, "ttl_seconds": 10}]})
    assert code == 202, answer
    alice_id, bob_id = answer["ids"]
    await bob.received([bob_id], timeout=10)
    await until(lambda: status(stack, bob_id), lambda r: state_of(r[1]) == "acked", what="bob's ack to be recorded")
    ws = await stack.client.connect("alice", node=1)
    assert await receive_ids(ws, 1) == [alice_id]
    await ws.close()
    await bob.close()


async def test_a_short_lived_part_fired_later_does_not_expire_the_posts_long_lived_part(start_stack, topology: str) -> None:
    """A post's part with a 2 s TTL, fired after its long-lived part, expires alone: alice, connecting after it
    expired, still gets her 1-hour message."""
    stack: RunningStack = start_stack(**FAST)
    code, answer = await stack.client.post({"messages": [
        {"user_id": "alice2", "payload": "A", "ttl_seconds": 3600},
        {"user_id": "bob2", "payload": "B", "delay_seconds": 1, "ttl_seconds": 2}]})
    assert code == 202, answer
    alice_id, bob_id = answer["ids"]
    assert post_of(alice_id) == post_of(bob_id)
    await until(lambda: status(stack, bob_id), lambda r: state_of(r[1]) == "expired", what="bob's short part to expire",
                timeout=15)
    ws = await stack.client.connect("alice2")
    assert await receive_ids(ws, 1) == [alice_id]
    await ws.close()


async def redis_view(redis: Redis, world: World, users: tuple[str, ...]) -> tuple[dict, dict]:
    """What Redis holds and what the model says it should, side by side: per post its held messages' counts,
    how many it holds and its expiry score, per user the open entries."""
    got: dict = {}
    for post in world.posts:
        fields = await redis.hgetall(post_key(post))
        got[post] = ({int(k[1:]): int(v) for k, v in fields.items() if k.startswith(b"n") and int(v) > 0},
                     int(fields.get(b"h", 0)), await redis.zscore(expiry_key(post_tag(post)), post))
    got |= {u: sorted(m.decode() for m in await redis.zrange(inbox_key(u), 0, -1)) for u in users}
    want: dict = {post: ({i: h.open for i, h in s.held.items()}, len(s.held), s.score) for post, s in world.posts.items()}
    want |= {u: sorted(world.inboxes[u]) for u in users}
    return got, want


@pytest.mark.parametrize(("seed", "where"), [(1, "single"), (2, "single"), (3, "single"), (4, "cluster")])
async def test_redis_delivery_state_follows_the_model_through_random_transitions(servers: Servers, cluster: Cluster,
                                                                                 seed: int, where: str) -> None:
    """200 random opens (in parts, again too), acks, trims and expiry passes leave Redis's post hashes, expiry index
    and inboxes exactly as the pure model says, and the model's invariants hold after each; each closing is noted once,
    an expiry at its pass's time."""
    rng = random.Random(seed)
    redis_url, procs = servers.redis_cluster() if where == "cluster" else (servers.fresh_database()[0], [])
    redis = redis_client(redis_url)
    inbox = Inbox(redis, limit=4)
    world = World(limit=4)
    messages = catalogue(3, 4, 0, [tuple(rng.sample(USERS, rng.randint(1, 3))) for _ in range(12)],
                         [rng.randint(1, 400) for _ in range(12)])
    now = 0
    try:
        for step in range(200):
            op = rng.choice(["open", "open", "ack", "ack", "trimmed", "expire"])
            if op == "open":
                part = rng.sample(messages, rng.randint(1, 4))
                await inbox.open(part, now)
                world.open(part, now)
            elif op == "ack":
                pairs = [(m.id, u) for m in rng.sample(messages, 3) for u in USERS if rng.random() < 0.5]
                assert sorted(await inbox.close(pairs)) == sorted(world.close(pairs)), f"step {step}"
            elif op == "trimmed":
                noted = await inbox.noted("trimmed", 100, now)
                assert sorted(await inbox.forget("trimmed", noted)) == sorted(world.close_trimmed()), f"step {step}"
            else:
                now += rng.randint(1, 40)
                closed, _ = await inbox.expire(now, 100)
                assert sorted(closed) == sorted(world.expire(now)), f"step {step}"
                noted = await inbox.noted("expired", 100, now + 1)
                assert noted.marks == dict.fromkeys(closed, now), f"step {step}: each closing noted at the pass's time"
                assert sorted(await inbox.forget("expired", noted)) == sorted(closed), f"step {step}"
            got, want = await redis_view(redis, world, USERS)
            assert got == want, f"seed {seed} step {step} after {op}"
            assert world.broken() == [], f"seed {seed} step {step} after {op}"
    finally:
        await redis.aclose()
        for proc in procs:
            proc.stop()
            cluster.procs.remove(proc)


async def test_messages_pushed_out_of_a_full_inbox_are_closed_and_shown_trimmed(start_stack) -> None:
    """Past INBOX_LIMIT an offline user's oldest messages leave the inbox: their status says ``trimmed`` (counted,
    not silently gone), and the user, connecting, gets the newest ones only."""
    stack: RunningStack = start_stack(INBOX_LIMIT="3", **FAST)
    ids = []
    for n in range(5):
        code, answer = await stack.client.post({"user_id": "flooded", "payload": n})
        assert code == 202, answer
        ids.append(answer["id"])
    for trimmed in ids[:2]:
        await until(lambda m=trimmed: status(stack, m), lambda r: state_of(r[1]) == "trimmed", what=f"{trimmed} shown trimmed")
    assert [state_of((await status(stack, m))[1]) for m in ids[2:]] == ["accepted"] * 3
    assert await stack.client.metric(stack.stack.dispatch_url, "dispatch_trimmed_total") == 2
    ws = await stack.client.connect("flooded")
    assert await receive_ids(ws, 3) == ids[2:]
    await ws.close()


async def test_a_close_sent_twice_by_the_clients_retry_counts_once(servers: Servers) -> None:
    """The Redis client re-sends a call whose reply it lost: the close script, run twice as one call, counts ann's ack
    once, so bob's delivery of the same message stays held."""
    redis_url, _ = servers.fresh_database()
    redis = Redis.from_url(redis_url)
    inbox = Inbox(redis)
    (m,) = catalogue(1, 1, now_ms(), [("ann", "bob")], [60_000])
    await inbox.open([m])
    tag = post_tag(m.post)
    call = [expiry_key(tag), post_key(m.post), guard_key(expiry_key(tag), "one-call")]
    try:
        replies = [await inbox._close.script(keys=call, args=[m.post, 1, 0, 1]) for _ in range(2)]
        assert replies == [1, 1]
        assert await redis.hget(post_key(m.post), "n0") == b"1"
        assert await inbox.frames([m.id], now_ms()) == [m.frame]
    finally:
        await redis.flushdb()
        await redis.aclose()


async def test_one_user_given_more_entries_than_lua_unpacks_at_once_gets_them_all_trimmed_to_the_limit(servers: Servers) -> None:
    """A hand-over of 6,000 messages to one user (12,000 arguments for one inbox, past Lua's unpack limit) opens every
    one, then trims the inbox to its limit, the oldest 1,000 queued as trimmed."""
    redis_url, _ = servers.fresh_database()
    redis = Redis.from_url(redis_url)
    inbox = Inbox(redis, limit=5_000)
    messages = catalogue(6, 1_000, now_ms(), [("ann",)] * 6_000, [60_000] * 6_000)
    try:
        await inbox.open(messages)
        assert await redis.zrange(inbox_key("ann"), 0, -1) == [m.id.encode() for m in messages[1_000:]]
        assert len((await inbox.noted("trimmed", 10_000, now_ms())).entries) == 1_000
    finally:
        await redis.flushdb()
        await redis.aclose()

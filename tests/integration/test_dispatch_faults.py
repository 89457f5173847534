"""dispatch under faults: a hung push node, dispatch killed in the middle of a batch (alone or beside another
instance), and a node that keeps refusing a batch. Counted per delivery (message, user).

Delivery is at least once (README, "What is promised under each fault"): a delivery may come twice only across a
fault, so each test bounds its duplicates by what was in flight at its fault (entries dispatch held, messages for a
hung node's users) and requires none at all where no fault touched the delivery."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter

from redis.asyncio import Redis

from shared.delivery.inbox import inbox_key
from shared.delivery.stream import GROUP, ShardedStream, tier_keys
from shared.infra.clock import now_ms
from shared.model.message import Message
from shared.model.priority import Priority
from shared.wire.protocol import MessageFrame
from tests.client import API_KEY, Receiver, receive_ids
from tests.conftest import RunningStack, report_scenario
from tests.waits import scaled, until
from tools.cluster import Cluster, Proc, free_port

FAST = {"CLAIM_IDLE_MS": "2000"}


class Load:
    """Posts, one after another, each message to one user on each node; remembers every delivery it asked for."""

    def __init__(self, stack: RunningStack, pairs: list[tuple[str, str]]) -> None:
        self.stack = stack
        self.pairs = pairs
        self.posted: list[str] = []
        self.accepted: dict[str, float] = {}  # delivery -> time.time() of its 202

    async def run(self, seconds: float, pause: float = 0.02) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            users = self.pairs[len(self.posted) // 2 % len(self.pairs)]
            status, body = await self.stack.client.post({"user_ids": list(users), "payload": len(self.posted)})
            assert status == 202, body
            self.posted += [f"{body['id']}:{u}" for u in users]
            self.accepted.update((f"{body['id']}:{u}", time.time()) for u in users)
            await asyncio.sleep(pause)  # paces the load


def duplicated(received: list[str]) -> dict[str, int]:
    """The deliveries that arrived more than once, with their number of arrivals."""
    return {d: n for d, n in Counter(received).items() if n > 1}


async def everything_arrived(load: Load, receivers: list[Receiver], timeout: float) -> list[str]:
    """Wait until every posted delivery arrived, then a second more for late duplicates; return all arrivals."""
    def missing() -> set[str]:
        return set(load.posted) - {d for r in receivers for d in r.deliveries}

    await until(missing, lambda left: not left, what="every posted delivery to arrive", timeout=timeout, every=0.2)
    await asyncio.sleep(scaled(1.0))  # proves an absence: a duplicate would arrive within this second
    return [d for r in receivers for d in r.deliveries]


async def receivers(stack: RunningStack, prefix: str, node: int, count: int) -> list[Receiver]:
    return [Receiver(f"{prefix}{n}", await stack.client.connect(f"{prefix}{n}", node=node)) for n in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_a_hung_node_delays_no_other_node_and_gets_everything_once_it_resumes(start_stack) -> None:
    """A node SIGSTOPped for 10 s under load: users on the healthy node keep receiving within a fraction of a second,
    and after SIGCONT the hung node's users get every message too."""
    stack: RunningStack = start_stack()
    healthy, hung = await receivers(stack, "well", 0, 4), await receivers(stack, "hung", 1, 4)
    load = Load(stack, [(h.user, s.user) for h, s in zip(healthy, hung)])
    await load.run(2)
    stack.push(1).popen.send_signal(signal.SIGSTOP)
    stopped = time.time()
    try:
        await load.run(10)
        resumed = time.time()
    finally:
        stack.push(1).popen.send_signal(signal.SIGCONT)
    await load.run(2)
    received = await everything_arrived(load, healthy + hung, timeout=45)
    during = [latency for r in healthy for at, latency in r.latencies if stopped + 0.5 <= at <= resumed]
    p50, p99, worst = percentile(during, 0.5), percentile(during, 0.99), max(during)
    lost, twice = report_scenario(
        f"push node SIGSTOPped 10 s: healthy p50/p99/max {p50 * 1000:.0f}/{p99 * 1000:.0f}/{worst * 1000:.0f} ms",
        load.posted, received)
    assert len(during) > 100, "the healthy node's users kept receiving while the other node was stopped"
    assert p99 < 0.5 and worst < 1.5, (p50, p99, worst)
    assert lost == 0
    # Duplicates: none for the healthy node's users (no fault touched them); for the hung node's users at most a
    # second copy of a message in flight to it, i.e. accepted from a second before the stop until a second after it
    # resumed (its batches may be retried and its sockets' acks were held up).
    extra = duplicated(received)
    healthy_users = {r.user for r in healthy}
    assert not [d for d in extra if d.rpartition(":")[2] in healthy_users], f"healthy users got duplicates: {extra}"
    outside = {d: n for d, n in extra.items() if n > 2 or not stopped - 1 <= load.accepted[d] <= resumed + 1}
    assert not outside, f"{twice} duplicates, these beyond what was in flight at the fault: {outside}"
    for r in healthy + hung:
        await r.close()


def consumer_of(proc: Proc) -> bytes:
    return f"{socket.gethostname()}-{proc.popen.pid}".encode()


async def kill_mid_batch(redis: Redis, proc: Proc) -> int:
    """Freeze dispatch until it is caught holding entries it read but did not acknowledge, then SIGKILL it; return how many."""
    async def frozen_holding() -> int:
        """Freeze dispatch and count the entries it holds; let it go on if it holds none."""
        proc.popen.send_signal(signal.SIGSTOP)
        consumers = (await redis.xpending(tier_keys()[Priority.NORMAL], "dispatch"))["consumers"]
        held = next((int(c["pending"]) for c in consumers if c["name"] == consumer_of(proc)), 0)
        if not held:
            proc.popen.send_signal(signal.SIGCONT)
        return held

    held = await until(frozen_holding, what="dispatch to be caught holding unacknowledged entries", timeout=30, every=0.03)
    proc.kill()
    return held


async def dispatch_killed_under_load(stack: RunningStack, restart: bool, cluster: Cluster) -> tuple[Load, list[str], int]:
    users = await receivers(stack, "left", 0, 3) + await receivers(stack, "right", 1, 3)
    load = Load(stack, [(users[n].user, users[n + 3].user) for n in range(3)])
    redis = Redis.from_url(stack.stack.redis_url)
    posting = asyncio.create_task(load.run(6, pause=0.005))
    await until(lambda: sum(len(r.ids) for r in users), lambda n: n >= 100, what="100 deliveries under load before the kill")
    held = await kill_mid_batch(redis, stack.procs["dispatch"])
    if restart:
        stack.procs["dispatch"] = cluster.start_service("dispatch", stack.stack)
    await posting
    received = await everything_arrived(load, users, timeout=30)
    await redis.aclose()
    for r in users:
        await r.close()
    return load, received, held


def assert_duplicates_within_held(received: list[str], held: int, twice: int) -> None:
    """Only what the killed instance held (read, maybe forwarded, not acknowledged) can be sent again: at most one more
    copy of each of its deliveries (2 per post here)."""
    extra = duplicated(received)
    assert all(n == 2 for n in extra.values()) and twice <= 2 * held, \
        f"{twice} duplicates for {held} entries held at the kill (at most {2 * held}): {extra}"


async def test_dispatch_killed_in_the_middle_of_a_batch_and_restarted_loses_nothing(start_stack, cluster: Cluster) -> None:
    """dispatch SIGKILLed while holding entries it read but did not acknowledge: its restart claims and delivers them."""
    stack: RunningStack = start_stack(**FAST)
    load, received, held = await dispatch_killed_under_load(stack, True, cluster)
    lost, twice = report_scenario(f"dispatch SIGKILLed mid-batch (entries held: {held}), restarted", load.posted, received)
    assert lost == 0
    assert_duplicates_within_held(received, held, twice)


async def test_one_of_two_dispatch_instances_killed_mid_batch_loses_nothing(start_stack, cluster: Cluster) -> None:
    """Two dispatch instances share the stream; one is SIGKILLed holding unacknowledged entries and the other takes them over."""
    stack: RunningStack = start_stack(**FAST)
    port = free_port()
    stack.procs["dispatch-2"] = cluster.start_service("dispatch", stack.stack, port, DISPATCH_PORT=str(port))
    load, received, held = await dispatch_killed_under_load(stack, False, cluster)
    lost, twice = report_scenario(f"one of 2 dispatch instances SIGKILLed (entries held: {held})", load.posted, received)
    assert lost == 0
    assert_duplicates_within_held(received, held, twice)


async def test_a_batch_the_node_keeps_refusing_is_left_to_the_inbox_after_max_attempts(start_stack) -> None:
    """A message larger than the node's link frame limit closes the link (1009) at each try: after MAX_ATTEMPTS it is
    acknowledged, not retried forever; the link carries later messages, and a reconnect replays the big one."""
    stack: RunningStack = start_stack(nodes=1, MAX_FRAME_BYTES="8192", CLAIM_IDLE_MS="300", MAX_ATTEMPTS="3")
    c = stack.client
    ws = await c.connect("big")
    _, big = await c.post({"user_id": "big", "payload": "x" * 20_000})
    redis = Redis.from_url(stack.stack.redis_url)
    await until(lambda: redis.xlen(tier_keys()[Priority.NORMAL]), lambda n: n == 0, what="the big entry to leave the stream", timeout=20,
                every=0.1)
    await redis.aclose()
    assert await c.metric(stack.stack.dispatch_url, "dispatch_given_up_total") == 1
    _, small = await c.post({"user_id": "big", "payload": "small"})
    assert await receive_ids(ws, 1) == [small["id"]]
    await ws.close()
    again = await c.connect("big")
    assert sorted(await receive_ids(again, 2)) == sorted([big["id"], small["id"]])
    await again.close()


async def offline(stack: RunningStack, user: str) -> bool:
    """Whether presence (which counts live node cards only) says ``user`` has no socket."""
    async with stack.client.session.get(f"{stack.stack.collect_url}/v1/presence/{user}",
                                        headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status == 200, await r.text()
        return not (await r.json())["online"]


async def test_a_node_hung_past_its_card_ttl_loses_none_of_its_users_messages(start_stack) -> None:
    """A node SIGSTOPped past NODE_TTL_SECONDS under load: its users who reconnect to the other node get what waited in
    their inboxes, those who stay get it from the node's catch-up replay once it resumes; nothing is lost."""
    stack: RunningStack = start_stack(NODE_TTL_SECONDS="3", CLAIM_IDLE_MS="2000")
    healthy = await receivers(stack, "ttl-well", 0, 3)
    stay, move = await receivers(stack, "ttl-stay", 1, 3), await receivers(stack, "ttl-move", 1, 3)
    load = Load(stack, [(h.user, s.user) for h, s in zip(healthy, stay)] + [(h.user, m.user) for h, m in zip(healthy, move)])
    await load.run(1)
    stack.push(1).popen.send_signal(signal.SIGSTOP)
    stopped = time.time()
    try:
        await load.run(1)
        await until(lambda: offline(stack, "ttl-stay0"), what="the hung node's card to expire", timeout=15, every=0.2)
        expired = time.time()
        await load.run(2)  # posted while dispatch takes the node for dead: left in the inboxes
        for r in move:  # the hung node never answers a close: drop the socket and connect to the healthy node
            r.ws.transport.abort()
        moved = [Receiver(r.user, await stack.client.connect(r.user, node=0)) for r in move]
        await load.run(1)
    finally:
        stack.push(1).popen.send_signal(signal.SIGCONT)
    resumed = time.time()
    await load.run(2)
    everyone = healthy + stay + move + moved
    received = await everything_arrived(load, everyone, timeout=45)
    lost, twice = report_scenario(f"push node SIGSTOPped past its card's TTL ({expired - stopped:.1f} s to expire)",
                                  load.posted, received)
    assert lost == 0, sorted(set(load.posted) - set(received))[:10]
    extra = duplicated(received)
    assert not [d for d in extra if d.rpartition(":")[2] in {h.user for h in healthy}], f"healthy users got duplicates: {extra}"
    outside = {d: n for d, n in extra.items() if n > 2 or not stopped - 1 <= load.accepted[d] <= resumed + 1}
    assert not outside, f"{twice} duplicates, these beyond what was in flight at the fault: {outside}"
    for r in healthy + stay + moved:
        await r.close()


async def test_an_entry_retried_after_its_recipient_acked_is_not_written_again(start_stack, cluster: Cluster) -> None:
    """A post read by a dispatch instance that died unacknowledged is claimed again by another after CLAIM_IDLE_MS;
    the recipient who acked it meanwhile (through its inbox) is not written it a second time."""
    stack: RunningStack = start_stack(CLAIM_IDLE_MS="1000")
    receiver = Receiver("retried", await stack.client.connect("retried"))
    code, answer = await stack.client.post({"user_id": "retried", "payload": "once", "ttl_seconds": 3600})
    assert code == 202, answer
    await receiver.received([answer["id"]], timeout=10)
    redis = Redis.from_url(stack.stack.redis_url)
    try:
        await until(lambda: redis.zcard(inbox_key("retried")), lambda n: n == 0, what="the ack to close the inbox entry")
        stack.procs["dispatch"].kill()
        # What a dispatch instance that read the post and died before acknowledging it leaves: a pending entry.
        message = Message(answer["id"], ("retried",), MessageFrame(answer["id"], "once", 1).encode(), 1, now_ms() + 3_600_000)
        async with redis.pipeline(transaction=False) as pipe:
            ShardedStream(redis).stage(pipe, [message])
            await pipe.execute()
        # Read by "dead-instance", unless the killed instance's blocked read took it first (a busy Redis may serve it
        # before it sees that socket closed): pending for a dead consumer either way.
        await redis.xreadgroup(GROUP, "dead-instance", {tier_keys()[Priority.NORMAL]: ">"}, count=10)
        assert (await redis.xpending(tier_keys()[Priority.NORMAL], GROUP))["pending"] == 1
        stack.procs["dispatch"] = cluster.start_service("dispatch", stack.stack)
        await until(lambda: redis.xpending(tier_keys()[Priority.NORMAL], GROUP), lambda p: p["pending"] == 0,
                    what="the entry claimed from the dead instance and settled", timeout=15)
        # A second write would have reached the socket before the node answered; a later message arrives after it.
        code, marker = await stack.client.post({"user_id": "retried", "payload": "after"})
        assert code == 202, marker
        await receiver.received([marker["id"]], timeout=10)
        assert receiver.ids == [answer["id"], marker["id"]]
    finally:
        await redis.aclose()
        await receiver.close()

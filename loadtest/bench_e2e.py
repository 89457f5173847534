"""End-to-end benchmark of the push cluster: prints figures, asserts nothing.

Scenarios (``--scenarios storm,steady,latency,connections``, these four by default; ``expiry`` on request):

* storm: ``--storm-users`` offline users get ``--storm-messages`` each (posts of 1,000, ``--posters``
  in flight), then all connect at once from client processes of ``--storm-per-process`` users
  (``--connect-concurrency`` handshakes in flight each): accepted msgs/s, connect rate, time from the
  first connect to the last stored message, each user's replay (its welcome to its last message),
  and the exactly-once tally (lost, duplicates) of what arrived within ``--timeout``.
* steady: ``--users`` connected users acking every 100 ms; ``--steady-messages`` posted in posts of
  ``--batch`` by ``--posters`` concurrent posters: accepted and delivered msgs/s, latency from
  collect's acceptance (the frame's ``ts``) to the socket, the tally.
* latency: the same users; ``--rate`` messages a second, paced, for ``--seconds``, in posts of ``--latency-batch``
  (one, or 10 with ``--peer``; up to ``--in-flight`` requests in flight): latency percentiles from acceptance to
  socket, POST round trips, the achieved rate and the most posts awaiting an answer.
* connections: ``--connections`` idle sockets to one push node from several client processes
  (``--per-process`` each, each bound to its own 127.x source address): connect rate, the node's
  RSS and memory per connection, and the Redis commands the node issues over ``--idle-seconds``.
* broadcast (only when named): ``--fanout-sockets`` sockets over both push nodes, from client processes
  of ``--per-process``; ``--broadcasts`` broadcasts one second apart: for each, the time from its POST
  to its last socket's receipt, and how many sockets it reached.
* topic (only when named): ``--topic-subscribers`` sockets over both nodes subscribed to one topic;
  one topic message per POST at ``--topic-rate`` for ``--topic-seconds``: deliveries, lost,
  duplicates, latency percentiles from acceptance to socket, the CPU split.
* recovery (only when named; one Redis, not ``--redis-cluster``): ``--recovery-subscribers`` sockets subscribe to one
  topic, alternately on the two push nodes (client processes of ``--recovery-per-process``), and note the position
  their ``subscribed`` answer gives; all disconnect; ``--recovery-messages`` topic messages are posted (posts of
  ``--recovery-batch``); then all reconnect, each to the other node, and resubscribe with ``recover`` from their
  position. Each checks it got exactly offsets position+1 .. position+messages, in order, once, in its epoch. Prints
  the answers' recovered flags, the sockets complete or not (the first ten described: offsets missing, duplicated,
  out of order, unexpected), the time from the start of the reconnects to every socket complete (target: 10 s),
  each socket's subscribe to its last message, Redis commands per recovering socket (``INFO commandstats`` before and
  after, every client), each node's history reads and recoveries (``push_history_reads_total``,
  ``push_recoveries_total`` on its ``/metrics``), CPU per node, per server and per client process.
* schedule (only when named): ``--schedule-rate`` messages due per second for ``--schedule-seconds``,
  to ``--schedule-users`` offline users, posted (posts of 1,000, ``--posters`` in flight) so the first
  is due ``--schedule-lead`` s after the start: fire lateness p50/p99 (due time to hand-over, from
  dispatch's histogram, as the bucket bound), and how long after the last due time the last fired.
* priority (only when named): ``--users`` connected users split 10% / 60% / 30% between the tiers high, normal
  and low; posts of ``--priority-batch`` messages of one tier each, in that mix, paced at ``--priority-rate``
  messages/s (past the cluster's capacity) for ``--priority-seconds``, without retrying a refusal: per tier the
  messages accepted, refused (429 while collect sheds the tier) and delivered, and the latency from acceptance to
  socket. The goal: high's p99 under 50 ms while low absorbs the overload.
* webhooks (only when named): the same workload twice, each on a fresh cluster: first without webhooks, then with
  the webhooks service and an endpoint for ``message.expired`` (``loadtest.webhook_sink``, a process of its
  own, answering 500 for the first ``--webhook-outage`` s after its first request, then 200). The workload:
  ``--webhook-expiries`` messages to as many offline users with a ``--webhook-ttl`` s TTL (posts of
  ``--batch``), so as many ``message.expired`` events, while ``--users`` connected users get one message per
  POST at ``--rate`` for ``--webhook-seconds``. Prints the time until every event arrived (from the first
  expiry, and from the end of the outage), lost (not arrived within TTL + outage + ``--timeout`` of the last
  post), duplicates (a ``webhook-id`` answered 200 twice), and the online users' latency without and with
  webhooks side by side. The services retry on ``--webhook-schedule`` (``WEBHOOK_SCHEDULE_SECONDS``).
* floor (only when named): what collect's accept path cannot go below on this target, each timed alone and one at
  a time (``--floor-samples`` each) from the bench process: a MongoDB insert of one post of 1, 10 and 200 messages
  (``MessageStore.accept``, as collect's write, into a database of its own that is dropped after) and a Redis round
  trip (ZADD, in a scratch database). A post pays one insert and two Redis round trips (the intent, then the
  hand-over) before its 202. Like expiry it calls the cluster's internals.
* expiry (only when named): ``--expiry-deliveries`` open deliveries already past their expiry in a
  scratch Redis database of the target's Redis, closed by the same ``Inbox.due``/``Inbox.expire``
  pages dispatch's reconciler runs: deliveries expired per second. Unlike the others it calls the
  cluster's internals (``shared.delivery.inbox``), not its external API.

Storm, steady and latency print the servers' CPU split (each server process and its descendants:
Redis, PostgreSQL, FerretDB, auth, collect, dispatch, push nodes) with CPU-seconds per 1,000
messages, and the load generator's own CPU (near a full core, it may be what limits the figures).

Without ``--collect-url`` it starts a fresh cluster on free ports for each scenario
(``tools.cluster``) and stops it after; with ``--collect-url/--auth-url/--push-urls`` (and
``--redis-url``, ``--dispatch-url``, ``--mongo-url``) it targets a running ``make run``, whose
servers' pids it finds by their listening ports (a server it cannot find is left out of the split).
With ``--redis-cluster 3`` (``make bench REDIS_CLUSTER=1``) its own cluster runs on a 3-master Redis
Cluster with ``STREAM_SHARDS=3`` instead of one Redis.
With ``--peer centrifugo`` (``make bench PEER=centrifugo``) it runs steady, latency and broadcast (or those of them
named) first on its own cluster, then on Centrifugo (``loadtest.peer_centrifugo``: two nodes on a Redis of their own),
one after the other in the same sitting, driven by the same client processes and scenario code, and prints per
scenario one table of both sides' figures (msgs/s, latency p50/p99, server CPU-s per 1,000 messages and its split
by process) with the ratio ours / theirs. Latency on both sides is then from each post's send time, stamped in its
payload, to the socket (Centrifugo has no acceptance time to give).
Run it as ``make bench BENCH_ARGS='--scenarios steady'`` or ``.venv/bin/python -m loadtest.bench_e2e --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import resource
import secrets
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import psutil
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from loadtest.api import Api, Rejected
from loadtest.cpu import CpuMeter, CpuSplit, cpu_seconds
from loadtest.fanout import FanoutReport, FanoutShare, listen
from loadtest.fleet import Fleet
from loadtest.idle import hold
from loadtest.inbox import NO_TALLY, Inbox, Tally, Users
from loadtest.peer_centrifugo import centrifugo
from loadtest.recovery import RecoveryReport, RecoveryShare, resume
from loadtest.redis_watch import command_counts, watch
from loadtest.report import Table, latency_summary, percentile, slowest_moments
from loadtest.schedule import scrape
from loadtest.storm import StormShare, replay
from loadtest.target import Target, own_cluster, running_target
from loadtest.webhook_sink import Sink

MAX_BATCH = 1000
MB = 1024 * 1024
SCRATCH_DB = 999  # expiry: a database of the target's Redis that the cluster does not use
EXPIRE_PAGE = 500  # dispatch's EXPIRE_BATCH default
DEFAULT_SCENARIOS = ("storm", "steady", "latency", "connections")
PEER_SCENARIOS = ("steady", "latency", "broadcast")  # what a peer (--peer) runs, and all it can
PEERS = {"centrifugo": centrifugo}
PEER_NOTE = "the same client processes; latency from each post's send time to the socket; CPU per 1,000 delivered"
SCENARIO_NAMES = (*DEFAULT_SCENARIOS, "broadcast", "topic", "recovery", "schedule", "priority", "webhooks", "expiry", "floor")
RECOVERY_TARGET_SECONDS = 10.0
MIX = ("high", *["normal"] * 6, *["low"] * 3)  # the priority scenario's tiers: post k is of MIX[k % 10]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_e2e", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", help="comma-separated subset of " + ", ".join(SCENARIO_NAMES) + " (default: "
                   + ", ".join(DEFAULT_SCENARIOS) + "; with --peer: " + ", ".join(PEER_SCENARIOS) + ")")
    p.add_argument("--peer", choices=sorted(PEERS), help="also run each scenario on this system, right after ours (on its "
                   "own, on free ports), and print the two side by side: latency is then from each post's send time "
                   "(loadtest/peer_centrifugo.py)")
    p.add_argument("--storm-users", type=int, default=10_000, help="storm: offline users who then all connect")
    p.add_argument("--storm-messages", type=int, default=10, help="storm: messages stored per user before they connect")
    p.add_argument("--storm-per-process", type=int, default=10_000, help="storm: users per client process (one 127.x source each)")
    p.add_argument("--users", type=int, default=2000, help="steady and latency: connected users")
    p.add_argument("--steady-messages", type=int, default=40_000, help="steady: messages posted")
    p.add_argument("--batch", type=int, default=200, help="steady: messages per post")
    p.add_argument("--posters", type=int, default=4, help="storm and steady: posts in flight")
    p.add_argument("--rate", type=float, default=1000.0, help="latency: messages per second")
    p.add_argument("--latency-batch", type=int, help="latency: messages per post (default: 1, a single message's post; "
                   "10 with --peer)")
    p.add_argument("--seconds", type=float, default=10.0, help="latency: how long to post at --rate")
    p.add_argument("--in-flight", type=int, default=1000, help="most HTTP requests in flight (connections to collect "
                   "and auth): enough for latency to keep its pace; the other scenarios bound theirs lower")
    p.add_argument("--floor-samples", type=int, default=300, help="floor: timed inserts of each post size (and 3x as many "
                   "Redis round trips)")
    p.add_argument("--expiry-deliveries", type=int, default=100_000, help="expiry: deliveries past expiry (posts of 100)")
    p.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in flight (per client process in storm and connections)")
    p.add_argument("--connections", type=int, default=10_000, help="connections: idle sockets opened to one push node")
    p.add_argument("--per-process", type=int, default=5_000, help="connections: sockets per client process (one 127.x source each)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="connections: window over which the node's Redis commands are counted")
    p.add_argument("--fanout-sockets", type=int, default=10_000, help="broadcast: sockets over both push nodes")
    p.add_argument("--broadcasts", type=int, default=5, help="broadcast: broadcasts posted, one second apart")
    p.add_argument("--topic-subscribers", type=int, default=5_000, help="topic: sockets subscribed to the topic")
    p.add_argument("--topic-rate", type=float, default=100.0, help="topic: topic messages per second")
    p.add_argument("--topic-seconds", type=float, default=20.0, help="topic: how long to post at --topic-rate")
    p.add_argument("--bundle", type=int, choices=(0, 1), default=1, help="topic, broadcast, recovery: 1 if the sockets ask for bundles "
                   "(several topic frames in one websocket frame, at most one per the nodes' BUNDLE_MS), as the JS client does")
    p.add_argument("--recovery-subscribers", type=int, default=5_000, help="recovery: sockets subscribed to the topic, "
                   "half on each node, that all disconnect and resubscribe on the other node with their positions")
    p.add_argument("--recovery-messages", type=int, default=100, help="recovery: topic messages posted while they are away")
    p.add_argument("--recovery-batch", type=int, default=10, help="recovery: topic messages per post")
    p.add_argument("--recovery-per-process", type=int, default=2_500, help="recovery: sockets per client process (one "
                   "127.x source each)")
    p.add_argument("--schedule-rate", type=int, default=10_000, help="schedule: messages due per second")
    p.add_argument("--schedule-seconds", type=float, default=5.0, help="schedule: seconds over which they are due")
    p.add_argument("--schedule-lead", type=float, default=15.0, help="schedule: seconds from the start to the first due "
                   "time (posting them all must fit in it)")
    p.add_argument("--schedule-users", type=int, default=1000, help="schedule: offline recipients")
    p.add_argument("--priority-rate", type=float, default=8000.0, help="priority: messages per second offered (past capacity)")
    p.add_argument("--priority-seconds", type=float, default=30.0, help="priority: how long to post at --priority-rate")
    p.add_argument("--priority-batch", type=int, default=20, help="priority: messages per post (one tier per post)")
    p.add_argument("--webhook-expiries", type=int, default=20_000, help="webhooks: messages to offline users (one each) "
                   "that expire, so as many message.expired events")
    p.add_argument("--webhook-ttl", type=int, default=5, help="webhooks: their TTL (s)")
    p.add_argument("--webhook-outage", type=float, default=30.0, help="webhooks: seconds the endpoint answers 500 from "
                   "its first request")
    p.add_argument("--webhook-seconds", type=float, default=60.0, help="webhooks: how long the online users get "
                   "messages at --rate (over the expiries, the outage and the catch-up)")
    p.add_argument("--webhook-schedule", default="1,2,4,8,16,32,64", help="webhooks: WEBHOOK_SCHEDULE_SECONDS, the "
                   "waits before each retry")
    p.add_argument("--node", type=int, default=0, help="connections: index of the push node to load")
    p.add_argument("--timeout", type=float, default=120.0, help="longest wait for the last message of a scenario "
                   "(storm: after the last welcome); what arrived by then is reported")
    p.add_argument("--redis-cluster", type=int, default=0, metavar="MASTERS", help="own cluster: a Redis Cluster of this "
                   "many masters (and as many stream shards) instead of one Redis; storm, steady, latency, broadcast, topic")
    p.add_argument("--workdir", type=Path, help="own cluster: keep its data and logs here (default: a temp dir, removed)")
    p.add_argument("--collect-url", help="target a running cluster's collect (e.g. http://127.0.0.1:8002)")
    p.add_argument("--auth-url", default="http://127.0.0.1:8001", help="with --collect-url")
    p.add_argument("--dispatch-url", default="http://127.0.0.1:8003", help="with --collect-url (for its CPU)")
    p.add_argument("--push-urls", default="http://127.0.0.1:8101,http://127.0.0.1:8102", help="with --collect-url, comma-separated")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="with --collect-url, for connections and its CPU")
    p.add_argument("--mongo-url", default="mongodb://127.0.0.1:27017/", help="with --collect-url, FerretDB (for its and its "
                   "PostgreSQL's CPU)")
    args = p.parse_args()
    scenarios = args.scenarios or ",".join(PEER_SCENARIOS if args.peer else DEFAULT_SCENARIOS)
    args.scenarios = [s.strip().lower() for s in scenarios.split(",") if s.strip()]
    if not set(args.scenarios) <= set(SCENARIO_NAMES):
        p.error(f"--scenarios takes {', '.join(SCENARIO_NAMES)}")
    if args.peer and not set(args.scenarios) <= set(PEER_SCENARIOS):
        p.error(f"--peer runs {', '.join(PEER_SCENARIOS)}")
    if args.peer and (args.collect_url or args.redis_cluster):
        p.error("--peer compares its own clusters on one Redis: leave out --collect-url and --redis-cluster")
    if args.redis_cluster and {"expiry", "connections", "recovery", "floor"} & set(args.scenarios):
        p.error("expiry, connections, recovery and floor use a single Redis: leave them out with --redis-cluster")
    if args.collect_url and "webhooks" in args.scenarios:
        p.error("webhooks compares two clusters of its own, one without webhooks: leave out --collect-url")
    if not 1 <= args.batch <= MAX_BATCH:
        p.error(f"--batch must be 1..{MAX_BATCH}")
    args.latency_batch = args.latency_batch or (10 if args.peer else 1)
    return args


@contextlib.contextmanager
def target_of(args: argparse.Namespace, webhooks: bool = False) -> Iterator[Target]:
    """The cluster to run a scenario on: the running one, or a fresh one of its own (with the webhooks service and the
    webhooks scenario's retry schedule when ``webhooks``)."""
    if args.collect_url:
        yield running_target(args.auth_url, args.collect_url, args.push_urls.split(","), args.redis_url, args.dispatch_url,
                             args.mongo_url)
    else:
        redis = f"a {args.redis_cluster}-master Redis Cluster" if args.redis_cluster else "Redis"
        print(f"starting a cluster on free ports ({redis}, PostgreSQL, FerretDB, auth, collect, dispatch, 2 push nodes)...",
              flush=True)
        settings = {"WEBHOOK_SCHEDULE_SECONDS": args.webhook_schedule} if webhooks else {}
        with own_cluster(args.workdir, redis_masters=args.redis_cluster, webhooks=webhooks, settings=settings) as target:
            yield target


def batches(total: int, size: int) -> list[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def counted(counts: Counter[str]) -> str:
    """A total, and its breakdown by kind when there is any: "0", "12 {'HTTP 503': 12}"."""
    return f"{sum(counts.values()):,} {dict(counts)}" if counts else "0"


def report_rejected(table: Table, name: str, rejected: Counter[str]) -> None:
    table.add(name, "messages rejected by collect", counted(rejected))


def report_connects(table: Table, name: str, connected: int, failures: Counter[str], window: float) -> None:
    table.add(name, "sockets welcomed / failed; connect rate",
              f"{connected:,} / {counted(failures)}; {connected / max(window, 1e-9):,.0f} sockets/s")


def report_tally(table: Table, name: str, tally: Tally) -> None:
    table.add(name, "expected / delivered / lost / duplicates / unexpected",
              f"{tally.expected:,} / {tally.delivered:,} / {tally.lost:,} / {tally.duplicates:,} / {tally.unexpected:,}")
    table.keep(name, "lost / duplicates", f"{tally.lost:,} / {tally.duplicates:,}")


def report_delivery(table: Table, name: str, inbox: Inbox, started: float, rejected: Counter[str]) -> None:
    """Rejected posts, latency percentiles, delivered msgs/s (first post to last receive), exactly-once tally."""
    tally = inbox.tally()
    report_rejected(table, name, rejected)
    elapsed = max(inbox.last_receive - started, 1e-9)
    table.add(name, "latency p50/p90/p99/max", latency_summary(inbox.latencies_ms))
    table.add(name, "slowest 1%, by when they arrived", slowest_moments(inbox.latencies_ms, inbox.arrived, started))
    keep_latency(table, name, inbox.latencies_ms)
    table.add(name, "delivered msgs/s", tally.delivered / elapsed if tally.delivered else 0.0)
    table.keep(name, "delivered msgs/s", tally.delivered / elapsed if tally.delivered else 0.0)
    report_tally(table, name, tally)


def keep_latency(table: Table, name: str, latencies_ms: list[float]) -> None:
    ordered = sorted(latencies_ms)
    table.keep(name, "latency p50 (ms)", percentile(ordered, .5), 1)
    table.keep(name, "latency p99 (ms)", percentile(ordered, .99), 1)


def report_cpu(table: Table, name: str, meter: CpuMeter, messages: int) -> None:
    split = meter.stop()
    table.add(name, "server CPU-s by process", split.describe(messages))
    table.keep(name, "server CPU-s per 1,000 msgs", 1000 * split.total / messages if messages else math.nan, 3)
    table.keep(name, "  by process", split.per_thousand(messages))


def report_busy(table: Table, name: str, busy: list[float]) -> None:
    """The load generator's CPU over the scenario, per client process: near 100% means it may be what limits
    the figures."""
    table.add(name, "load generator CPU busy (% of one core, per process)", " / ".join(f"{100 * b:.0f}" for b in busy))
    table.keep(name, "load generator CPU busy (% of one core)", " / ".join(f"{100 * b:.0f}" for b in busy))


async def post_batches(api: Api, inbox: Inbox, user_ids: list[str], total: int, size: int, posters: int,
                       rejected: Counter[str], **fields: Any) -> float:
    """Post ``total`` messages (message k to user k mod users, with ``fields``) in ``size`` batches; return when the
    last answered.

    A rejected post is counted in ``rejected`` (by reason) and its messages are not expected.
    """
    queue = batches(total, size)

    async def poster() -> None:
        while queue:
            ks = queue.pop(0)
            body = {"messages": [{"user_id": user_ids[k % len(user_ids)], "payload": {"n": k}, **fields} for k in ks]}
            try:
                ids = await api.post(body)
            except Rejected as exc:
                rejected[exc.reason] += len(ks)
                continue
            for k, mid in zip(ks, ids):
                inbox.expect(user_ids[k % len(user_ids)], mid)

    await asyncio.gather(*(poster() for _ in range(posters)))
    return time.time()


@dataclass
class Paced:
    """How paced posting went: each accepted post's round trip, when the last post left (seconds after the
    first), and the most posts awaiting an answer at once (past ``--in-flight`` they wait for a connection,
    and that wait is in their round trip)."""

    round_trips_ms: list[float] = field(default_factory=list)
    last_sent: float = 0.0
    in_flight: int = 0
    peak_in_flight: int = 0


async def post_paced(api: Api, inbox: Inbox, user_ids: list[str], rate: float, seconds: float,
                     rejected: Counter[str], batch: int = 1) -> Paced:
    """``rate`` messages a second in posts of ``batch`` (message m to user m mod users; one message as a single
    message's body), post k sent at ``k * batch / rate`` seconds from the start (a schedule, not a drifting sleep),
    whatever the answers to the earlier ones."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    paced = Paced()

    async def post(k: int) -> None:
        await asyncio.sleep(max(0.0, start + k * batch / rate - loop.time()))
        users = [user_ids[m % len(user_ids)] for m in range(k * batch, (k + 1) * batch)]
        messages = [{"user_id": user, "payload": {"n": k * batch + j}} for j, user in enumerate(users)]
        sent = time.perf_counter()
        paced.last_sent = max(paced.last_sent, loop.time() - start)
        paced.in_flight += 1
        paced.peak_in_flight = max(paced.peak_in_flight, paced.in_flight)
        try:
            ids = await api.post(messages[0] if batch == 1 else {"messages": messages})
        except Rejected as exc:
            rejected[exc.reason] += batch
            return
        finally:
            paced.in_flight -= 1
        paced.round_trips_ms.append((time.perf_counter() - sent) * 1000)
        for user, mid in zip(users, ids):
            inbox.expect(user, mid)

    await asyncio.gather(*(post(k) for k in range(int(rate * seconds / batch))))
    return paced


@contextlib.asynccontextmanager
async def connected(target: Target, table: Table, name: str, tokens: dict[str, str], inbox: Inbox,
                    concurrency: int) -> AsyncIterator[Users]:
    """Users for ``tokens`` (user -> token), all welcomed, reporting how many connected and how fast."""
    users = Users(target, tokens, inbox, concurrency)
    await users.open()
    report_connects(table, name, users.connected, users.failures, users.all_welcomed - users.started)
    try:
        yield users
    finally:
        await users.close()


def storm_shares(tokens: dict[str, str], expected: set[tuple[str, str]], per_process: int) -> list[StormShare]:
    """The users (in order) in shares of ``per_process``, each with its users' expected messages."""
    users = list(tokens)
    shares = [StormShare({u: tokens[u] for u in users[i:i + per_process]}) for i in range(0, len(users), per_process)]
    share_of = {user: share for share in shares for user in share.tokens}
    for user, message in expected:
        share_of[user].expected.append((user, message))
    return shares


async def scenario_storm(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    n, m = args.storm_users, args.storm_messages
    user_ids = [f"{run}-s{i}" for i in range(n)]
    inbox, rejected = Inbox(), Counter[str]()
    table.add("storm", "offline users x messages each", f"{n:,} x {m}")
    started = time.time()
    answered = await post_batches(api, inbox, user_ids, n * m, MAX_BATCH, args.posters, rejected)
    report_rejected(table, "storm", rejected)
    table.add("storm", "accepted msgs/s while offline", len(inbox.expected) / (answered - started))
    tokens = dict(zip(user_ids, await api.tokens(user_ids)))
    shares = storm_shares(tokens, inbox.expected, args.storm_per_process)
    fleet = Fleet(partial(replay, target, args.connect_concurrency, args.timeout), shares,
                  max_hold_seconds=args.timeout + 600)
    try:
        await asyncio.to_thread(fleet.start)
        meter = CpuMeter(target.processes)
        reports = await asyncio.to_thread(fleet.go)
        first_connect = min(r.started for r in reports)
        table.add("storm", "client processes", f"{len(reports)} ({fleet.sources})")
        report_connects(table, "storm", sum(r.connected for r in reports), sum((r.failures for r in reports), Counter[str]()),
                        max(r.all_welcomed for r in reports) - first_connect)
        tally, last = sum((r.tally for r in reports), NO_TALLY), max(r.last_receive for r in reports)
        table.add("storm", "first connect to last stored message (s)", last - first_connect if last else "none arrived")
        table.add("storm", "replayed msgs/s (first connect to last message)", tally.delivered / (last - first_connect) if last else 0.0)
        table.add("storm", "per-user replay (welcome to its last message)", latency_summary([ms for r in reports for ms in r.replay_ms]))
        report_tally(table, "storm", tally)
        report_cpu(table, "storm", meter, tally.delivered)
        report_busy(table, "storm", [r.busy for r in reports])
    finally:
        await asyncio.to_thread(fleet.close)


Drive = Callable[[Inbox, Counter[str], float], Awaitable[None]]


async def with_connected_users(name: str, target: Target, api: Api, table: Table, args: argparse.Namespace,
                               user_ids: list[str], drive: Drive) -> None:
    """Connect the users, run ``drive`` (which posts), wait for every message, then report delivery and CPU."""
    inbox, rejected = Inbox(), Counter[str]()
    tokens = dict(zip(user_ids, await api.tokens(user_ids)))
    async with connected(target, table, name, tokens, inbox, args.connect_concurrency):
        meter, started, cpu = CpuMeter(target.processes), time.time(), time.process_time()
        await drive(inbox, rejected, started)
        await inbox.settle(args.timeout)
        report_delivery(table, name, inbox, started, rejected)
        report_cpu(table, name, meter, inbox.tally().delivered)
        report_busy(table, name, [(time.process_time() - cpu) / (time.time() - started)])


async def scenario_steady(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    user_ids = [f"{run}-b{i}" for i in range(args.users)]

    async def drive(inbox: Inbox, rejected: Counter[str], started: float) -> None:
        total = args.steady_messages
        table.add("steady", "users / messages / per post / posters", f"{len(user_ids):,} / {total:,} / {args.batch} / {args.posters}")
        answered = await post_batches(api, inbox, user_ids, total, args.batch, args.posters, rejected)
        table.add("steady", "accepted msgs/s at collect", len(inbox.expected) / (answered - started))
        table.keep("steady", "accepted msgs/s (posts answered)", len(inbox.expected) / (answered - started))

    await with_connected_users("steady", target, api, table, args, user_ids, drive)


async def scenario_latency(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    user_ids = [f"{run}-a{i}" for i in range(args.users)]

    async def drive(inbox: Inbox, rejected: Counter[str], started: float) -> None:
        batch = args.latency_batch
        table.add("latency", "users / target rate / seconds / per post",
                  f"{len(user_ids):,} / {args.rate:,.0f} msgs/s / {args.seconds:g} / {batch}")
        paced = await post_paced(api, inbox, user_ids, args.rate, args.seconds, rejected, batch)
        sent = int(args.rate * args.seconds / batch)
        table.add("latency", "achieved rate (posts sent / seconds, first to last)",
                  f"{sent:,} / {paced.last_sent:.2f} s = {sent / max(paced.last_sent, 1e-9):,.0f} posts/s")
        table.keep("latency", "achieved msgs/s (sent)", sent * batch / max(paced.last_sent, 1e-9))
        table.add("latency", "posts awaiting an answer, peak / connection limit", f"{paced.peak_in_flight:,} / {args.in_flight:,}")
        round_trips = sorted(paced.round_trips_ms)
        table.add("latency", "POST round trip p50/p99", f"{percentile(round_trips, .5):.1f} / {percentile(round_trips, .99):.1f} ms")
        table.keep("latency", "POST round trip p50 (ms)", percentile(round_trips, .5), 1)
        table.keep("latency", "POST round trip p99 (ms)", percentile(round_trips, .99), 1)

    await with_connected_users("latency", target, api, table, args, user_ids, drive)


async def scenario_expiry(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    # Imported here: the only scenario on the cluster's internals, so the others run whatever shared/ looks like.
    from redis.asyncio import Redis

    from shared.delivery import inbox as delivery_state
    from shared.model.message import Message, message_id

    scratch = Redis.from_url(target.redis_url.rsplit("/", 1)[0] + f"/{SCRATCH_DB}")
    inbox, now = delivery_state.Inbox(scratch), int(time.time() * 1000)
    try:
        await scratch.flushdb()
        for p in range(args.expiry_deliveries // 100):
            post = f"{run}x{p:06d}"
            await inbox.open([Message(message_id(post, i), (f"{run}-x{i}",), b'{"type":"message"}', now - 2000, now - 1000)
                              for i in range(100)], now - 2000)
        started, expired, more = time.perf_counter(), 0, True
        while more:
            closed, more = await inbox.expire(now, EXPIRE_PAGE)
            expired += len(closed)
        elapsed = time.perf_counter() - started
        table.add("expiry", "deliveries expired / seconds", f"{expired:,} / {elapsed:.2f}")
        table.add("expiry", "deliveries expired per second", expired / elapsed)
    finally:
        await scratch.flushdb()
        await scratch.aclose()


async def scenario_floor(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    # Imported here, as in expiry: it calls the cluster's store and Redis the way collect does.
    from redis.asyncio import Redis

    from services.collect.intake import Limits, parse_body
    from shared.delivery.store import MessageStore

    store = MessageStore(target.mongo_url, f"{run}_floor")  # a database of its own, dropped after
    scratch = Redis.from_url(target.redis_url.rsplit("/", 1)[0] + f"/{SCRATCH_DB}")
    limits = Limits(max_payload_bytes=65536, max_batch=MAX_BATCH, max_recipients=1, default_ttl_seconds=3600)
    try:
        await store.prepare()
        for size in (1, 10, 200):
            times = []
            for i in range(args.floor_samples):
                body = {"messages": [{"user_id": f"{run}-f{j}", "payload": {"n": i, "text": "x" * 40}} for j in range(size)]}
                messages = parse_body(body, limits, int(time.time() * 1000))
                began = time.perf_counter()
                await store.accept(messages)
                times.append((time.perf_counter() - began) * 1000)
            times.sort()
            table.add("floor", f"MongoDB insert of a post of {size}, alone: p50 / p99",
                      f"{percentile(times, .5):.2f} / {percentile(times, .99):.2f} ms")
            table.keep("floor", f"insert of {size} p50 (ms)", percentile(times, .5), 2)
        times = []
        for i in range(3 * args.floor_samples):
            began = time.perf_counter()
            await scratch.zadd("floor", {str(i): i})
            times.append((time.perf_counter() - began) * 1000)
        times.sort()
        table.add("floor", "Redis round trip (ZADD), alone: p50 / p99", f"{percentile(times, .5):.3f} / {percentile(times, .99):.3f} ms")
        table.keep("floor", "Redis round trip p50 (ms)", percentile(times, .5), 3)
    finally:
        await store.client.drop_database(f"{run}_floor")
        await store.close()
        await scratch.flushdb()
        await scratch.aclose()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


async def scenario_connections(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    n, node = args.connections, args.node
    started = time.time()
    tokens = await api.tokens([f"{run}-c{i}" for i in range(n)])
    table.add("connections", "tokens issued by auth /s", n / (time.time() - started))
    pid = target.push_pid(node)
    fleet = Fleet(partial(hold, target.ws_url(node), args.connect_concurrency),
                  [tokens[i:i + args.per_process] for i in range(0, n, args.per_process)], max_hold_seconds=args.idle_seconds + 300)
    try:
        await asyncio.to_thread(fleet.start)
        before, cpu_before = rss_mb(pid), cpu_seconds(pid)
        reports = await asyncio.to_thread(fleet.go)
        opened = sum(r.opened for r in reports)
        window = max(r.finished for r in reports) - min(r.started for r in reports)
        table.add("connections", "node / client processes", f"{target.ws_url(node)} / {len(reports)} ({fleet.sources})")
        report_connects(table, "connections", opened, sum((r.failures for r in reports), Counter[str]()), window)
        table.add("connections", "node CPU busy while connecting (% of one core)", 100 * (cpu_seconds(pid) - cpu_before) / window)
        await asyncio.sleep(2)  # let the route flusher and the allocator settle
        after = rss_mb(pid)
        health = await api.node_health(target.push_urls[node])
        table.add("connections", "node reports connections / users", f"{health['connections']:,} / {health['users']:,}")
        table.add("connections", "node RSS before / after (MB)", f"{before:.1f} / {after:.1f}")
        table.add("connections", "node memory per connection (KB)", (after - before) * 1024 / max(opened, 1))
        idle = await watch(target.redis_url, pid, args.idle_seconds)
        table.add("connections", f"node Redis commands over {idle.seconds:.0f} s idle", f"{idle.commands:,} in {idle.round_trips} round trips "
                  f"({', '.join(f'{k} {v}' for k, v in idle.by_command.most_common())})")
        table.add("connections", "node Redis commands/s idle", idle.commands / idle.seconds)
        table.add("connections", "node Redis round trips/s idle", idle.round_trips / idle.seconds)
        table.add("connections", "all clients' Redis commands/s (INFO stats)", idle.all_clients / idle.seconds)
        table.add("connections", "node RSS after idle (MB)", rss_mb(pid))
    finally:
        await asyncio.to_thread(fleet.close)


async def node_connections(api: Api, target: Target, enough: Callable[[int], bool], timeout: float = 120) -> int:
    """Wait until the open sockets the push nodes report between them are ``enough`` (or ``timeout`` passes); return
    their number."""
    deadline = time.monotonic() + timeout
    while True:
        count = await api.connections(target.push_urls)
        if enough(count) or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def fanout_fleet(target: Target, api: Api, args: argparse.Namespace, run: str, sockets: int, topic: str | None,
                       expect: int) -> AsyncIterator[Callable[[], Awaitable[list[FanoutReport]]]]:
    """Client processes holding ``sockets`` sockets over every node (subscribed to ``topic``), all up on entry; gives
    a function that waits for their reports."""
    tokens = await api.tokens([f"{run}-f{i}" for i in range(sockets)], topics=[topic] if topic else None)
    urls = [target.ws_url(i) for i in range(len(target.push_urls))]
    client = replace(target.client, bundles=args.bundle)
    shares = [FanoutShare(tokens[i:i + args.per_process], urls, topic, expect, args.timeout, client)
              for i in range(0, sockets, args.per_process)]
    fleet = Fleet(partial(listen, args.connect_concurrency), shares, max_hold_seconds=args.timeout + 600)
    try:
        await asyncio.to_thread(fleet.start)
        reports = asyncio.ensure_future(asyncio.to_thread(fleet.go))
        await node_connections(api, target, lambda count: count >= sockets)
        await asyncio.sleep(1)  # the nodes write new topic subscriptions to Redis in coalesced batches

        async def results() -> list[FanoutReport]:
            return await reports

        yield results
    finally:
        await asyncio.to_thread(fleet.close)


def report_sockets(table: Table, name: str, reports: Sequence[FanoutReport | RecoveryReport], what: str = "sockets") -> int:
    """How many sockets the client processes had up, failed (by kind) and refused a subscription; return the first."""
    connected = sum(r.connected for r in reports)
    failures = sum((r.failures for r in reports), Counter[str]())
    table.add(name, f"{what} up / failed / subscription refused",
              f"{connected:,} / {counted(failures)} / {sum(r.refused for r in reports):,}")
    return connected


def report_fanout(table: Table, name: str, reports: list[FanoutReport], messages: int) -> None:
    """Sockets, the delivery tally (each socket up should get each of ``messages``), latency, client CPU."""
    expected = report_sockets(table, name, reports) * messages
    delivered = sum(r.deliveries for r in reports)
    duplicates = sum(r.duplicates for r in reports)
    table.add(name, "deliveries expected / arrived / missing by --timeout / duplicates",
              f"{expected:,} / {delivered:,} / {expected - delivered:,} / {duplicates:,}")
    table.keep(name, "deliveries arrived / expected; duplicates", f"{delivered:,} / {expected:,}; {duplicates:,}")
    latencies = [ms for r in reports for ms in r.latencies_ms]
    table.add(name, "latency p50/p90/p99/max", latency_summary(latencies))
    keep_latency(table, name, latencies)
    frames = sum(r.frames for r in reports)
    table.add(name, "websocket frames read / deliveries a frame", f"{frames:,} / {delivered / frames:.2f}" if frames else "0")
    report_busy(table, name, [r.busy for r in reports])


async def scenario_broadcast(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    n = args.fanout_sockets
    table.add("broadcast", "sockets / broadcasts", f"{n:,} over {len(target.push_urls)} nodes / {args.broadcasts}")
    async with fanout_fleet(target, api, args, run, n, None, args.broadcasts) as results:
        meter, posted = CpuMeter(target.processes), {}
        for _ in range(args.broadcasts):
            started = time.time()
            (mid,) = await api.post({"broadcast": True, "payload": {"n": len(posted)}})
            posted[mid] = started
            await asyncio.sleep(1)
        reports = await results()
        report_cpu(table, "broadcast", meter, sum(r.deliveries for r in reports))
    took = []
    for k, (mid, started) in enumerate(posted.items(), 1):
        reached = sum(r.per_message[mid] for r in reports)
        last = max((r.last_arrival[mid] for r in reports if mid in r.last_arrival), default=None)
        table.add("broadcast", f"broadcast {k}: sockets reached / POST to last socket",
                  f"{reached:,} / {(last - started) * 1000:.0f} ms" if last else f"{reached:,} / none arrived")
        took += [(last - started) * 1000] if last else []
    table.keep("broadcast", "POST to last socket, median (ms)", statistics.median(took) if took else math.nan)
    table.keep("broadcast", "POST to last socket, range (ms)", f"{min(took):,.0f}-{max(took):,.0f}" if took else "-")
    report_fanout(table, "broadcast", reports, len(posted))


async def scenario_topic(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    n, topic = args.topic_subscribers, f"{run}:bench"
    total = int(args.topic_rate * args.topic_seconds)
    table.add("topic", "subscribers / rate / seconds", f"{n:,} / {args.topic_rate:g} msgs/s / {args.topic_seconds:g}")
    async with fanout_fleet(target, api, args, run, n, topic, total) as results:
        meter, rejected, loop = CpuMeter(target.processes), Counter[str](), asyncio.get_running_loop()
        start, accepted = loop.time(), 0

        async def post(k: int) -> None:
            nonlocal accepted
            await asyncio.sleep(max(0.0, start + k / args.topic_rate - loop.time()))
            try:
                await api.post({"topic": topic, "payload": {"n": k}})
                accepted += 1
            except Rejected as exc:
                rejected[exc.reason] += 1

        await asyncio.gather(*(post(k) for k in range(total)))
        report_rejected(table, "topic", rejected)
        reports = await results()
        report_cpu(table, "topic", meter, sum(r.deliveries for r in reports))
    report_fanout(table, "topic", reports, accepted)


async def recovery_counts(session: aiohttp.ClientSession, push_url: str) -> Counter[str]:
    """A push node's reads of topic histories and its recoveries by outcome so far, from its ``/metrics``: "reads",
    "recovered", "gap"."""
    async with session.get(f"{push_url}/metrics") as r:
        text = await r.text()
    counts = Counter[str]()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "push_history_reads_total":
                counts["reads"] += int(sample.value)
            elif sample.name == "push_recoveries_total":
                counts[sample.labels["outcome"]] += int(sample.value)
    return counts


@contextlib.asynccontextmanager
async def recovery_fleet(args: argparse.Namespace, tokens: list[str], urls: list[str], topic: str,
                         since: list[dict[str, Any]] | None, expect: int) -> AsyncIterator[Callable[[], Awaitable[list[RecoveryReport]]]]:
    """Client processes of ``--recovery-per-process`` sockets, socket i to ``urls[i]`` (resuming from ``since[i]``),
    spawned and waiting; gives the function that releases them and waits for their reports. Leaving closes the sockets."""
    per = args.recovery_per_process
    shares = [RecoveryShare(tokens[k:k + per], urls[k:k + per], topic, since[k:k + per] if since else None, expect, args.timeout,
                            bool(args.bundle))
              for k in range(0, len(tokens), per)]
    fleet = Fleet(partial(resume, args.connect_concurrency), shares, max_hold_seconds=args.timeout + 600)
    try:
        await asyncio.to_thread(fleet.start)
        yield lambda: asyncio.to_thread(fleet.go)
    finally:
        await asyncio.to_thread(fleet.close)


async def scenario_recovery(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    name, topic, n, count = "recovery", f"{run}:bench", args.recovery_subscribers, len(target.push_urls)
    if count < 2:
        raise SystemExit("recovery moves every subscriber to another push node: it needs two")
    table.add(name, "subscribers / push nodes / messages missed (per post)",
              f"{n:,} / {count} / {args.recovery_messages} ({args.recovery_batch})")
    tokens = await api.tokens([f"{run}-r{i}" for i in range(n)], topics=[topic])
    urls = [target.ws_url(k) for k in range(count)]

    # Every socket subscribes on node i mod nodes and notes its position; leaving the fleet disconnects them all.
    async with recovery_fleet(args, tokens, [urls[i % count] for i in range(n)], topic, None, 0) as go:
        noted = await go()
    report_sockets(table, name, noted, "first subscribe: sockets")
    positions = [p for r in noted for p in r.positions]
    distinct = Counter((p["offset"], p["epoch"]) for p in positions if p)
    table.add(name, "positions noted (offset, epoch: sockets)", "; ".join(f"{o}, {e}: {c:,}" for (o, e), c in distinct.items()))
    table.add(name, "sockets still open on the nodes after the disconnect", await node_connections(api, target, lambda c: c == 0))

    rejected, accepted = Counter[str](), 0
    for ks in batches(args.recovery_messages, args.recovery_batch):
        try:
            accepted += len(await api.post({"messages": [{"topic": topic, "payload": {"n": k}} for k in ks]}))
        except Rejected as exc:
            rejected[exc.reason] += len(ks)
    report_rejected(table, name, rejected)
    placed_at, deadline = max((o for o, _ in distinct), default=0) + accepted, time.monotonic() + args.timeout
    while (state := await api.history(topic, limit=1))["offset"] < placed_at and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # dispatch gives the messages their offsets (the history) as it forwards them
    table.add(name, "topic position once published (offset / epoch)", f"{state['offset']} / {state['epoch']}")

    # Every socket that noted a position resubscribes with it, on the next node.
    kept = [i for i, p in enumerate(positions) if p]  # a socket that failed or was refused has no position to resume
    async with recovery_fleet(args, [tokens[i] for i in kept], [urls[(i + 1) % count] for i in kept], topic,
                              [p for p in positions if p], accepted) as go:
        meter, commands = CpuMeter(target.processes), await command_counts(target.redis_url)
        counts = await asyncio.gather(*(recovery_counts(api.session, url) for url in target.push_urls))
        wall = time.monotonic()
        reports = await go()
        split, wall = meter.stop(), time.monotonic() - wall
        commands = await command_counts(target.redis_url) - commands
        counts = [after - before for before, after in
                  zip(counts, await asyncio.gather(*(recovery_counts(api.session, url) for url in target.push_urls)))]
    nodes = {f"push-{urlsplit(url).port}": c for url, c in zip(target.push_urls, counts)}
    report_recovery(table, name, args, reports, len(kept), commands, nodes, split, wall)


def report_recovery(table: Table, name: str, args: argparse.Namespace, reports: list[RecoveryReport], resuming: int,
                    commands: Counter[str], nodes: dict[str, Counter[str]], split: CpuSplit, wall: float) -> None:
    """What the reconnect of ``resuming`` sockets with positions gave: answers, completeness and time, Redis commands
    (``commands``), each node's history reads and recoveries (``nodes``), CPU over the ``wall`` seconds it took."""
    recovering = report_sockets(table, name, reports, "reconnect: sockets")
    recovered = sum((r.recovered for r in reports), Counter[str]())
    table.add(name, "answered recovered true / false / without the flag",
              f"{recovered['true']:,} / {recovered['false']:,} / {recovered['none']:,}")
    complete, incomplete = sum(r.complete for r in reports), sum(r.incomplete for r in reports)
    table.add(name, "subscribers with exactly offsets position+1.. in order, once / not / no answer",
              f"{complete:,} / {incomplete:,} / {resuming - complete - incomplete:,}")
    for line in [line for r in reports for line in r.described][:10]:
        table.add(name, "not complete", line)
    start, last = min(r.started for r in reports), max(r.last_answer for r in reports)
    table.add(name, "reconnect start to the last subscribed answer",
              f"{last - start:.1f} s ({recovering / (last - start):,.0f} sockets/s)" if last else "none answered")
    took = max(r.last_complete for r in reports) - start if complete == resuming > 0 else None
    table.add(name, "reconnect start to every subscriber having all (s)",
              took if took is not None else f"not all: {complete:,} of {resuming:,} (waited at most --timeout {args.timeout:g} s)")
    table.add(name, "per-socket recovery (subscribe to its last message)", latency_summary([ms for r in reports for ms in r.recovery_ms]))
    total = sum(commands.values())
    table.add(name, "Redis commands (all clients, INFO commandstats, scripts' own included) / per recovering socket",
              f"{total:,} / {total / max(recovering, 1):.2f} ({', '.join(f'{k} {v:,}' for k, v in commands.most_common())})")
    table.add(name, "history reads / recovered / gap per node (push_history_reads_total, push_recoveries_total)",
              " / ".join(f"{node} {c['reads']:,} / {c['recovered']:,} / {c['gap']:,}" for node, c in nodes.items()))
    table.add(name, "server CPU-s by process", split.describe(sum(r.messages for r in reports)))
    table.add(name, "push node CPU-s over the reconnect (% of one core)",
              " / ".join(f"{node} {split.seconds.get(node, 0.0):.2f} ({100 * split.seconds.get(node, 0.0) / wall:.0f}%)"
                         for node in nodes))
    report_busy(table, name, [r.busy for r in reports])
    reads = max((c["reads"] for c in nodes.values()), default=0)
    table.add(name, f"target: all within {RECOVERY_TARGET_SECONDS:g} s; history reads per node, not per socket",
              f"{'met' if took is not None and took <= RECOVERY_TARGET_SECONDS else 'missed'} "
              f"({f'{took:.1f} s' if took is not None else 'not all'}); at most {reads:,} reads on a node "
              f"for {recovering / len(nodes):,.0f} sockets each")


async def scenario_schedule(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    if not target.dispatch_url:
        raise SystemExit("schedule needs dispatch's /metrics (--dispatch-url)")
    rate, users = args.schedule_rate, [f"{run}-s{k}" for k in range(args.schedule_users)]
    total = int(rate * args.schedule_seconds)
    table.add("schedule", "messages / due per second / recipients (offline)", f"{total:,} / {rate:,} / {len(users):,}")
    before, meter = await scrape(api.session, target.dispatch_url), CpuMeter(target.processes)
    first_due = int((time.time() + args.schedule_lead) * 1000)
    queue, rejected, accepted, started = batches(total, MAX_BATCH), Counter[str](), 0, time.time()

    async def poster() -> None:
        nonlocal accepted
        while queue:
            ks = queue.pop(0)
            body = {"messages": [{"user_id": users[k % len(users)], "payload": {"n": k},
                                  "deliver_at": first_due + k * 1000 // rate} for k in ks]}
            try:
                ids = await api.post(body)
                accepted += len(ids)
            except Rejected as exc:
                rejected[exc.reason] += len(ks)

    await asyncio.gather(*(poster() for _ in range(args.posters)))
    posted = time.time()
    report_rejected(table, "schedule", rejected)
    table.add("schedule", "accepted msgs/s; posting ended before the first due time",
              f"{accepted / (posted - started):,.0f}; {first_due / 1000 - posted:.1f} s")
    last_due = first_due + (total - 1) * 1000 // rate
    fired_all_at = None
    while time.time() < last_due / 1000 + args.timeout:
        now = await scrape(api.session, target.dispatch_url)
        if now.fired - before.fired >= accepted:
            fired_all_at = time.time()
            break
        await asyncio.sleep(0.05)
    report_cpu(table, "schedule", meter, accepted)
    table.add("schedule", "fired / accepted", f"{now.fired - before.fired:,} / {accepted:,}")
    table.add("schedule", "fire lateness p50 / p99 (due time to hand-over, histogram bucket bound)",
              f"<= {now.percentile_ms(before, 0.5):.0f} ms / <= {now.percentile_ms(before, 0.99):.0f} ms")
    table.add("schedule", "last fired after the last due time",
              f"{fired_all_at * 1000 - last_due:,.0f} ms" if fired_all_at else f"not all within --timeout {args.timeout:g} s")
class TierInbox(Inbox):
    """An inbox that also keeps each tier's latencies (a user receives the messages of one tier only)."""

    def __init__(self, tier_of: dict[str, str]) -> None:
        super().__init__()
        self.tier_of = tier_of
        self.by_tier: dict[str, list[float]] = {tier: [] for tier in MIX}

    def record(self, user_id: str, message_id: str, latency_ms: float) -> None:
        super().record(user_id, message_id, latency_ms)
        self.by_tier[self.tier_of[user_id]].append(latency_ms)


async def watch_tiers(api: Api, peaks: dict[str, dict[str, float]]) -> None:
    """Poll collect's ``/healthz`` a few times a second (until cancelled): each tier's peak backlog and age, and the
    seconds it was shed."""
    while True:
        async with api.session.get(f"{api.collect_url}/healthz") as r:
            tiers = (await r.json(content_type=None)).get("tiers", {})
        for tier, state in tiers.items():
            peak = peaks.setdefault(tier, {"backlog": 0, "age_ms": 0, "shed_s": 0.0})
            peak["backlog"] = max(peak["backlog"], state["backlog"])
            peak["age_ms"] = max(peak["age_ms"], state["age_ms"])
            peak["shed_s"] += 0.25 if state["shedding"] else 0.0
        await asyncio.sleep(0.25)


async def scenario_priority(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    user_ids = [f"{run}-p{i}" for i in range(args.users)]
    tier_of = {user: MIX[i % len(MIX)] for i, user in enumerate(user_ids)}
    users_of = {tier: [u for u in user_ids if tier_of[u] == tier] for tier in MIX}
    batch = min(args.priority_batch, *map(len, users_of.values()))
    inbox, loop = TierInbox(tier_of), asyncio.get_running_loop()
    accepted, refused = Counter[str](), Counter[tuple[str, str]]()
    posts = int(args.priority_rate * args.priority_seconds / batch)
    table.add("priority", "users / offered msgs/s / per post / seconds / mix high:normal:low",
              f"{len(user_ids):,} / {args.priority_rate:,.0f} / {batch} / {args.priority_seconds:g} / 10:60:30")
    tokens = dict(zip(user_ids, await api.tokens(user_ids)))
    async with connected(target, table, "priority", tokens, inbox, args.connect_concurrency):
        meter, start, cpu = CpuMeter(target.processes), loop.time(), time.process_time()
        peaks: dict[str, dict[str, float]] = {}
        watcher = asyncio.create_task(watch_tiers(api, peaks))

        async def post(k: int) -> None:
            await asyncio.sleep(max(0.0, start + k * batch / args.priority_rate - loop.time()))
            tier = MIX[k % len(MIX)]
            users = users_of[tier]
            chosen = [users[(k * batch + j) % len(users)] for j in range(batch)]
            try:
                ids = await api.post({"messages": [{"user_id": u, "payload": {"n": k}, "priority": tier} for u in chosen]})
            except Rejected as exc:
                refused[(tier, exc.reason)] += batch
                return
            accepted[tier] += batch
            for user, mid in zip(chosen, ids):
                inbox.expect(user, mid)

        await asyncio.gather(*(post(k) for k in range(posts)))
        table.add("priority", "posting took (s)", loop.time() - start)
        await inbox.settle(args.timeout)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        delivered = Counter(tier_of[user] for user, mid in inbox.expected if (user, mid) in inbox.counts)
        for tier in dict.fromkeys(MIX):
            reasons = Counter({reason: n for (t, reason), n in refused.items() if t == tier})
            table.add("priority", f"{tier}: accepted / refused / delivered",
                      f"{accepted[tier]:,} / {counted(reasons)} / {delivered[tier]:,}")
            table.add("priority", f"{tier}: latency p50/p90/p99/max", latency_summary(inbox.by_tier[tier]))
            peak = peaks.get(tier, {"backlog": 0, "age_ms": 0, "shed_s": 0.0})
            table.add("priority", f"{tier}: stream backlog peak (posts / oldest) / time shed",
                      f"{peak['backlog']:,.0f} / {peak['age_ms']:,.0f} ms / {peak['shed_s']:.1f} s")
        report_tally(table, "priority", inbox.tally())
        report_cpu(table, "priority", meter, inbox.tally().delivered)
        report_busy(table, "priority", [(time.process_time() - cpu) / (loop.time() - start)])


@dataclass
class WebhookPass:
    """What one pass of the webhooks scenario saw: the online users' deliveries, the expiring messages posted, and
    what the endpoint got (none without webhooks)."""

    online: Inbox
    rejected: Counter[str]
    cpu: str
    expiring: set[str]
    first_expiry: float  # when the first expiring message expired (wall clock)
    sink: dict[str, Any] | None


async def sink_tally(session: aiohttp.ClientSession, sink: Sink, ids: bool = False) -> dict[str, Any]:
    async with session.get(f"{sink.url}/tally", params={"ids": "1"} if ids else None) as r:
        return dict(await r.json())


async def webhook_pass(target: Target, api: Api, table: Table, args: argparse.Namespace, sink: Sink | None) -> WebhookPass:
    """The online users get paced messages while the expiring ones are posted; then wait for every online message and,
    with a ``sink``, for every event (or the bound)."""
    run, name = f"bench{secrets.token_hex(3)}", f"webhooks {'with' if sink else 'without'}"
    if sink:
        await api.webhook(f"{sink.url}/hook", ["message.expired"])
    user_ids = [f"{run}-a{i}" for i in range(args.users)]
    inbox, expiring, rejected = Inbox(), Inbox(), Counter[str]()
    tokens = dict(zip(user_ids, await api.tokens(user_ids)))
    async with connected(target, table, name, tokens, inbox, args.connect_concurrency):
        meter, started = CpuMeter(target.processes), time.time()
        online = asyncio.ensure_future(post_paced(api, inbox, user_ids, args.rate, args.webhook_seconds, rejected))
        offline = [f"{run}-x{k}" for k in range(args.webhook_expiries)]
        posted = await post_batches(api, expiring, offline, len(offline), args.batch, args.posters, rejected,
                                    ttl_seconds=args.webhook_ttl)
        await online
        await inbox.settle(args.timeout)
        tally = None
        if sink:
            deadline = posted + args.webhook_ttl + args.webhook_outage + args.timeout
            await until_all(lambda: sink_tally(api.session, sink), len(expiring.expected), deadline)
            tally = await sink_tally(api.session, sink, ids=True)
        cpu = meter.stop().describe(inbox.tally().delivered)
    return WebhookPass(inbox, rejected, cpu, {mid for _, mid in expiring.expected}, started + args.webhook_ttl, tally)


async def until_all(read: Callable[[], Awaitable[dict[str, Any]]], expected: int, deadline: float) -> dict[str, Any]:
    """The endpoint's tally once it accepted ``expected`` events, or at ``deadline`` (wall clock)."""
    while (tally := await read())["accepted"] < expected and time.time() < deadline:
        await asyncio.sleep(0.5)
    return tally


def report_webhooks(table: Table, args: argparse.Namespace, without: WebhookPass, with_: WebhookPass) -> None:
    """The two passes side by side, then what the endpoint got."""
    name = "webhooks"
    table.add(name, "online users / rate / seconds; expiring messages (offline users) / TTL / endpoint outage",
              f"{args.users:,} / {args.rate:,.0f} msgs/s / {args.webhook_seconds:g}; {args.webhook_expiries:,} / "
              f"{args.webhook_ttl} s / {args.webhook_outage:g} s")
    p99s = []
    for label, one in (("without", without), ("with", with_)):
        latencies = sorted(one.online.latencies_ms)
        p99s.append(percentile(latencies, .99))
        tally = one.online.tally()
        table.add(name, f"{label} webhooks: online latency p50/p99; lost / duplicates; rejected",
                  f"{percentile(latencies, .5):.1f} / {p99s[-1]:.1f} ms; {tally.lost:,} / {tally.duplicates:,}; "
                  f"{counted(one.rejected)}")
        table.add(name, f"{label} webhooks: server CPU-s by process", one.cpu)
    table.add(name, "online p99 with / without webhooks", f"{p99s[1] / p99s[0]:.2f}x (target: at most 1.20x)")
    sink = with_.sink or {}
    arrived = set(sink.get("message_ids", ()))
    expected = len(with_.expiring)
    table.add(name, "message.expired expected / arrived / lost / duplicates",
              f"{expected:,} / {len(arrived & with_.expiring):,} / {len(with_.expiring - arrived):,} / {sink.get('duplicates', 0):,}")
    table.add(name, "endpoint answers by status", ", ".join(f"{s} x {n:,}" for s, n in sorted(sink.get("statuses", {}).items())))
    if arrived >= with_.expiring and sink.get("last_new"):
        table.add(name, "all arrived, from the first TTL end / from the end of the outage",
                  f"{sink['last_new'] - with_.first_expiry:.1f} s / {sink['last_new'] - sink['outage_ended']:.1f} s")


def scenario_webhooks(args: argparse.Namespace, table: Table) -> None:
    """Two passes of the same workload, each on a fresh cluster of its own: without webhooks, then with them."""
    passes = []
    for webhooks in (False, True):
        with target_of(args, webhooks) as target, contextlib.ExitStack() as scope:
            sink = scope.enter_context(Sink(args.webhook_outage)) if webhooks else None
            passes.append(uvloop.run(with_api(target, args, partial(webhook_pass, target, table=table, args=args, sink=sink))))
    report_webhooks(table, args, *passes)


SCENARIOS = {"storm": scenario_storm, "steady": scenario_steady, "latency": scenario_latency,
             "connections": scenario_connections, "broadcast": scenario_broadcast, "topic": scenario_topic,
             "recovery": scenario_recovery,
             "schedule": scenario_schedule, "priority": scenario_priority, "expiry": scenario_expiry, "floor": scenario_floor}


T = TypeVar("T")


async def with_api(target: Target, args: argparse.Namespace, work: Callable[[Api], Awaitable[T]]) -> T:
    """``work`` with the target's API (posts stamped with their send time in a run beside a peer)."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=args.in_flight)) as session:
        return await work(target.api(target.auth_url, target.collect_url, session, stamp=bool(args.peer)))


async def run(name: str, target: Target, args: argparse.Namespace, table: Table) -> None:
    await with_api(target, args, lambda api: SCENARIOS[name](target, api, table, args, f"bench{secrets.token_hex(3)}"))


def main() -> None:
    args = parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # storm sockets all live in this process
    table = Table()
    try:
        for name in args.scenarios:  # each on a fresh cluster of its own, so none inherits another's state
            print(f"scenario {name}...", flush=True)
            if name == "webhooks":  # two clusters of its own, one after the other
                scenario_webhooks(args, table)
                continue
            with target_of(args) as target:
                print(f"target: collect {target.collect_url}, auth {target.auth_url}, push {', '.join(target.push_urls)}", flush=True)
                uvloop.run(run(name, target, args, table))
            if args.peer:  # right after ours, on the same machine in the same state
                print(f"scenario {name} on {args.peer}...", flush=True)
                with PEERS[args.peer](args.workdir) as target:
                    print(f"target: {args.peer} nodes {', '.join(target.push_urls)}, its Redis {target.redis_url}", flush=True)
                    uvloop.run(run(name, target, args, table.labelled(args.peer)))
                print(table.compare(name, args.peer, PEER_NOTE), flush=True)
    finally:
        print(table.render())
        for name in args.scenarios if args.peer else ():
            print(table.compare(name, args.peer, PEER_NOTE))


if __name__ == "__main__":
    main()

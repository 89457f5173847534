"""End-to-end benchmark of the push cluster: prints figures, asserts nothing.

Scenarios (``--scenarios A,B,C``):

* A, latency: ``--users`` connected users spread over the push nodes; ``--messages`` messages posted
  in batches of ``--batch``, then ``--single`` messages posted one per request. Latency is receive
  time minus the frame's ``ts`` (collect's acceptance time), so it covers MongoDB, the stream,
  dispatch and the node. Every (user, message) is checked to arrive exactly once.
* B, throughput: ``--throughput-messages`` messages to the same number of users, posted in batches
  of 1,000 by ``--posters`` concurrent posters: accepted msgs/s at collect, delivered msgs/s at clients.
* C, connections: ``--connections`` idle sockets to one push node from several client processes
  (``--per-process`` each, each bound to its own 127.x source address): connect rate, the node's RSS
  and memory per connection, and the Redis commands the node issues over ``--idle-seconds`` idle.

Without ``--collect-url`` it starts its own cluster on free ports (``tools.cluster``) and stops it
at the end; with ``--collect-url/--auth-url/--push-urls`` (and ``--redis-url`` for C) it targets a
running ``make run``. Run it as ``make bench BENCH_ARGS='--scenarios A'`` or
``.venv/bin/python -m loadtest.bench_e2e --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import aiohttp
import psutil
import uvloop

from loadtest.api import Api, Rejected
from loadtest.idle import IdleFleet
from loadtest.inbox import Inbox, Users
from loadtest.redis_watch import watch
from loadtest.report import Table, latency_summary, percentile
from loadtest.target import Target, own_cluster

MAX_BATCH = 1000
MB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_e2e", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", default="A,B,C", help="comma-separated subset of A (latency), B (throughput), C (connections)")
    p.add_argument("--users", type=int, default=100, help="connected users in A and B")
    p.add_argument("--messages", type=int, default=1000, help="A: messages posted in batches")
    p.add_argument("--batch", type=int, default=100, help="A: messages per post")
    p.add_argument("--single", type=int, default=1000, help="A: messages posted one per request (0 to skip)")
    p.add_argument("--single-concurrency", type=int, default=8, help="A: single posts in flight")
    p.add_argument("--throughput-messages", type=int, default=20_000, help="B: messages posted in batches of 1,000")
    p.add_argument("--posters", type=int, default=4, help="B: batch posts in flight")
    p.add_argument("--connections", type=int, default=10_000, help="C: idle sockets opened to one push node (~15,000 max)")
    p.add_argument("--per-process", type=int, default=5_000, help="C: sockets per client process (one 127.x source each)")
    p.add_argument("--connect-concurrency", type=int, default=64, help="C: handshakes in flight per client process")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="C: window over which the node's Redis commands are counted")
    p.add_argument("--node", type=int, default=0, help="C: index of the push node to load")
    p.add_argument("--timeout", type=float, default=60.0, help="A/B: longest wait for the last message")
    p.add_argument("--workdir", type=Path, help="own cluster: keep its data and logs here (default: a temp dir, removed)")
    p.add_argument("--collect-url", help="target a running cluster's collect (e.g. http://127.0.0.1:8002)")
    p.add_argument("--auth-url", default="http://127.0.0.1:8001", help="with --collect-url")
    p.add_argument("--push-urls", default="http://127.0.0.1:8101,http://127.0.0.1:8102", help="with --collect-url, comma-separated")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="with --collect-url, for C")
    args = p.parse_args()
    args.scenarios = {s.strip().upper() for s in args.scenarios.split(",") if s.strip()}
    if not args.scenarios <= {"A", "B", "C"}:
        p.error("--scenarios takes A, B and/or C")
    if not 1 <= args.batch <= MAX_BATCH:
        p.error(f"--batch must be 1..{MAX_BATCH}")
    return args


@contextlib.contextmanager
def target_of(args: argparse.Namespace) -> Iterator[Target]:
    if args.collect_url:
        yield Target(args.auth_url, args.collect_url, args.push_urls.split(","), args.redis_url)
    else:
        print("starting a cluster on free ports (Redis, FerretDB, auth, collect, dispatch, 2 push nodes)...", flush=True)
        with own_cluster(args.workdir) as target:
            yield target


def batches(total: int, size: int) -> list[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def report_delivery(table: Table, name: str, inbox: Inbox, started: float, rejected: Counter[str]) -> None:
    """Rejected posts, latency percentiles, delivered msgs/s (first post to last receive), exactly-once tally."""
    tally = inbox.tally()
    table.add(name, "messages rejected by collect", f"{sum(rejected.values()):,} {dict(rejected) or ''}".strip())
    elapsed = max(inbox.last_receive - started, 1e-9)
    table.add(name, "latency p50/p90/p99/max", latency_summary(inbox.latencies_ms))
    table.add(name, "delivered msgs/s", tally.delivered / elapsed if tally.delivered else 0.0)
    table.add(name, "expected / delivered / lost / duplicates / unexpected",
              f"{tally.expected:,} / {tally.delivered:,} / {tally.lost:,} / {tally.duplicates:,} / {tally.unexpected:,}")


async def post_batches(api: Api, inbox: Inbox, user_ids: list[str], total: int, size: int, posters: int,
                       rejected: Counter[str]) -> float:
    """Post ``total`` messages (message k to user k mod users) in ``size`` batches; return when the last answered.

    A rejected post is counted in ``rejected`` (by reason) and its messages are not expected.
    """
    queue = batches(total, size)

    async def poster() -> None:
        while queue:
            ks = queue.pop(0)
            body = {"messages": [{"user_id": user_ids[k % len(user_ids)], "payload": {"n": k}} for k in ks]}
            try:
                ids = await api.post(body)
            except Rejected as exc:
                rejected[exc.reason] += len(ks)
                continue
            for k, message_id in zip(ks, ids):
                inbox.expect(user_ids[k % len(user_ids)], message_id)

    await asyncio.gather(*(poster() for _ in range(posters)))
    return time.time()


async def post_singles(api: Api, inbox: Inbox, user_ids: list[str], total: int, concurrency: int,
                       rejected: Counter[str]) -> list[float]:
    """Post one message per request, ``concurrency`` in flight; return each accepted request's round trip (ms)."""
    pending = list(range(total))
    round_trips: list[float] = []

    async def poster() -> None:
        while pending:
            k = pending.pop(0)
            user = user_ids[k % len(user_ids)]
            sent = time.perf_counter()
            try:
                (message_id,) = await api.post({"user_id": user, "payload": {"n": k}})
            except Rejected as exc:
                rejected[exc.reason] += 1
                continue
            round_trips.append((time.perf_counter() - sent) * 1000)
            inbox.expect(user, message_id)

    await asyncio.gather(*(poster() for _ in range(concurrency)))
    return round_trips


async def scenario_latency(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    user_ids = [f"{run}-a{i}" for i in range(args.users)]
    inbox = Inbox()
    async with Users(target, api, user_ids, inbox) as users:
        table.add("A batched", "users / nodes / messages / per post",
                  f"{len(user_ids)} / {len(target.push_urls)} / {args.messages:,} / {args.batch}")
        started, rejected = time.time(), Counter[str]()
        await post_batches(api, inbox, user_ids, args.messages, args.batch, 1, rejected)
        await inbox.settle(args.timeout)
        report_delivery(table, "A batched", inbox, started, rejected)
        if not args.single:
            return
        users.inbox = inbox = Inbox()
        started, rejected = time.time(), Counter[str]()
        round_trips = sorted(await post_singles(api, inbox, user_ids, args.single, args.single_concurrency, rejected))
        table.add("A single", "posts / in flight", f"{args.single:,} / {args.single_concurrency}")
        table.add("A single", "accepted posts/s", len(inbox.expected) / (time.time() - started))
        table.add("A single", "POST round trip p50/p99",
                  f"{percentile(round_trips, .5):.1f} / {percentile(round_trips, .99):.1f} ms")
        await inbox.settle(args.timeout)
        report_delivery(table, "A single", inbox, started, rejected)


async def scenario_throughput(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    user_ids = [f"{run}-b{i}" for i in range(args.users)]
    inbox = Inbox()
    async with Users(target, api, user_ids, inbox):
        total = args.throughput_messages
        table.add("B", "users / messages / per post / posters", f"{len(user_ids)} / {total:,} / {MAX_BATCH} / {args.posters}")
        started, rejected = time.time(), Counter[str]()
        answered_at = await post_batches(api, inbox, user_ids, total, MAX_BATCH, args.posters, rejected)
        table.add("B", "accepted msgs/s at collect", len(inbox.expected) / (answered_at - started))
        await inbox.settle(max(args.timeout, total / 500))
        report_delivery(table, "B", inbox, started, rejected)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def node_health(session: aiohttp.ClientSession, push_url: str) -> dict[str, object]:
    async with session.get(f"{push_url}/healthz") as r:
        return await r.json(content_type=None)


async def scenario_connections(target: Target, api: Api, table: Table, args: argparse.Namespace, run: str) -> None:
    n, node = args.connections, args.node
    started = time.time()
    tokens = await api.tokens([f"{run}-c{i}" for i in range(n)])
    table.add("C", "tokens issued by auth /s", n / (time.time() - started))
    pid = target.push_pid(node)
    before, cpu_before = rss_mb(pid), cpu_seconds(pid)
    fleet = IdleFleet(target.ws_url(node), tokens, args.per_process, args.connect_concurrency,
                      max_hold_seconds=args.idle_seconds + 300)
    try:
        reports = await asyncio.to_thread(fleet.open)
        opened = sum(r.opened for r in reports)
        failures = sum((r.failures for r in reports), start=Counter[str]())
        window = max(r.finished for r in reports) - min(r.started for r in reports)
        table.add("C", "node / client processes", f"{target.ws_url(node)} / {len(reports)} (127.0.0.2..{1 + len(reports)})")
        table.add("C", "sockets routed (welcome) / failed", f"{opened:,} / {sum(failures.values()):,} {dict(failures) or ''}")
        table.add("C", "connect rate (sockets/s)", opened / window)
        table.add("C", "node CPU busy while connecting (% of one core)", 100 * (cpu_seconds(pid) - cpu_before) / window)
        await asyncio.sleep(2)  # let the route flusher and the allocator settle
        after = rss_mb(pid)
        health = await node_health(api.session, target.push_urls[node])
        table.add("C", "node reports connections / users", f"{health['connections']:,} / {health['users']:,}")
        table.add("C", "node RSS before / after (MB)", f"{before:.1f} / {after:.1f}")
        table.add("C", "node memory per connection (KB)", (after - before) * 1024 / max(opened, 1))
        idle = await watch(target.redis_url, pid, args.idle_seconds)
        table.add("C", f"node Redis commands over {idle.seconds:.0f} s idle", f"{idle.commands:,} in {idle.round_trips} round trips "
                  f"({', '.join(f'{k} {v}' for k, v in idle.by_command.most_common())})")
        table.add("C", "node Redis commands/s idle", idle.commands / idle.seconds)
        table.add("C", "node Redis round trips/s idle", idle.round_trips / idle.seconds)
        table.add("C", "all clients' Redis commands/s (INFO stats)", idle.all_clients / idle.seconds)
        table.add("C", "node RSS after idle (MB)", rss_mb(pid))
    finally:
        await asyncio.to_thread(fleet.close)


SCENARIOS = {"A": scenario_latency, "B": scenario_throughput, "C": scenario_connections}


async def run(target: Target, args: argparse.Namespace, table: Table) -> None:
    run_id = f"bench{secrets.token_hex(3)}"
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as session:
        api = Api(target.auth_url, target.collect_url, session)
        for name in sorted(args.scenarios):
            print(f"scenario {name}...", flush=True)
            await SCENARIOS[name](target, api, table, args, run_id)


def main() -> None:
    args = parse_args()
    table = Table()
    try:
        with target_of(args) as target:
            print(f"target: collect {target.collect_url}, auth {target.auth_url}, push {', '.join(target.push_urls)}", flush=True)
            uvloop.run(run(target, args, table))
    finally:
        print(table.render())


if __name__ == "__main__":
    main()

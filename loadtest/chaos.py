"""The whole-system checker: a seeded workload, clients and faults against a stack of its own, then a verdict.

``python -m loadtest.chaos --seconds 120 --seed 7 [--redis-cluster] [--faults kill,stop]`` starts Redis (or a
3-master Redis Cluster with ``STREAM_SHARDS=3``), PostgreSQL + FerretDB, auth, collect, two dispatch instances and
``--nodes`` push nodes on free loopback ports in a temp dir; posts, connects and injects faults for ``--seconds``
(every decision drawn from the seed: ``chaos_workload``, ``chaos_clients``, ``chaos_faults``); then has every user
connect and stay until each delivery owed has arrived or the settle deadline passed; reads
``GET /v1/messages/{id}`` of the user messages accepted; and prints one table, the violations per class counted
by ``chaos_check`` from those observations alone, with up to 10 examples each. Exit status 1 on any violation.
Every process it started is stopped by pid on the way out, also on an error or Ctrl-C; a run with violations keeps
the processes' logs in ``test-output/chaos/seed-<seed>/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from loadtest.chaos_check import CLASSES, OPEN_STATES, FaultRecord, Observations, Report, arrived, check, owed, recipients
from loadtest.chaos_clients import Clients, SocketPlan, UserPlan, plan_sockets, plan_users
from loadtest.chaos_faults import FAULT_KINDS, NODE_TTL_SECONDS, SERVER_KINDS, ChaosStack, Faults, plan_faults
from loadtest.chaos_net import Toxiproxy
from loadtest.chaos_workload import Poster, plan_posts, request
from shared.infra.serve import running
from tests.client import ClusterClient
from tests.conftest import Servers
from tools.cluster import Cluster

LEAD_S = 1.0  # from planning to second 0
SETTLE_MARGIN_S = 10.0  # the settle phase lasts at least this long past the latest due time and the last rebuild
SETTLE_MAX_EXTRA_S = 300.0  # ... but a rebuild that never ends stops waiting this long past the planned deadline
LINGER_S = 2.0  # kept open once everything owed arrived, for late duplicates
STATUS_IN_FLIGHT = 8
STATUS_LIMIT = 3000  # statuses read at most (a seeded sample of the accepted user messages beyond)
KEPT_LOGS = Path(__file__).resolve().parents[1] / "test-output" / "chaos"  # a failed run's logs (not in git)
REBUILD_POLL_S = 0.5  # how often dispatch's /healthz is asked whether the state is being rebuilt
STATUS_ROUNDS = 3  # reads of a status still behind what clients saw (the lifecycle is written once a second)


async def drive(stack: ChaosStack, seed: int, seconds: float, faults: list[str], settle_s: float = 60.0) -> Report:
    """One chaos run against a started stack: workload, settle phase, statuses; the verdict."""
    users = plan_users(random.Random(f"{seed}:users"), f"s{seed}")
    sockets = plan_sockets(random.Random(f"{seed}:sockets"), users, seconds, len(stack.stack.push_ports))
    posts = plan_posts(random.Random(f"{seed}:posts"), seconds, [u.name for u in users], [u.name for u in users if u.offline],
                       f"s{seed}")
    fault_plans = plan_faults(random.Random(f"{seed}:faults"), seconds, faults)
    print(f"chaos seed {seed}: {seconds:g} s, {len(users)} users ({sum(u.offline for u in users)} offline until the settle "
          f"phase), {len(sockets)} sockets, {len(posts)} posts, {len(fault_plans)} faults", flush=True)
    obs = Observations()
    started = time.time() + LEAD_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        client = ClusterClient(stack.stack, session)
        clients = Clients(client, obs, seed, started)
        async with running(watch_rebuilds(stack, session, obs)):  # through the settle phase: a rebuild may outlast the faults
            async with asyncio.TaskGroup() as group:
                group.create_task(clients.run(sockets))
                group.create_task(Poster(client, obs, started).run(posts))
                group.create_task(Faults(stack, obs, started).run(fault_plans))
            await settle(clients, obs, users, len(stack.stack.push_ports), settle_s)
        obs.ended = time.time()
        await read_statuses(client, obs, random.Random(f"{seed}:statuses"))
    return check(obs)


async def watch_rebuilds(stack: ChaosStack, session: aiohttp.ClientSession, obs: Observations) -> None:
    """Until cancelled, record each span dispatch's ``/healthz`` said the delivery state was being rebuilt (incomplete,
    or the schedule paused: Redis came back empty) as a ``rebuild`` fault: nothing waiting is replayed and nothing
    scheduled fires in it, late by design, so the checks treat it as a fault's aftermath. A poll no instance answers
    changes nothing."""
    try:
        while True:
            answers = []
            for name in stack.named("dispatch"):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(f"{stack.url(name)}/healthz", timeout=aiohttp.ClientTimeout(total=REBUILD_POLL_S)) as r:
                        health = await r.json()
                        answers.append(bool(health.get("schedule_paused")) or not health.get("state_complete", True))
            if answers and any(answers) and obs.rebuilding_since is None:
                obs.rebuilding_since = time.time()
            elif answers and not any(answers) and obs.rebuilding_since is not None:
                obs.faults.append(FaultRecord("rebuild", "state", obs.rebuilding_since, time.time()))
                obs.rebuilding_since = None
            await asyncio.sleep(REBUILD_POLL_S)
    finally:
        if obs.rebuilding_since is not None:
            obs.faults.append(FaultRecord("rebuild", "state", obs.rebuilding_since, time.time()))


def settle_deadline(planned: float, obs: Observations, now: float) -> float:
    """When the settle phase may end: ``planned``, or ``SETTLE_MARGIN_S`` after the last rebuild span (nothing waiting is
    sent while the state is rebuilt; a rebuild still running pushes it on), never past ``SETTLE_MAX_EXTRA_S`` more."""
    ends = [f.end for f in obs.faults if f.kind == "rebuild"] + ([now] if obs.rebuilding_since is not None else [])
    return min(max(planned, max(ends, default=0.0) + SETTLE_MARGIN_S), planned + SETTLE_MAX_EXTRA_S)


async def settle(clients: Clients, obs: Observations, users: list[UserPlan], nodes: int, settle_s: float) -> None:
    """Every user on one socket, acking everything, until each owed delivery arrived (and ``LINGER_S`` more), or until
    ``settle_s`` passed, ``SETTLE_MARGIN_S`` past the latest due time and past the last rebuild (``settle_deadline``)."""
    latest_due = max(owed(obs).values(), default=0.0)
    planned = max(time.time() + settle_s, latest_due + SETTLE_MARGIN_S)
    now = time.time() - clients.started
    end = planned + SETTLE_MAX_EXTRA_S - clients.started  # the sockets' own limit; the loop below ends them sooner
    plans = [SocketPlan(f"{u.name}.settle", u, now, end, i % nodes, False, 100, f"{u.name}.settle") for i, u in enumerate(users)]
    running = asyncio.create_task(clients.run(plans, settle=True))
    names = {u.name for u in users}
    while time.time() < settle_deadline(planned, obs, time.time()) and not running.done():
        welcomed = {s.user for s in obs.sockets if s.settle and s.opened_at is not None}
        if welcomed == names and not owed(obs).keys() - arrived(obs):
            await asyncio.sleep(LINGER_S)
            break
        await asyncio.sleep(0.2)
    clients.end_now()
    await running


async def read_statuses(client: ClusterClient, obs: Observations, rng: random.Random) -> None:
    """``GET /v1/messages/{id}`` of the accepted user messages (a sample past ``STATUS_LIMIT``), then again, a few times,
    of those still showing a delivery that arrived as accepted or scheduled."""
    ids = sorted({mid for p in obs.posts if p.status == 202 for mid, m in zip(p.ids, p.messages) if m.topic is None})
    ids = sorted(rng.sample(ids, STATUS_LIMIT)) if len(ids) > STATUS_LIMIT else ids
    gate = asyncio.Semaphore(STATUS_IN_FLIGHT)

    async def read(mid: str) -> None:
        async with gate:
            try:
                obs.statuses[mid] = await request(client, "GET", f"/v1/messages/{mid}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                obs.statuses[mid] = (0, {"error": type(exc).__name__})

    seen = arrived(obs)
    for _ in range(STATUS_ROUNDS):
        await asyncio.gather(*(read(mid) for mid in ids))
        ids = [mid for mid in ids if any(row["state"] in OPEN_STATES and (mid, row["user_id"]) in seen
                                         for row in recipients(obs.statuses[mid][1]))]
        if not ids:
            return
        await asyncio.sleep(2)


def render(report: Report, seed: int, title: str) -> str:
    rows = [("seed", str(seed)), ("run", title), *((f"violations: {k}", str(report.counts[k])) for k in CLASSES),
            *((k, str(v)) for k, v in sorted(report.tally.items()))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for kind in CLASSES:
        lines += [f"{kind}: {example}" for example in report.examples.get(kind, [])]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="how long the workload and faults run")
    p.add_argument("--seed", type=int, help="replays a run's decisions (default: a random one, printed)")
    p.add_argument("--redis-cluster", action="store_true", help="a 3-master Redis Cluster (STREAM_SHARDS=3) instead of one Redis")
    p.add_argument("--faults", default=",".join(FAULT_KINDS), help=f"comma-separated, of {', '.join(FAULT_KINDS + SERVER_KINDS)}; "
                   "'' for none")
    p.add_argument("--nodes", type=int, default=3, choices=(2, 3), help="push nodes")
    p.add_argument("--settle", type=float, default=60.0, help="settle phase deadline (s; longer if a message is due later)")
    p.add_argument("--workdir", type=Path, help="keep the processes' data and logs here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    if not set(args.faults) <= set(FAULT_KINDS + SERVER_KINDS):
        p.error(f"--faults takes {', '.join(FAULT_KINDS + SERVER_KINDS)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    title = f"{args.seconds:g} s, {'3-master Redis Cluster' if args.redis_cluster else 'one Redis'}, {args.nodes} push nodes, " \
            f"faults {','.join(args.faults) or 'none'}"
    print(f"chaos seed {seed} ({title}); replay with --seed {seed}", flush=True)
    with contextlib.ExitStack() as scope:
        workdir = args.workdir or Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        cluster = Cluster(workdir, redis_password=secrets.token_urlsafe(16))
        scope.callback(cluster.stop_all)
        stack, redis = Servers(cluster).stack_on("cluster" if args.redis_cluster else "single", args.nodes,
                                                 NODE_TTL_SECONDS=str(NODE_TTL_SECONDS))
        servers = [p for p in cluster.procs if p.name.split("-")[0] in ("ferretdb", "postgres")] + \
            (redis or [p for p in cluster.procs if p.name.startswith("redis-")])
        chaos = ChaosStack.start(cluster, stack, redis, Toxiproxy(cluster) if "net" in args.faults else None)
        chaos.expose(servers)
        report = asyncio.run(drive(chaos, seed, args.seconds, args.faults, args.settle))
        if report.violations and args.workdir is None:  # the temp dir goes: keep what explains the violations
            kept = KEPT_LOGS / f"seed-{seed}"
            shutil.copytree(workdir / "logs", kept, dirs_exist_ok=True)
            print(f"the processes' logs are kept in {kept}", flush=True)
    print(render(report, seed, title))
    print(f"chaos seed {seed}: {report.violations} violations; replay with --seed {seed}", flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

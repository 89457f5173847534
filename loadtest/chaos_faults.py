"""The stack a chaos run drives and the faults it injects into it.

``ChaosStack`` starts auth, collect, two dispatch instances and the push nodes over a Redis (or Redis Cluster) and
FerretDB that ``tests.conftest.Servers`` provides (the session's in ``make test``, the run's own under ``python -m
loadtest.chaos``), owns those processes and stops them by pid. ``Faults`` injects the planned faults on time:
``kill`` (SIGKILL a push node, a dispatch instance, collect or auth, started again a few seconds later with
``Cluster.respawn``) and ``stop`` (SIGSTOP one of them, SIGCONT a few seconds later); and, for a stack whose servers
are its own (``expose``), ``redis`` (SIGKILL Redis, or one Redis Cluster master, restarted empty), ``store``
(SIGKILL FerretDB, or a fast shutdown of PostgreSQL, started again) and ``net`` (a toxic between one push node and
Redis, ``chaos_net``). Each is recorded as a
``chaos_check.FaultRecord`` once undone, and anything still stopped is continued on the way out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from loadtest.chaos_check import FaultRecord, Observations
from loadtest.chaos_net import Toxiproxy
from tools.cluster import Cluster, Proc, Stack, free_port

FAULT_KINDS = ("kill", "stop")  # the default run's
NODE_TTL_SECONDS = 6  # the stack's card TTL: short, so that a long fault cuts a push node off for longer than it
CUT_OFF = ("push", "toxiproxy")  # the targets of the faults that cut a push node off (stopped, or from Redis)
SERVER_KINDS = ("redis", "store", "net")  # the second phase's, for a stack whose servers are its own
SERVICES = ("push", "dispatch", "collect", "auth")
TARGETS = {"kill": SERVICES, "stop": SERVICES, "redis": ("redis",), "store": ("ferretdb", "postgres"), "net": ("toxiproxy",)}


class ChaosStack:
    def __init__(self, cluster: Cluster, stack: Stack, procs: dict[str, Proc], redis: list[Proc]) -> None:
        self.cluster = cluster
        self.stack = stack
        self.procs = procs  # by name: auth, collect, dispatch-<port>, push-<port>; servers added by ``expose``
        self.redis = redis  # a Redis Cluster started for this stack alone, stopped with it
        self.toxiproxy: Toxiproxy | None = None  # its proxies, for ``net`` faults

    @classmethod
    def start(cls, cluster: Cluster, stack: Stack, redis: list[Proc], toxiproxy: Toxiproxy | None = None) -> ChaosStack:
        """The services on ``stack``, with a second dispatch instance on a port of its own. With ``toxiproxy``, the
        first push node's link goes through its proxy ``link`` and, on one Redis (``redis`` empty), the last push node
        reaches Redis through its proxy ``redis``."""
        before = len(cluster.procs)
        try:
            first, last = stack.push_ports[0], stack.push_ports[-1]
            proxied: dict[int, dict[str, str]] = {}
            if toxiproxy is not None:
                proxied[first] = {"PUSH_LINK_ADDRESS": f"127.0.0.1:{toxiproxy.proxy('link', first)}"}
                if not redis:
                    upstream = urlsplit(stack.redis_url).port
                    assert upstream is not None, stack.redis_url
                    url = stack.redis_url.replace(f":{upstream}/", f":{toxiproxy.proxy('redis', upstream)}/")
                    proxied.setdefault(last, {})["REDIS_URL"] = url
            others = dataclasses.replace(stack, push_ports=[p for p in stack.push_ports if p not in proxied])
            procs = {f"dispatch-{stack.dispatch_port}" if name == "dispatch" else name: proc
                     for name, proc in cluster.start_stack(others).items()}
            for node, env in proxied.items():
                procs[f"push-{node}"] = cluster.start_service("push", stack, node, **env)
            port = free_port()
            procs[f"dispatch-{port}"] = cluster.start_service("dispatch", stack, port, DISPATCH_PORT=str(port))
        except BaseException:
            cls(cluster, stack, {p.name: p for p in cluster.procs[before:]}, redis).stop()
            raise
        chaos = cls(cluster, stack, procs, redis)
        chaos.toxiproxy = toxiproxy
        return chaos

    def expose(self, servers: list[Proc]) -> None:
        """Let faults restart these servers too (Redis, FerretDB, PostgreSQL: redis-<port>, ...), which this stack has
        to itself; they stay the cluster's to stop."""
        self.procs |= {p.name: p for p in servers}

    def url(self, name: str) -> str:
        port = {"auth": self.stack.auth_port, "collect": self.stack.collect_port}.get(name) or int(name.rpartition("-")[2])
        return f"http://127.0.0.1:{port}"

    def named(self, role: str) -> list[str]:
        return sorted(n for n in self.procs if n.split("-")[0] == role)

    def stop(self) -> None:
        """Stop (continued first, if stopped) the services, then the Redis Cluster started for them, by pid."""
        services = [p for name, p in self.procs.items() if name.split("-")[0] in ("auth", "collect", "dispatch", "push")]
        for proc in [*reversed(services), *self.redis]:
            if proc.alive:
                os.kill(proc.popen.pid, signal.SIGCONT)
            proc.stop()
            if proc in self.cluster.procs:
                self.cluster.procs.remove(proc)
        self.procs.clear()


@dataclass(frozen=True, slots=True)
class FaultPlan:
    kind: str
    role: str  # which kind of process (``TARGETS``)
    pick: int  # which of that role's processes (modulo their number)
    at: float  # s after the run's start
    duration: float  # s until it is undone


def plan_faults(rng: random.Random, seconds: float, kinds: list[str]) -> list[FaultPlan]:
    """One fault every 15-30 s (the first 4-8 s in), each undone 2-5 s later, none overlapping, all over before the end;
    one in three of those that cut a push node off lasts 1-3 s past its card's TTL instead (its routes expire)."""
    plans: list[FaultPlan] = []
    at = rng.uniform(4, 8)
    while kinds:
        kind = rng.choice(kinds)
        role = rng.choice(TARGETS[kind])
        long = role in CUT_OFF and rng.random() < 1 / 3
        duration = NODE_TTL_SECONDS + rng.uniform(1, 3) if long else rng.uniform(2, 5)
        plan = FaultPlan(kind, role, rng.randrange(1000), at, duration)
        if plan.at + plan.duration > seconds - 2:
            break
        plans.append(plan)
        at += plan.duration + rng.uniform(15, 30)
    return plans


class Faults:
    def __init__(self, stack: ChaosStack, obs: Observations, started: float) -> None:
        self.stack = stack
        self.obs = obs
        self.started = started  # wall clock of second 0

    async def run(self, plans: list[FaultPlan]) -> None:
        for plan in plans:
            await asyncio.sleep(max(0.0, self.started + plan.at - time.time()))
            names = self.stack.toxiproxy.faults() if plan.kind == "net" and self.stack.toxiproxy else self.stack.named(plan.role)
            name = names[plan.pick % len(names)]
            print(f"  fault at {time.time() - self.started:.1f} s: {plan.kind} {name} for {plan.duration:.1f} s", flush=True)
            start = time.time()
            await {"stop": self.pause, "net": self.harm}.get(plan.kind, self.kill)(name, plan.duration)
            self.obs.faults.append(FaultRecord(plan.kind, name, start, time.time()))

    async def kill(self, name: str, seconds: float) -> None:
        """SIGKILL (PostgreSQL: a fast shutdown, since its backends would outlive its postmaster), then after ``seconds``
        the same process again, once it answers (a Redis without persistence comes back empty)."""
        proc = self.stack.procs[name]
        await asyncio.to_thread(proc.stop if name.startswith("postgres") else proc.kill)
        await asyncio.sleep(seconds)
        fresh = self.stack.cluster.respawn(proc)
        self.stack.procs[name] = fresh
        await asyncio.to_thread(self.ready, fresh)

    def ready(self, proc: Proc) -> None:
        role, _, port = proc.name.rpartition("-")
        if role in ("redis", "ferretdb", "postgres"):
            self.stack.cluster.wait_tcp(proc, int(port))
            if role == "postgres":
                self.stack.cluster.wait_postgres(proc, int(port))
        else:
            self.stack.cluster.wait_http(proc, f"{self.stack.url(proc.name)}/healthz")

    async def harm(self, name: str, seconds: float) -> None:
        """A toxic (``<proxy>-<toxic>``: ``link-blackhole``, ``redis-reset``, ...) on one proxy for ``seconds``, then none."""
        toxiproxy = self.stack.toxiproxy
        assert toxiproxy is not None, "net faults need ChaosStack.toxiproxy"
        proxy, _, toxic = name.partition("-")
        await asyncio.to_thread(toxiproxy.harm, proxy, toxic, 1000 + int(seconds * 200))
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(toxiproxy.heal, proxy)

    async def pause(self, name: str, seconds: float) -> None:
        """SIGSTOP for ``seconds``, then SIGCONT (also if cancelled meanwhile)."""
        pid = self.stack.procs[name].popen.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

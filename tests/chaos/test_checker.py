"""Short chaos runs (``loadtest.chaos``) inside ``make test``: a seeded workload, churning clients, a SIGKILL or
SIGSTOP, then the verdict, on the session's Redis and FerretDB (and a Redis Cluster of the run's own); every
violation class must count 0. The random seed is printed, so a failure replays with ``--seed``."""

from __future__ import annotations

import os
import secrets

import pytest

from loadtest.chaos import drive, render
from loadtest.chaos_faults import FAULT_KINDS, NODE_TTL_SECONDS, ChaosStack
from tests.conftest import Servers
from tools.cluster import Cluster

SECONDS = 25.0
# One random seed per run, the same in every pytest-xdist worker (each collects the tests, and they must agree).
RANDOM_SEED = int(os.environ.get("PYTEST_XDIST_TESTRUNUID") or secrets.token_hex(16), 16) % 10**6


async def run(servers: Servers, cluster: Cluster, topology: str, seed: int) -> None:
    stack, redis = servers.stack_on(topology, 3, NODE_TTL_SECONDS=str(NODE_TTL_SECONDS))
    chaos = ChaosStack.start(cluster, stack, redis)
    try:
        report = await drive(chaos, seed, SECONDS, list(FAULT_KINDS))
    finally:
        chaos.stop()
    print(render(report, seed, f"{SECONDS:g} s on {topology}"))
    assert report.violations == 0, f"seed {seed}: {dict(report.counts)}\n{dict(report.examples)}"


@pytest.mark.parametrize(("topology", "seed"), [("single", 3), ("cluster", 10), ("single", RANDOM_SEED)],
                         ids=["single-seed-3", "cluster-seed-10", f"single-random-seed-{RANDOM_SEED}"])
async def test_a_seeded_chaos_run_counts_no_violation(servers: Servers, cluster: Cluster, topology: str, seed: int) -> None:
    """A 25 s chaos run with faults loses, duplicates, reorders and misreports nothing, and delivers nothing early,
    cancelled, refused or to the wrong socket."""
    await run(servers, cluster, topology, seed)

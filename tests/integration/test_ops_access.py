"""Operators' routes (metrics, stats, the dashboard) need the operators' key once it is set; probes and browsers' routes stay open."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from tests.conftest import RunningStack
from tests.waits import until

OPS_KEY = "ops-secret-for-tests"
BEARER = {"Authorization": f"Bearer {OPS_KEY}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"anyone:{OPS_KEY}".encode()).decode()}


@pytest.fixture
def guarded(start_stack) -> RunningStack:
    return start_stack(nodes=1, OPS_KEY=OPS_KEY)


async def status(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    async with session.get(url, headers=headers or {}) as answer:
        await answer.read()
        return answer.status, dict(answer.headers)


async def test_every_services_metrics_need_the_ops_key_as_bearer_or_basic_password(guarded: RunningStack) -> None:
    """/metrics of auth, collect, dispatch and the push node answer 401 (asking for Basic credentials) without the key or
    with a wrong one, and 200 with it as a Bearer token or as a Basic password; /healthz stays open for probes."""
    s, session = guarded.stack, guarded.client.session
    for base in (s.auth_url, s.collect_url, s.dispatch_url, s.push_url(s.push_ports[0])):
        code, headers = await status(session, f"{base}/metrics")
        assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Basic"), (base, code, headers)
        assert (await status(session, f"{base}/metrics", {"Authorization": "Bearer wrong"}))[0] == 401, base
        assert (await status(session, f"{base}/metrics", BEARER))[0] == 200, base
        assert (await status(session, f"{base}/metrics", BASIC))[0] == 200, base
        assert (await status(session, f"{base}/healthz"))[0] == 200, base


async def test_stats_and_the_dashboard_need_the_ops_key_and_stats_still_scrape_the_nodes(guarded: RunningStack) -> None:
    """/v1/stats and /dashboard are 401 without the key; with it the stats show the node up with its live connection
    count (collect scrapes the guarded /metrics with the key), and /v1/nodes stays open to browsers."""
    s, session, c = guarded.stack, guarded.client.session, guarded.client
    for path in ("/v1/stats", "/dashboard"):
        assert (await status(session, f"{s.collect_url}{path}"))[0] == 401, path
    assert (await status(session, f"{s.collect_url}/dashboard", BASIC))[0] == 200
    assert (await status(session, f"{s.collect_url}/v1/nodes"))[0] == 200
    ws = await c.connect("watched")

    async def stats() -> dict:
        async with session.get(f"{s.collect_url}/v1/stats", headers=BASIC) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()

    body = await until(stats, lambda b: [(n["up"], n["connections"]) for n in b["nodes"]] == [(True, 1)],
                       what="the stats to show the node up with one connection")
    assert body["messages"]["dispatched"] is not None  # dispatch's guarded page was read too
    await ws.close()

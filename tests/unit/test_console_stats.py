"""The dashboard's stats gathering (metrics parsing, merging) and which console routes exist where."""

from __future__ import annotations

import dataclasses
import math

import pytest
from starlette.requests import Request
from starlette.responses import Response

from services.collect.config import CollectConfig
from services.collect.console import as_sender, console_routes
from services.collect.stats import Samples, largest_topics, merge_latency, node_entry, node_http_base
from shared.cluster.routes import NodeCard

NODE_METRICS = """\
# TYPE push_connections gauge
push_connections 3.0
# TYPE push_users gauge
push_users 2.0
# TYPE push_delivered counter
push_delivered_total 7.0
# TYPE push_delivery_latency_seconds histogram
push_delivery_latency_seconds_bucket{le="0.01"} 4.0
push_delivery_latency_seconds_bucket{le="0.1"} 6.0
push_delivery_latency_seconds_bucket{le="+Inf"} 7.0
push_delivery_latency_seconds_count 7.0
push_delivery_latency_seconds_sum 0.5
"""


def test_samples_parse_values_and_histogram_buckets() -> None:
    """A /metrics page yields its unlabelled values and each histogram's cumulative buckets."""
    page = Samples.parse(NODE_METRICS)
    assert page.get("push_connections") == 3 and page.get("push_delivered_total") == 7
    assert page.buckets["push_delivery_latency_seconds"] == {0.01: 4, 0.1: 6, math.inf: 7}
    assert page.get("missing_total") == 0


def test_merge_latency_sums_nodes_and_reports_inf_as_count() -> None:
    """Two nodes' histograms add up bucket by bucket; +Inf becomes ``count`` (JSON has no infinity)."""
    page = Samples.parse(NODE_METRICS)
    assert merge_latency([page, page]) == {"buckets": [(0.01, 8.0), (0.1, 12.0)], "count": 14.0, "sum": 1.0}
    assert merge_latency([]) == {"buckets": [], "count": 0.0, "sum": 0}


def test_node_http_base_strips_the_path_and_maps_the_scheme() -> None:
    """A node is scraped at its link URL's host and port, over http(s)."""
    assert node_http_base("ws://127.0.0.1:8101/internal") == "http://127.0.0.1:8101"
    assert node_http_base("wss://push-1.example:443/internal") == "https://push-1.example:443"


def test_node_entry_prefers_live_gauges_and_falls_back_to_the_card() -> None:
    """A node that answers shows its live counts; one that does not shows its last card, marked down."""
    card = NodeCard("n1", "ws://h:1/internal", "ws://h:1/ws", connections=9, users=8)
    assert node_entry(card, Samples.parse(NODE_METRICS)) == {
        "id": "n1", "url": "ws://h:1/ws", "up": True, "connections": 3, "users": 2, "delivered": 7.0}
    assert node_entry(card, None) == {
        "id": "n1", "url": "ws://h:1/ws", "up": False, "connections": 9, "users": 8, "delivered": None}


def test_largest_topics_ranks_by_subscribers_across_nodes_and_keeps_ten() -> None:
    """Topics rank by their sockets summed over nodes (ties by name), each with its node count, ten at most."""
    counts = {"small": {"n1": 1}, "split": {"n1": 3, "n2": 4}, "big": {"n2": 6}, "tie-b": {"n1": 2}, "tie-a": {"n2": 2}}
    assert largest_topics(counts, 4) == [
        {"topic": "split", "subscribers": 7, "nodes": 2}, {"topic": "big", "subscribers": 6, "nodes": 1},
        {"topic": "tie-a", "subscribers": 2, "nodes": 1}, {"topic": "tie-b", "subscribers": 2, "nodes": 1}]
    many = {f"t{i:02}": {"n1": i} for i in range(1, 30)}
    assert [t["topic"] for t in largest_topics(many)] == [f"t{i:02}" for i in range(29, 19, -1)]
    assert largest_topics({}) == []


def test_as_sender_replaces_only_the_authorization_header() -> None:
    """The development route presents the configured key instead of whatever the page sent."""
    scope = {"type": "http", "headers": [(b"authorization", b"Bearer page"), (b"x-other", b"1")]}
    request = as_sender(Request(scope), "secret")
    assert request.headers["authorization"] == "Bearer secret" and request.headers["x-other"] == "1"


def paths(production: bool, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    monkeypatch.setenv("APP_ENV", "development")  # the config's development keys would stop a production start
    config = dataclasses.replace(CollectConfig.from_env(), app_env="production" if production else "development")

    async def handler(_: Request) -> Response:
        return Response()

    return {route.path for route in console_routes(config, None, None, handler, dict, None, None)}  # type: ignore[arg-type]


def test_development_routes_do_not_exist_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    """With APP_ENV=production there is no /dev/tokens, /dev/messages or /demo; the public routes stay."""
    public = {"/v1/nodes", "/v1/stats", "/dashboard", "/static"}
    assert paths(False, monkeypatch) == public | {"/dev/tokens", "/dev/messages", "/demo"}
    assert paths(True, monkeypatch) == public

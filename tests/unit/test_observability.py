"""The Grafana dashboard and the Prometheus alert rules only query metrics the services export."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator

import pytest
import yaml
from prometheus_client import REGISTRY

from tools.cluster import ROOT

# Every module that declares metrics; importing them registers their families in the default registry.
METRIC_MODULES = ["shared.infra.metrics", "services.push.metrics", "services.dispatch.metrics", "services.dispatch.firing",
                  "services.dispatch.reconciler", "services.collect.shedding", "services.webhooks.metrics"]
NAME = re.compile(r"\b((?:push|dispatch|collect|webhook)_[a-z_]+)\b")


def exported() -> set[str]:
    """Every sample name the services can expose: counters' ``_total``, histograms' ``_bucket``/``_sum``/``_count``..."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names |= {family.name + suffix for suffix in ("_total", "_bucket", "_sum", "_count", "_created")}
    return names


def dashboard_queries() -> Iterator[str]:
    for panel in json.loads((ROOT / "deploy/grafana/pushcluster.json").read_text())["panels"]:
        for target in panel["targets"]:
            yield target["expr"]


def alert_queries() -> Iterator[str]:
    for group in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


@pytest.mark.parametrize("queries", [dashboard_queries, alert_queries], ids=["dashboard", "alerts"])
def test_every_query_names_only_metrics_that_exist(queries) -> None:
    """Each metric a panel or an alert reads is declared by some service, so no panel stays empty by a typo or a rename."""
    known = exported()
    named = {name for expr in queries() for name in NAME.findall(expr)}
    assert named, "no metric found in the queries"
    assert named <= known, f"unknown metrics: {sorted(named - known)}"


def test_the_dashboard_covers_rates_latency_backlog_connections_and_webhook_queues() -> None:
    """The panels the issue asks for are there, each with at least one query."""
    titles = " | ".join(p["title"].lower() for p in json.loads((ROOT / "deploy/grafana/pushcluster.json").read_text())["panels"])
    for topic in ("per second", "latency", "backlog per priority tier", "connections per node", "webhook queues"):
        assert topic in titles, topic


def test_alerts_cover_lag_shedding_node_loss_and_open_breakers() -> None:
    """One rule each for dispatch lag, shedding, a lost node and an open circuit breaker."""
    names = {r["alert"] for g in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())["groups"] for r in g["rules"]}
    assert {"PushDispatchLagging", "PushShedding", "PushNodeLost", "PushBreakerOpen"} <= names

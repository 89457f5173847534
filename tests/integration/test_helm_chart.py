"""The Helm chart lints, renders the cluster with probes, a drain on shutdown and every secret wired, and refuses weak secrets."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from services.auth.config import AuthConfig
from services.collect.config import CollectConfig
from services.dispatch.config import DispatchConfig
from services.push.config import PushConfig
from services.webhooks.config import WebhooksConfig
from shared.infra.config import Settings
from tools.cluster import ROOT

HELM, CHART = ROOT / "bin" / "helm", ROOT / "deploy" / "helm" / "pushcluster"
CONFIGS: dict[str, type[Settings]] = {"auth": AuthConfig, "collect": CollectConfig, "dispatch": DispatchConfig, "push": PushConfig,
                                      "webhooks": WebhooksConfig}
SECRETS = {"secrets.jwtKey": "j" * 40, "secrets.authAdminKey": "admin-real", "secrets.apiKeys": "shop:key-real",
           "secrets.internalKey": "internal-real", "secrets.opsKey": "ops-real",
           "secrets.redisUrl": "redis://:r-real@redis:6379/0", "secrets.mongoUrl": "mongodb://push:m-real@mongo:27017/"}

def helm(*args: str, values: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), "bin/helm is missing: `make test` builds it (or `make bin/helm`)"
    sets = [arg for name, value in (values or {}).items() for arg in ("--set-string", f"{name}={value}")]
    return subprocess.run([str(HELM), *args, str(CHART), *sets], capture_output=True, text=True, timeout=60)


def rendered(values: dict[str, str]) -> list[dict[str, Any]]:
    result = helm("template", "demo", values=values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each Deployment's or StatefulSet's one container, by the service it runs."""
    containers = [doc["spec"]["template"]["spec"]["containers"][0] for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]
    return {c["command"][-1].removeprefix("services."): c for c in containers}


def test_the_chart_lints_clean_with_real_secrets() -> None:
    """``helm lint`` passes on the chart given its secrets."""
    result = helm("lint", "--strict", values=SECRETS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_renders_every_service_with_a_readiness_probe_on_healthz() -> None:
    """auth, collect, dispatch and webhooks are Deployments, the push nodes a StatefulSet, each ready by ``/healthz`` on
    its own port, with budgets for disruptions and an autoscaler on connections per node."""
    docs = rendered(SECRETS)
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert {("Deployment", f"demo-{s}") for s in ("auth", "collect", "dispatch", "webhooks")} | {("StatefulSet", "demo-push")} <= kinds
    assert {("PodDisruptionBudget", f"demo-{s}") for s in ("auth", "collect", "dispatch", "push")} <= kinds
    hpa = next(doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "push_connections"
    for service, container in workloads(docs).items():
        port = container["ports"][0]["containerPort"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port}, service


def test_push_nodes_drain_on_shutdown_and_each_has_its_own_id_and_url() -> None:
    """preStop waits, then SIGTERM drains within a grace period longer than the drain; node id, link host and public
    URL come from the pod."""
    docs = rendered(SECRETS)
    push = next(doc for doc in docs if doc["kind"] == "StatefulSet")
    container = push["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert push["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop + int(env["DRAIN_SECONDS"]) + \
        float(env["SHUTDOWN_GRACE_SECONDS"])
    assert (env["PUSH_NODE_ID"], env["PUSH_HOST"]) == ("$(POD_NAME)", "$(POD_IP)") and "$(POD_NAME)" in env["PUSH_PUBLIC_URL"]


def test_every_service_gets_each_secret_it_needs_from_the_charts_secret_and_runs_in_production() -> None:
    """Each service's secret settings and its store URLs come from the one Secret, which holds every key referenced."""
    docs = rendered(SECRETS)
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    assert secret["stringData"]["REDIS_URL"] == SECRETS["secrets.redisUrl"]
    for service, container in workloads(docs).items():
        env = {e["name"]: e for e in container["env"]}
        needed = {spec.name for _, spec in CONFIGS[service].specs() if spec.secret}
        needed |= {name for name in ("REDIS_URL", "MONGO_URL") if name in {spec.name for _, spec in CONFIGS[service].specs()}}
        for name in needed:
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], (service, name)
        assert env["APP_ENV"]["value"] == "production", service


@pytest.mark.parametrize(("change", "reason"), [
    ({"secrets.internalKey": ""}, "secrets.internalKey is required"),
    ({"secrets.internalKey": "dev-internal-key"}, "secrets.internalKey is a development default"),
    ({"secrets.redisUrl": "redis://redis:6379/0"}, "secrets.redisUrl must carry a real password"),
    ({"secrets.redisUrl": "redis://:dev-redis-password@redis:6379/0"}, "secrets.redisUrl must carry a real password"),
    ({"secrets.mongoUrl": "mongodb://mongo:27017/"}, "secrets.mongoUrl must carry credentials"),
])
def test_rendering_refuses_missing_or_development_secrets(change: dict[str, str], reason: str) -> None:
    """The chart stops like the services would: a missing secret, a development default or a store without a password."""
    result = helm("template", "demo", values={**SECRETS, **change})
    assert result.returncode != 0 and reason in result.stderr, result.stderr


def test_an_existing_secret_is_referenced_instead_of_rendered() -> None:
    """With ``secrets.existingSecret`` the chart creates no Secret and every reference names the given one."""
    docs = rendered({"secrets.existingSecret": "prod-secrets"})
    assert not [doc for doc in docs if doc["kind"] == "Secret"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for c in workloads(docs).values() for e in c["env"] if "valueFrom" in e
            and "secretKeyRef" in e["valueFrom"]}
    assert refs == {"prod-secrets"}

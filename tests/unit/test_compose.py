"""docker-compose.yml wires real secrets through, and its development defaults cannot run in production."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.collect.config import CollectConfig
from services.dispatch.config import DispatchConfig
from services.push.config import PushConfig
from shared.infra.config import Settings
from tools.cluster import ROOT

CONFIGS: dict[str, type[Settings]] = {"collect": CollectConfig, "dispatch": DispatchConfig, "push-1": PushConfig}
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^${}]*))?\}")


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's ``${NAME:-default}`` substitution (innermost first, so defaults may hold variables)."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value
    while (found := _VARIABLE.search(value)) is not None:
        value = value[:found.start()] + (environ.get(found[1]) or found[2] or "") + value[found.end():]
    return value


def compose(environ: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"], environ)


def production_problems(service: dict[str, Any], config: type[Settings], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What production refuses in this service's environment, development secrets aside."""
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("APP_ENV", "development")
    return dataclasses.replace(config.from_env(), app_env="production").unsafe_in_production()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compose_defaults_are_refused_in_production_and_real_passwords_pass(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without REDIS_PASSWORD and MONGO_PASSWORD, each service's Redis and MongoDB URLs are refused in production;
    with them set, nothing is."""
    refused = production_problems(compose({})[name], CONFIGS[name], monkeypatch)
    assert any("REDIS_URL" in p for p in refused) and any("MONGO_URL" in p for p in refused), refused
    real = compose({"REDIS_PASSWORD": "r-real", "MONGO_PASSWORD": "m-real"})[name]
    assert production_problems(real, CONFIGS[name], monkeypatch) == []


def test_compose_gives_the_stores_the_passwords_the_services_use() -> None:
    """Redis requires the password in every REDIS_URL, and MongoDB's root user is the one in every MONGO_URL."""
    services = compose({"REDIS_PASSWORD": "r-real", "MONGO_USER": "ops", "MONGO_PASSWORD": "m-real"})
    assert services["redis"]["command"][-2:] == ["--requirepass", "r-real"]
    mongo = services["mongo"]["environment"]
    assert (mongo["MONGO_INITDB_ROOT_USERNAME"], mongo["MONGO_INITDB_ROOT_PASSWORD"]) == ("ops", "m-real")
    for name in CONFIGS:
        env = services[name]["environment"]
        assert urlsplit(env["REDIS_URL"]).password == "r-real"
        assert (urlsplit(env["MONGO_URL"]).username, urlsplit(env["MONGO_URL"]).password) == ("ops", "m-real")

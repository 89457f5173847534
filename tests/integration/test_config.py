"""Each service's start-up refuses development secrets when told it runs in production."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.waits import scaled
from tools.cluster import ROOT

SECRETS = ("JWT_KEY", "AUTH_ADMIN_KEY", "COLLECT_API_KEYS", "INTERNAL_KEY", "OPS_KEY")


def start(service: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a service with no secrets and no APP_ENV from this environment, plus ``env``; it is expected to exit."""
    base = {k: v for k, v in os.environ.items() if k not in (*SECRETS, "APP_ENV")}
    return subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=scaled(30))


@pytest.mark.parametrize("service", ["auth", "collect", "dispatch", "push"])
@pytest.mark.parametrize("app_env", [{"APP_ENV": "production"}, {}], ids=["production", "unset"])
def test_service_refuses_development_secrets_in_production(service: str, app_env: dict[str, str]) -> None:
    """With APP_ENV=production, or no APP_ENV at all, and no secrets set, the process exits at once and names the variable."""
    result = start(service, **app_env)
    assert result.returncode != 0
    assert "refusing to start in production with development defaults" in result.stderr


@pytest.mark.parametrize("value", ["Production", "prod", "dev"])
def test_an_unknown_app_env_stops_the_service_with_a_clear_error(value: str) -> None:
    """APP_ENV is compared exactly: anything but production or development is a start-up error naming it."""
    result = start("auth", APP_ENV=value)
    assert result.returncode != 0 and f"APP_ENV={value!r} is neither" in result.stderr


def test_one_development_api_key_among_real_ones_is_refused_in_production() -> None:
    """Each API key is checked on its own: the development key next to a real one still stops collect."""
    result = start("collect", APP_ENV="production", COLLECT_API_KEYS="demo:dev-api-key,shop:a-real-key")
    assert result.returncode != 0 and "development defaults for COLLECT_API_KEYS" in result.stderr


def test_service_prints_development_defaults_it_uses() -> None:
    """In development, auth says which development secrets it is using before it serves."""
    env = {**os.environ, "APP_ENV": "development", "AUTH_HOST": "256.0.0.1"}  # cannot bind: exits after config
    result = subprocess.run([sys.executable, "-m", "services.auth"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=scaled(30))
    assert "using the development default AUTH_ADMIN_KEY=dev-admin-key" in result.stderr


REAL = {"APP_ENV": "production", "INTERNAL_KEY": "a-real-internal-key", "OPS_KEY": "a-real-ops-key"}


@pytest.mark.parametrize(("urls", "named"), [
    ({"REDIS_URL": "redis://127.0.0.1:6379/0", "MONGO_URL": "mongodb://app:s3cret@127.0.0.1:27017/"}, "REDIS_URL has no password"),
    ({"REDIS_URL": "redis://:dev-redis-password@127.0.0.1:6379/0", "MONGO_URL": "mongodb://app:s3cret@127.0.0.1/"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://:s3cret@127.0.0.1:6379/0", "MONGO_URL": "mongodb://127.0.0.1:27017/"}, "MONGO_URL has no credentials"),
    ({"REDIS_URL": "redis://:s3cret@127.0.0.1:6379/0", "MONGO_URL": "mongodb://app:dev-mongo-password@mongo/"}, "MONGO_URL"),
])
def test_production_refuses_a_store_without_a_real_password(urls: dict[str, str], named: str) -> None:
    """With real secrets, production still stops at start when Redis has no password (or docker-compose's development
    one) or MongoDB no credentials, naming the variable and never printing the password."""
    result = start("dispatch", **REAL, **urls)
    assert result.returncode != 0 and "refusing to start in production" in result.stderr and named in result.stderr
    assert "s3cret" not in result.stderr and "dev-redis-password" not in result.stderr


def test_production_accepts_authenticated_stores() -> None:
    """Redis with a password and MongoDB with credentials (or X.509) pass the start-up check: the service goes on to
    bind its port (here an impossible one, so it exits after the check)."""
    for mongo in ("mongodb://app:s3cret@127.0.0.1:27017/", "mongodb://127.0.0.1/?authMechanism=MONGODB-X509&tls=true"):
        result = start("dispatch", **REAL, REDIS_URL="redis://:s3cret@127.0.0.1:6379/0", MONGO_URL=mongo, DISPATCH_HOST="256.0.0.1")
        assert result.returncode != 0 and "refusing" not in result.stderr, result.stderr[-500:]

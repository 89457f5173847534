"""Each service's start-up refuses development secrets when told it runs in production."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tools.cluster import ROOT


@pytest.mark.parametrize("service", ["auth", "collect", "dispatch", "push"])
def test_service_refuses_development_secrets_in_production(service: str) -> None:
    """With APP_ENV=production and no secrets set, the process exits at once and names the variable."""
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_KEY", "AUTH_ADMIN_KEY", "COLLECT_API_KEYS", "INTERNAL_KEY")}
    result = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=ROOT, env={**env, "APP_ENV": "production"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "refusing to start in production with development defaults" in result.stderr


def test_service_prints_development_defaults_it_uses() -> None:
    """In development, auth says which development secrets it is using before it serves."""
    env = {**os.environ, "APP_ENV": "development", "AUTH_HOST": "256.0.0.1"}  # cannot bind: exits after config
    result = subprocess.run([sys.executable, "-m", "services.auth"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert "using the development default AUTH_ADMIN_KEY=dev-admin-key" in result.stderr

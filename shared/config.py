"""Reading service settings from the environment, and refusing development secrets in production."""

from __future__ import annotations

import hmac
import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

# Development defaults: `make run` works out of the box; production refuses to start with them.
DEV_ADMIN_KEY = "dev-admin-key"
DEV_API_KEYS = "demo:dev-api-key"
DEV_JWT_KEY = "dev-jwt-key-change-me-in-production-0123456789"
DEV_INTERNAL_KEY = "dev-internal-key"


def env(name: str, default: T, cast: Callable[[str], T] | None = None) -> T:
    """Return ``$name`` converted like ``default`` (or by ``cast``), else ``default``."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    convert = cast or type(default)
    try:
        return convert(raw)  # type: ignore[call-arg]
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a valid {convert.__name__}") from None


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of a presented key with the configured one, whatever characters it holds
    (``hmac.compare_digest`` raises on non-ASCII text, which would turn a bad key into a 500)."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def is_production() -> bool:
    return env("APP_ENV", "development") == "production"


def check_secrets(service: str, **secrets: tuple[str, str]) -> None:
    """Refuse production with a development secret; in development, print the defaults in use.

    ``secrets`` maps an environment variable name to (value in use, development default).
    """
    defaults = [name for name, (value, dev) in secrets.items() if value == dev]
    if not defaults:
        return
    if is_production():
        raise SystemExit(f"{service}: refusing to start in production with development defaults for {', '.join(defaults)}")
    for name in defaults:
        print(f"{service}: using the development default {name}={secrets[name][1]}", file=sys.stderr)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MONGO_URL = "mongodb://127.0.0.1:27017/"

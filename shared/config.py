"""Reading service settings from the environment, and refusing development secrets in production."""

from __future__ import annotations

import hmac
import os
import sys
from typing import Callable, Collection, TypeVar

T = TypeVar("T")

# Development defaults: `make run` and the tests (APP_ENV=development) work out of the box;
# production, the default APP_ENV, refuses to start with any of them.
DEV_ADMIN_KEY = "dev-admin-key"
DEV_API_KEYS = "demo:dev-api-key"
DEV_API_KEY = DEV_API_KEYS.partition(":")[2]
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


APP_ENVS = ("production", "development")


def is_production() -> bool:
    """``APP_ENV``: production unless it says exactly ``development``; any other value stops the service."""
    value = os.environ.get("APP_ENV") or "production"
    if value not in APP_ENVS:
        raise SystemExit(f"APP_ENV={value!r} is neither 'production' (the default) nor 'development'")
    return value == "production"


def check_secrets(service: str, **secrets: tuple[str | Collection[str], str]) -> None:
    """Refuse production with a development secret; in development, print the defaults in use.

    ``secrets`` maps an environment variable name to (value in use, development default); a variable
    holding several secrets (API keys) gives them as a collection, each checked on its own.
    """
    defaults = [name for name, (value, dev) in secrets.items() if (value == dev if isinstance(value, str) else dev in value)]
    if not defaults:
        return
    if is_production():
        raise SystemExit(f"{service}: refusing to start in production with development defaults for {', '.join(defaults)}")
    for name in defaults:
        print(f"{service}: using the development default {name}={secrets[name][1]}", file=sys.stderr)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MONGO_URL = "mongodb://127.0.0.1:27017/"

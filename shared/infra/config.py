"""Service settings: one frozen dataclass per service, read from the environment.

Each field is declared once with ``setting(ENV_NAME, default, doc)``: its variable, its default and
its one-line meaning side by side. From that one declaration come the reading (``from_env``, with
range checks that name the variable), the refusal of development secrets in production, the warning
for unknown variables with the service's prefix, and the table that ``python -m services.X
--print-config`` prints and the README's configuration section shows (a test keeps them equal).

Fields every service has live in the small bases below (``Settings`` reads ``APP_ENV``, the one place
it is read); a service's config inherits the ones it needs.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import ssl
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, overload
from urllib.parse import urlsplit

from shared.model.topics import Namespaces, TopicPolicy, parse_namespaces
from shared.wire.forwarding import Network, parse_networks

T = TypeVar("T")
S = TypeVar("S", bound="Settings")

# Development defaults: `make run` and the tests (APP_ENV=development) work out of the box;
# production, the default APP_ENV, refuses to start with any of them.
DEV_ADMIN_KEY = "dev-admin-key"
DEV_API_KEYS = "demo:dev-api-key"
DEV_API_KEY = DEV_API_KEYS.partition(":")[2]
DEV_JWT_KEY = "dev-jwt-key-change-me-in-production-0123456789"
DEV_INTERNAL_KEY = "dev-internal-key"
DEV_OPS_KEY = "dev-ops-key"
DEV_REDIS_PASSWORD = "dev-redis-password"  # docker-compose's, for trying it in development only
DEV_MONGO_PASSWORD = "dev-mongo-password"
APP_ENVS = ("production", "development")


@dataclass(frozen=True, slots=True)
class Spec:
    """How one field is read: its variable, doc, conversion, bounds, and whether its default is a development secret."""

    name: str
    doc: str
    cast: Callable[[str], Any] | None = None
    low: float | None = None
    secret: bool = False
    shown: str | None = None  # the default as documented, when it is derived from other fields


@overload
def setting(name: str, default: str, doc: str, *, cast: Callable[[str], T], secret: bool = False) -> T: ...


@overload
def setting(name: str, default: T, doc: str, *, low: float | None = None, secret: bool = False, shown: str | None = None) -> T: ...


def setting(name: str, default: Any, doc: str, *, cast: Callable[[str], Any] | None = None, low: float | None = None,
            secret: bool = False, shown: str | None = None) -> Any:
    """Declare a field read from ``$name``, converted like ``default`` (or by ``cast``, which then also reads the
    default, given as text), at least ``low`` if given."""
    return field(default=default, metadata={"spec": Spec(name, doc, cast, low, secret, shown)})


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of a presented key with the configured one, whatever characters it holds
    (``hmac.compare_digest`` raises on non-ASCII text, which would turn a bad key into a 500)."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def _read(spec: Spec, default: Any) -> Any:
    """``$name`` converted, else the default; a default written as text for a ``cast`` is converted the same way."""
    raw = os.environ.get(spec.name) or (default if spec.cast and isinstance(default, str) else None)
    if raw is None:
        return default
    convert: Callable[[str], Any] = spec.cast or (str if default is None else type(default))
    try:
        value: Any = convert(raw)
    except ValueError as exc:
        reason = f"is not a valid {convert.__name__}" if spec.cast is None else str(exc)
        raise SystemExit(f"{spec.name}={raw!r} {reason}") from None
    if spec.low is not None and value < spec.low:
        raise SystemExit(f"{spec.name}={raw!r} is below its minimum, {spec.low:g}")
    return value


def _development_value(spec: Spec, default: Any) -> Any:
    return spec.cast(default) if spec.cast and isinstance(default, str) else default


def _is_default_secret(value: Any, default: Any) -> bool:
    """A secret still at its development value; for a collection of secrets (API keys), any one of them."""
    if isinstance(value, str) or value is None:
        return bool(value == default)
    defaults: Collection[Any] = default if not isinstance(default, str) else (default,)
    return any(d in value for d in defaults)


@dataclass(frozen=True)
class Settings:
    """The base of every service's settings: ``APP_ENV``, and the machinery that reads the fields."""

    SERVICE: ClassVar[str] = ""
    PREFIXES: ClassVar[tuple[str, ...]] = ()  # variables starting so are this service's: unknown ones get a warning
    ELSEWHERE: ClassVar[tuple[str, ...]] = ()  # variables with such a prefix that other services read

    app_env: str = setting("APP_ENV", "production", "production (refuses development secrets) or development")

    ops_key: str = setting("OPS_KEY", DEV_OPS_KEY, "the operators' credential: in production, or once set, `/metrics`, "
                           "`/v1/stats` and the dashboard need it (`Authorization: Bearer`, or as the Basic password)",
                           secret=True)

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @property
    def ops_guard(self) -> str | None:
        """The key operators' routes require, or None where they are open (development, with the default key)."""
        return self.ops_key if self.production or self.ops_key != DEV_OPS_KEY else None

    @classmethod
    def specs(cls) -> list[tuple[dataclasses.Field[Any], Spec]]:
        """The fields read from the environment: the service's own first, then its bases'."""
        fields = {f.name: f for f in dataclasses.fields(cls) if "spec" in f.metadata}
        names = [n for k in cls.__mro__ for n in vars(k).get("__annotations__", {}) if n in fields]
        return [(fields[n], fields[n].metadata["spec"]) for n in names]

    @classmethod
    def derive(cls, values: dict[str, Any]) -> None:
        """Fill defaults that depend on other fields, and check what spans fields (a service overrides it)."""

    @classmethod
    def from_env(cls: type[S]) -> S:
        """Read every field; stop with an error naming the variable when one is invalid."""
        values = {f.name: _read(spec, f.default) for f, spec in cls.specs()}
        if values["app_env"] not in APP_ENVS:
            raise SystemExit(f"APP_ENV={values['app_env']!r} is neither 'production' (the default) nor 'development'")
        cls._warn_unknown(os.environ)
        cls.derive(values)
        config = cls(**values)
        config._check_secrets()
        return config

    def unsafe_in_production(self) -> list[str]:
        """What production refuses besides development secrets (a base with a store URL names its own)."""
        return []

    def _check_secrets(self) -> None:
        """Refuse production with a development secret or an unauthenticated store; in development, say which
        defaults are in use."""
        defaults = [(spec.name, f.default) for f, spec in self.specs()
                    if spec.secret and _is_default_secret(getattr(self, f.name), _development_value(spec, f.default))]
        if self.production:
            problems = ([f"development defaults for {', '.join(name for name, _ in defaults)}"] if defaults else [])
            problems += self.unsafe_in_production()
            if problems:
                raise SystemExit(f"{self.SERVICE}: refusing to start in production with {'; '.join(problems)}")
            return
        for name, default in defaults:
            print(f"{self.SERVICE}: using the development default {name}={self._shown(default)}", file=sys.stderr)

    @classmethod
    def _warn_unknown(cls, environ: Mapping[str, str]) -> None:
        known = {spec.name for _, spec in cls.specs()} | set(cls.ELSEWHERE)
        unknown = sorted(k for k in environ if k.startswith(cls.PREFIXES) and k not in known)
        if unknown:
            print(f"{cls.SERVICE}: ignoring unknown variables {', '.join(unknown)} (see --print-config)", file=sys.stderr)

    @staticmethod
    def _shown(default: Any) -> str:
        return "(none)" if default in (None, "") else str(default)

    @classmethod
    def table(cls) -> str:
        """Every variable with its default and meaning, as a Markdown table (``--print-config``, the README)."""
        rows = [(f"`{spec.name}`", spec.shown or cls._shown(f.default), spec.doc) for f, spec in cls.specs()]
        rows = [("variable", "default", "meaning"), ("---", "---", "---"), *rows]
        return "\n".join(f"| {' | '.join(r)} |" for r in rows)

    @classmethod
    def load(cls: type[S], argv: Sequence[str]) -> S:
        """The settings for a service's entry point; ``--print-config`` or ``--help`` prints the table and exits."""
        if {"--print-config", "--help", "-h"} & set(argv):
            print(f"{cls.SERVICE}: settings, read from the environment\n\n{cls.table()}")
            raise SystemExit(0)
        if argv:
            raise SystemExit(f"{cls.SERVICE}: unknown arguments {' '.join(argv)} (settings come from the environment; "
                             "see --print-config)")
        return cls.from_env()


def _weak_password(url: str) -> bool:
    password = urlsplit(url).password
    return not password or password in (DEV_REDIS_PASSWORD, DEV_MONGO_PASSWORD)


@dataclass(frozen=True)
class RedisSettings(Settings):
    redis_url: str = setting("REDIS_URL", "redis://127.0.0.1:6379/0",
                             "Redis with the hot state (`redis://:PASSWORD@host:port/db` for AUTH; "
                             "`redis+cluster://:PASSWORD@host:port,host:port/` for a Redis Cluster); production "
                             "requires a password, not the development one")

    def unsafe_in_production(self) -> list[str]:
        weak = ["REDIS_URL has no password, or the development one"] if _weak_password(self.redis_url) else []
        return super().unsafe_in_production() + weak


@dataclass(frozen=True)
class HandoverSettings(RedisSettings):
    """What collect and dispatch must agree on about the hand-over in Redis."""

    stream_shards: int = setting("STREAM_SHARDS", 1, "streams the posts are spread over (`shared/infra/slots.py`); the same in collect "
                                 "and dispatch, which runs one read loop per shard", low=1)
    replica_acks: int = setting("REPLICA_ACKS", 0, "Redis replicas (of each master) that must have a hand-over before it counts "
                                "(WAIT): 1 with replicas, else a failover may lose the last posts accepted", low=0)
    replica_ack_ms: int = setting("REPLICA_ACK_MS", 500, "how long to wait for them; past it, 503", low=1)


@dataclass(frozen=True)
class MongoSettings(Settings):
    mongo_url: str = setting("MONGO_URL", "mongodb://127.0.0.1:27017/", "MongoDB (or FerretDB), the durable record; production "
                             "requires credentials (`mongodb://user:PASSWORD@...`) or `authMechanism=MONGODB-X509`")
    mongo_db: str = setting("MONGO_DB", "push", "its database")

    def unsafe_in_production(self) -> list[str]:
        x509 = "authmechanism=mongodb-x509" in urlsplit(self.mongo_url).query.lower()
        weak = ["MONGO_URL has no credentials, or the development password"] if _weak_password(self.mongo_url) and not x509 else []
        return super().unsafe_in_production() + weak


@dataclass(frozen=True)
class InternalKeySettings(Settings):
    internal_key: str = setting("INTERNAL_KEY", DEV_INTERNAL_KEY,
                                "shared by collect, dispatch and push: signs node cards and proves the link (never sent)",
                                secret=True)
    link_ca: str = setting("LINK_CA", "", "PEM bundle of the CAs that sign the push nodes' certificates, for `wss://` links "
                           "(`PUSH_TLS_CERT`); empty: the system's")

    def link_tls(self) -> ssl.SSLContext:
        """The context a ``wss://`` link or an ``https://`` request to a node verifies the node's certificate with."""
        return ssl.create_default_context(cafile=self.link_ca or None)


def flag(raw: str) -> bool:
    """``1``/``true``/``yes`` or ``0``/``false``/``no`` (any case)."""
    value = raw.strip().lower()
    if value not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError("is neither 1 nor 0")
    return value in ("1", "true", "yes")


@dataclass(frozen=True)
class WebhookUrlSettings(Settings):
    """What collect (at registration) and the webhooks service (at each connect) check webhook URLs against."""

    webhook_allow_private: bool = setting("WEBHOOK_ALLOW_PRIVATE", "0", "1: webhook URLs may resolve to loopback, link-local "
                                          "and private addresses in production too (development always allows them, and http)",
                                          cast=flag)


@dataclass(frozen=True)
class TopicSettings(Settings):
    """What dispatch (which writes topic histories), push nodes (which recover from them and say who joins) and collect
    (which serves them) must agree on about topics (``shared.model.topics``)."""

    topic_history_size: int = setting("TOPIC_HISTORY_SIZE", 100, "messages each topic keeps for subscribers to recover "
                                      "(0: none; offsets still count)", low=0)
    topic_history_seconds: int = setting("TOPIC_HISTORY_SECONDS", 300, "... for at most this long", low=1)
    topic_namespaces: dict[str, dict[str, object]] = setting(
        "TOPIC_NAMESPACES", "", 'JSON: per namespace (a topic name\'s part before `:`), overrides of `history_size`, '
        '`history_seconds` and `join_leave` (tell subscribers who joins and leaves), e.g. `{"chat": {"history_size": 50, '
        '"join_leave": true}, "ticker": {"history_size": 0}}`', cast=parse_namespaces)

    @property
    def namespaces(self) -> Namespaces:
        return Namespaces(TopicPolicy(self.topic_history_size, self.topic_history_seconds), self.topic_namespaces)


@dataclass(frozen=True)
class ProxySettings(Settings):
    """Which peers may say who the client is (``shared.wire.forwarding``): a load balancer's or ingress's addresses."""

    trusted_proxies: tuple[Network, ...] = setting("TRUSTED_PROXIES", "", "comma-separated CIDRs of load balancers and proxies: "
                                                   "only from these is the client address read from `X-Forwarded-For` (or a "
                                                   "PROXY header)", cast=parse_networks)

"""Which URLs a webhook may be sent to: checked when an endpoint is registered and again at every connect.

In production a URL must be ``https://`` and every address its host resolves to must be public: not
loopback, link-local, private (RFC 1918, unique local), shared (CGNAT), multicast, reserved or
unspecified, so an API key cannot point the cluster at its own internal services. The check is
repeated for each connection (``SafeResolver``): a name that resolved to a public address at
registration and to a private one later (DNS rebinding) is refused then. ``WEBHOOK_ALLOW_PRIVATE=1``
lifts the address check; ``APP_ENV=development`` allows ``http://`` and any address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared.wire.errors import InvalidFields

MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    https_only: bool
    public_only: bool

    @classmethod
    def of(cls, production: bool, allow_private: bool) -> UrlPolicy:
        return cls(https_only=production, public_only=production and not allow_private)


def public_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is a public unicast address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def checked_url(url: object, policy: UrlPolicy) -> tuple[str, str]:
    """The URL's host and, if it is an IP literal, that address ("" otherwise); ``InvalidFields`` for a URL the policy
    refuses without resolving it."""
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
        raise InvalidFields(f"url must be a string of 1-{MAX_URL} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        raise InvalidFields("url is not a valid URL") from None
    allowed = ("https",) if policy.https_only else ("https", "http")
    if parts.scheme not in allowed or not host:
        raise InvalidFields(f"url must be an absolute {' or '.join(allowed)} URL with a host")
    if parts.username or parts.password:
        raise InvalidFields("url must not carry credentials")
    try:
        literal = str(ipaddress.ip_address(host))
    except ValueError:
        literal = ""
    if literal and policy.public_only and not public_address(literal):
        raise InvalidFields(f"url must not point at a loopback, link-local or private address ({literal})")
    return host, literal


async def check_resolved(url: str, policy: UrlPolicy) -> None:
    """``checked_url``, then (when only public addresses are allowed) resolve its host and refuse it if any address it
    resolves to is not public."""
    host, literal = checked_url(url, policy)
    if not policy.public_only or literal:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidFields(f"url's host {host!r} does not resolve") from None
    private = sorted({str(info[4][0]) for info in infos if not public_address(str(info[4][0]))})
    if private:
        raise InvalidFields(f"url's host {host!r} resolves to a loopback, link-local or private address ({', '.join(private)})")


class SafeResolver(AbstractResolver):
    """aiohttp's resolver, refusing (as a connection error) a host that resolves to an address ``public_address``
    refuses: the check at every connect."""

    def __init__(self) -> None:
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        refused = [r["host"] for r in found if not public_address(r["host"])]
        if refused:
            raise OSError(f"{host} resolves to a non-public address ({', '.join(refused)}); refused")
        return found

    async def close(self) -> None:
        await self.inner.close()


def resolver_for(policy: UrlPolicy) -> Any:
    """The resolver a sender's connector uses under ``policy`` (None: aiohttp's own)."""
    return SafeResolver() if policy.public_only else None

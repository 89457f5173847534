"""Which webhook URLs are allowed: https and public addresses in production, checked at registration and at each
connect; anything in development; private addresses with WEBHOOK_ALLOW_PRIVATE=1."""

from __future__ import annotations

import socket

import pytest

from shared.wire.errors import InvalidFields
from shared.wire.webhook_urls import SafeResolver, UrlPolicy, check_resolved, checked_url, public_address

PRODUCTION = UrlPolicy.of(production=True, allow_private=False)
ALLOW_PRIVATE = UrlPolicy.of(production=True, allow_private=True)
DEVELOPMENT = UrlPolicy.of(production=False, allow_private=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                                     "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "240.0.0.1"])
def test_loopback_link_local_private_and_reserved_addresses_are_not_public(address: str) -> None:
    """Loopback, private, link-local (cloud metadata), shared, unspecified, multicast and reserved are refused."""
    assert not public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
def test_public_unicast_addresses_are_public(address: str) -> None:
    """Ordinary internet addresses pass."""
    assert public_address(address)


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://127.0.0.1/hook", "https://[::1]/x", "ftp://example.com/",
                                 "https:///nohost", "https://user:pw@example.com/", "https://10.0.0.8:8443/x", "", 42])
def test_production_refuses_plain_http_private_literals_and_odd_urls(url: object) -> None:
    """In production: not https, a private IP literal, no host, credentials or not a string is 422."""
    with pytest.raises(InvalidFields):
        checked_url(url, PRODUCTION)


def test_development_allows_http_and_loopback_and_allow_private_lifts_the_address_check() -> None:
    """Development takes http://127.0.0.1; WEBHOOK_ALLOW_PRIVATE=1 takes https://10.0.0.8 but still not http."""
    assert checked_url("http://127.0.0.1:9000/hook", DEVELOPMENT) == ("127.0.0.1", "127.0.0.1")
    assert checked_url("https://10.0.0.8/hook", ALLOW_PRIVATE) == ("10.0.0.8", "10.0.0.8")
    with pytest.raises(InvalidFields):
        checked_url("http://10.0.0.8/hook", ALLOW_PRIVATE)


async def test_a_name_resolving_to_loopback_is_refused_at_registration() -> None:
    """localhost resolves to loopback: refused in production, allowed in development."""
    with pytest.raises(InvalidFields, match="resolves to"):
        await check_resolved("https://localhost/hook", PRODUCTION)
    await check_resolved("http://localhost/hook", DEVELOPMENT)


async def test_the_connect_time_resolver_refuses_a_name_resolving_to_loopback() -> None:
    """At each connect (DNS rebinding), a host now resolving to a private address fails the connection."""
    resolver = SafeResolver()
    try:
        with pytest.raises(OSError, match="non-public"):
            await resolver.resolve("localhost", 443, socket.AF_INET)
    finally:
        await resolver.close()
